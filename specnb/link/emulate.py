"""``Link``: a network profile, and its emulation on top of a real socket, in user space.

The kernels specnb was developed on had no ``netem`` qdisc (``tc qdisc ... netem`` is unknown;
tbf and htb exist), so the profile is applied per message by the client process: each message is
held back until it would have arrived over the profile's link, then handed on. One direction of
the link is a wire of ``bandwidth_mbps`` followed by a one-way propagation delay::

    start   = max(sent, wire free)            # messages queue behind each other on the wire
    free    = start + bytes * 8 / bandwidth
    arrival = max(free + rtt/2 + jitter, previous arrival)   # TCP never reorders

``jitter`` is uniform in [-jitter_ms, +jitter_ms] per message (netem's default law), from a
seeded generator, clipped so that no delay is negative. This sits on top of whatever the real
socket costs (on loopback, a fraction of a millisecond per gRPC round trip: docs/link.md).
``Link()`` adds nothing: use it across a real network.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    """A link profile: round-trip time, bandwidth (None: unlimited) and jitter, in ms / Mbit/s."""

    rtt_ms: float = 0.0
    bandwidth_mbps: float | None = None
    jitter_ms: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rtt_ms < 0 or self.jitter_ms < 0:
            raise ValueError(f"rtt_ms and jitter_ms must be >= 0, got {self.rtt_ms!r} / {self.jitter_ms!r}")
        if self.bandwidth_mbps is not None and self.bandwidth_mbps <= 0:
            raise ValueError(f"bandwidth_mbps must be > 0 or None (unlimited), got {self.bandwidth_mbps!r}")

    @property
    def emulated(self) -> bool:
        return bool(self.rtt_ms or self.jitter_ms or self.bandwidth_mbps)

    def at(self, elapsed_s: float, message: int) -> "Link":
        """The profile in force at a point of a session: always this one (a changing link:
        :class:`specnb.link.profile.LinkProfile`)."""
        return self

    def transfer_s(self, nbytes: int) -> float:
        """Time ``nbytes`` occupy the wire: bytes * 8 / bandwidth."""
        return 0.0 if not self.bandwidth_mbps else nbytes * 8 / (self.bandwidth_mbps * 1e6)

    def expected_one_way_s(self, nbytes: int) -> float:
        """Mean one-way time of a lone message: rtt/2 + E[jitter, clipped at -rtt/2] + transfer."""
        d, j = self.rtt_ms / 2, self.jitter_ms
        if j <= d:
            mean = d
        else:  # E[max(0, d + U)], U ~ uniform[-j, j]
            mean = (d + j) ** 2 / (4 * j)
        return mean / 1e3 + self.transfer_s(nbytes)

    def expected_round_s(self, up: int, down: int) -> float:
        """Mean time a request of ``up`` bytes and its reply of ``down`` bytes spend on the link."""
        return self.expected_one_way_s(up) + self.expected_one_way_s(down)


class Direction:
    """One direction of an emulated link: when does a message sent now arrive?"""

    def __init__(self, link: Link, seed: int):
        self.link = link
        self._rng = random.Random(seed)
        self._free = 0.0
        self._last = 0.0
        self._lock = threading.Lock()
        self.restart()

    def restart(self) -> None:
        """A new session: a changing link (``LinkProfile``) starts again at its first stage."""
        self._t0: float | None = None
        self._count = 0

    def arrival(self, nbytes: int, sent: float) -> float:
        """Arrival time (``time.perf_counter`` clock) of ``nbytes`` handed to the link at ``sent``."""
        if not self.link.emulated:
            return sent
        with self._lock:
            self._t0 = sent if self._t0 is None else self._t0
            link = self.link.at(sent - self._t0, self._count)
            self._count += 1
            start = max(sent, self._free)
            self._free = start + link.transfer_s(nbytes)
            jitter = self._rng.uniform(-link.jitter_ms, link.jitter_ms) if link.jitter_ms else 0.0
            delay = max(0.0, link.rtt_ms / 2 + jitter) / 1e3
            self._last = max(self._free + delay, self._last)
            return self._last


def sleep_until(deadline: float) -> None:
    """Sleep until ``time.perf_counter() >= deadline`` (overshoots by the scheduler's wake-up latency)."""
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return
        time.sleep(left)
