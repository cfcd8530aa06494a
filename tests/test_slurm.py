"""specnb on a real single-node Slurm (tests/slurm_cluster.py starts it once per session)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import submitit

from specnb.grid.cells import Cell, read_result
from specnb.study.params import NOTEBOOKS
from specnb.grid.slurm import ENDED, SlurmExecutor, SlurmSubmitError, _parse_states, slurm_states

# The session fixtures (slurm_cluster, time_limit_run) registered once for all test modules:
# imported into each module instead, every module would start its own cluster.
pytest_plugins = ["slurm_cluster"]

if TYPE_CHECKING:
    from slurm_cluster import SlurmCluster


@pytest.mark.slurm
def test_cluster_runs_a_submitit_function(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """submitit pickles a function, Slurm runs it with this venv's python, the result comes back."""
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    ex.update_parameters(timeout_min=2, slurm_partition="debug")
    job = ex.submit(sum, [19, 23])
    assert job.result() == 42
    _wait_ended(job.job_id)
    assert slurm_states([job.job_id]) == {job.job_id: "COMPLETED"}
    py = ex.submit(getattr, sys, "executable").result()
    assert py == sys.executable
    print(f"cluster start-up: {slurm_cluster.startup_s:.1f} s")


@pytest.mark.slurm
def test_the_cluster_is_isolated_from_another_slurm_on_this_machine(slurm_cluster: SlurmCluster) -> None:
    """Every Slurm command this process and its children run (submitit's, ``specnb grid``'s) is
    this cluster's; with another Slurm on the default paths (its slurm.conf, munged on the default
    socket), neither cluster sees the other's jobs and our munged refuses the other's credentials."""
    from slurm_cluster import DEFAULT_MUNGE_SOCKETS, outside_env

    slurm_cluster.check_isolation(dict(os.environ))
    job = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 120"], capture_output=True,
                         text=True, check=True).stdout.strip().split(";")[0]
    assert int(job) >= slurm_cluster.first_job_id
    try:
        ours = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout.split()
        assert job in ours
        if any("answers" in seen for seen in slurm_cluster.others):  # another controller is up
            theirs = subprocess.run(["squeue", "-h", "-o", "%i"], env=outside_env(slurm_cluster), capture_output=True,
                                    text=True, check=True).stdout.split()
            assert job not in theirs and not set(theirs) & set(ours), (theirs, ours)
        default = next((s for s in DEFAULT_MUNGE_SOCKETS if s.exists()), None)
        if default and shutil.which("munge") and shutil.which("unmunge"):
            cred = subprocess.run(["munge", "-n", "-S", str(default)], capture_output=True, check=True).stdout
            foreign = subprocess.run(["unmunge", "-S", str(slurm_cluster.munge_socket)], input=cred,
                                     capture_output=True)
            assert foreign.returncode != 0, "our munged accepts the default munged's credentials"
    finally:
        slurm_cluster.cmd("scancel", job)
    _wait_ended(job)
    assert slurm_states([job]) == {job: "CANCELLED"}
    print(f"other Slurm/munge here: {'; '.join(slurm_cluster.others) or 'none'}")


# -- SlurmExecutor on the real cluster, with the fake method notebooks of conftest.py ---------

def _cells(notebooks: Path, run_dir: Path, dtypes: list[str], method: str = "edge") -> list[Cell]:
    out = []
    for dtype in dtypes:
        cell_dir = run_dir / "cells" / f"{method}-{dtype}"
        out.append(Cell(cell_id=f"{method}-{dtype}", method=method, notebook=str(notebooks / NOTEBOOKS[method]),
                        parameters={"dtype": dtype, "result_path": str(cell_dir / "result.json")},
                        cell_dir=str(cell_dir)))
    return out


def _run(executor: SlurmExecutor, cells: list[Cell]) -> dict[str, dict]:
    done: dict[str, dict] = {}
    executor.run(cells, lambda cell, result: done.__setitem__(cell.cell_id, result))
    return done


def _jobs(run_dir: Path) -> dict[str, dict]:
    return json.loads((run_dir / "slurm" / "jobs.json").read_text())["cells"]


@pytest.mark.slurm
def test_executor_runs_cells_as_one_array(slurm_cluster: SlurmCluster, fake_notebooks: Path, tmp_path: Path,
                                          time_limit_run: dict) -> None:
    """Every cell ends: ok ones with their result, the notebook failure with its error and Slurm state.
    (Starts ``time_limit_run`` early, so that its 60-90 s overlap the other tests.)"""
    cells = _cells(fake_notebooks, tmp_path, ["float32", "bfloat16", "float16"])  # float16 raises
    done = _run(SlurmExecutor(tmp_path, time_min=5, poll_s=0.5), cells)
    assert sorted(done) == sorted(c.cell_id for c in cells)
    for cell in cells[:2]:
        assert done[cell.cell_id]["status"] == "ok", done[cell.cell_id]
        assert read_result(cell) == done[cell.cell_id]
    bad = done["edge-float16"]
    assert bad["status"] == "failed" and "boom in float16" in bad["error"]
    assert bad["slurm_state"] == "COMPLETED"  # the job ran fine, the notebook raised
    jobs = _jobs(tmp_path)
    assert len({rec["job_id"].split("_")[0] for rec in jobs.values()}) == 1  # one array
    assert sorted(rec["job_id"] for rec in jobs.values()) == sorted(f"{jobs['edge-float32']['job_id'].split('_')[0]}_{i}" for i in range(3))
    assert list((tmp_path / "slurm").glob("*_log.out")), "task logs land in the run folder"


@pytest.mark.slurm
def test_cancelled_jobs_become_failed_cells_with_their_state(slurm_cluster: SlurmCluster, fake_notebooks: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scancel of a running task: CANCELLED. A task cancelled while pending usually leaves no
    record in squeue or sacct (then, after ``lost_after_s``, it is a failed cell with state
    UNKNOWN and a hint to resume); when slurmdbd did record it, its state is CANCELLED. Which
    one happens is a race inside Slurm (both seen on the CI machine), so both are accepted."""
    monkeypatch.setenv("FAKE_SLEEP_S", "120")
    cells = _cells(fake_notebooks, tmp_path, ["float32", "bfloat16"])
    errors: list[BaseException] = []
    canceller = threading.Thread(target=lambda: _cancel(slurm_cluster, tmp_path, errors))
    canceller.start()
    done = _run(SlurmExecutor(tmp_path, time_min=5, max_parallel=1, poll_s=0.5, lost_after_s=3), cells)
    canceller.join()
    assert not errors, errors
    running, pending = done["edge-float32"], done["edge-bfloat16"]
    assert running["status"] == "failed" and running["slurm_state"] == "CANCELLED", running
    assert "CANCELLED" in running["error"] and running["slurm_job_id"] == _jobs(tmp_path)["edge-float32"]["job_id"]
    assert "log_tail" in running and read_result(cells[0])["slurm_state"] == "CANCELLED"
    assert pending["status"] == "failed" and pending["slurm_state"] in ("UNKNOWN", "CANCELLED"), pending
    if pending["slurm_state"] == "UNKNOWN":
        assert "--resume" in pending["error"]


def _cancel(cluster: SlurmCluster, run_dir: Path, errors: list[BaseException]) -> None:
    try:
        _cancel_both(cluster, run_dir)
    except BaseException as err:  # noqa: BLE001 - handed to the test's thread
        errors.append(err)


def _cancel_both(cluster: SlurmCluster, run_dir: Path, timeout: float = 60) -> None:
    """Cancel the pending task (edge-bfloat16) at once, the first (edge-float32) once it runs."""
    deadline = time.monotonic() + timeout
    while not (run_dir / "slurm" / "jobs.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    jobs = _jobs(run_dir)
    cluster.cmd("scancel", jobs["edge-bfloat16"]["job_id"])
    first = jobs["edge-float32"]["job_id"]
    while time.monotonic() < deadline:
        if cluster.cmd("squeue", "-h", "-j", first, "-o", "%T", check=False).strip() == "RUNNING":
            cluster.cmd("scancel", first)
            return
        time.sleep(0.3)
    raise AssertionError(f"{first} never ran")


def _wait_ended(job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while slurm_states([job_id]).get(job_id) not in ENDED and time.monotonic() < deadline:
        time.sleep(0.3)


@pytest.mark.slurm
def test_a_refused_submission_names_what_to_change(slurm_cluster: SlurmCluster, fake_notebooks: Path,
                                                   tmp_path: Path) -> None:
    cells = _cells(fake_notebooks, tmp_path, ["float32"])
    with pytest.raises(SlurmSubmitError, match="Invalid partition.*--partition"):
        SlurmExecutor(tmp_path, partition="no-such-partition").run(cells, lambda c, r: None)


def test_slurm_opts_map_to_submitit_parameters(tmp_path: Path) -> None:
    ex = SlurmExecutor(tmp_path, partition="gpu", gpus_per_cell=1, time_min=30, mem_gb=64, max_parallel=4,
                       slurm_opts={"account": "proj", "cpus_per_task": "8", "reservation": "r1"})
    assert ex.params["slurm_partition"] == "gpu" and ex.params["gpus_per_node"] == 1
    assert ex.params["timeout_min"] == 30 and ex.params["mem_gb"] == 64 and ex.params["slurm_array_parallelism"] == 4
    assert ex.params["slurm_account"] == "proj" and ex.params["slurm_cpus_per_task"] == 8
    assert ex.params["slurm_additional_parameters"] == {"reservation": "r1"}


def test_state_parsing_expands_arrays_and_drops_reasons() -> None:
    text = "12_0|COMPLETED\n12_1|CANCELLED by 0\n12_[2-3]|PENDING\n12_0.batch|COMPLETED\n13|TIMEOUT\n"
    assert _parse_states(text) == {"12_0": "COMPLETED", "12_1": "CANCELLED", "12_2": "PENDING",
                                   "12_3": "PENDING", "13": "TIMEOUT"}
