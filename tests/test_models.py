"""dtypes, model loading and the pair check: the happy paths and every clear error."""

from __future__ import annotations

import pytest
import torch

from specnb import ModelSpec, autoregressive, check_pair, load, speculative
from specnb.dtypes import device_class, parse_dtype, torch_dtype
from tiny_models import build_llama, build_tokenizer


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = build_tokenizer(root / "tok")
    other = build_tokenizer(root / "tok2", extra_tokens=["<tool>", "<think>"])
    build_llama(root / "a", tok, seed=0)
    build_llama(root / "b", tok, seed=1, layers=1)
    build_llama(root / "foreign", other, seed=2)
    return root


@pytest.mark.parametrize("name,want", [
    ("float32", "float32"), ("FP32", "float32"), ("fp16", "float16"), ("Float16", "float16"),
    ("bf16", "bfloat16"), ("BFLOAT16", "bfloat16"), (torch.bfloat16, "bfloat16"),
])
def test_dtype_names_and_aliases(name, want):
    assert parse_dtype(name) == want
    assert torch_dtype(name) is getattr(torch, want)


@pytest.mark.parametrize("bad", ["float64", "int8", "", "fp8"])
def test_bad_dtype_lists_valid_names(bad):
    with pytest.raises(ValueError, match="valid dtypes: float32, float16, bfloat16, fp32, fp16, bf16"):
        parse_dtype(bad)
    with pytest.raises(ValueError, match="unknown dtype"):
        ModelSpec("zoo:tiny-cloud", dtype=bad)


def test_device_class():
    assert device_class("cpu") == "CPU"
    assert device_class("cuda:1") == "GPU"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_clear_error(folders):
    with pytest.raises(ValueError, match="no CUDA GPU; use device='cpu'"):
        load(ModelSpec(str(folders / "a"), device="cuda"))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_every_dtype_loads_and_decodes_on_cpu(folders, dtype):
    m = load(ModelSpec(str(folders / "a"), dtype=dtype, device="cpu"))
    assert m.model.dtype is torch_dtype(dtype) and not m.model.training
    assert m.device.type == "cpu"
    e = load(ModelSpec(str(folders / "b"), dtype=dtype, device="cpu", threads=1))
    g = speculative(e, m, "def f(x):", 8, gamma=3)
    assert g.tokens == autoregressive(m, "def f(x):", 8).tokens


def test_threads_cap_is_applied_and_restored(folders, monkeypatch):
    seen = []
    m = load(ModelSpec(str(folders / "a"), device="cpu", threads=1))
    m.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    autoregressive(m, "x = ", 3)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before


def test_bad_threads():
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        ModelSpec("zoo:tiny-cloud", threads=0)


def test_pair_check_names_differing_tokens_and_speculative_translates(folders):
    a = load(ModelSpec(str(folders / "a"), device="cpu"))
    f = load(ModelSpec(str(folders / "foreign"), device="cpu"))
    with pytest.raises(ValueError, match=r"tokenizers differ in 2 tokens .*'<tool>'"):
        check_pair(f, a)
    # speculative() no longer refuses: the edge drafts through a translation (tests/test_tokenizers.py)
    g = speculative(f, a, "x", 4)
    assert g.tokens == autoregressive(a, "x", 4).tokens and "translated_rounds" in g.metrics


def test_missing_local_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist; check the path"):
        load(ModelSpec(str(tmp_path / "nope"), device="cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without config.json"):
        load(ModelSpec(str(tmp_path / "empty"), device="cpu"))


def test_unreachable_hub_id_says_how_to_pass_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="pass its local folder instead"):
        load(ModelSpec("no-such-org/no-such-model-xyz", device="cpu"))


def test_unknown_zoo_name():
    with pytest.raises(ValueError, match="unknown zoo model 'zoo:nope'"):
        load(ModelSpec("zoo:nope", device="cpu"))


@pytest.mark.parametrize("kwargs,msg", [
    ({"gamma": 0}, "gamma .* positive integer"),
    ({"verify": "fuzzy"}, "unknown verify rule 'fuzzy'; use one of greedy, sample, rank"),
    ({"verify": "sample"}, "needs temperature > 0"),
    ({"temperature": 0.7}, "set temperature=0, or use verify='sample'"),
    ({"verify": "rank", "rank_k": 0}, "rank_k must be a positive integer"),
    ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
    ({"verify": "sample", "temperature": 1.0, "top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"verify": "sample", "temperature": 1.0, "top_k": 0}, "top_k must be a positive integer"),
])
def test_bad_decoding_arguments(folders, kwargs, msg):
    a = load(ModelSpec(str(folders / "a"), device="cpu"))
    args = {"max_new_tokens": 4} | kwargs
    with pytest.raises(ValueError, match=msg):
        speculative(a, a, "x", **args)


def test_empty_prompt(folders):
    a = load(ModelSpec(str(folders / "a"), device="cpu"))
    with pytest.raises(ValueError, match="prompt is empty"):
        autoregressive(a, [], 4)


def test_speculative_caps_only_the_edge_on_a_shared_cpu(folders):
    edge = load(ModelSpec(str(folders / "b"), device="cpu", threads=1))
    cloud = load(ModelSpec(str(folders / "a"), device="cpu", threads=2))
    seen = {"edge": set(), "cloud": set()}
    edge.model.register_forward_pre_hook(lambda *_: seen["edge"].add(torch.get_num_threads()))
    cloud.model.register_forward_pre_hook(lambda *_: seen["cloud"].add(torch.get_num_threads()))
    speculative(edge, cloud, "def f(x):", 6, gamma=2)
    assert seen == {"edge": {1}, "cloud": {2}}
