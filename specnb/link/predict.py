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

**Drafting ahead** (:mod:`specnb.decode.ahead`, up to k rounds in flight ahead of the one being
verified). A round is *kept whole* when all g drafts are accepted and the cloud's own token equals the
edge's guess drafted after them: probability b = a^(g+1) under the i.i.d. model (the guess is one more
draft). After a round kept whole the next round is already drafted and sent, and its verdict follows
the previous one after

    D = max((g+1) c, v, (v + r) / (k + 1))

(the edge drafts g + 1 tokens per round, the verifier takes v per round, and k + 1 rounds share one
round trip's latency v + r). Any other round ends the run of kept rounds: the edge drafts again from
the cloud's token, and the next verdict comes a whole g c + v + r later. A run of kept rounds is
geometric, so per round on average the time is (1 - b)(g c + v + r) + b D, and::

    S_ahead(a, g, c, v, r, k) = E(a, g) / ((1 - b)(g c + v + r) + b D)

(``speedup_bound(..., ahead=k)``; k = 0 gives S). Drafting ahead pays only through b: each kept round
saves g c + v + r - D. When the edge's drafts are rarely accepted whole (small a, long g) it changes
nothing, and the best g with it is shorter than without. Not modelled: the part of a draft step the
edge is in when a verdict drops its work (at most one step, c), the pipeline's refill after each
rejection, any slowdown of the two sides sharing a process (Python's GIL: docs/drafting-ahead.md), and
branches (``hedge``: rounds premised on a rejection, which keep more rounds going; the model is the
unhedged design's, so a hedged run's prediction is the unhedged one's). A run that drafted ahead is predicted from the model (:func:`ahead_loop_s`), its rounds overlapping.
"""

from __future__ import annotations

from typing import Any

from ..decode.schedule import MAX_GAMMA, expected_tokens, speedup_bound
from .emulate import Link


def predict(generation: Any, link: Link) -> float:
    """Predicted wall time (s) of the same generation (same tokens, same rounds) across ``link``.

    A run that drafted ahead overlaps its rounds, so its link time is not a sum over rounds: the time the
    loop spends is taken from the model, T(r) = tokens / :func:`speedup_bound` (in seconds, ``ahead``),
    and swapped, wall(L) = wall - T(r_run) + T(r_L) (:func:`ahead_loop_s`)."""
    m = generation.metrics
    if m.get("ahead"):
        return m["wall_s"] - ahead_loop_s(m, None) + ahead_loop_s(m, link)
    if "round_link_s" in m:  # edge-cloud speculation: one round trip per round
        rounds = zip(m["round_link_s"], m["round_emulated_s"], m["round_bytes_up"], m["round_bytes_down"])
        new = sum(lk - em + link.expected_round_s(up, down) for lk, em, up, down in rounds)
        return m["wall_s"] - m["link_s"] + new
    if "emulated_s" in m:  # one request, streamed reply: one up and (at the end) one down delay not overlapped
        per_msg = m["bytes_down"] / max(1, m["new_tokens"] + 1)
        return m["wall_s"] - m["emulated_s"] + link.expected_one_way_s(m["bytes_up"]) + link.expected_one_way_s(int(per_msg))
    return m["wall_s"] + link.expected_round_s(0, 0)  # in-process run: no link at all


def ahead_loop_s(m: dict[str, Any], link: Link | None) -> float:
    """The seconds :func:`speedup_bound` (``ahead``) gives a generation with the metrics ``m`` of a run that
    drafted ahead across a link, on ``link`` (None: the run's own). In seconds rather than cloud steps: the
    edge step t_d = draft_s / edge_calls, the verification v = server_s / rounds (the server's own time),
    the link r = the transport (the least link time of a round less its emulated delay: a round that
    queued behind no other) + the link's expected round time (None: the emulated delay per round the run
    met); g = drafted / rounds, alpha the run's."""
    rounds = max(1, m["rounds"])
    gamma = m["drafted"] / rounds
    t_d = m["draft_s"] / max(1, m["edge_calls"])
    v = m["server_s"] / rounds
    transport = min((lk - em for lk, em in zip(m["round_link_s"], m["round_emulated_s"])), default=0.0)
    if link is None:
        r = transport + m["emulated_s"] / rounds  # (over the verified rounds)
    else:
        up, down = m["bytes_up"] / max(1, m["round_trips"]), m["bytes_down"] / max(1, m["round_trips"])
        r = transport + link.expected_round_s(int(up), int(down))
    rate = speedup_bound(m["alpha"] if m["alpha"] is not None else 0.0, max(1.0, gamma), t_d, v, r, m["ahead"])
    return m["new_tokens"] / rate


def best_gamma(alpha: float, c: float, v: float = 1.0, r: float = 0.0, max_gamma: int = MAX_GAMMA,
               ahead: int = 0) -> int:
    """The draft length maximizing :func:`speedup_bound` (1..max_gamma), with ``ahead`` rounds drafted ahead."""
    return max(range(1, max_gamma + 1), key=lambda g: speedup_bound(alpha, g, c, v, r, ahead))


def crossover_r(alpha: float, c: float, v: float = 1.0, max_gamma: int = MAX_GAMMA) -> float:
    """The link time per round (in cloud steps) beyond which no g gives S > 1: cloud-only wins (without
    drafting ahead).

    max_g S = 1  <=>  r = max_g (E(a, g) - g c) - v.
    """
    return max(expected_tokens(alpha, g) - g * c for g in range(1, max_gamma + 1)) - v


def link_steps(link: Link, cloud_step_s: float, up: int = 64, down: int = 32, transport_s: float = 0.0) -> float:
    """r for :func:`speedup_bound`: one round's time on ``link`` (``up`` / ``down`` bytes, plus the
    transport's own ``transport_s``) in cloud steps of ``cloud_step_s`` seconds."""
    return (link.expected_round_s(up, down) + transport_s) / cloud_step_s
