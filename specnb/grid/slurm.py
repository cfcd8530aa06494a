"""Run grid cells as one Slurm job array through submitit (``specnb grid ... --executor slurm``).

Each cell is one array task running :func:`specnb.grid.cells.run_cell`, the same plain function the
local executor runs, so results, resume and failure records are the same. The run folder gets

  slurm/                 submitit's pickles and each task's ``<array>_<task>_0_log.out/.err``
  slurm/jobs.json        cell id -> Slurm job id (+ earlier ids), written right after submission

``jobs.json`` is what makes ``--resume`` safe after the submitting process died: cells whose job
is still pending or running are re-attached (not submitted twice); cells whose job ended without
an ok ``result.json`` are submitted again. A job that ended badly (TIMEOUT, OUT_OF_MEMORY,
NODE_FAIL, CANCELLED, FAILED, ...) becomes a failed cell with ``slurm_state``, ``slurm_job_id`` and
the tail of its Slurm log. States come from ``squeue`` (jobs the controller holds) and ``sacct``
(older ones); a job that neither knows for ``lost_after_s`` is recorded as lost (UNKNOWN).

The compute nodes must see the run folder and this repository at the same paths (a shared
file system), and run the submitter's python (submitit starts ``sys.executable``).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import submitit
from submitit.core.utils import FailedJobError, pickle_load
from submitit.slurm.slurm import read_job_id

from .cells import Cell, read_result, run_cell, write_failed_result
from ..measure.provenance import REPO_ROOT, log_tail, now, read_json, write_json_atomic

JOBS_FILE = "jobs.json"
# Slurm job states after which a job never runs again (see `man squeue`, JOB STATE CODES).
ENDED = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
         "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
HINTS = {
    "TIMEOUT": "the cell ran past the Slurm time limit: raise --time-min",
    "OUT_OF_MEMORY": "the cell ran out of memory: raise --mem-gb",
    "NODE_FAIL": "the node failed: --resume runs the cell again",
    "CANCELLED": "the job was cancelled (scancel, or an administrator)",
    "PREEMPTED": "the job was preempted: --resume runs the cell again",
    "BOOT_FAIL": "the node failed to boot: --resume runs the cell again",
    "UNKNOWN": "neither squeue nor sacct knows the job any more (cancelled while pending?): --resume runs the cell again",
}


class SlurmSubmitError(RuntimeError):
    """sbatch is missing or refused the job array; the message says what to change."""


def _job_main(cell: Cell) -> str:
    """What each array task runs. submitit has Slurm send SIGUSR2 to every process of the task
    90 s before the time limit (to checkpoint, which a cell cannot) and turns it into an
    exception; the notebook's kernel would simply die of it. Ignored here (and so in the kernel,
    which inherits SIG_IGN), the cell keeps its last 90 s and Slurm records TIMEOUT if it ends."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    return run_cell(cell)


def _run(cmd: list[str]) -> str:
    """stdout of a Slurm client command, '' when it fails (the caller treats that as 'not known')."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def _parse_states(text: str) -> dict[str, str]:
    """``ID|STATE`` lines -> {"123_4": "TIMEOUT"}; expands ``123_[0-3]`` ranges; "CANCELLED by 0" -> "CANCELLED"."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        jid, _, state = line.strip().partition("|")
        if not jid or "." in jid or not state:
            continue
        for main, *rng in read_job_id(jid):
            tasks = range(int(rng[0]), int(rng[-1]) + 1) if rng else [None]
            for t in tasks:
                states[main if t is None else f"{main}_{t}"] = state.split()[0].rstrip("+")
    return states


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Current state of each job id: ``squeue -t all`` for the jobs the controller still holds
    (pending, running, and ended within MinJobAge, 5 min by default), ``sacct`` for older ones.
    Ids neither knows are left out (e.g. an array task cancelled while pending leaves no record)."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    if not arrays:
        return {}
    held = _parse_states(_run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(arrays)]))
    gone = sorted({j.split("_")[0] for j in job_ids if j not in held})
    ended = _parse_states(_run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(gone)])) if gone else {}
    return {j: held.get(j) or ended[j] for j in job_ids if j in held or j in ended}


def _slurm_params(opts: dict[str, str]) -> dict[str, Any]:
    """``--slurm-opt key=value`` -> submitit parameters: known sbatch options as ``slurm_<key>``
    (digits as int), anything else verbatim as an extra ``#SBATCH --key=value`` line."""
    known = submitit.SlurmExecutor._valid_parameters()
    params: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for key, value in opts.items():
        name = key.replace("-", "_")
        if name in known:
            params[f"slurm_{name}"] = int(value) if value.isdigit() else value
        else:
            extra[key] = value
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


class SlurmExecutor:
    """Grid cells as one submitit job array per call of :meth:`run`; see the module docstring."""

    def __init__(self, run_dir: Path, partition: str | None = None, gpus_per_cell: int = 0, time_min: int = 60,
                 mem_gb: int | None = None, max_parallel: int | None = None,
                 slurm_opts: dict[str, str] | None = None, *, poll_s: float = 5.0, lost_after_s: float = 120.0):
        self.folder = Path(run_dir).resolve() / "slurm"
        self.jobs_file = self.folder / JOBS_FILE
        self.poll_s, self.lost_after_s = poll_s, lost_after_s
        params: dict[str, Any] = {"timeout_min": time_min, "name": f"specnb-{Path(run_dir).name}",
                                  "slurm_setup": self._setup_lines()}
        if gpus_per_cell:
            params["gpus_per_node"] = gpus_per_cell
        if partition:
            params["slurm_partition"] = partition
        if mem_gb:
            params["mem_gb"] = mem_gb
        if max_parallel:
            params["slurm_array_parallelism"] = max_parallel
        self.params = params | _slurm_params(slurm_opts or {})

    @staticmethod
    def _setup_lines() -> list[str]:
        """Shell lines before the task: this repository importable, no progress bars, torch's
        threads capped to the CPUs Slurm gave the task (unless the submitter set a cap)."""
        return [f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}", "export TQDM_DISABLE=1",
                "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"]

    # -- jobs.json -----------------------------------------------------------------------
    def _load_jobs(self) -> dict[str, dict]:
        return (read_json(self.jobs_file) or {}).get("cells", {})

    def _save_jobs(self, records: dict[str, dict]) -> None:
        write_json_atomic(self.jobs_file, {"folder": str(self.folder), "updated_at": now(), "cells": records})

    # -- run -----------------------------------------------------------------------------
    def run(self, cells: list[Cell], on_done: Callable[[Cell, dict], None]) -> None:
        """Submit (or re-attach to) a job per cell, wait, and call ``on_done(cell, result)`` as each ends."""
        self.folder.mkdir(parents=True, exist_ok=True)
        records = self._load_jobs()
        attach = self._still_queued(cells, records)
        if attach:
            print(f"slurm: re-attached to {len(attach)} pending/running job(s) of an earlier submission")
        todo = [c for c in cells if c.cell_id not in attach]
        jobs = {cid: submitit.SlurmJob(self.folder, jid) for cid, jid in attach.items()}
        if todo:
            jobs |= self._submit(todo, records)
        try:
            self._wait({c.cell_id: c for c in cells}, jobs, on_done)
        except KeyboardInterrupt:
            ids = sorted({j.job_id.split("_")[0] for j in jobs.values()})
            print(f"slurm: jobs {', '.join(ids)} keep running; --resume re-attaches to them "
                  f"(or cancel them: scancel {' '.join(ids)})", file=sys.stderr)
            raise

    @staticmethod
    def _still_queued(cells: list[Cell], records: dict[str, dict]) -> dict[str, str]:
        """cell id -> job id for the cells whose recorded job has not ended (pending or running)."""
        recorded = {c.cell_id: records[c.cell_id]["job_id"] for c in cells if c.cell_id in records}
        states = slurm_states(list(recorded.values()))
        return {cid: jid for cid, jid in recorded.items() if jid in states and states[jid] not in ENDED}

    def _submit(self, cells: list[Cell], records: dict[str, dict]) -> dict[str, submitit.SlurmJob]:
        """One job array for ``cells``; ``jobs.json`` is written as soon as the ids are known."""
        if shutil.which("sbatch") is None:
            raise SlurmSubmitError("--executor slurm needs Slurm's sbatch on PATH: run specnb grid on a login "
                                   "node of the cluster (or use --executor local)")
        for cell in cells:
            cell.result_path.unlink(missing_ok=True)  # the job's own result decides, not an old one
        executor = submitit.AutoExecutor(folder=self.folder, cluster="slurm")
        executor.update_parameters(**self.params)
        try:
            submitted = executor.map_array(_job_main, cells)
        except (FailedJobError, OSError) as err:
            raise SlurmSubmitError(f"sbatch refused the job array: {str(err).strip().splitlines()[-1]} "
                                   "(check --partition, --gpus-per-cell, --mem-gb, --time-min and --slurm-opt; "
                                   "`sinfo` lists the partitions)") from err
        for cell, job in zip(cells, submitted):
            old = records.get(cell.cell_id)
            previous = ([*old.get("previous", []), old["job_id"]]) if old else []
            records[cell.cell_id] = {"job_id": job.job_id, "submitted_at": now(), "previous": previous}
        self._save_jobs(records)
        print(f"slurm: submitted job array {submitted[0].job_id.split('_')[0]} ({len(cells)} cells), "
              f"logs in {self.folder}")
        return {c.cell_id: j for c, j in zip(cells, submitted)}

    def _wait(self, cells: dict[str, Cell], jobs: dict[str, submitit.SlurmJob],
              on_done: Callable[[Cell, dict], None]) -> None:
        """Poll until every job has ended: an ended Slurm state, or an ok result already there (no
        need to wait for the task's exit); a job that neither squeue nor sacct knows for
        ``lost_after_s`` counts as lost. Failures wait for the final state, which they record."""
        unseen_since: dict[str, float] = {}
        while jobs:
            states = slurm_states([j.job_id for j in jobs.values()])
            for cid, job in list(jobs.items()):
                state = states.get(job.job_id)
                if state is None:
                    unseen_since.setdefault(cid, time.monotonic())
                    lost = time.monotonic() - unseen_since[cid] > self.lost_after_s
                else:
                    unseen_since.pop(cid, None)
                    lost = False
                if state in ENDED or lost or self._finished_ok(cells[cid], job):
                    del jobs[cid]
                    on_done(cells[cid], self._finish(cells[cid], job, state or "UNKNOWN"))
            if jobs:
                time.sleep(self.poll_s)

    @staticmethod
    def _finished_ok(cell: Cell, job: submitit.SlurmJob) -> bool:
        if not job.paths.result_pickle.exists():  # written after result.json, as the task's last act
            return False
        return (read_result(cell) or {}).get("status") == "ok"

    def _finish(self, cell: Cell, job: submitit.SlurmJob, state: str) -> dict:
        """The cell's result; an ended job without an ok result becomes a failed one with its state."""
        outcome, value = self._outcome(job)
        result = read_result(cell)
        if result and result.get("status") == "ok":  # old results were removed at submission
            return result
        where = {"slurm_state": state, "slurm_job_id": job.job_id, "slurm_log": str(job.paths.stderr)}
        inner = (result or {}).get("error") if (result or {}).get("status") == "failed" else None
        if outcome == "error":  # the worker itself raised (a bug outside the notebook)
            error = f"the Slurm job raised: {(str(value).strip().splitlines() or [''])[-1]}"
        elif state != "COMPLETED":  # Slurm ended it: its state is the news, the cell's error a detail
            error = f"Slurm job {job.job_id} ended {state}" + (f": {HINTS[state]}" if state in HINTS else "")
            error += f" (in the cell: {inner})" if inner else ""
        elif inner:  # the notebook failed inside a job that ran to its end: keep its error and log
            write_failed_result(cell, inner, **where)
            return read_result(cell) or {"status": "failed", "error": inner, **where}
        else:
            error = f"Slurm job {job.job_id} completed without writing {cell.result_path}"
        write_failed_result(cell, error, log_tail=log_tail(job.paths.stderr, job.paths.stdout), **where)
        return read_result(cell) or {"status": "failed", "slurm_state": state}

    @staticmethod
    def _outcome(job: submitit.SlurmJob) -> tuple[str | None, Any]:
        """("success" | "error", value) from submitit's result pickle, or (None, None) without one."""
        try:
            return pickle_load(job.paths.result_pickle)
        except (OSError, EOFError, ValueError):
            return None, None
