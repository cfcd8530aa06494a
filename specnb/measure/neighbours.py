"""Who else used the CPU while a section was timed: the machine's busy time minus ours, and CPU pressure.

The clock probe (a matrix product, :func:`specnb.measure.timing.probe`) runs before and after the
repetitions, in optimized native code; it does not feel what slows a Python-heavy decode loop on a
shared core (a held-out grid beside a one-core busy loop: speculative -36%, its probes within 4%).
So each timed section also records, from the kernel's own accounting:

* ``others_cores``: the CPU time that *other* processes used during the section, in cores on
  average: (machine busy time - this process's CPU time - its children's) / wall time. From
  ``/proc/stat`` (all CPUs: user + nice + system + irq + softirq + steal jiffies) and
  ``/proc/<pid>/stat`` (utime + stime) of this process and its live descendants (a ``specnb
  serve`` a cell starts is part of the cell, not a neighbour). 1.0 = one core kept busy all along.
* ``pressure``: the share of the section during which at least one runnable task on the machine
  waited for a CPU (``/proc/pressure/cpu``, ``some total``, Linux 4.20+): waiting, not just sharing.

A section is flagged when others used more than :data:`OTHERS_CORES` cores on average, and (by
:mod:`specnb.measure.clock`) when its repetitions disagree by more than :data:`SPREAD`. Off Linux these
figures are missing (None) and nothing is flagged on them. Jiffies are 10 ms: a section of a
second is resolved to about 1% of a core.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OTHERS_CORES = 0.25  # other processes kept a quarter of a core busy on average: the section shared the CPU
SPREAD = 0.15  # repetitions whose tokens/s differ by more than 15% of their median ((max - min) / median)
PROC = Path("/proc")
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (guest time is inside user)


@dataclass(frozen=True)
class CpuSample:
    """The kernel's CPU counters at one moment (seconds; ``pressure_s`` None where the kernel has no PSI)."""

    wall: float  # time.monotonic()
    busy_s: float  # the whole machine's busy CPU time, all cores
    own_s: dict[int, float]  # this process and its live descendants: pid -> CPU time
    pressure_s: float | None
    cores: int


def _ticks() -> int:
    return os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_s(text: str, hz: int) -> float:
    """Busy CPU seconds of all cores from ``/proc/stat``'s first line (``cpu  user nice system idle ...``)."""
    fields = [int(x) for x in text.split("\n", 1)[0].split()[1:]]
    return sum(fields[i] for i in _BUSY_FIELDS if i < len(fields)) / hz


def process_cpu(stat: str, hz: int) -> tuple[int, float]:
    """(parent pid, CPU seconds: utime + stime) from a ``/proc/<pid>/stat`` line (the name may hold spaces)."""
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / hz


def pressure_total_s(text: str) -> float | None:
    """``some total`` of ``/proc/pressure/cpu`` in seconds (microseconds in the file)."""
    for line in text.splitlines():
        if line.startswith("some"):
            total = dict(kv.split("=") for kv in line.split()[1:]).get("total")
            return None if total is None else int(total) / 1e6
    return None


def _family(hz: int) -> dict[int, float]:
    """CPU seconds of this process and of its live descendants (one pass over /proc)."""
    me = os.getpid()
    table: dict[int, tuple[int, float]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                table[int(entry.name)] = process_cpu((entry / "stat").read_text(), hz)
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    family, frontier = {me}, [me]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in family:
                family.add(child)
                frontier.append(child)
    return {pid: table[pid][1] for pid in family if pid in table}


def sample() -> CpuSample | None:
    """The counters now, or None where ``/proc/stat`` cannot be read (not Linux)."""
    hz = _ticks()
    try:
        busy = machine_busy_s((PROC / "stat").read_text(), hz)
        own = _family(hz)
    except (OSError, ValueError):
        return None
    try:
        pressure = pressure_total_s((PROC / "pressure" / "cpu").read_text())
    except OSError:
        pressure = None
    return CpuSample(time.monotonic(), busy, own, pressure, os.cpu_count() or 1)


def between(a: CpuSample | None, b: CpuSample | None) -> dict[str, Any] | None:
    """What happened on the CPUs from ``a`` to ``b``: wall time, our CPU, others' CPU (seconds and
    cores on average), the share of time under CPU pressure. A descendant that exited in between
    takes its CPU time with it (it is counted as others'): a bound that can only flag, never hide."""
    if a is None or b is None or b.wall <= a.wall:
        return None
    wall = b.wall - a.wall
    own = sum(max(0.0, cpu - a.own_s.get(pid, 0.0)) for pid, cpu in b.own_s.items())
    others = max(0.0, (b.busy_s - a.busy_s) - own)
    pressure = None if a.pressure_s is None or b.pressure_s is None else min(1.0, (b.pressure_s - a.pressure_s) / wall)
    return {"wall_s": round(wall, 4), "own_cpu_s": round(own, 3), "others_cpu_s": round(others, 3),
            "others_cores": round(others / wall, 3), "own_cores": round(own / wall, 3),
            "pressure": None if pressure is None else round(pressure, 3), "cores": b.cores}


@dataclass(frozen=True)
class Neighbours:
    """The audit's reading of one timed section (see :func:`read`)."""

    others_cores: float | None
    others_cpu_s: float | None
    wall_s: float | None
    pressure: float | None
    cores: int | None
    worst_rep_cores: float | None  # the busiest repetition's others_cores


def read(timing: dict[str, Any]) -> Neighbours:
    """The neighbour figures of a timing record (all None when it has none: an older record, not Linux)."""
    whole = timing.get("neighbours") or {}
    reps = [r["others_cores"] for r in timing.get("neighbours_reps") or [] if r]
    return Neighbours(whole.get("others_cores"), whole.get("others_cpu_s"), whole.get("wall_s"), whole.get("pressure"),
                      whole.get("cores"), max(reps) if reps else None)


def shared(n: Neighbours, threshold: float = OTHERS_CORES) -> bool:
    return n.others_cores is not None and n.others_cores > threshold


def words(n: Neighbours) -> tuple[str, str]:
    """The section's neighbours in English and 中文: by how much others shared the CPU."""
    en = (f"other processes used {n.others_cores:.2f} cores on average (of {n.cores}) during the timed section "
          f"({n.others_cpu_s:.1f} CPU-s in {n.wall_s:.1f} s")
    zh = (f"计时区间内其他进程平均占用 {n.others_cores:.2f} 个核心（共 {n.cores} 个；{n.wall_s:.1f} 秒内 "
          f"{n.others_cpu_s:.1f} CPU 秒")
    if n.worst_rep_cores is not None:
        en += f"; busiest repetition {n.worst_rep_cores:.2f} cores"
        zh += f"；最忙的一次重复 {n.worst_rep_cores:.2f} 个核心"
    if n.pressure is not None:
        en += f"; a task waited for a CPU {n.pressure:.0%} of the time"
        zh += f"；{n.pressure:.0%} 的时间有任务在等待 CPU"
    return en + ")", zh + "）"
