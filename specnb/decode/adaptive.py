"""Draft lengths that adapt per round: a per-token stop rule, and a controller that prices each draft.

Two ``schedule`` values of :func:`specnb.speculative` live here (:mod:`specnb.decode.schedule` holds the
others); both draft up to ``gamma`` tokens and may stop a round's draft after any token:

* ``confidence``: stop after a drafted token whose confidence (the drafter's own top probability) is below
  :data:`CONFIDENCE_THRESHOLD`. Blind to costs.
* ``adaptive``: a :class:`Controller` learns P(accept | confidence) (:class:`Calibration`), the draft step's
  cost and the verify line ``a + b k`` with the link (:class:`Costs`, a Kalman filter), starts from a
  :class:`Prior`, and keeps drafting while some longer draft has a higher expected rate than stopping now.

The model, its reasons and its measurements: docs/adaptive-gamma.md ("The model", "From a cold start").
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..measure.provenance import write_json_atomic

CONFIDENCE_THRESHOLD = 0.4  # Hugging Face's default assistant_confidence_threshold
STOPPING = ("confidence", "adaptive")  # the schedules that stop a draft per token
STATE_FORMAT = "specnb-controller/1"  # Controller.save's file
# the cap of speculative()'s default over a connect() session (adaptive; the cold-start table in docs/adaptive-gamma.md)
SESSION_CAP = 32


def top_probability(logits: torch.Tensor, probs: torch.Tensor | None) -> float:
    """The drafter's confidence in the token it just drafted: the top of its distribution (a host sync).

    ``probs``: the (warped) distribution a sampling drafter drew from; None when drafting greedily,
    then the softmax of ``logits``."""
    p = probs if probs is not None else torch.softmax(logits.float(), dim=-1)
    return float(p.max())


# ---------------------------------------------------------------------------- the model, pure

def expected_emitted(ps: list[float]) -> float:
    """E(k) = 1 + sum_j prod_{i<=j} p_i: mean tokens a round emits when it verifies drafts with acceptances ``ps``."""
    total, prefix = 1.0, 1.0
    for p in ps:
        prefix *= p
        total += prefix
    return total


def round_time(k: int, t_draft: float, a: float, b: float) -> float:
    """T(k) = k t_d + a + b k: drafting k tokens, then verifying them (a: per round, link included)."""
    return k * (t_draft + b) + a


def keep_drafting(prefix: float, emitted: float, k: int, p_next: float, t_draft: float, a: float, b: float) -> bool:
    """The marginal rule: one more draft pays when its expected gain per cost beats the current rate.

    ``prefix`` = P_k, ``emitted`` = E(k) after ``k`` drafts; true when P_k p_next / (t_d + b) > E(k) / T(k).
    """
    return prefix * p_next * round_time(k, t_draft, a, b) > emitted * (t_draft + b)


def continuation_pays(prefix: float, emitted: float, k: int, alpha: float, left: int,
                      t_draft: float, a: float, b: float) -> bool:
    """The lookahead rule: some draft of ``m`` more tokens (1 <= m <= ``left``), each accepted with the
    run's mean acceptance ``alpha``, has a higher rate E(k+m) / T(k+m) than stopping now at E(k) / T(k).

    With a steady acceptance it stops where :func:`keep_drafting` does; unlike it, it rides over a dip
    (one unsure token among sure ones lowers P_k once, not the value of every token after it).
    """
    rate = emitted / round_time(k, t_draft, a, b)
    for m in range(1, left + 1):
        prefix *= alpha
        emitted += prefix
        if emitted / round_time(k + m, t_draft, a, b) > rate:
            return True
    return False


def best_length(ps: list[float], t_draft: float, a: float, b: float) -> int:
    """argmax_k E(k) / T(k) over k = 0..len(ps), all acceptances known (the rule's target; for tests and docs)."""
    return max(range(len(ps) + 1), key=lambda k: expected_emitted(ps[:k]) / round_time(k, t_draft, a, b))


# ---------------------------------------------------------------------------- what the run teaches

@dataclass
class Calibration:
    """P(accept | confidence) in equal bins of [0, 1], each with a prior of ``prior`` pseudo-rounds at
    the bin's centre (a well-calibrated drafter: acceptance = confidence until the run says otherwise).

    A round that kept ``n`` of its drafts shows drafts 1..n accepted and draft n+1 rejected; the
    drafts after the first rejection were never judged (censored) and teach nothing.

    ``alpha0``: the pair's acceptance when known before the run (:class:`Prior`), counted as ``weight``
    judged drafts: the mean acceptance is then ``(hits + weight alpha0) / (tries + weight)`` (the prior's
    share fades as judged drafts arrive), and every bin shrinks towards that mean from the first round,
    not towards its centre (the edge models here are under-confident: a bin centre of 0.3 for drafts
    accepted 55-65% of the time).
    """

    bins: int = 10
    prior: float = 2.0
    hits: list[float] = field(default_factory=list)
    tries: list[float] = field(default_factory=list)
    alpha0: float | None = None
    weight: float = 0.0

    def __post_init__(self) -> None:
        self.hits = self.hits or [0.0] * self.bins
        self.tries = self.tries or [0.0] * self.bins

    def _bin(self, c: float) -> int:
        return min(self.bins - 1, max(0, int(c * self.bins)))

    def p(self, c: float) -> float:
        b = self._bin(c)
        centre = (b + 0.5) / self.bins
        if self.alpha0 is not None or sum(self.tries) >= self.bins:  # shrink towards the mean, not the confidence
            centre = self.mean()
        return (self.hits[b] + self.prior * centre) / (self.tries[b] + self.prior)

    def mean(self) -> float:
        """The acceptance of a judged draft, whatever its confidence (the i.i.d. alpha): the run's hits over
        its tries with ``weight`` pseudo-drafts at ``alpha0`` (without one, +1/+2: a uniform prior)."""
        if self.alpha0 is None:
            return (sum(self.hits) + 1.0) / (sum(self.tries) + 2.0)
        return (sum(self.hits) + self.weight * self.alpha0) / (sum(self.tries) + self.weight)

    def observe(self, confidences: list[float], accepted: int) -> None:
        for j, c in enumerate(confidences[: accepted + 1]):
            b = self._bin(c)
            self.tries[b] += 1
            self.hits[b] += j < accepted


class Costs:
    """Step costs learnt from the rounds: the draft step's, and the verify line ``v(k) = a + b k``.

    ``t_draft``: draft seconds per drafted token, weighted ``draft_decay`` times less per older round (the
    edge's own speed, which no link changes). The verify line on two time scales (docs/adaptive-gamma.md
    gives the filter): the intercept ``a`` holds the link's round trip and may jump any round,
    the slope ``b`` (the cloud's cost per verified token, the bytes per token) hardly moves. A Kalman filter
    on the state ``(a, b)`` lets ``a`` wander by ``drift`` of itself each round and ``b`` by ``creep``, so a
    round that is slower than the line predicts moves ``a``, and ``b`` learns only from how the time varies
    with the draft length. (A least-squares line over the recent rounds cannot tell them apart when the
    draft length changes with the link, as it does under this controller: 40 ms more RTT with 8 more
    drafts reads as 5 ms a token.)
    """

    def __init__(self, drift: float = 0.3, noise: float = 0.1, creep: float = 0.05, draft_decay: float = 0.9):
        self.drift, self.noise, self.creep, self.draft_decay = drift, noise, creep, draft_decay
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new drafter or cloud)."""
        self.ab: list[float] | None = None  # (a, b)
        self.cov = [[0.0, 0.0], [0.0, 0.0]]
        self._d = [0.0, 0.0]  # sums of w draft_s, w k

    @property
    def known(self) -> bool:
        return self.ab is not None and self._d[1] > 0

    def prime(self, t_draft: float, a: float, b: float, a_sd: float, b_sd: float, tokens: float = 4.0) -> None:
        """Start from costs known before the run: ``t_draft`` as if seen over ``tokens`` drafted tokens (its
        weight fades by ``draft_decay`` a round), the verify line at ``(a, b)`` with standard deviations
        ``a_sd`` and ``b_sd`` (a round far off the line is a jump: ``a`` restarts there, as for a new link)."""
        self._d = [t_draft * tokens, tokens]
        self.ab = [a, b]
        self.cov = [[a_sd ** 2, 0.0], [0.0, b_sd ** 2]]

    def observe(self, k: int, draft_s: float, verify_s: float) -> None:
        self._d = [x * self.draft_decay for x in self._d]
        if k:
            self._d[0] += draft_s
            self._d[1] += k
        if self.ab is None:  # the first round: a from it, b unknown within (v / (k+1))^2
            self.ab = [verify_s, 0.0]
            self.cov = [[verify_s ** 2, 0.0], [0.0, (verify_s / (k + 1)) ** 2]]
            return
        self.ab, self.cov = kalman_step(self.ab, self.cov, k, verify_s, (self.drift * self.ab[0]) ** 2,
                                        (self.noise * verify_s) ** 2,
                                        (self.creep * max(self.ab[1], 0.002 * self.ab[0])) ** 2)  # b = 0 still creeps
        self.ab[1] = max(0.0, self.ab[1])

    @property
    def t_draft(self) -> float:
        return self._d[0] / self._d[1] if self._d[1] else 0.0

    def line(self) -> tuple[float, float]:
        """(a, b) of verify(k) = a + b k (a >= 0, b >= 0)."""
        a, b = self.ab or (0.0, 0.0)
        return max(0.0, a), max(0.0, b)


def kalman_step(ab: list[float], cov: list[list[float]], k: int, y: float, q_a: float, r: float, q_b: float = 0.0,
                jump: float = 3.0) -> tuple[list[float], list[list[float]]]:
    """One predict-update of the Kalman filter for ``y = a + b k + noise`` (noise variance ``r``), with ``a``
    a random walk of step variance ``q_a`` and ``b`` one of step variance ``q_b`` (slow: so that a change of
    bandwidth is still learnt after many rounds). Returns the new (a, b) and covariance.

    A link changes by jumps, not by Gaussian steps: a surprise ``e`` (y minus the line) beyond ``jump``
    standard deviations of what the filter expects, ``e^2 > jump^2 S``, is taken for a new link. The
    intercept restarts at ``y - b k`` (uncertain by the noise), the slope keeps its value and variance:
    a jump never leaks into ``b`` through their correlation."""
    (paa, pab), (_, pbb) = cov
    paa, pbb = paa + q_a, pbb + q_b  # predict: the intercept drifts, the slope creeps
    err = y - (ab[0] + ab[1] * k)
    ph = (paa + pab * k, pab + pbb * k)  # P h, h = (1, k)
    s = ph[0] + ph[1] * k + r  # innovation variance
    if err * err > jump * jump * s:
        return [y - ab[1] * k, ab[1]], [[r, 0.0], [0.0, pbb]]
    gain = (ph[0] / s, ph[1] / s)
    new_ab = [ab[0] + gain[0] * err, ab[1] + gain[1] * err]
    new_cov = [[paa - gain[0] * ph[0], pab - gain[0] * ph[1]], [pab - gain[1] * ph[0], pbb - gain[1] * ph[1]]]
    return new_ab, new_cov


@dataclass(frozen=True)
class Prior:
    """What a controller knows before its first round; each part None when unknown, ``source`` says whence.

    * ``alpha``: the pair's acceptance of a judged draft (recorded: :func:`recorded_prior`, or a previous
      run's saved controller), counted as ``weight`` judged drafts: after ``n`` of the run's own the
      estimate is ``(hits + weight alpha) / (n + weight)``, so the prior's share fades within the first
      generation (a 64-token generation judges 60-70 drafts).
    * ``t_draft_s``: one draft step; ``cloud_s``: a verify round's fixed cost on the cloud (one forward,
      without the link); ``per_token_s``: its cost per verified draft (``b``; 0 when unknown);
      ``rtt_s``: the link's round trip (connect's handshake plus the emulated profile).

    With ``t_draft_s`` and ``cloud_s`` the verify line starts at ``a = cloud_s + rtt_s``, ``b = per_token_s``,
    and the first round drafts the length that maximizes the expected-speed-up bound
    ``E(alpha, g) / (g t_draft + a + b g)`` (:func:`bound_length`; docs/adaptive-gamma.md). Without them
    the first round prices its drafts with the draft step it measures as it drafts and a verify round of at
    least ``rtt_s`` plus one such step: it stops short rather than drafting the cap (a controller without
    any prior drafts the cap).
    """

    alpha: float | None = None
    weight: float = 16.0
    t_draft_s: float | None = None
    cloud_s: float | None = None
    per_token_s: float | None = None
    rtt_s: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        if self.alpha is not None and not 0.0 < self.alpha < 1.0:
            raise ValueError(f"a prior acceptance must lie in (0, 1), got {self.alpha!r}")
        if self.weight < 0 or self.rtt_s < 0:
            raise ValueError(f"weight and rtt_s must be >= 0, got {self.weight!r} / {self.rtt_s!r}")

    @property
    def priced(self) -> bool:
        """Whether it knows the costs a first round is priced with."""
        return self.t_draft_s is not None and self.cloud_s is not None


def bound_length(alpha: float, t_draft: float, a: float, b: float, cap: int) -> int:
    """The draft length (1..cap) maximizing E(alpha, g) / (g t_draft + a + b g): the bound's best gamma, with the
    verify round's cost and the link in ``a`` (what a primed controller drafts in its first round)."""
    return max(1, best_length([alpha] * cap, t_draft, a, b))


def recorded_prior(edge: str, cloud: str) -> Prior | None:
    """The pair's record, when one exists: for the embedded pair (``zoo:tiny-edge`` drafting for
    ``zoo:tiny-cloud``) the zoo manifest's top-1 agreement on ``builtin:code`` (the acceptance of a judged
    greedy draft) and its step costs at one thread (measured when the zoo was built, on that machine). None
    for any other pair (a previous run's controller: :meth:`Controller.load`)."""
    from ..zoo import PREFIX, ZOO_ROOT

    manifest = ZOO_ROOT.parent / "manifest.json"
    if (edge, cloud) != (PREFIX + "tiny-edge", PREFIX + "tiny-cloud") or not manifest.is_file():
        return None
    q = json.loads(manifest.read_text()).get("quality_builtin_code") or {}
    if not {"top1_agreement", "edge_step_ms", "cloud_step_ms"} <= set(q):
        return None
    return Prior(alpha=q["top1_agreement"], t_draft_s=q["edge_step_ms"] / 1e3, cloud_s=q["cloud_step_ms"] / 1e3,
                 source="zoo manifest (top-1 agreement and step costs on builtin:code, when the pair was built)")


class Controller:
    """The ``adaptive`` schedule's per-token stop rule (the module's lookahead rule), learning as it goes.

    ``begin_round(cap)`` before each draft; the drafter calls ``stop(k, confidence)`` after its k-th token;
    ``observe(...)`` after the round, with the confidences of what was drafted. One controller can serve
    many generations of the same edge and cloud (``speculative(..., controller=c)``); what it carries over
    is the calibration (hits and tries per confidence bin, for good), the draft step's cost (weighted
    towards recent rounds) and the verify line's filter (``a``, ``b`` and their covariance, which the
    filter lets drift), with the :class:`Prior` it started from. :meth:`save` / :meth:`load` keep it in a
    JSON file between processes; :meth:`reset` returns to the prior. With no prior it drafts to the cap
    before it has seen a round, as the ``cost`` schedule's first round; with a prior, see :class:`Prior`.
    ``clock``: seconds, for the draft step an unpriced prior's first round measures (tests inject one).
    """

    def __init__(self, calibration: Calibration | None = None, costs: Costs | None = None, prior: Prior | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.prior, self.clock = prior, clock
        self.calibration = calibration or Calibration()
        self.costs = costs or Costs()
        if prior is not None and calibration is None and costs is None:
            self._start_from(prior)
        self.begin_round()

    def _start_from(self, prior: Prior) -> None:
        if prior.alpha is not None:
            self.calibration.alpha0, self.calibration.weight = prior.alpha, prior.weight
        if prior.priced:
            a, b = prior.cloud_s + prior.rtt_s, prior.per_token_s or 0.0
            # recorded costs may come from another machine: a round far off the line restarts a (a jump)
            self.costs.prime(prior.t_draft_s, a, b, a_sd=0.5 * a, b_sd=max(b, prior.cloud_s / 16))

    def reset(self) -> None:
        """Forget what the rounds taught; keep the prior."""
        self.calibration = Calibration(self.calibration.bins, self.calibration.prior)
        self.costs.reset()
        if self.prior is not None:
            self._start_from(self.prior)

    def begin_round(self, cap: int = 16) -> None:
        self._prefix, self._emitted, self._cap = 1.0, 1.0, cap
        self._t0 = self.clock()
        if self.costs.known:
            self._t_draft = self.costs.t_draft
            self._a, self._b = self.costs.line()

    def stop(self, k: int, confidence: float) -> bool:
        if not self.costs.known:
            if self.prior is None:
                return False  # nothing to price a draft with: the cap
            self._price_from_this_round(k)
        p = self.calibration.p(confidence)
        self._prefix *= p
        self._emitted += self._prefix
        return not continuation_pays(self._prefix, self._emitted, k, self.calibration.mean(), self._cap - k,
                                     self._t_draft, self._a, self._b)

    def _price_from_this_round(self, k: int) -> None:
        """A prior without step costs (a pair with no record): the draft step as this round shows it so far, and
        a verify round of at least the link's round trip plus one such step (the cloud is the larger model).
        The real round costs more, so the first round stops short rather than drafting the cap blind (at one
        draft step of 150 ms, the Qwen 0.5B edge on one CPU thread, a cap of 32 costs 4.8 s)."""
        self._t_draft = (self.clock() - self._t0) / k
        self._a, self._b = self.prior.rtt_s + self._t_draft, 0.0

    def observe(self, confidences: list[float], drafted: int, accepted: int, draft_s: float, verify_s: float,
                first: bool = False) -> None:
        """Learn from a round. ``first``: a generation's first round, whose verify time holds the cloud's prefill
        of the prompt when the cloud is remote (the prompt travels with it): it teaches the costs only while they
        are unknown (measured: 42-46 ms against 20-22 ms for the rounds after it, at 5 ms RTT)."""
        self.calibration.observe(confidences[:drafted], accepted)
        if not (first and self.costs.known):
            self.costs.observe(drafted, draft_s, verify_s)

    # ---- between processes

    def state(self) -> dict[str, Any]:
        """Everything it carries, as plain JSON values (:meth:`from_state` rebuilds it)."""
        cal, costs = self.calibration, self.costs
        return {"format": STATE_FORMAT,
                "prior": None if self.prior is None else asdict(self.prior),
                "calibration": {"bins": cal.bins, "prior": cal.prior, "hits": list(cal.hits), "tries": list(cal.tries),
                                "alpha0": cal.alpha0, "weight": cal.weight},
                "costs": {"drift": costs.drift, "noise": costs.noise, "creep": costs.creep,
                          "draft_decay": costs.draft_decay, "ab": costs.ab, "cov": costs.cov, "draft_sums": costs._d}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Controller":
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a controller state of format {STATE_FORMAT!r} (got {state.get('format')!r})")
        c, k = state["calibration"], state["costs"]
        costs = Costs(k["drift"], k["noise"], k["creep"], k["draft_decay"])
        costs.ab, costs.cov, costs._d = k["ab"], k["cov"], k["draft_sums"]
        calibration = Calibration(c["bins"], c["prior"], list(c["hits"]), list(c["tries"]), c["alpha0"], c["weight"])
        out = cls(calibration, costs)
        out.prior = Prior(**state["prior"]) if state["prior"] is not None else None
        return out

    def save(self, path: str | Path, **about: Any) -> Path:
        """Write :meth:`state` as JSON to ``path`` (``about``: anything to record beside it, e.g. the pair and the
        link), atomically; returns the path."""
        return write_json_atomic(path, self.state() | ({"about": about} if about else {}))

    @classmethod
    def load(cls, path: str | Path) -> "Controller":
        """A controller as :meth:`save` wrote it: it goes on from where it stopped."""
        return cls.from_state(json.loads(Path(path).read_text()))


def threshold_stop(k: int, confidence: float) -> bool:
    """The ``confidence`` schedule: stop after a token drafted with top probability below the threshold."""
    return confidence < CONFIDENCE_THRESHOLD


def stop_rule(rule: str, controller: Controller | None = None) -> tuple[Callable[[int, float], bool], Controller | None]:
    """The per-token stop rule of a stopping schedule, and its controller when it learns (``controller``:
    one carried over from earlier generations; default a fresh one)."""
    if controller is not None and rule != "adaptive":
        raise ValueError(f"a controller drives the 'adaptive' schedule only, not {rule!r}: pass "
                         "schedule='adaptive' with it, or drop controller=")
    if rule == "adaptive":
        c = controller or Controller()
        return c.stop, c
    if rule == "confidence":
        return threshold_stop, None
    raise ValueError(f"{rule!r} is not a stopping schedule; use one of {', '.join(STOPPING)}")


def can_stop(drafter: Any) -> bool:
    """Whether ``drafter`` takes a per-token stop rule (it drafts token by token with probabilities)."""
    return hasattr(drafter, "stop") and hasattr(drafter, "confidences")
