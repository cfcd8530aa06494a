"""CPU threads: defaults that hold on a small shared CPU, and what a result records about them.

torch's intra-op thread count is process-wide. On a small CPU shared with anything else (the
notebook server, another grid cell, the operating system), an OpenMP thread that finds its
core busy makes every parallel region wait for it, and a decode step can get many times slower
with two threads than with one (figures: docs/numbers.md, "Earlier default-grid runs"). So specnb's default for a model whose
``threads`` is None is :func:`default_threads`: ``OMP_NUM_THREADS`` when set (the grid's
executor sets it per cell from the cores it gives the cell), else the cores this process may
run on (its affinity mask) minus one left for everything else, at least one.

Switching the count rebuilds OpenMP's pool (several ms on a small CPU), so a speculative run
whose two models share the CPU uses one count for the whole run when their caps agree, and
switches around each draft phase only when they differ (:func:`specnb.decode.pair.thread_plan`).

Importing specnb before torch also sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is set: OpenMP
threads waiting for work then sleep instead of spinning on a core another process needs.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path
from typing import Any, Iterator


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask; the CPU count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """Intra-op threads for a model without an explicit cap (see the module doc)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, usable_cores() - 1)


def resolve(threads: int | None) -> int:
    """A model's thread cap: its own, else :func:`default_threads`."""
    return default_threads() if threads is None else threads


@contextlib.contextmanager
def thread_count(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: :func:`default_threads`); restored after.

    Nothing is switched when the count is already right (a switch costs milliseconds).
    """
    import torch

    want = resolve(threads)
    before = torch.get_num_threads()
    if want == before:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def describe() -> dict[str, Any]:
    """What a result records: the affinity, the default, torch's count now, the OpenMP settings."""
    import torch

    try:
        affinity = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {"usable_cores": usable_cores(), "affinity": affinity, "default_threads": default_threads(),
            "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "OMP_WAIT_POLICY": getattr(sys.modules.get("specnb"), "_WAIT_POLICY_AT_TORCH_LOAD", None)
            or os.environ.get("OMP_WAIT_POLICY")}


def add_arguments(parser: Any) -> None:
    """``--edge-threads`` / ``--cloud-threads`` of the command-line tools (None: :func:`default_threads`)."""
    parser.add_argument("--edge-threads", metavar="N", type=int, default=None,
                        help="intra-op CPU threads of the edge model (default: %(default)s = specnb's default, "
                             "OMP_NUM_THREADS if set, else usable cores - 1)")
    parser.add_argument("--cloud-threads", metavar="N", type=int, default=None,
                        help="intra-op CPU threads of the cloud model when it runs on the CPU (default: %(default)s = "
                             "the same default as the edge's)")

def cpu_name() -> str | None:
    """The CPU model (Linux: /proc/cpuinfo), e.g. to tell two 'x86_64' machines apart in a benchmark."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
