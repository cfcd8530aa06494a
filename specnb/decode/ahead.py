"""Drafting ahead: the edge keeps drafting while the cloud verifies (PEARL's post-verify; SpecEdge's
proactive drafting), so that a round accepted whole is followed at once by the next.

While a round ``[last] + draft`` is being verified, the edge drafts the continuation that assumes the
whole draft is accepted: first its *guess* of the cloud's own token after the draft (the bonus), then
the next round's draft after that guess. That next round ``[guess] + draft'`` is submitted *ahead*,
before the verdict: the verifier scores it only if the round before it was accepted whole and the
cloud's token equals the guess (:class:`Chain`); otherwise it answers :data:`VOID` without a model
call. The edge, reading the same verdict, drops everything it drafted past it, rolls its cache back as
after any rejection, and drafts again from the cloud's token. Up to ``depth`` rounds may be in flight
ahead of the one being verified (across a link, each hides another share of the round trip).

Hedging (``hedge=K``): the premise "accepted whole, bonus = the guess" holds for a round of g drafts with
probability about alpha^(g+1), so most rounds sent ahead are dropped. While a round is in flight the edge
may also draft *branches* on it: rounds premised on "rejected at position j, the cloud's token there = the
edge's runner-up at j" (or "accepted whole, the bonus = the runner-up of the guess"), up to K per round,
likeliest first by the edge's own probabilities (:func:`_branches`), whichever of a branch and the spine's
next round the edge finds the likelier to be verified; a branch drafts at most ``hedge_len`` tokens (default:
as many as the spine's round), so that the edge spends less on rounds that are rarely scored. Each round carries its premise (:class:`Chain`: the
earlier round it assumes and the count of drafts kept; the token is its own first input), and the verifier
scores exactly the round whose premise is the verdict that came: at most one per verdict. The edge forks its
cache per branch by rolling back to what two branches share (``DynamicCache.crop``) and feeding the
branch's own tokens. Greedy and rank rules only: while sampling, a rejection's token is sampled where q lives
(the edge's side of a link), so no verifier could check a branch's premise (:func:`check_hedge` refuses it).

Lossless by construction: every emitted token is a draft the cloud's rule accepted or the cloud's own
token, each round judged on exactly the context the cloud holds, as in the plain loop. Greedy output is
the cloud's greedy output. With ``verify="sample"`` the drafts of a round submitted ahead are drawn from
the edge's q given the prefix they extend, which is the committed prefix whenever the round counts, so
the rule of Leviathan et al. stays exact; a seeded sample repeats only when the timing does (how many
tokens the edge drafts ahead before a verdict arrives varies, and so does its generator's state).

Verifiers: any verifier runs pipelined on a worker thread (:class:`ThreadedVerifier`; the in-process
cloud's operators release the GIL, so it runs on the second core as far as its time is spent in them: not
a tiny model's, whose step is mostly Python, docs/drafting-ahead.md); a verifier with its own
``submit`` / ``collect`` (the link client) is used as it is. While the loop runs, the interpreter's switch
interval is :data:`SWITCH_S`.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from ..measure.metrics import Stopwatch
from .lead import Lead, common as _common, next_leading
from .roles import Drafter, Verdict, Verifier

VOID = Verdict(accepted=-1, token=-1)  # the answer to a round submitted ahead whose premise failed
MAX_DEPTH = 64  # rounds ahead when ``ahead=True`` (unbounded in practice: the verdicts bound it)
# The interpreter's switch interval while drafting ahead (default 5 ms): the edge drafts without pausing and
# holds the GIL between torch operators, so a thread that needs it (the worker's Python between the cloud's
# operators, the link's message pump and sending thread) waits up to this long for each hand-over
# (measured both ways: docs/drafting-ahead.md).
SWITCH_S = 0.0005


def depth_of(ahead: bool | int) -> int:
    """Rounds that may be in flight ahead of the one being verified: 0 (off), ``ahead`` (an int),
    or :data:`MAX_DEPTH` for ``True``."""
    if ahead is True:
        return MAX_DEPTH
    if ahead is False or ahead is None:
        return 0
    if not isinstance(ahead, int) or ahead < 0:
        raise ValueError(f"ahead must be True, False or a number of rounds >= 0, got {ahead!r}")
    return ahead


class Chain:
    """Which rounds submitted ahead a verifier scores, in the order they come. A round carries its *premise*:
    None (it starts from the sequence the verifier holds: always scored), or ``(back, accepted)``: it assumes
    that the round ``back`` places before it was scored and answered ``accepted`` drafts kept and, as the
    cloud's token, the round's own first input (``last``). It is scored only if that round is the last one
    scored and its verdict is exactly that; at most one round premised on a given verdict can match it, and
    the one that does starts from exactly the context the verifier holds. Used where the rounds are verified,
    in order: :class:`ThreadedVerifier`, the link's server."""

    def __init__(self) -> None:
        self.rounds = 0  # rounds seen (the next one's index)
        self.tip, self.verdict = -1, VOID  # the last round scored and its verdict

    def admits(self, last: int, premise: tuple[int, int] | None) -> bool:
        if premise is None:
            return True
        back, accepted = premise
        return (self.rounds - back == self.tip and self.verdict.accepted == accepted
                and self.verdict.token == last and last >= 0)

    def extra(self, premise: tuple[int, int] | None) -> tuple[int, ...]:
        """The cloud's own tokens that an admitted round's premise committed after its first input (a verdict's
        ``extra``, :mod:`specnb.decode.lead`): its draft is judged against them first (:func:`plan`)."""
        return () if premise is None else self.verdict.extra

    def plan(self, last: int, draft: list[int], premise: tuple[int, int] | None
             ) -> tuple[Verdict | None, int, list[int], int]:
        """A round before any model call: (its verdict if that needs none, else None; the input and draft left to
        verify; the drafts already committed). VOID when its premise failed. On a verdict with extra tokens e, a
        draft that leaves them at p < len(e) is decided by them: p kept, e[p] the cloud's token, the rest of e
        extra (the greedy verdict on that draft, nothing new committed); one that begins with all of e is
        verified from after them. Used where rounds are verified, in order: :class:`ThreadedVerifier`, the link's
        server; the caller records the verdict (:meth:`record`)."""
        if not self.admits(last, premise):
            return VOID, last, draft, 0
        e = self.extra(premise)
        p = _common(draft, list(e))
        if p < len(e):
            return Verdict(p, e[p], tuple(e[p + 1:])), last, draft, len(e)
        return None, (draft[len(e) - 1] if e else last), draft[len(e):], len(e)

    def record(self, verdict: Verdict) -> None:
        if verdict is not VOID:
            self.tip, self.verdict = self.rounds, verdict
        self.rounds += 1


@runtime_checkable
class Pipeline(Protocol):
    """A verifier that takes rounds before it has answered the earlier ones (answers in order)."""

    vocab: int
    eos_ids: frozenset[int]

    def begin(self, prompt_ids: list[int], settings: Any) -> None: ...

    def submit(self, last: int, draft: list[int], q: torch.Tensor | None, premise: tuple[int, int] | None) -> None:
        """Send a round; ``premise``: None, or what it assumes of an earlier round's verdict (:class:`Chain`)."""

    def collect(self, block: bool) -> Verdict | None:
        """The next answer (a verdict, or :data:`VOID`), or None when ``block`` is False and none is ready."""

    def stop(self) -> None:
        """Stop answering (the generation is over; rounds still in flight are abandoned)."""

    def close(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class ThreadedVerifier:
    """Any :class:`~specnb.decode.roles.Verifier`, run round after round on a worker thread.

    ``threads``: the intra-op thread count the worker sets for itself (the cloud's cap on a CPU; None:
    leave torch's). Its ``verify_s`` is the worker's time in verification (the cloud's busy time).
    """

    lead_cap = 32  # the most tokens the worker decodes on its own between two rounds (``lead``)

    def __init__(self, inner: Verifier, threads: int | None = None, devices: tuple[torch.device, ...] = ()):
        self.inner, self.threads = inner, threads
        self.vocab, self.eos_ids = inner.vocab, inner.eos_ids
        self.clock = Stopwatch(*devices)
        self._in: queue.SimpleQueue = queue.SimpleQueue()
        self._out: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._closed = threading.Event()
        self.lead: Lead | None = None

    def begin(self, prompt_ids: list[int], settings: Any) -> None:
        self.inner.begin(prompt_ids, settings)
        self.lead = Lead(self.inner, self.lead_cap, settings.max_len) if getattr(settings, "lead", False) else None
        self._worker = threading.Thread(target=self._work, name="specnb-verifier", daemon=True)
        self._worker.start()

    def submit(self, last: int, draft: list[int], q: torch.Tensor | None, premise: tuple[int, int] | None) -> None:
        self._in.put((last, draft, q, premise))

    def collect(self, block: bool) -> Verdict | None:
        try:
            answer = self._out.get(block)
        except queue.Empty:
            return None
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _work(self) -> None:
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # this thread's count (OpenMP's is per thread)
        chain = Chain()
        with torch.inference_mode():
            while True:
                item = self._next()
                if item is None or self._closed.is_set():
                    return
                last, draft, q, premise = item
                try:
                    verdict, last, rest, skip = chain.plan(last, draft, premise)
                    if verdict is None:
                        with self.clock:
                            v = (self.inner.verify(last, rest, q[skip:] if q is not None else None) if self.lead is None
                                 else self.lead.verify(last, rest))
                        verdict = Verdict(skip + v.accepted, v.token, v.extra)
                except BaseException as err:  # handed to the loop, which raises it
                    self._out.put(err)
                    return
                chain.record(verdict)
                self._out.put(verdict)

    def _next(self):
        """The next round; until it comes, the cloud decodes on its own when it leads (``lead``)."""
        if self.lead is None:
            return self._in.get()
        return next_leading(self._in, self._lead_step)

    def _lead_step(self) -> bool:
        if self._closed.is_set():
            return False
        with self.clock:
            return self.lead.step()

    def stop(self) -> None:
        """End the worker after the round it is on; rounds not started are dropped."""
        self._closed.set()
        self._in.put(None)
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def close(self) -> None:
        self.stop()
        self.inner.close()

    def stats(self) -> dict[str, Any]:
        return self.inner.stats() | {"verify_busy_s": self.clock.total} | (self.lead.stats() if self.lead else {})


def pipelined(verifier: Any, threads: int | None = None, devices: tuple[torch.device, ...] = ()) -> Pipeline:
    """``verifier`` itself when it pipelines (has ``submit`` / ``collect``), else on a worker thread."""
    if hasattr(verifier, "submit") and hasattr(verifier, "collect"):
        return verifier
    return ThreadedVerifier(verifier, threads, devices)


@dataclass
class _Round:
    """A round being drafted (``index`` -1) or submitted: ``tokens[0]`` its first input (the cloud's token it
    assumes), ``tokens[1:]`` its draft, ``base`` the sequence before them if its premise holds. Premise:
    ``parent`` (None: the committed sequence) answered ``accepted`` drafts kept and the token ``tokens[0]``."""

    parent: _Round | None
    accepted: int
    base: list[int]
    tokens: list[int]
    goal: int  # drafts it aims for
    hedge: bool = False  # a branch premised on a rejection (or on another bonus token), not on "accepted whole"
    prior: float = 1.0  # the edge's probability of its premise, given its parent's
    qs: list = field(default_factory=list)  # probability rows of ``tokens`` (sampling; None for a token not drafted)
    alts: list = field(default_factory=list)  # (runner-up, p(drafted), p(runner-up)) per drafted token
    bonus: tuple[int, float, float] | None = None  # the same at the position after its draft (its child's guess)
    skip: int = 0  # drafts its parent's verdict already committed (the cloud's extra tokens: specnb.decode.lead)
    index: int = -1  # its place in the order of submission
    sent: float = 0.0  # perf_counter at submission
    draft_s: float = 0.0  # edge time spent drafting it
    early: int = 0  # its tokens produced while a verdict was pending (drafted ahead; a guess or runner-up included)
    children: list[_Round] = field(default_factory=list)  # submitted rounds premised on its verdict
    spine: _Round | None = None  # the child premised on "accepted whole, bonus = the guess"
    hedged: set[int] = field(default_factory=set)  # rejection points it has branches for
    dead: bool = False  # a premise on its path failed: it is answered VOID
    done: bool = False  # its verdict is in (or was decided by the cloud's extra tokens before it came: ``known``)
    known: Verdict | None = None

    @property
    def draft(self) -> list[int]:
        return self.tokens[1:]

    def full(self) -> bool:
        return len(self.tokens) == self.goal + 1

    def holds(self, verdict: Verdict) -> bool:
        return verdict.accepted == self.accepted and bool(self.tokens) and verdict.token == self.tokens[0]

    def path(self, start: int) -> list[int]:
        """Its tokens from position ``start`` on: what the sequence becomes if it is accepted whole."""
        return (self.base + self.tokens)[start:]


@dataclass
class Ahead:
    """What drafting ahead did in one generation (merged into ``Generation.metrics``)."""

    ahead_rounds: int = 0  # rounds submitted ahead that the cloud verified
    ahead_void: int = 0  # rounds submitted ahead and answered VOID
    ahead_kept: int = 0  # tokens drafted ahead (guesses included) that went into verified rounds
    ahead_dropped: int = 0  # tokens drafted ahead and thrown away
    edge_wait_s: float = 0.0  # time the edge had nothing to do but wait for a verdict
    ahead_hedged: int = 0  # branches submitted (rounds premised on a rejection, see ``hedge``)
    hedge_hits: int = 0  # of them, those the cloud verified
    hedge_drafted: int = 0  # drafts sent in branches (over ahead_hedged: a branch's mean length)


def check_hedge(hedge: int, depth: int, rule: str) -> int:
    """``hedge`` (branches per round in flight) when it can run: an int >= 0, with drafting ahead, not sampling."""
    if isinstance(hedge, bool) or not isinstance(hedge, int) or hedge < 0:
        raise ValueError(f"hedge must be a number of branches >= 0, got {hedge!r}")
    if hedge and not depth:
        raise ValueError("hedge branches rounds drafted ahead: pass ahead=True (or a number of rounds) with it")
    if hedge and rule == "sample":
        raise ValueError("hedge does not combine with verify='sample': after a rejection the cloud's token is sampled "
                         "where q lives (the edge's side of a link), so a verifier cannot check a branch's premise; "
                         "use hedge=0 (ahead alone is exact with sampling) or verify='greedy'")
    return hedge


def check_hedge_len(hedge_len: int | None, hedge: int) -> int | None:
    """``hedge_len`` (drafts per branch at most; None: the spine's round length) when it can run."""
    if hedge_len is None:
        return None
    if isinstance(hedge_len, bool) or not isinstance(hedge_len, int) or hedge_len < 1:
        raise ValueError(f"hedge_len must be a number of drafts per branch >= 1 (or None: as long as the spine's "
                         f"rounds), got {hedge_len!r}")
    if not hedge:
        raise ValueError("hedge_len sets the length of branches: pass hedge=K (branches per round) with it, "
                         "or leave hedge_len=None")
    return hedge_len


def loop(drafter: Drafter, pipe: Pipeline, ids: list[int], max_new_tokens: int, plan: Any, depth: int,
         clock: Stopwatch, draft_clock: Stopwatch, hedge: int = 0,
         hedge_len: int | None = None) -> tuple[list[int], list[int], list[int], float, Ahead]:
    """Rounds until EOS or ``max_new_tokens`` with up to ``depth`` rounds in flight ahead of the one being
    verified, and up to ``hedge`` branches on each (rounds premised on a rejection: :func:`_branches`) of at
    most ``hedge_len`` drafts each (None: as many as the schedule gives the spine's round):
    (new tokens, accepted per round, drafted per round, ttft, :class:`Ahead`). Rounds answered VOID are not
    rounds: they appear in neither trace.

    The rounds submitted form a tree: each assumes one verdict of its parent. The spine assumes every round
    accepted whole with the edge's guess as the bonus; a branch assumes its parent rejected at ``j`` with the
    edge's runner-up there as the cloud's token. A verdict keeps the one child whose premise it is (if any)
    and kills the others with everything drafted on them; the verifier answers those VOID, in order."""
    if hedge and getattr(drafter, "alternatives", False) is False:
        raise ValueError(f"hedge needs a drafter that reports its runner-up tokens (an edge model in this process); "
                         f"{type(drafter).__name__} does not: use hedge=0 with it")
    if hedge:
        drafter.alternatives = []  # the drafter reports (runner-up, p(drafted), p(runner-up)) per token
    eos = pipe.eos_ids
    seq, out = list(ids), []
    trace: list[int] = []
    drafted_trace: list[int] = []
    flight: deque[_Round] = deque()  # submitted, answer pending, in order (dead ones are answered VOID)
    work: _Round | None = None  # being drafted, not submitted
    view: list[int] = []  # the sequence the drafter's state was last built on (it holds a prefix of it)
    sent = 0
    stalled = False  # the drafter proposed nothing ahead: wait for the next verdict
    stats = Ahead()
    ttft = None

    def draft_into(r: _Round, n: int) -> None:
        nonlocal view, stalled
        ctx = r.base + r.tokens
        same = _common(view, ctx)
        t0 = draft_clock.total
        with draft_clock:
            if same < len(view):
                drafter.rollback(same)  # another branch: back to what the two share
            if len(ctx) - same > 2 and hasattr(drafter, "catch_up"):
                drafter.catch_up(ctx)  # a branch's own tokens, or a verdict's extra ones, in one call (compiled steps take 1 or 2)
            more, q = drafter.draft(ctx, n)
        view = ctx + more
        r.draft_s += draft_clock.total - t0
        if hedge:
            alts = list(drafter.alternatives)
            if not r.tokens and more and r.parent is not None:  # the guess: the parent's bonus position
                r.parent.bonus = alts[0]
                r.prior *= alts[0][1]
            r.alts.extend(alts[1:] if not r.tokens and more else alts)
        rows = list(q.unbind(0)) if q is not None else [None] * len(more)
        r.tokens.extend(more), r.qs.extend(rows)
        r.early += len(more) if any(not x.dead for x in flight) else 0
        stalled = not more

    def submit(r: _Round) -> None:
        nonlocal sent, work
        premise = None if r.parent is None else (sent - r.parent.index, r.accepted)
        qs = [q for q in r.qs[1:] if q is not None]
        pipe.submit(r.tokens[0], r.draft, torch.stack(qs) if qs else None, premise)
        r.index, r.sent, sent = sent, time.perf_counter(), sent + 1
        if r.parent is not None:
            r.parent.children.append(r)
            if r.hedge:
                r.parent.hedged.add(r.accepted)
                stats.ahead_hedged += 1
                stats.hedge_drafted += len(r.draft)
            else:
                r.parent.spine = r
        flight.append(r)
        work = None

    def kill(r: _Round) -> None:
        r.dead = True
        stats.ahead_dropped += r.early
        for c in r.children:
            kill(c)

    def spine() -> list[_Round]:
        """The live rounds from the one verified next along the spine."""
        r = next((x for x in flight if not x.dead and not x.done), None)
        path = []
        while r is not None:
            path.append(r)
            r = r.spine
        return path

    def left(r: _Round, drafts: int) -> int:
        """Tokens left to emit if all premises hold up to ``r`` and it keeps ``drafts`` drafts and adds a token."""
        return max_new_tokens - len(out) - (len(r.base) + 1 - len(seq) + drafts + 1)

    def choose(path: list[_Round]) -> _Round | None:
        """What to draft next: the spine's next round, or a branch on a round of the spine, whichever the
        edge's own probabilities make the likelier to be verified (without ``hedge``: the spine). The spine
        comes first while only the round being verified is on it: its next round is what keeps the verifier
        busy, and it must be in flight before that verdict lands (the 2026-12-07 measurement: branches drafted
        before it displaced it at 0 and 5 ms RTT, docs/drafting-ahead.md)."""
        tail = path[-1]
        best, value = None, -1.0
        room = left(tail, len(tail.draft))  # tokens left if all are kept
        if room > 0 and not any(t in eos for t in tail.path(len(seq))):
            g = min(plan.next(), room - 1)
            best = _Round(tail, len(tail.draft), tail.base + tail.tokens, [], g, prior=_whole(tail))
            value = _reach(tail) * best.prior if hedge else 0.0
            if len(path) == 1:
                return best
        for x in path if hedge else ():
            if len(x.hedged) >= hedge:
                continue
            for j, runner, p in _branches(x):
                room = left(x, j) - 1  # the runner-up is the next round's first input
                v = _reach(x) * p
                if v > value and room > 0 and not any(t in eos for t in (x.base + x.tokens[:j + 1])[len(seq):] + [runner]):
                    g = plan.next() if hedge_len is None else min(hedge_len, plan.next())
                    best, value = _Round(x, j, x.base + x.tokens[:j + 1], [runner], min(g, room),
                                         hedge=True, prior=p, qs=[None], early=1), v
                    break  # _branches gives them likeliest first
        return best

    def settle(head: _Round, verdict: Verdict) -> None:
        """``head``'s verdict: its new tokens committed, its children that do not hold it dropped with all drafted
        on them. A child on a verdict with extra tokens whose draft leaves them is decided by them at once
        (:meth:`Chain.plan`; nothing new committed): it is settled now, and the rounds on it go on before its
        answer comes."""
        nonlocal work, ttft
        while head is not None:
            head.done, head.known = True, verdict
            n = verdict.accepted
            emitted_now = verdict.emitted(head.draft, eos)[head.skip:]  # less what its premise's extra tokens committed
            seq.extend(emitted_now)
            out.extend(emitted_now)
            trace.append(n)
            drafted_trace.append(len(head.draft))
            plan.update(len(head.draft), n, head.draft_s, time.perf_counter() - head.sent)
            if ttft is None:
                ttft = prefill_s + time.perf_counter() - start
            stats.ahead_rounds += head.parent is not None
            stats.hedge_hits += head.hedge
            stats.ahead_kept += head.early
            e, nxt = verdict.extra, None
            for c in head.children:  # at most one holds: the others, and all drafted on them, are dropped
                if not c.holds(verdict):
                    kill(c)
                    continue
                c.skip = len(e)
                p = _common(c.draft, list(e))
                if p < len(e):  # its verdict is decided: settled next, before the server's answer
                    nxt = (c, Verdict(p, e[p], tuple(e[p + 1:])))
            if work is not None and (work.parent is head and not work.holds(verdict) or _dead(work)):
                stats.ahead_dropped += work.early
                work = None
            if work is not None and work.parent is head and tuple(work.draft[:len(e)]) != e:
                stats.ahead_dropped += work.early  # drafted off the cloud's extra tokens (or not yet past them)
                work = None
            if work is not None and work.parent is head:  # its premise held: it now starts from the committed sequence
                _rebase(work, seq, len(e))
            head, verdict = nxt if nxt is not None else (None, None)

    start, prefill_s = time.perf_counter(), clock.total
    with clock, _switching(SWITCH_S):
        while len(out) < max_new_tokens and not (out and out[-1] in eos):
            path = spine()
            if not path:  # nothing live in flight: the next round starts from the committed sequence
                g = min(plan.next(), max_new_tokens - len(out) - 1)  # never emit past max_new_tokens
                if work is None or work.parent is not None:
                    work = _Round(None, 0, seq[:-1], [seq[-1]], g, qs=[None])
                if len(work.tokens) > g + 1:  # drafted ahead for a longer round than the schedule now wants
                    cut = len(work.tokens) - g - 1
                    stats.ahead_dropped += min(cut, work.early)
                    work.early -= min(cut, work.early)
                    del work.tokens[g + 1:], work.qs[g + 1:], work.alts[g:]
                work.goal = g
                if not work.full():
                    draft_into(work, g + 1 - len(work.tokens))
                    work.goal = len(work.tokens) - 1  # a drafter may propose fewer
                submit(work)
                continue
            verdict = pipe.collect(False)
            if verdict is None:
                if work is None and not stalled:
                    work = choose(path)
                if work is not None and not stalled and not work.full():
                    draft_into(work, 1)  # one token at a time: a verdict is read as soon as it lands
                    continue
                if work is not None and work.full() and (work.hedge or len(path) <= depth):
                    submit(work)
                    continue
                t0 = time.perf_counter()
                verdict = pipe.collect(True)
                stats.edge_wait_s += time.perf_counter() - t0
            head = flight.popleft()
            if head.dead:  # an answer to a round dropped earlier
                assert verdict is VOID, "a round whose premise the edge saw fail was verified"
                stats.ahead_void += 1
                continue
            if verdict is VOID:
                raise RuntimeError("the verifier answered VOID to a round the edge kept: a specnb bug, please report it")
            if head.done:  # settled when its premise came, by the cloud's extra tokens
                assert verdict == head.known, "the verifier's answer differs from the one the cloud's tokens decided"
                continue
            settle(head, verdict)
            stalled = False
    return out[:max_new_tokens], trace, drafted_trace, ttft or 0.0, stats


def _rebase(r: _Round, seq: list[int], x: int) -> None:
    """``r``, drafted on a verdict that came and held, now starts from the committed sequence ``seq``; the first
    ``x`` of its drafts were the verdict's extra tokens (committed with it): they leave its draft."""
    r.parent, r.hedge, r.accepted = None, False, 0
    if x:
        del r.tokens[:x], r.qs[:x], r.alts[:x]
        r.qs[0] = None
        r.goal -= x
        r.early = max(0, r.early - x)
    r.base = seq[:-1]


def _whole(r: _Round) -> float:
    """The edge's probability that ``r``'s draft is accepted whole (its guess of the bonus not included)."""
    p = 1.0
    for _, top, _ in r.alts:
        p *= top
    return p


def _reach(r: _Round) -> float:
    """The edge's probability that ``r`` is verified: the premises on its path that are not settled yet."""
    p = 1.0
    while r.parent is not None and not r.parent.done:
        p *= r.prior
        r = r.parent
    return p


def _dead(r: _Round) -> bool:
    """A premise on ``r``'s path has failed."""
    while r.parent is not None and not r.parent.done:
        if r.parent.dead:
            return True
        r = r.parent
    return False


def _branches(r: _Round) -> list[tuple[int, int, float]]:
    """The branches of ``r`` not tried yet, likeliest first: (j, the runner-up at j, the edge's probability
    that the cloud accepts the draft up to j and answers the runner-up there). ``j == len(draft)``: the
    draft accepted whole and the bonus the runner-up of the guess (once the guess is drafted)."""
    out, p = [], 1.0
    for j, alt in enumerate(r.alts + ([r.bonus] if r.bonus is not None else [])):
        runner, top, second = alt
        if j not in r.hedged and j >= r.skip:  # a rejection among the drafts already committed cannot come
            out.append((j, runner, p * second))
        p *= top
    return sorted(out, key=lambda b: -b[2])


@contextlib.contextmanager
def _switching(seconds: float):
    """The interpreter's switch interval set to ``seconds`` for the block (it is process-wide; restored after)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, seconds))
    try:
        yield
    finally:
        sys.setswitchinterval(before)
