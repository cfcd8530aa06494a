"""Run grid cells locally: up to ``jobs`` at once, each in its own process (and process group).

A worker that dies (out of memory, a signal) or runs past its time limit leaves no ok result;
the executor then writes a failed result with the reason and the log's tail, and goes on with
the other cells. Ctrl-C or SIGTERM kills the running cells' process groups; finished cells
keep their results, so ``--resume`` picks up from there.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from .cells import LOG, Cell, read_result, run_cell, write_failed_result

GRACE_S = 60  # beyond the per-notebook-cell timeout, for kernel start-up and clean-up


def _worker(cell: Cell, env: dict[str, str], cpus: tuple[int, ...] | None = None) -> None:
    """Process entry point: own process group (so the kernel dies with us), own cores (the kernel
    inherits them), then run the cell."""
    os.setsid()
    _die_with_parent()
    if cpus:
        os.sched_setaffinity(0, cpus)
    os.environ.update(env)
    _redirect_output(Path(cell.cell_dir) / LOG)
    run_cell(cell)


def _redirect_output(path: Path) -> None:
    """Send this process's stdout/stderr, and so its kernel's, to the cell's log (not the terminal)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream, target in ((sys.stdout, 1), (sys.stderr, 2)):
        stream.flush()
        os.dup2(fd, target)
    os.close(fd)


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the grid process dies (even by SIGKILL); its kernel then
    exits too (ipykernel polls its parent). Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def _why_dead(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory? the kernel OOM killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"the cell's worker process was killed by {name}{hint}"
    return f"the cell's worker process exited with code {exitcode} without writing a result"


def _kill(proc: mp.process.BaseProcess) -> None:
    """Kill the worker and everything it started (its kernel)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.join(5)


def core_sets(jobs: int, cores: list[int] | None = None) -> list[tuple[int, ...]]:
    """The cores of each of ``jobs`` concurrent cells: disjoint, as even as possible.

    With more jobs than cores, cells share cores round-robin (their timed sections still never
    overlap: :mod:`specnb.measure.timing`; but one cell's set-up then runs beside another's timing, and
    the clock audit shows it).
    """
    if cores is None:
        try:
            cores = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = list(range(os.cpu_count() or 1))
    if jobs >= len(cores):
        return [(cores[i % len(cores)],) for i in range(jobs)]
    size, extra = divmod(len(cores), jobs)
    out, start = [], 0
    for i in range(jobs):
        n = size + (i < extra)
        out.append(tuple(cores[start:start + n]))
        start += n
    return out


class LocalExecutor:
    """Process pool of ``jobs`` workers; each cell runs :func:`specnb.grid.cells.run_cell` in a fresh process.

    Concurrent cells run on disjoint cores (:func:`core_sets`; Linux), with torch's default
    threads (OMP_NUM_THREADS) set to their core count unless ``threads_per_job`` or the
    environment says otherwise, so that parallel cells do not oversubscribe the cores. Their
    timed repetitions additionally never overlap (the timing lock of :mod:`specnb.measure.timing`).
    """

    def __init__(self, jobs: int = 1, threads_per_job: int | None = None, poll_s: float = 0.2):
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs
        self.slots = core_sets(jobs) if hasattr(os, "sched_setaffinity") else [None] * jobs
        self.threads = threads_per_job
        self.poll_s = poll_s
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        self._ctx = mp.get_context(method)

    def _env(self, cpus: tuple[int, ...] | None) -> dict[str, str]:
        env = {"TQDM_DISABLE": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        if "OMP_NUM_THREADS" not in os.environ:
            n = self.threads or (len(cpus) if cpus else max(1, (os.cpu_count() or 1) // self.jobs))
            env["OMP_NUM_THREADS"] = str(n)
        return env

    def run(self, cells: list[Cell], on_done: Callable[[Cell, dict], None]) -> None:
        """Run every cell; call ``on_done(cell, result)`` as each one ends (ok or failed)."""
        import papermill  # noqa: F401 - imported once here, inherited by every forked worker (~2 s each)

        pending = list(reversed(cells))
        running: dict[str, tuple[Cell, mp.process.BaseProcess, float, int]] = {}
        free = list(range(self.jobs))
        previous = _on_sigterm(_raise_interrupt)
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    cell, slot = pending.pop(), free.pop(0)
                    cell.result_path.unlink(missing_ok=True)
                    cpus = self.slots[slot]
                    proc = self._ctx.Process(target=_worker, args=(cell, self._env(cpus), cpus), name=cell.cell_id)
                    proc.start()
                    running[cell.cell_id] = (cell, proc, time.monotonic(), slot)
                for cid, (cell, proc, start, slot) in list(running.items()):
                    limit = None if cell.timeout_s is None else cell.timeout_s + GRACE_S
                    if proc.is_alive() and (limit is None or time.monotonic() - start < limit):
                        continue
                    if proc.is_alive():
                        _kill(proc)
                        write_failed_result(cell, f"timeout: the cell ran past {cell.timeout_s} s (+{GRACE_S} s grace)")
                    proc.join()
                    del running[cid]
                    free.append(slot)
                    on_done(cell, self._finish(cell, proc.exitcode))
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            for _, proc, _, _ in running.values():
                _kill(proc)
            raise
        finally:
            _on_sigterm(previous)

    @staticmethod
    def _finish(cell: Cell, exitcode: int | None) -> dict:
        res = read_result(cell)
        if res is None:
            write_failed_result(cell, _why_dead(exitcode))
            res = read_result(cell) or {"status": "failed", "error": _why_dead(exitcode)}
        return res


def _on_sigterm(handler: object) -> object:
    """Install a SIGTERM handler when we can (main thread only); return the previous one."""
    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, TypeError):
        return None


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
