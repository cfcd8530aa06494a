"""Server-side speculation on a batching server: the sessions' draft steps and verify rounds share batches.

With ``specnb serve --draft D --batch dynamic|wait`` a ``G`` message asking for server-side
speculation runs the usual loop (:func:`specnb.decode.loops.speculative`) with two stand-ins for the
models:

* :class:`ServerDraft`: the draft model, whose drafters (:class:`BatchedDrafter`) send each draft
  step (one forward of 1 or 2 tokens) to the server's *draft* :class:`~specnb.link.server_batching.Batcher`,
  so the draft steps of concurrent server-side generations run in one forward of the draft model
  (its prefill, and a drafter with a per-token stop rule or a suppressed vocabulary, run alone under
  the lock);
* :class:`ServerCloud`: the cloud model, whose verifiers (:class:`BatchedVerifier`) send each round
  to the server's cloud :class:`~specnb.link.server_batching.Batcher`, so the verify rounds of concurrent
  server-side generations, edge-cloud sessions and cloud-only streams run in one forward.

Each generation keeps its own caches (draft and cloud), its own generators and its own acceptance
rule, exactly as the solo loop; only where the logits are computed changes (one forward for many
sessions, equal to the solo forward to float rounding: :mod:`specnb.link.server_batching`). A draft step
picks its token from the last position's logits as :class:`~specnb.decode.drafting.EdgeDrafter`
does. Both batchers hold the server's one model lock while they run, so draft and verify forwards take
turns as on one accelerator (the server's compute is one resource for every method). Without batching
the server keeps the old path (both models under the one model lock, one generation at a time).
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from ..decode.pair import as_drafter, as_verifier
from ..decode.roles import RoundSettings, Verdict
from ..decode.sampling import pick
from ..decode.steps import as_ids
from .server_batching import Batcher, batchable


class _Delegate:
    """Reads what the loop asks of a model (tokenizer, vocabulary, device, spec) from the model."""

    def __init__(self, model: Any):
        self._model = model

    def __getattr__(self, name: str) -> Any:  # only called for names this object lacks
        return getattr(self._model, name)


class ServerDraft(_Delegate):
    """The server's draft model as a drafter factory whose drafters' steps go through ``batcher``."""

    def __init__(self, model: Any, batcher: Batcher):
        super().__init__(model)
        self._batcher = batcher

    def drafter(self, settings: RoundSettings) -> "BatchedDrafter":
        with self._batcher.lock:
            inner = as_drafter(self._model, settings)
        return BatchedDrafter(inner, self._batcher)


class _DraftRows:
    """An edge drafter's cache as the batcher sees a session's (``steps``, ``length``, ``vocab``,
    ``settings``, ``calls``, ``score``): each draft step is a 'round' of the tokens it feeds."""

    def __init__(self, drafter: Any):
        self.drafter = drafter
        self.steps, self.settings, self.vocab = drafter.steps, drafter.settings, drafter.vocab
        self.length, self.calls = drafter.length, 0

    def score(self, last: int, rest: list[int]) -> torch.Tensor:
        """Alone in its batch: the drafter's own step (last position's logits only, as it drafts)."""
        ids = as_ids([last] + rest, self.drafter.model.device)
        with torch.inference_mode():
            logits = self.steps.step(ids, 1, self.vocab)
        self.length += ids.shape[1]
        self.calls += 1
        return logits


class BatchedDrafter:
    """An in-process edge drafter on the server whose draft steps join the draft model's batches.

    Per step: feed what the cache has not seen (1 or 2 tokens, then 1), take the last position's
    logits, pick the token with the drafter's own settings and generator (argmax, or a sample and
    the probabilities it came from). The cache then holds ``seq + draft[:-1]``, as the solo drafter's.
    """

    def __init__(self, inner: Any, batcher: Batcher):
        self.inner, self.batcher, self.lock = inner, batcher, batcher.lock

    def begin(self, prompt_ids: list[int], settings: RoundSettings) -> None:
        with self.lock, torch.inference_mode():
            self.inner.begin(prompt_ids, settings)

    def _alone(self) -> bool:
        d = self.inner
        return not batchable(d) or getattr(d, "stop", None) is not None or getattr(d, "suppress", None) is not None

    def draft(self, seq: list[int], g: int) -> tuple[list[int], torch.Tensor | None]:
        d = self.inner
        if g == 0:
            return [], None
        if self._alone():
            with self.lock, torch.inference_mode():
                return d.draft(seq, g)
        rows = _DraftRows(d)
        feed, tokens, qs = list(seq[d.length:]), [], []
        for _ in range(g):
            logits = self.batcher.submit(rows, feed, lambda lg: lg[-1])
            tok, q = pick(logits, d.temperature, d.settings.top_k, d.settings.top_p, d.generator)
            tokens.append(int(tok))
            qs.append(q)
            feed = [tokens[-1]]
        d.length = len(seq) + len(tokens) - 1  # it fed seq + draft[:-1]
        d.calls += len(tokens)
        return tokens, torch.stack(qs) if d.sampling else None

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
