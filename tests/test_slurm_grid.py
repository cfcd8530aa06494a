"""`specnb grid --executor slurm` end to end on the real test cluster (tests/slurm_cluster.py).

One small grid (cloud and speculative x float32 and bfloat16, embedded pair, 2 prompts, 8 new
tokens) goes through the command line three times:
  1. submitted, then the submitter is killed (SIGKILL) as soon as its jobs are recorded;
  2. ``--resume``: re-attaches to the running jobs (nothing submitted twice); one task is
     scancel'ed meanwhile and becomes a failed cell with its Slurm state;
  3. ``--resume`` again: only that cell runs again (the analysis notebooks after the cells are the
     executor-independent part of ``specnb grid``, tested with the local executor).
The same grid runs with the local executor alongside, and the deterministic fields (tokens,
acceptance) of every cell must be equal.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from specnb.grid.slurm import ENDED, slurm_states

# The session fixtures (slurm_cluster, time_limit_run) registered once for all test modules:
# imported into each module instead, every module would start its own cluster.
pytest_plugins = ["slurm_cluster"]

if TYPE_CHECKING:
    from slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slurm

PARAMS = """
models:
  edge:  {model: "zoo:tiny-edge",  device: cpu, threads: 1}
  cloud: {model: "zoo:tiny-cloud", device: cpu, threads: 1}
prompts: builtin:code
parameters: {num_prompts: 2, max_new_tokens: 8, gamma: 4, verify: greedy, temperature: 0.0, seed: 0, warmup: 0}
grid:
  method: [cloud, speculative]
  dtype: [float32, bfloat16]
runner: {jobs: 2, timeout_s: 300}
"""
CELLS = ["cloud-float32", "cloud-bfloat16", "speculative-float32", "speculative-bfloat16"]
SLURM = ["--executor", "slurm", "--time-min", "5", "--max-parallel", "2"]


def _grid(params: Path, out: Path, *extra: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "specnb.cli", "grid", str(params), "--out", str(out), *extra],
                            text=True, **popen)


def _jobs(run_dir: Path) -> dict[str, str]:
    cells = json.loads((run_dir / "slurm" / "jobs.json").read_text())["cells"]
    return {cid: rec["job_id"] for cid, rec in cells.items()}


def _result(run_dir: Path, cell_id: str) -> dict:
    return json.loads((run_dir / "cells" / cell_id / "result.json").read_text())


def _deterministic(result: dict) -> dict:
    """What must not depend on where a cell ran: tokens, acceptance per prompt and in aggregate."""
    keys = ("new_tokens", "rounds", "drafted", "accepted", "acceptance_rate", "tokens", "trace")
    return {"prompts": [{k: p.get(k) for k in keys} for p in result["prompts"]],
            "aggregate": {k: result["aggregate"].get(k) for k in keys if k in result["aggregate"]}}


def _cancel_one_live_task(cluster: SlurmCluster, run_dir: Path, timeout: float = 120) -> str:
    """scancel the first task, in grid order, that is still pending or running, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = _jobs(run_dir)
        states = slurm_states(list(jobs.values()))
        live = [cid for cid in CELLS if states.get(jobs[cid]) not in ENDED]
        assert live, f"every task ended before one could be cancelled: {states}"
        if states.get(jobs[live[0]]) == "RUNNING":
            cluster.cmd("scancel", jobs[live[0]])
            return live[0]
        time.sleep(0.3)
    raise AssertionError("no task started running")


@pytest.fixture(scope="module")
def runs(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Steps 1 and 2 on Slurm, with the local run going on alongside."""
    root = tmp_path_factory.mktemp("slurm-grid")
    params = root / "small.yaml"
    params.write_text(PARAMS)
    local = _grid(params, root / "local", "--executor", "local", "--no-analysis",
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = root / "slurm"
    t0 = time.monotonic()
    first = _grid(params, run_dir, *SLURM, "--no-analysis", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (run_dir / "slurm" / "jobs.json").exists() and first.poll() is None:
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    submitted = _jobs(run_dir)
    second = _grid(params, run_dir, *SLURM, "--resume", "--no-analysis", stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(second.stdout), daemon=True)
    reader.start()
    while not any("re-attached" in line for line in lines) and second.poll() is None:
        time.sleep(0.1)
    cancelled = _cancel_one_live_task(slurm_cluster, run_dir)
    second.wait(timeout=300)
    reader.join(5)
    out = {"root": root, "params": params, "run_dir": run_dir, "submitted": submitted, "cancelled": cancelled,
           "second_rc": second.returncode, "second_out": "".join(lines), "after_second": _jobs(run_dir),
           "slurm_s": time.monotonic() - t0, "local": local}
    yield out
    local.kill()


def test_resume_after_the_submitter_was_killed_submits_nothing_twice(runs: dict) -> None:
    assert sorted(runs["submitted"]) == sorted(CELLS), "the killed submitter recorded every cell's job"
    assert "re-attached" in runs["second_out"], runs["second_out"]
    assert runs["after_second"] == runs["submitted"], "resume waited for the same jobs, submitted none"


def test_a_cancelled_task_is_a_failed_cell_with_its_slurm_state(runs: dict) -> None:
    assert runs["second_rc"] == 1, runs["second_out"]  # some cell failed
    bad = _result(runs["run_dir"], runs["cancelled"])
    assert bad["status"] == "failed" and bad["slurm_state"] == "CANCELLED", bad
    assert bad["slurm_job_id"] == runs["submitted"][runs["cancelled"]] and bad["log_tail"]
    others = [c for c in CELLS if c != runs["cancelled"]]
    assert all(_result(runs["run_dir"], c)["status"] == "ok" for c in others)


def test_second_resume_reruns_only_the_failed_cell_and_matches_a_local_run(runs: dict) -> None:
    t0 = time.monotonic()
    third = _grid(runs["params"], runs["run_dir"], *SLURM, "--resume", "--no-analysis", stdout=subprocess.PIPE,
                  stderr=subprocess.STDOUT)
    out, _ = third.communicate(timeout=400)
    assert third.returncode == 0, out
    jobs = _jobs(runs["run_dir"])
    changed = {c for c in CELLS if jobs[c] != runs["submitted"][c]}
    assert changed == {runs["cancelled"]}, "only the failed cell was submitted again"
    record = json.loads((runs["run_dir"] / "slurm" / "jobs.json").read_text())["cells"][runs["cancelled"]]
    assert record["previous"] == [runs["submitted"][runs["cancelled"]]]
    assert runs["local"].wait(timeout=400) == 0
    for cell_id in CELLS:
        on_slurm, local = _result(runs["run_dir"], cell_id), _result(runs["root"] / "local", cell_id)
        assert on_slurm["status"] == local["status"] == "ok"
        assert _deterministic(on_slurm) == _deterministic(local), cell_id
    print(f"\nslurm grid: submit+kill+resume {runs['slurm_s']:.0f} s, second resume {time.monotonic() - t0:.0f} s")


def test_time_limit_is_recorded_as_timeout(time_limit_run: dict) -> None:
    """Last of the Slurm tests: the cell started early by tests/slurm_cluster.py ran past 1 min."""
    from specnb.grid.cells import read_result

    time_limit_run["thread"].join(timeout=180)
    res = time_limit_run["result"]
    assert res["status"] == "failed" and res["slurm_state"] == "TIMEOUT", res
    assert "--time-min" in res["error"] and res["log_tail"]
    assert read_result(time_limit_run["cell"])["slurm_state"] == "TIMEOUT"
