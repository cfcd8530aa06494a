"""Draft-length schedules: how many tokens the edge drafts in the next round.

* ``constant``: always ``gamma``.
* ``heuristic``: Hugging Face's rule for assisted generation: +2 after a fully accepted
  draft, -1 otherwise (never below 1), starting from ``gamma``.
* ``cost``: choose the draft length that maximizes expected tokens per second under the
  i.i.d. acceptance model of Leviathan et al. (2023): a round drafting g tokens emits
  E(g) = (1 - a^(g+1)) / (1 - a) tokens on average and costs g * t_draft + t_verify, with
  the acceptance probability a (:func:`specnb.measure.metrics.estimate_alpha`) and the step costs measured so far in
  this run; up to ``gamma``.
* ``confidence`` and ``adaptive``: up to ``gamma``, the draft stopping after any token by a rule
  on the drafter's confidence (a fixed threshold; a cost-aware controller):
  :mod:`specnb.decode.adaptive`. A drafter without probabilities (prompt lookup) keeps its own
  length rule; ``adaptive`` then caps it by the ``cost`` rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..measure.metrics import estimate_alpha
from .adaptive import STOPPING, Controller, can_stop, stop_rule

SCHEDULES = ("constant", "heuristic", "cost") + STOPPING
MAX_GAMMA = 16  # the longest draft a schedule proposes, and the range the bound's best draft length is sought in


def expected_tokens(alpha: float, g: int) -> float:
    """Mean tokens emitted by a round of g drafts when each is accepted with probability alpha."""
    if alpha >= 1.0:
        return g + 1.0
    return (1.0 - alpha ** (g + 1)) / (1.0 - alpha)



def speedup_bound(alpha: float, gamma: int, c: float, v: float = 1.0, r: float = 0.0, ahead: int = 0,
                  lead: float | None = None, lead_cap: int = 32) -> float:
    """S = (1 - a^(g+1)) / ((1 - a)(g c + v + r)): expected speed-up over the cloud's autoregressive decoding.

    ``c``: edge step / cloud step; ``v``: verification of g + 1 positions / cloud step; ``r``: link
    time per round / cloud step. ``v = 1, r = 0`` is Leviathan et al. 2023, Thm 3.8. ``ahead`` = k > 0
    rounds drafted ahead (:mod:`specnb.decode.ahead`): a round kept whole (probability b = a^(g+1)) costs
    D = max((g+1) c, v, (v + r)/(k+1)) instead, S = E / ((1 - b)(g c + v + r) + b D) (derivation:
    :mod:`specnb.link.predict`). ``lead``: the cloud's own step, when it leads (:mod:`specnb.decode.lead`;
    plain rounds only, :func:`lead_rate`). In seconds instead of cloud steps it is tokens per second.
    """
    if lead is not None:
        if ahead:
            raise ValueError("the model of the cloud's lead covers plain rounds only: pass ahead=0 with lead")
        return lead_rate(alpha, gamma, c, v, r, lead, lead_cap)
    serial = gamma * c + v + r  # one round: draft, verify, round trip
    if not ahead:
        return expected_tokens(alpha, gamma) / serial
    whole = alpha ** (gamma + 1)  # all g drafts accepted and the cloud's own token guessed
    kept = max((gamma + 1) * c, v, (v + r) / (ahead + 1))  # a round after one kept whole
    return expected_tokens(alpha, gamma) / ((1 - whole) * serial + whole * kept)


def lead_rate(alpha: float, gamma: int, c: float, v: float, r: float, s: float, cap: int = 32) -> float:
    """Tokens per unit of time of plain rounds with the cloud leading (:mod:`specnb.decode.lead`), ``s`` its own
    step. Between a verdict and the next round it idles I = g c + r (the verdict's way down, the drafts, the
    round's way up) and decodes k = min(ceil(I / s), cap) tokens, the last one ending w = max(0, k s - I) after
    the round came. A round whose draft agrees with n of the cloud's tokens (P(n = j) = a^j (1 - a) for j < g,
    a^g for j = g) brings k tokens and no verification when n < k, else n + 1 tokens after verifying:
    S = E[max(k, n + 1)] / (I + w + v P(n >= k))."""
    idle = gamma * c + r
    k = min(cap, math.ceil(idle / s)) if s > 0 else cap
    wait = max(0.0, k * s - idle)
    probs = [alpha ** j * (1 - alpha) for j in range(gamma)] + [alpha ** gamma]
    tokens = sum(p * max(k, j + 1) for j, p in enumerate(probs))
    verified = sum(p for j, p in enumerate(probs) if j >= k)
    return tokens / (idle + wait + v * verified)


@dataclass
class Schedule:
    """Running state of a draft-length rule; ``next()`` proposes, ``update()`` learns from a round."""

    rule: str
    gamma: int
    drafted: int = 0
    accepted: int = 0
    rejected_rounds: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    rounds: int = 0
    controller: Controller | None = None  # the adaptive schedule's, carried over from earlier generations

    def __post_init__(self) -> None:
        if self.rule not in SCHEDULES:
            raise ValueError(f"unknown draft schedule {self.rule!r}; use one of {', '.join(SCHEDULES)}")
        self.current = self.gamma
        if self.controller is not None and self.rule != "adaptive":
            stop_rule(self.rule, self.controller)  # refuses it, naming the fix
        self.stop, self.controller = stop_rule(self.rule, self.controller) if self.rule in STOPPING else (None, None)
        self.drafter = None  # the drafter the stop rule is attached to (attach)

    def attach(self, drafter) -> None:
        """Give ``drafter`` this schedule's per-token stop rule, when both have one (:mod:`.adaptive`)."""
        if self.stop is not None and can_stop(drafter):
            drafter.stop, self.drafter = self.stop, drafter

    def longest(self) -> int:
        """The longest draft this schedule can ask for."""
        return MAX_GAMMA if self.rule == "heuristic" else self.gamma

    def widths(self) -> tuple[int, ...]:
        """Verification input lengths (last token + draft) to pad to, for fixed-shape compiled steps.

        ``constant``: gamma + 1 only (a shorter final draft is padded up to it). A varying draft
        length pads up to the next of 2, 3, 5, 9, 17 (capped at the longest draft + 1): at most
        one graph per doubling, and never more than twice the positions actually verified.
        """
        top = self.longest() + 1
        if self.rule == "constant":
            return (top,)
        return tuple(sorted({min(2**k + 1, top) for k in range(top.bit_length() + 1)} | {top}))

    def next(self) -> int:
        priced = self.rule == "cost" or (self.rule == "adaptive" and self.drafter is None)
        if priced and self.rounds and self.drafted:
            self.current = self._best_by_cost()
        if self.controller is not None:
            self.controller.begin_round(self.current)
        return self.current

    def update(self, drafted: int, accepted: int, draft_s: float, verify_s: float) -> None:
        self.drafted += drafted
        self.accepted += accepted
        self.rejected_rounds += accepted < drafted
        self.draft_s += draft_s
        self.verify_s += verify_s
        self.rounds += 1
        if self.controller is not None and self.drafter is not None:
            self.controller.observe(self.drafter.confidences, drafted, accepted, draft_s, verify_s, first=self.rounds == 1)
        if self.rule == "heuristic" and drafted:
            step = 2 if accepted == drafted else -1
            self.current = max(1, min(MAX_GAMMA, self.current + step))

    def _best_by_cost(self) -> int:
        alpha = estimate_alpha(self.accepted + 1, self.rejected_rounds + 1)  # +1 each: never exactly 0 or 1
        t_draft = self.draft_s / self.drafted
        t_verify = self.verify_s / self.rounds
        return max(range(1, self.gamma + 1), key=lambda g: speedup_bound(alpha, g, t_draft, t_verify))  # in seconds: same argmax
