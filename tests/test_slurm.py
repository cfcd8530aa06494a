"""specnb on a real single-node Slurm (tests/slurm_cluster.py starts it once per session)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import submitit

from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - the session fixture

pytestmark = pytest.mark.slurm


def test_cluster_runs_a_submitit_function(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """submitit pickles a function, Slurm runs it with this venv's python, the result comes back."""
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    ex.update_parameters(timeout_min=2, slurm_partition="debug")
    job = ex.submit(sum, [19, 23])
    assert job.result() == 42
    info = submitit.SlurmJob(tmp_path / "submitit", job.job_id).get_info(mode="force")
    assert info.get("State") == "COMPLETED", info
    py = ex.submit(getattr, sys, "executable").result()
    assert py == sys.executable
    print(f"cluster start-up: {slurm_cluster.startup_s:.1f} s")
