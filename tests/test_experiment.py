"""experiment.run on a tiny random pair: the record, the methods, validation errors."""

from __future__ import annotations

import json

import pytest

from specnb.study import experiment
from specnb.study.params import METHODS, MethodParams, ParamsError


def params(tiny_pair, tmp_path, **kw) -> MethodParams:
    base = dict(edge_model=tiny_pair["edge"], cloud_model=tiny_pair["cloud"], prompts="builtin:code",
                num_prompts=2, max_new_tokens=6, warmup=1, result_path=str(tmp_path / "r.json"))
    return MethodParams(**(base | kw))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_writes_a_complete_record(tiny_pair, tmp_path, method):
    rec = experiment.run(method, params(tiny_pair, tmp_path))
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert on_disk["status"] == rec["status"] == "ok"
    assert on_disk["method"] == method and len(on_disk["prompts"]) == 2
    agg = on_disk["aggregate"]
    assert agg["new_tokens"] == sum(r["new_tokens"] for r in on_disk["prompts"])
    assert agg["tokens_per_s"] == pytest.approx(agg["new_tokens"] / agg["wall_s"])
    assert (on_disk["edge"] is None) == (method in ("cloud", "cloud_optimized", "prompt_lookup"))
    assert (on_disk["cloud"] is None) == (method == "edge")
    for key in ("versions", "machine", "git", "settings", "started_at", "finished_at"):
        assert key in on_disk
    role = on_disk["edge"] or on_disk["cloud"]
    assert role["device_class"] == "CPU" and role["dtype"] == "float32"
    if method in ("speculative", "hf_assisted"):
        assert agg["drafted"] > 0 and 0 <= agg["acceptance_rate"] <= 1
    if method == "prompt_lookup":  # lossless: the cloud's own greedy tokens
        cloud = experiment.run("cloud", params(tiny_pair, tmp_path, result_path=str(tmp_path / "c.json")))
        assert [r["tokens"] for r in on_disk["prompts"]] == [r["tokens"] for r in cloud["prompts"]]


def test_greedy_speculative_matches_cloud(tiny_pair, tmp_path):
    cloud = experiment.run("cloud", params(tiny_pair, tmp_path, result_path=str(tmp_path / "c.json")))
    spec = experiment.run("speculative", params(tiny_pair, tmp_path, gamma=3))
    assert [r["tokens"] for r in spec["prompts"]] == [r["tokens"] for r in cloud["prompts"]]


def test_optimized_speculative_and_schedule_match_cloud(tiny_pair, tmp_path):
    cloud = experiment.run("cloud_optimized", params(tiny_pair, tmp_path, compile_steps=False,
                                                     result_path=str(tmp_path / "c.json")))
    for extra in ({"optimized": True, "compile_steps": False}, {"schedule": "heuristic"}, {"schedule": "adaptive"}):
        spec = experiment.run("speculative", params(tiny_pair, tmp_path, **extra))
        assert [r["tokens"] for r in spec["prompts"]] == [r["tokens"] for r in cloud["prompts"]], extra
        assert spec["settings"] | extra == spec["settings"]
    assert {"warmup_s", "warmup_compile_s"} <= set(spec["aggregate"]) and spec["warmup"]["generations"] == 1
    from specnb.decode.adaptive import Controller  # the adaptive run (the last) saved its controller beside the result
    saved = Controller.load(spec["controller_path"])
    assert spec["controller_path"] == str(tmp_path / "r.controller.json") and sum(saved.calibration.tries) > 0
    assert json.loads((tmp_path / "r.controller.json").read_text())["about"]["method"] == "speculative"


def test_dtype_override_and_default_path(tiny_pair, tmp_path):
    p = params(tiny_pair, tmp_path, dtype="bf16", cloud_dtype="float32", result_path=None)
    assert experiment.dtype_label("speculative", p) == "edge-bfloat16_cloud-float32"
    assert experiment.dtype_label("edge", p) == "bfloat16"
    path = experiment.default_result_path("cloud", p)
    assert path.name.startswith("cloud-float32-") and path.suffix == ".json"


def test_failure_writes_failed_record(tiny_pair, tmp_path):
    p = params(tiny_pair, tmp_path, prompts=str(tmp_path / "nope.jsonl"))
    with pytest.raises(Exception):
        experiment.run("cloud", p)
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["status"] == "failed" and "nope.jsonl" in rec["error"]


def test_validate_names_the_bad_parameter(tiny_pair):
    ns = {"dtype": "float32", "gamma": 0, "verify": "greedy", "junk": 1}
    with pytest.raises(ParamsError, match="gamma"):
        experiment.validate("speculative", ns)
    with pytest.raises(ParamsError, match="cloud_device"):
        experiment.validate("cloud", {"cloud_device": "cuda:0"} if not _has_cuda() else {"cloud_device": "cuda:99x"})
    assert experiment.validate("edge", {"dtype": "fp16"}).dtype == "float16"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_default_result_names_are_unique_per_setting_and_never_in_the_checkout(tiny_pair, tmp_path, monkeypatch):
    from specnb.measure.provenance import REPO_ROOT

    monkeypatch.delenv("SPECNB_ADHOC_DIR", raising=False)
    g4 = experiment.default_result_path("speculative", params(tiny_pair, tmp_path, gamma=4, result_path=None))
    g6 = experiment.default_result_path("speculative", params(tiny_pair, tmp_path, gamma=6, result_path=None))
    assert g4 != g6 and g4.name.startswith("speculative-float32-")
    # a parameter the method ignores does not make a new file
    assert experiment.default_result_path("cloud", params(tiny_pair, tmp_path, gamma=4, result_path=None)) == \
        experiment.default_result_path("cloud", params(tiny_pair, tmp_path, gamma=6, result_path=None))
    monkeypatch.setenv("SPECNB_ADHOC_DIR", str(tmp_path / "adhoc"))
    assert experiment.default_result_path("cloud", params(tiny_pair, tmp_path)).parent == tmp_path / "adhoc"
    assert REPO_ROOT not in experiment.default_result_path("cloud", params(tiny_pair, tmp_path)).parents


def test_a_failure_never_replaces_a_good_result(tiny_pair, tmp_path):
    good = experiment.run("cloud", params(tiny_pair, tmp_path, reps=1))
    with pytest.raises(Exception):
        experiment.run("cloud", params(tiny_pair, tmp_path, prompts=str(tmp_path / "nope.jsonl")))
    kept = json.loads((tmp_path / "r.json").read_text())
    assert kept["status"] == "ok" and kept["started_at"] == good["started_at"]
    failed = json.loads((tmp_path / "r.failed.json").read_text())
    assert failed["status"] == "failed" and "nope.jsonl" in failed["error"]


def test_unknown_injected_parameter_names_the_closest(tiny_pair):
    ns = {"In": ["", "# Parameters\nmax_new_token = 8\ndtype = \"float32\"\n"], "dtype": "float32", "max_new_token": 8}
    with pytest.raises(ParamsError, match="unknown parameter 'max_new_token' \\(did you mean 'max_new_tokens'\\?\\)"):
        experiment.validate("cloud", ns)
    ok = {"In": ["", "# Parameters\nmax_new_tokens = 8\n"], "max_new_tokens": 8}
    assert experiment.validate("cloud", ok).max_new_tokens == 8


def test_edge_alone_counts_edge_calls_and_hf_split_is_unmeasured(tiny_pair, tmp_path):
    edge = experiment.run("edge", params(tiny_pair, tmp_path, reps=1))
    assert edge["aggregate"]["cloud_calls"] == 0 and edge["aggregate"]["edge_calls"] > 0
    hf = experiment.run("hf_assisted", params(tiny_pair, tmp_path, reps=1))
    assert hf["aggregate"]["draft_s"] is None and hf["aggregate"]["verify_s"] is None
    assert all(r["draft_s"] is None for r in hf["prompts"])


def test_chat_template_is_recorded_and_names_its_own_result_file(tiny_pair, tmp_path):
    rec = experiment.run("cloud", params(tiny_pair, tmp_path, reps=1))
    assert rec["settings"]["chat_template"] == "auto"
    assert rec["settings"]["chat_template_applied"] is False  # the tiny pair's tokenizer has no template: raw text
    assert rec["prompting"] == {"chat_template": "auto", "applied": False, "tokenizer": "cloud"}
    assert [r["turn"] for r in rec["prompts"]] == [1, 1] and [r["id"] for r in rec["prompts"]] == ["code-00", "code-05"]  # spread over categories
    auto, none = (experiment.default_result_path("cloud", params(tiny_pair, tmp_path, chat_template=m, result_path=None))
                  for m in ("auto", "none"))
    assert auto != none
