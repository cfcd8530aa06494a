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
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..measure.metrics import Stopwatch
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
    """Which rounds submitted ahead a verifier scores: one counts only if the round before it was
    accepted whole and the cloud's token after it equals the round's first input (the edge's guess).
    Used where the rounds are verified, in order: :class:`ThreadedVerifier`, the link's server."""

    def __init__(self) -> None:
        self.whole, self.token = False, None

    def admits(self, last: int, ahead: bool) -> bool:
        return not ahead or (self.whole and self.token == last)

    def record(self, drafted: int, verdict: Verdict) -> None:
        self.whole = verdict is not VOID and verdict.accepted == drafted
        self.token = verdict.token


@runtime_checkable
class Pipeline(Protocol):
    """A verifier that takes rounds before it has answered the earlier ones (answers in order)."""

    vocab: int
    eos_ids: frozenset[int]

    def begin(self, prompt_ids: list[int], settings: Any) -> None: ...

    def submit(self, last: int, draft: list[int], q: torch.Tensor | None, ahead: bool) -> None: ...

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

    def __init__(self, inner: Verifier, threads: int | None = None, devices: tuple[torch.device, ...] = ()):
        self.inner, self.threads = inner, threads
        self.vocab, self.eos_ids = inner.vocab, inner.eos_ids
        self.clock = Stopwatch(*devices)
        self._in: queue.SimpleQueue = queue.SimpleQueue()
        self._out: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._closed = threading.Event()

    def begin(self, prompt_ids: list[int], settings: Any) -> None:
        self.inner.begin(prompt_ids, settings)
        self._worker = threading.Thread(target=self._work, name="specnb-verifier", daemon=True)
        self._worker.start()

    def submit(self, last: int, draft: list[int], q: torch.Tensor | None, ahead: bool) -> None:
        self._in.put((last, draft, q, ahead))

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
                item = self._in.get()
                if item is None or self._closed.is_set():
                    return
                last, draft, q, ahead = item
                try:
                    if chain.admits(last, ahead):
                        with self.clock:
                            verdict = self.inner.verify(last, draft, q)
                    else:
                        verdict = VOID
                except BaseException as err:  # handed to the loop, which raises it
                    self._out.put(err)
                    return
                chain.record(len(draft), verdict)
                self._out.put(verdict)

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
        return self.inner.stats() | {"verify_busy_s": self.clock.total}


def pipelined(verifier: Any, threads: int | None = None, devices: tuple[torch.device, ...] = ()) -> Pipeline:
    """``verifier`` itself when it pipelines (has ``submit`` / ``collect``), else on a worker thread."""
    if hasattr(verifier, "submit") and hasattr(verifier, "collect"):
        return verifier
    return ThreadedVerifier(verifier, threads, devices)


@dataclass
class _Round:
    last: int
    draft: list[int]
    ahead: bool
    sent: float  # perf_counter at submission
    draft_s: float  # edge time spent drafting it
    early: int  # of its tokens (its first input included when that was a guess), those drafted ahead


@dataclass
class Ahead:
    """What drafting ahead did in one generation (merged into ``Generation.metrics``)."""

    ahead_rounds: int = 0  # rounds submitted ahead that the cloud verified
    ahead_void: int = 0  # rounds submitted ahead and answered VOID
    ahead_kept: int = 0  # tokens drafted ahead (guesses included) that went into verified rounds
    ahead_dropped: int = 0  # tokens drafted ahead and thrown away
    edge_wait_s: float = 0.0  # time the edge had nothing to do but wait for a verdict


def loop(drafter: Drafter, pipe: Pipeline, ids: list[int], max_new_tokens: int, plan: Any, depth: int,
         clock: Stopwatch, draft_clock: Stopwatch) -> tuple[list[int], list[int], list[int], float, Ahead]:
    """Rounds until EOS or ``max_new_tokens`` with up to ``depth`` rounds in flight ahead of the one being
    verified: (new tokens, accepted per round, drafted per round, ttft, :class:`Ahead`). Rounds answered
    VOID are not rounds: they appear in neither trace."""
    eos = pipe.eos_ids
    seq, out = list(ids), []
    trace: list[int] = []
    drafted_trace: list[int] = []
    flight: deque[_Round] = deque()  # submitted, verdict pending, in order
    work: list[int] = []  # drafted after the last round in flight: [guess] + next draft (or the head's draft)
    work_q: list[torch.Tensor] = []  # their probability rows (sampling)
    work_s = 0.0  # edge time spent on ``work``
    work_early = 0  # of ``work``, the tokens drafted while a verdict was pending
    work_g = -1  # the draft length the next round aims for (-1: not chosen yet)
    stalled = False  # the drafter proposed nothing ahead: wait for the next verdict
    voids = 0  # answers still due for rounds dropped (each VOID)
    stats = Ahead()
    ttft = None

    def draft_more(n: int) -> None:
        nonlocal work_s, work_early, stalled
        t0 = draft_clock.total
        with draft_clock:
            more, q = drafter.draft(seq + _tail(flight) + work, n)
        work.extend(more)
        if q is not None:
            work_q.extend(q.unbind(0))
        work_s += draft_clock.total - t0
        work_early += len(more) if flight else 0
        stalled = not more

    def submit(last: int, draft: list[int], ahead: bool) -> None:
        nonlocal work_s, work_early, work_g
        q = work_q[1:] if ahead else work_q
        pipe.submit(last, draft, torch.stack(q) if q else None, ahead)
        flight.append(_Round(last, draft, ahead, time.perf_counter(), work_s, work_early))
        work.clear(), work_q.clear()
        work_s, work_early, work_g = 0.0, 0, -1

    start, prefill_s = time.perf_counter(), clock.total
    with clock, _switching(SWITCH_S):
        while len(out) < max_new_tokens and not (out and out[-1] in eos):
            if not flight:  # nothing in flight: the next round starts from the committed sequence
                g = min(plan.next(), max_new_tokens - len(out) - 1)  # never emit past max_new_tokens
                if len(work) > g:  # drafted ahead for a longer round than the schedule now wants
                    stats.ahead_dropped += len(work) - g
                    work_early -= len(work) - g
                    del work[g:], work_q[g:]
                    drafter.rollback(len(seq) + g)
                if len(work) < g:
                    draft_more(g - len(work))
                submit(seq[-1], list(work), False)
                continue
            verdict = pipe.collect(False)
            if verdict is None:
                room = max_new_tokens - len(out) - sum(len(r.draft) + 1 for r in flight)  # tokens left if all kept
                if work_g < 0 and room > 0:
                    work_g = min(plan.next(), room - 1)
                ends = any(t in eos for t in flight[-1].draft + work)
                if not stalled and not ends and room > 0 and len(work) < work_g + 1:
                    draft_more(1)  # one token at a time: a verdict is read as soon as it lands
                    continue
                if not stalled and room > 0 and len(work) == work_g + 1 and len(flight) <= depth:
                    submit(work[0], work[1:], True)
                    continue
                t0 = time.perf_counter()
                verdict = pipe.collect(True)
                stats.edge_wait_s += time.perf_counter() - t0
            if voids:  # an answer to a round dropped earlier
                assert verdict is VOID, "a round submitted ahead of a rejected one was verified"
                voids -= 1
                stats.ahead_void += 1
                continue
            head = flight.popleft()
            if verdict is VOID:
                raise RuntimeError("the verifier answered VOID to a round the edge kept: a specnb bug, please report it")
            n, token = verdict.accepted, verdict.token
            before = len(seq)
            emitted = head.draft[:n] + [token]
            for i, t in enumerate(emitted):  # stop at EOS (drafts accepted past it still count as accepted)
                if t in eos:
                    emitted = emitted[: i + 1]
                    break
            seq.extend(emitted)
            out.extend(emitted)
            trace.append(n)
            drafted_trace.append(len(head.draft))
            plan.update(len(head.draft), n, head.draft_s, time.perf_counter() - head.sent)
            if ttft is None:
                ttft = prefill_s + time.perf_counter() - start
            stats.ahead_rounds += head.ahead
            stats.ahead_kept += head.early
            stalled = False
            guess = flight[0].last if flight else (work[0] if work else None)
            if n == len(head.draft) and token == guess:  # the edge's continuation stands
                if not flight:  # the guess drafted after it is now the committed last token
                    work.pop(0)
                    del work_q[:1]
                    stats.ahead_kept += 1
                    work_early -= 1
                    work_g = -1
                continue
            # the edge's continuation is wrong past ``before + n``: drop it
            stats.ahead_dropped += sum(r.early for r in flight) + work_early
            voids += len(flight)
            flight.clear()
            work.clear(), work_q.clear()
            work_s, work_early, work_g = 0.0, 0, -1
            drafter.rollback(before + n)
    return out, trace, drafted_trace, ttft or 0.0, stats


@contextlib.contextmanager
def _switching(seconds: float):
    """The interpreter's switch interval set to ``seconds`` for the block (it is process-wide; restored after)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, seconds))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _tail(flight: deque[_Round]) -> list[int]:
    """The tokens the rounds in flight add to the committed sequence if all are accepted whole:
    each draft, then the next round's first input (the guess of the cloud's token)."""
    tail: list[int] = []
    for i, r in enumerate(flight):
        if i:
            tail.append(r.last)
        tail.extend(r.draft)
    return tail

