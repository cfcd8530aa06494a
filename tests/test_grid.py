"""The grid runner on fake notebooks: expansion, failure isolation, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from specnb.grid.cells import Cell, cell_is_ok, expand, read_result, run_cell, write_failed_result
from specnb.study.params import load_grid_params

REPO = Path(__file__).resolve().parents[1]


def params_file(tmp_path: Path, models: dict[str, str], methods: list[str], dtypes: list[str], **extra) -> Path:
    data = {
        "models": {"edge": {"model": models["edge"], "device": "cpu", "threads": 1},
                   "cloud": {"model": models["cloud"], "device": "cpu"}},
        "prompts": "builtin:code",
        "grid": {"method": methods, "dtype": dtypes, **extra},
        "runner": {"jobs": 1, "timeout_s": 120, "analysis": False},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_grid(params: Path, out: Path, notebooks: Path, *extra: str, env: dict | None = None,
             wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "-m", "specnb.cli", "grid", str(params), "--out", str(out),
           "--notebook-dir", str(notebooks), "--no-analysis", *extra]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=300)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env)


def test_expansion_product_dedup_and_ids(tmp_path, fake_models, fake_notebooks):
    gp = load_grid_params(params_file(tmp_path, fake_models, ["edge", "cloud", "speculative"],
                                      ["float32", "bfloat16"], gamma=[2, 4]))
    cells = expand(gp, tmp_path / "run", fake_notebooks)
    ids = [c.cell_id for c in cells]
    # gamma does not change the baselines: 2 edge + 2 cloud + 2x2 speculative
    assert ids == ["edge-float32", "edge-bfloat16", "cloud-float32", "cloud-bfloat16",
                   "speculative-float32-g2", "speculative-float32-g4",
                   "speculative-bfloat16-g2", "speculative-bfloat16-g4"]
    spec = cells[-1]
    assert spec.parameters["gamma"] == 4 and spec.parameters["dtype"] == "bfloat16"
    assert spec.parameters["result_path"] == str(tmp_path / "run" / "cells" / spec.cell_id / "result.json")
    assert spec.notebook == str(fake_notebooks / "speculative.ipynb")
    assert Cell.model_validate_json(spec.model_dump_json()) == spec


def test_run_cell_ok_then_failed_keeps_notebook(tmp_path, fake_models, fake_notebooks):
    gp = load_grid_params(params_file(tmp_path, fake_models, ["cloud"], ["float32", "float16"]))
    ok_cell, bad_cell = expand(gp, tmp_path / "run", fake_notebooks)
    assert Path(run_cell(ok_cell)).is_file() and cell_is_ok(ok_cell)
    assert read_result(ok_cell)["cell"]["cell_id"] == "cloud-float32"

    run_cell(bad_cell)
    res = read_result(bad_cell)
    assert res["status"] == "failed" and "RuntimeError: boom in float16" in res["error"]
    executed = nbformat.read(Path(bad_cell.cell_dir) / "executed.ipynb", as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and errors[0]["evalue"] == "boom in float16"
    assert not cell_is_ok(bad_cell)


def test_changed_parameters_are_not_ok(tmp_path, fake_models, fake_notebooks):
    gp = load_grid_params(params_file(tmp_path, fake_models, ["cloud"], ["float32"]))
    (cell,) = expand(gp, tmp_path / "run", fake_notebooks)
    run_cell(cell)
    assert cell_is_ok(cell)
    assert not cell_is_ok(cell.model_copy(update={"parameters": {**cell.parameters, "max_new_tokens": 99}}))


def test_write_failed_result_keeps_partial_record(tmp_path, fake_models, fake_notebooks):
    gp = load_grid_params(params_file(tmp_path, fake_models, ["cloud"], ["float32"]))
    (cell,) = expand(gp, tmp_path / "run", fake_notebooks)
    run_cell(cell)
    write_failed_result(cell, "TIMEOUT", slurm_state="TIMEOUT", log_tail="x")
    res = read_result(cell)
    assert (res["status"], res["error"], res["slurm_state"], res["method"]) == ("failed", "TIMEOUT", "TIMEOUT", "cloud")
    assert "nonce" in res  # the notebook's partial record is kept


def test_cli_failing_cell_isolated_and_manifest(tmp_path, fake_models, fake_notebooks):
    params = params_file(tmp_path, fake_models, ["cloud", "speculative"], ["float32", "float16"])
    out = tmp_path / "run"
    proc = run_grid(params, out, fake_notebooks, "--jobs", "2")
    assert proc.returncode == 1, proc.stderr
    status = {d.name: json.loads((d / "result.json").read_text())["status"] for d in (out / "cells").iterdir()}
    assert status == {"cloud-float32": "ok", "cloud-float16": "failed",
                      "speculative-float32": "ok", "speculative-float16": "failed"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(c["cell_id"] for c in manifest["cells"]) == sorted(status)
    assert manifest["params_text"] == params.read_text()
    assert manifest["invocations"][-1]["ok"] == 2 and manifest["invocations"][-1]["failed"] == 2
    assert "versions" in manifest and "git" in manifest and "machine" in manifest

    # resume re-runs only the failed cells (now passing)
    again = run_grid(params, out, fake_notebooks, env={"FAKE_FAIL_DTYPE": "none"})
    assert again.returncode == 0, again.stderr
    # the run ends with its headline: here the fake cells record no speeds, so there is none to quote
    assert again.stdout.rstrip().splitlines()[-1] == "no fair speed-up to quote (see audit.csv for why)", again.stdout
    inv = json.loads((out / "manifest.json").read_text())["invocations"]
    assert sorted(inv[-1]["cells_to_run"]) == ["cloud-float16", "speculative-float16"]


def test_bad_yaml_fails_before_running(tmp_path, fake_models, fake_notebooks):
    params = params_file(tmp_path, fake_models, ["cloud"], ["float32", "fp8"])
    proc = run_grid(params, tmp_path / "run", fake_notebooks)
    assert proc.returncode == 2 and "grid.dtype[1]" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_resume_after_killed_run(tmp_path, fake_models, fake_notebooks):
    params = params_file(tmp_path, fake_models, ["cloud"], ["float32", "bfloat16", "float16"])
    out = tmp_path / "run"
    env = {"FAKE_FAIL_DTYPE": "none", "FAKE_SLEEP_S": "1.5"}
    proc = run_grid(params, out, fake_notebooks, env=env, wait=False)
    first = out / "cells" / "cloud-float32" / "result.json"
    deadline = time.monotonic() + 120
    while not first.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.is_file(), proc.communicate()[1].decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # the worker dies with its parent (PR_SET_PDEATHSIG)
    nonce = json.loads(first.read_text())["nonce"]
    missing = [d for d in ("bfloat16", "float16") if not (out / "cells" / f"cloud-{d}" / "result.json").is_file()]
    assert missing, "the run was killed before finishing every cell"

    again = run_grid(params, out, fake_notebooks, env={"FAKE_FAIL_DTYPE": "none"})
    assert again.returncode == 0, again.stderr
    assert json.loads(first.read_text())["nonce"] == nonce  # the finished cell was not re-run
    for d in ("float32", "bfloat16", "float16"):
        assert json.loads((out / "cells" / f"cloud-{d}" / "result.json").read_text())["status"] == "ok"
    assert "cloud-float32" in json.loads((out / "manifest.json").read_text())["invocations"][-1]["cells_skipped_ok"]


@pytest.mark.slow
def test_real_notebook_ok_and_bad_parameter(tmp_path):
    """The shipped speculative notebook on the embedded pair, then with a bad dtype."""
    nb = str(REPO / "notebooks" / "speculative.ipynb")
    good = Cell(cell_id="spec", method="speculative", notebook=nb, cell_dir=str(tmp_path / "spec"),
                parameters={"dtype": "float32", "num_prompts": 1, "max_new_tokens": 6, "warmup": 0,
                            "result_path": str(tmp_path / "spec" / "result.json")})
    run_cell(good)
    res = read_result(good)
    assert res["status"] == "ok", res.get("error")
    assert res["method"] == "speculative" and res["aggregate"]["new_tokens"] == 6
    assert res["edge"]["model"] == "zoo:tiny-edge" and res["cloud"]["dtype"] == "float32"

    bad = good.model_copy(update={"cell_id": "bad", "cell_dir": str(tmp_path / "bad"),
                                  "parameters": {"dtype": "fp8", "result_path": str(tmp_path / "bad" / "result.json")}})
    run_cell(bad)
    res = read_result(bad)
    assert res["status"] == "failed" and "ParamsError" in res["error"] and "fp8" in res["error"]


def test_dead_kernel_and_timeout_become_failed_results(tmp_path, fake_models, fake_notebooks, monkeypatch):
    gp = load_grid_params(params_file(tmp_path, fake_models, ["cloud"], ["bfloat16", "float32"]))
    dies, slow = expand(gp, tmp_path / "run", fake_notebooks)
    monkeypatch.setenv("FAKE_DIE_DTYPE", "bfloat16")
    run_cell(dies)
    res = read_result(dies)
    assert res["status"] == "failed" and "DeadKernel" in res["error"]
    assert (Path(dies.cell_dir) / "executed.ipynb").is_file()

    monkeypatch.setenv("FAKE_SLEEP_S", "30")
    run_cell(slow.model_copy(update={"timeout_s": 2}))
    res = read_result(slow)
    assert res["status"] == "failed" and "CellTimeoutError" in res["error"] and "timed out" in res["error"]


def test_resume_without_out_picks_the_newest_run(tmp_path, fake_models, fake_notebooks):
    params = params_file(tmp_path, fake_models, ["cloud"], ["float32"])
    base = [sys.executable, "-m", "specnb.cli", "grid", str(params), "--notebook-dir", str(fake_notebooks),
            "--no-analysis"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run(base, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    (run,) = (tmp_path / "outputs").glob("grid-*")
    again = subprocess.run(base + ["--resume"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and f"run folder: {run}" in again.stdout and "0 to run, 1 already ok" in again.stdout
    nothing = subprocess.run(base + ["--resume"], cwd=tmp_path / "outputs", capture_output=True, text=True, env=env)
    assert nothing.returncode == 2 and "no earlier run" in nothing.stderr


def test_a_grid_cell_can_use_the_adaptive_schedule(tmp_path, fake_models, fake_notebooks):
    gp = load_grid_params(params_file(tmp_path, fake_models, ["speculative"], ["float32"],
                                      gamma=[8], schedule=["constant", "adaptive"]))
    cells = expand(gp, tmp_path / "run", fake_notebooks)
    assert [c.parameters["schedule"] for c in cells] == ["constant", "adaptive"]
    assert [c.cell_id for c in cells] == ["speculative-float32-g8-constant", "speculative-float32-g8-adaptive"]
