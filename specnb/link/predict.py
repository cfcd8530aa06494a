"""Wall time across any link profile, from one measured run; the latency-extended speed-up bound.

**Prediction.** A run across the link records, per round, the bytes each way, the server's own
time and the round trip's remaining time (``round_link_s``: the transport plus whatever delay the
:class:`~specnb.link.emulate.Link` profile added, ``round_emulated_s``). Everything else in the
wall time (drafting, the loop, the server) does not depend on the link, so for a profile L::

    wall(L) = wall - sum(link_i) + sum(transport_i + L.round_time(up_i, down_i)),
    transport_i = link_i - emulated_i      (the real socket's own cost: docs/link.md, "Transport")

**Bound.** Leviathan et al. (2023, Thm 3.8) give the expected speed-up of speculation over the
cloud's autoregressive decoding as E(a, g) / (g c + 1), E(a, g) = (1 - a^(g+1)) / (1 - a) tokens
per round, c = edge step / cloud step. Across a link one round costs g edge steps, one
verification of g + 1 positions (v cloud steps; 1 when verifying is as cheap as one step) and one
round trip (r cloud steps), while cloud-only streaming pays its round trip once for the whole
output (negligible per token). So::

    S(a, g, c, v, r) = (1 - a^(g+1)) / ((1 - a)(g c + v + r))

For a fixed a, c, v the best g grows with r (a round trip is worth more tokens), and past the r
where max_g S = 1 cloud-only streaming wins: :func:`crossover_r`.
"""

from __future__ import annotations

from typing import Any

from ..decode.schedule import MAX_GAMMA, expected_tokens, speedup_bound
from .emulate import Link


def predict(generation: Any, link: Link) -> float:
    """Predicted wall time (s) of the same generation (same tokens, same rounds) across ``link``."""
    m = generation.metrics
    if "round_link_s" in m:  # edge-cloud speculation: one round trip per round
        rounds = zip(m["round_link_s"], m["round_emulated_s"], m["round_bytes_up"], m["round_bytes_down"])
        new = sum(lk - em + link.expected_round_s(up, down) for lk, em, up, down in rounds)
        return m["wall_s"] - m["link_s"] + new
    if "emulated_s" in m:  # one request, streamed reply: one up and (at the end) one down delay not overlapped
        per_msg = m["bytes_down"] / max(1, m["new_tokens"] + 1)
        return m["wall_s"] - m["emulated_s"] + link.expected_one_way_s(m["bytes_up"]) + link.expected_one_way_s(int(per_msg))
    return m["wall_s"] + link.expected_round_s(0, 0)  # in-process run: no link at all


def best_gamma(alpha: float, c: float, v: float = 1.0, r: float = 0.0, max_gamma: int = MAX_GAMMA) -> int:
    """The draft length maximizing :func:`speedup_bound` (1..max_gamma)."""
    return max(range(1, max_gamma + 1), key=lambda g: speedup_bound(alpha, g, c, v, r))


def crossover_r(alpha: float, c: float, v: float = 1.0, max_gamma: int = MAX_GAMMA) -> float:
    """The link time per round (in cloud steps) beyond which no g gives S > 1: cloud-only wins.

    max_g S = 1  <=>  r = max_g (E(a, g) - g c) - v.
    """
    return max(expected_tokens(alpha, g) - g * c for g in range(1, max_gamma + 1)) - v


def link_steps(link: Link, cloud_step_s: float, up: int = 64, down: int = 32, transport_s: float = 0.0) -> float:
    """r for :func:`speedup_bound`: one round's time on ``link`` (``up`` / ``down`` bytes, plus the
    transport's own ``transport_s``) in cloud steps of ``cloud_step_s`` seconds."""
    return (link.expected_round_s(up, down) + transport_s) / cloud_step_s
