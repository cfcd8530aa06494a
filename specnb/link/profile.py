"""Links that change during a generation: a :class:`LinkProfile` is a list of :class:`Link` stages.

A stage starts at an elapsed time (``by="s"``: seconds since the generation's first message on that
direction) or at a message count (``by="round"``: a speculative round sends one message up and gets
one down, so stage starts are round numbers). The profile restarts with every generation (each
session of :mod:`specnb.link.client` begins at stage 0), so runs over the same profile meet the same
link at the same point. :meth:`LinkProfile.trace` replays a recorded RTT series, one value per
``every`` seconds or rounds.

Example: ``LinkProfile.steps([(0, Link(rtt_ms=5)), (20, Link(rtt_ms=50)), (40, Link(rtt_ms=20))],
by="round")``: rounds 0-19 at 5 ms, 20-39 at 50 ms, then 20 ms. ``connect(address, link=profile)``
and ``cloud.with_link(profile)`` take one wherever they take a ``Link``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from .emulate import Link

UNITS = ("s", "round")


@dataclass(frozen=True)
class LinkProfile:
    """Stages ``(start, Link)`` with increasing starts, the first at 0; ``by``: ``s`` or ``round``."""

    stages: tuple[tuple[float, Link], ...]
    by: str = "round"
    seed: int = 0
    label: str = ""

    def __post_init__(self) -> None:
        if self.by not in UNITS:
            raise ValueError(f"a link profile changes by {' or '.join(map(repr, UNITS))}, got by={self.by!r}")
        starts = [s for s, _ in self.stages]
        if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"a link profile needs stages with increasing starts beginning at 0, got starts {starts}")
        if not all(isinstance(link, Link) for _, link in self.stages):
            raise ValueError("each stage of a link profile is (start, Link(...))")

    @classmethod
    def steps(cls, stages, by: str = "round", seed: int = 0, label: str = "") -> "LinkProfile":
        stages = tuple((float(s), link) for s, link in stages)
        return cls(stages, by, seed, label or "->".join(f"{link.rtt_ms:g}" for _, link in stages) + f" ms by {by}")

    @classmethod
    def trace(cls, rtts_ms: list[float], every: float, by: str = "round", bandwidth_mbps: float | None = None,
              seed: int = 0) -> "LinkProfile":
        """A recorded RTT series: ``rtts_ms[i]`` from ``i * every`` seconds or rounds on."""
        if every <= 0:
            raise ValueError(f"every must be > 0, got {every!r}")
        return cls.steps([(i * every, Link(r, bandwidth_mbps)) for i, r in enumerate(rtts_ms)], by, seed,
                         f"trace of {len(rtts_ms)} RTTs every {every:g} {by}")

    def at(self, elapsed_s: float, message: int) -> Link:
        """The stage in force ``elapsed_s`` after the first message, for the ``message``-th message (from 0)."""
        x = message if self.by == "round" else elapsed_s
        i = bisect.bisect_right([s for s, _ in self.stages], x) - 1
        return self.stages[max(0, i)][1]

    @property
    def rtt_ms(self) -> float:
        """The first stage's RTT (what a caller that reads one figure sees)."""
        return self.stages[0][1].rtt_ms

    @property
    def emulated(self) -> bool:
        return any(link.emulated for _, link in self.stages)

    def with_seed(self, seed: int) -> "LinkProfile":
        return LinkProfile(self.stages, self.by, seed, self.label)
