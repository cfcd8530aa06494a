"""Replayed edges: load a verifier with N sessions without running N edge models on a small machine.

A real edge run is recorded once (:class:`RecordingDrafter` around the edge: per round, the draft,
the probabilities it was drawn from when sampling, and the seconds drafting took); a
:class:`ReplayedEdge` then plays it back as a drafter: each round it waits the recorded drafting
time (sleeping, not computing: N replayed edges cost the machine almost nothing) and proposes the
recorded draft. Against the same cloud, prompt, settings and seed, the cloud's verdicts are the
same, so the replay sends the server the real edge's request sequence with its drafting times; the
link emulation (``connect(..., link=Link(...))``) adds the network as for a real edge.

A replay checks, every round, that it stands where the recording stood (the same sequence length
and last token): a cloud that answers otherwise (another model, a tie broken the other way)
ends the replay with an error naming the round, never with a silently different load.

A recording made under any draft-length schedule (``speculative(..., schedule=...)``; the recorder
passes a per-token stop rule on to an edge model) replays under ``constant`` with its ``gamma``, the
schedule's cap: the recorded drafts already have the lengths the schedule chose.

An edge that drafts ahead (:mod:`specnb.decode.ahead`) asks for tokens one at a time, at points that
depend on when verdicts land, so its calls cannot be played back as recorded. A greedy edge's drafts are
a function of where it stands, though: from any prefix of the committed output it drafts its own greedy
path, and a draft after its first wrong token never changes a verdict (that round is cut there, later
ones are void). :class:`PathReplay` plays back an :class:`EdgePath`: the edge's next token after every
prefix of prompt + output (one teacher-forced forward) and its seconds per drafted token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..decode.adaptive import can_stop
from ..decode.pair import as_drafter
from ..decode.roles import RoundSettings
from ..models import LoadedModel


@dataclass(frozen=True)
class Round:
    """One recorded round of an edge: where it stood, what it proposed, how long proposing took."""

    length: int  # len(seq) when asked to draft
    last: int  # seq[-1]
    draft: tuple[int, ...]
    q: torch.Tensor | None  # [len(draft), V] when sampling, else None
    draft_s: float


@dataclass
class Recording:
    """An edge's generation as rounds, and the seconds its prefill took."""

    prompt: list[int] = field(default_factory=list)
    begin_s: float = 0.0
    rounds: list[Round] = field(default_factory=list)

    def draft_s(self) -> float:
        """Seconds of drafting over all rounds (the prefill apart)."""
        return sum(r.draft_s for r in self.rounds)


class RecordingDrafter:
    """A drafter around a real edge (a loaded model or any drafter) that records each round.

    Around an edge that drafts token by token (a loaded model, or a drafter that takes a stop rule) it
    takes a schedule's per-token stop rule too (``stop``, ``confidences``: what
    :func:`~specnb.decode.adaptive.can_stop` looks for) and hands it on, so that a ``confidence`` or
    ``adaptive`` recording holds the lengths the real edge drafts under that schedule."""

    def __init__(self, edge: Any):
        self.edge = edge
        self.inner = None
        self.recording = Recording()
        if isinstance(edge, LoadedModel) or can_stop(edge):
            self.stop, self.confidences = None, []  # set by the schedule before begin(); read after each draft

    def begin(self, prompt_ids: list[int], settings: RoundSettings) -> None:
        t0 = time.perf_counter()
        self.inner = as_drafter(self.edge, settings)
        if can_stop(self):
            self.inner.stop = self.stop
        self.inner.begin(prompt_ids, settings)
        self.recording = Recording(prompt=list(prompt_ids), begin_s=time.perf_counter() - t0)

    def draft(self, seq: list[int], g: int) -> tuple[list[int], torch.Tensor | None]:
        t0 = time.perf_counter()
        draft, q = self.inner.draft(seq, g)
        took = time.perf_counter() - t0
        if can_stop(self):
            self.confidences = self.inner.confidences
        kept = None if q is None else q.detach().float().cpu().clone()
        self.recording.rounds.append(Round(len(seq), seq[-1], tuple(draft), kept, took))
        return draft, q

    def rollback(self, length: int) -> None:
        self.inner.rollback(length)

    def stats(self) -> dict[str, Any]:
        return self.inner.stats() if self.inner is not None else {}


class ReplayedEdge:
    """A drafter that plays a :class:`Recording` back: the recorded drafts after the recorded times."""

    def __init__(self, recording: Recording, *, wait: bool = True):
        self.recording, self.wait = recording, wait
        self.next = 0

    def begin(self, prompt_ids: list[int], settings: RoundSettings) -> None:
        if list(prompt_ids) != self.recording.prompt:
            raise ValueError("a replayed edge replays the prompt it recorded: pass the same prompt")
        self.next = 0
        self._sleep(self.recording.begin_s)

    def draft(self, seq: list[int], g: int) -> tuple[list[int], torch.Tensor | None]:
        i = self.next
        if i >= len(self.recording.rounds):
            raise RuntimeError(f"the replay ran past its {i} recorded rounds: the cloud answered otherwise "
                               "than when it was recorded (another model or settings?)")
        r = self.recording.rounds[i]
        if (len(seq), seq[-1]) != (r.length, r.last):
            raise RuntimeError(f"the replay diverged at round {i + 1}: the cloud's answers differ from the "
                               "recording's (another model, settings or seed, or a float tie broken otherwise)")
        if len(r.draft) > g:
            raise RuntimeError(f"round {i + 1} recorded {len(r.draft)} drafts but the loop asks for at most {g}: "
                               "replay with the recording's gamma and schedule")
        self.next += 1
        self._sleep(r.draft_s)
        return list(r.draft), r.q

    def rollback(self, length: int) -> None:
        pass  # no state to cut back: the recording already holds what came next

    def stats(self) -> dict[str, Any]:
        return {"replayed_rounds": self.next}

    def _sleep(self, seconds: float) -> None:
        if self.wait and seconds > 0:
            time.sleep(seconds)


@dataclass
class EdgePath:
    """A greedy edge along one generation: ``next[j]`` is its token after ``(prompt + out)[:j + 1]``."""

    prompt: list[int]
    out: list[int]
    next: list[int]
    step_s: float  # seconds per drafted token
    begin_s: float = 0.0  # seconds of its prefill


def edge_path(edge: LoadedModel, prompt_ids: list[int], out: list[int], step_s: float, begin_s: float = 0.0) -> EdgePath:
    """The :class:`EdgePath` of ``edge`` along ``out`` (the cloud's greedy output of ``prompt_ids``)."""
    ids = list(prompt_ids) + list(out)
    with torch.inference_mode():
        logits = edge.model(torch.tensor([ids], device=edge.device)).logits[0, :, : edge.vocab_size]
    return EdgePath(list(prompt_ids), list(out), logits.argmax(-1).tolist(), step_s, begin_s)


class PathReplay:
    """A drafter that plays an :class:`EdgePath` back (greedy only): from a prefix of the committed output
    it drafts the edge's path, past its first wrong token any token (those drafts never count), sleeping
    ``step_s`` per token. Against the same cloud its verdicts are the real edge's, however the loop asks."""

    def __init__(self, path: EdgePath, *, wait: bool = True):
        self.path, self.wait = path, wait
        self.full = path.prompt + path.out
        self.calls = 0

    def begin(self, prompt_ids: list[int], settings: RoundSettings) -> None:
        if list(prompt_ids) != self.path.prompt:
            raise ValueError("a replayed edge replays the prompt it recorded: pass the same prompt")
        if settings.rule != "greedy":
            raise ValueError("an edge path replays greedy drafts only")
        self.calls = 0
        if self.wait and self.path.begin_s > 0:
            time.sleep(self.path.begin_s)

    def draft(self, seq: list[int], g: int) -> tuple[list[int], torch.Tensor | None]:
        full, nxt = self.full, self.path.next
        at = len(seq)
        on = seq == full[:at]
        out: list[int] = []
        for _ in range(g):
            tok = nxt[at - 1] if on and at - 1 < len(nxt) else (out[-1] if out else seq[-1])
            on = on and at < len(full) and tok == full[at]
            out.append(tok)
            at += 1
        self.calls += 1
        if self.wait and g:
            time.sleep(g * self.path.step_s)
        return out, None

    def rollback(self, length: int) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"replayed_calls": self.calls}
