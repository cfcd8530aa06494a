"""Timed sections that share the CPU with nothing else of the same run, and the clock probe.

* :func:`timed_section` wraps a method's timed repetitions. It holds an exclusive lock on a
  file (``flock``) that every specnb process on the machine takes for its timed work, so two
  grid cells (or a notebook run by hand beside a grid) never time at the same moment. Heavy
  set-up (loading, compiling, warm-up) holds the same lock shared (:func:`setup_section`): set-ups
  overlap each other, never a timed section; only kernel start-up and imports run unlocked. It records the
  section's wall-clock start and end, the host and the time spent waiting for the lock, so
  overlap can be checked afterwards (:func:`overlaps`).
* :func:`probe` times a short fixed workload (a float32 matrix product on one thread). A cell
  times it before, between and after its repetitions; the audit compares each cell's probes
  with the run's median (:mod:`specnb.measure.clock`): a probe that strays means something else used
  the core while the cell was timed.
* Each timed section also records the CPU other processes used during it, in all and per
  repetition, and the CPU pressure (:mod:`specnb.measure.neighbours`): what the probe cannot feel.

The lock file is ``$SPECNB_TIMING_LOCK`` (``off`` disables the lock), else
``<tempdir>/specnb-timing-<uid>.lock``: node-local, so Slurm cells on different nodes do not
wait for each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from . import neighbours

PROBE_SIZE = 256  # matrix side
PROBE_ROUNDS = 5  # a probe is the median of this many timings
PROBE_PRODUCTS = 24  # matrix products per timing (sized for about 10 ms on one core)


def lock_path() -> Path | None:
    """The machine-wide timing lock file, or None when ``SPECNB_TIMING_LOCK=off``."""
    env = os.environ.get("SPECNB_TIMING_LOCK")
    if env and env.lower() in ("off", "0", "none"):
        return None
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"specnb-timing-{os.getuid() if hasattr(os, 'getuid') else 'user'}.lock"


@contextlib.contextmanager
def exclusive(path: Path | None, mode: int = fcntl.LOCK_EX) -> Iterator[float]:
    """Hold an exclusive (or, with ``mode=LOCK_SH``, shared) ``flock`` on ``path`` for the block;
    yields the seconds spent waiting. Never nest two holds of one file in one process: they conflict."""
    if path is None:
        yield 0.0
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        t0 = time.perf_counter()
        fcntl.flock(fd, mode)
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def probe() -> float:
    """Seconds for a fixed one-thread float32 workload (median of :data:`PROBE_ROUNDS`)."""
    import torch

    from ..threads import thread_count

    gen = torch.Generator().manual_seed(0)
    a = torch.rand(PROBE_SIZE, PROBE_SIZE, generator=gen)
    b = torch.rand(PROBE_SIZE, PROBE_SIZE, generator=gen)
    times = []
    with thread_count(1), torch.inference_mode():
        a @ b  # first call: allocation, kernel selection
        for _ in range(PROBE_ROUNDS):
            t0 = time.perf_counter()
            for _ in range(PROBE_PRODUCTS):
                a @ b
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Section:
    """The record of one timed section (see :func:`timed_section`); ``probes`` grows as it runs."""

    def __init__(self) -> None:
        self.info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "probes": []}
        self.marks: list | None = None  # CPU counters at the section's start, each repetition's end, its end

    def probe(self, where: str) -> None:
        """Time the probe now and note where (``before``, ``rep 1``, ``after``)."""
        if self.marks is not None:  # inside the timed section: a repetition ends here
            self.marks.append(neighbours.sample())
        self.info["probes"].append({"where": where, "seconds": probe(), "at": time.time()})

    def close_marks(self) -> None:
        """The neighbours of the whole section and of each repetition, from the marks."""
        marks, self.marks = self.marks or [], None
        self.info["neighbours"] = neighbours.between(marks[0], marks[-1]) if len(marks) > 1 else None
        self.info["neighbours_reps"] = [neighbours.between(a, b) for a, b in zip(marks, marks[1:])]


@contextlib.contextmanager
def setup_section(lock: bool = True) -> Iterator[float]:
    """Around heavy set-up work (loading, compiling, warming up): a SHARED hold of the timing lock.

    Set-ups run side by side, but never while anyone is in a :func:`timed_section` (which holds
    the lock exclusively): a busy neighbour core slows a timed core measurably too, not only a
    busy same core (figures: docs/numbers.md, "Earlier default-grid runs"). Yields the seconds spent waiting.
    """
    with exclusive(lock_path() if lock else None, fcntl.LOCK_SH) as waited:
        yield waited


def rotated_reps(section: Section, reps: int, items: list[Any]) -> Iterator[tuple[int, list[Any]]]:
    """``reps`` repetitions over ``items``, each starting one item later than the one before (no
    item always runs first after a probe), with a clock probe of ``section`` between repetitions:
    the repetition scheme of a grid cell (items = prompts) and of ``specnb bench`` (items = methods)."""
    for rep in range(reps):
        if rep:
            section.probe(f"rep {rep}")
        shift = rep % len(items)
        yield rep, items[shift:] + items[:shift]


@contextlib.contextmanager
def timed_section(lock: bool = True) -> Iterator[Section]:
    """Around a method's timed repetitions: the machine-wide lock, a probe before and after,
    and the section's start / end (Unix time) for the overlap check."""
    section = Section()
    path = lock_path() if lock else None
    with exclusive(path) as waited:
        section.info.update(lock=path.name if path else None, waited_s=round(waited, 3))  # the name: no machine path
        section.probe("before")
        section.info["start"] = time.time()
        section.marks = [neighbours.sample()]
        try:
            yield section
        finally:
            section.info["end"] = time.time()
            section.marks.append(neighbours.sample())
            section.close_marks()
            section.probe("after")


def overlaps(sections: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    """Pairs of ids whose timed sections overlapped in time on the same host."""
    out = []
    ordered = sorted((s for s in sections if s[1].get("start") is not None), key=lambda s: s[1]["start"])
    for i, (a, sa) in enumerate(ordered):
        for b, sb in ordered[i + 1:]:
            if sb["start"] >= sa["end"]:
                break
            if sa.get("host") == sb.get("host"):
                out.append((a, b))
    return out
