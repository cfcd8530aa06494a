"""Server-side speculation on a batching server: the sessions' verify rounds share batches.

With ``specnb serve --draft D --batch dynamic|wait`` a ``G`` message asking for server-side
speculation runs the usual loop (:func:`specnb.decode.loops.speculative`) with two stand-ins for the
models:

* :class:`ServerDraft`: the draft model, whose calls take a *draft lock* (one session drafts at a
  time: drafting is not batched, each session's draft forward runs alone, as before);
* :class:`ServerCloud`: the cloud model, whose verifiers (:class:`BatchedVerifier`) send each round
  to the server's :class:`~specnb.link.batching.Batcher`, so the verify rounds of concurrent
  server-side generations, edge-cloud sessions and cloud-only streams run in one forward.

Each generation keeps its own caches (draft and cloud) and its own acceptance rule, exactly as the
solo loop; only where the cloud's logits are computed changes (one forward for many sessions, equal
to the solo forward to float rounding: :mod:`specnb.link.batching`). Without batching the server
keeps the old path (both models under the one model lock).
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from ..decode.loops import as_drafter, as_verifier
from ..decode.roles import RoundSettings, Verdict
from .batching import Batcher, batchable


class _Delegate:
    """Reads what the loop asks of a model (tokenizer, vocabulary, device, spec) from the model."""

    def __init__(self, model: Any):
        self._model = model

    def __getattr__(self, name: str) -> Any:  # only called for names this object lacks
        return getattr(self._model, name)


class ServerDraft(_Delegate):
    """The server's draft model as a drafter factory whose drafters draft under ``lock``."""

    def __init__(self, model: Any, lock: threading.Lock):
        super().__init__(model)
        self._lock = lock

    def drafter(self, settings: RoundSettings) -> "LockedDrafter":
        return LockedDrafter(as_drafter(self._model, settings), self._lock)


class LockedDrafter:
    """A drafter whose model calls (prefill, drafts) hold a lock shared by the server's sessions."""

    def __init__(self, inner: Any, lock: threading.Lock):
        self.inner, self.lock = inner, lock

    def begin(self, prompt_ids: list[int], settings: RoundSettings) -> None:
        with self.lock:
            self.inner.begin(prompt_ids, settings)

    def draft(self, seq: list[int], g: int) -> tuple[list[int], torch.Tensor | None]:
        with self.lock:
            return self.inner.draft(seq, g)

    def rollback(self, length: int) -> None:
        with self.lock:
            self.inner.rollback(length)

    def stats(self) -> dict[str, Any]:
        return self.inner.stats()


class ServerCloud(_Delegate):
    """The server's cloud model as a verifier factory: its verifiers' rounds go through ``batcher``."""

    def __init__(self, model: Any, batcher: Batcher, lock: threading.Lock):
        super().__init__(model)
        self._batcher, self._lock = batcher, lock

    def verifier(self, settings: RoundSettings) -> "BatchedVerifier":
        with self._lock:
            inner = as_verifier(self._model, settings)
        return BatchedVerifier(inner, self._batcher, self._lock)


class BatchedVerifier:
    """An in-process cloud verifier whose rounds join the server's batches (prefill and a session that
    cannot batch, e.g. an optimized one, run solo under the model lock)."""

    def __init__(self, inner: Any, batcher: Batcher, lock: threading.Lock):
        self.inner, self.batcher, self.lock = inner, batcher, lock
        self.vocab, self.eos_ids = inner.vocab, inner.eos_ids

    def begin(self, prompt_ids: list[int], settings: RoundSettings) -> None:
        with self.lock, torch.inference_mode():
            self.inner.begin(prompt_ids, settings)

    def verify(self, last: int, draft: list[int], q: torch.Tensor | None) -> Verdict:
        inner = self.inner
        if not batchable(inner):
            with self.lock, torch.inference_mode():
                return inner.verify(last, draft, q)
        start = inner.length
        return self.batcher.submit(inner, [last] + draft, lambda logits: inner.settle(start, draft, logits, q))

    def close(self) -> None:
        with self.lock:
            self.inner.close()

    def stats(self) -> dict[str, Any]:
        return self.inner.stats()
