"""The edge model in this process as a :class:`~specnb.decode.roles.Drafter`: drafts token by token on its KV cache."""

from __future__ import annotations

from typing import Any, Callable

import torch

from .roles import RoundSettings
from .adaptive import top_probability
from .sampling import make_generator, pick
from .steps import Model, Steps, as_ids, cut_for, start_generation
from ..threads import thread_count


def _all_at_once(tokens: list[torch.Tensor]) -> list[int]:
    return torch.cat(tokens).tolist()  # one host sync per round


def _runner_up(logits: torch.Tensor | None, probs: torch.Tensor | None, tok: torch.Tensor) -> torch.Tensor:
    """[runner-up id, p(tok), p(runner-up)] (float) under ``probs``, or the softmax of ``logits``: the runner-up
    is the likeliest token other than ``tok``."""
    p = logits.float().softmax(-1) if probs is None else probs
    top, idx = p.topk(2)
    first = idx[0] != tok.view(())
    runner = torch.where(first, idx[0], idx[1])
    return torch.stack((runner.float(), p[tok.view(())], torch.where(first, top[0], top[1])))


class EdgeDrafter:
    """Drafts ``g`` tokens one forward call each, under the edge's thread cap, greedily or (for
    ``settings.rule == "sample"``) by sampling, returning the [g, V] probabilities drawn from.

    Its cache holds ``seq[:length]``; a round first feeds what it has not seen (the cloud's last
    token, and the last draft after a fully accepted round), so it feeds 1 or 2 tokens then 1 per
    step: two input shapes, compiled ahead when ``settings.optimized``.
    """

    def __init__(self, model: Model, settings: RoundSettings):
        self.model = model
        self.threads = model.spec.threads
        self.suppress: torch.Tensor | None = None  # [vocab] bool: tokens it may not draft (a translating drafter's)
        # per-token stop rule (specnb.decode.adaptive), called as stop(k, confidence) after the k-th
        # draft; None: draft all g (no per-token host sync). confidences: those of the last draft.
        self.stop: Callable[[int, float], bool] | None = None
        self.confidences: list[float] = []
        # drafting ahead with branches (specnb.decode.ahead, ``hedge``) sets this to a list: each draft then
        # reports, per drafted token, (the runner-up id, p(drafted token), p(runner-up)) under the edge's softmax
        self.alternatives: list[tuple[int, float, float]] | None = None
        self.set_up(settings)

    def set_up(self, settings: RoundSettings) -> None:
        """A new cache and compiled steps for ``settings``, its sampling settings and levers resolved here,
        once: a round checks no flags. (The stop rule and the suppressed tokens stay: others set them.)"""
        with thread_count(self.threads):
            self.steps = Steps(self.model, settings.max_len, settings.optimized, settings.compile, shapes=((1, 1), (2, 1)))
        self.calls = 0
        self.length = 0  # tokens in the cache
        self.settings = settings
        self.vocab = settings.vocab or self.model.vocab_size
        self.sampling = settings.rule == "sample"
        self.temperature = settings.temperature if self.sampling else 0.0
        self.generator = make_generator(settings.seed, self.model.device)
        off = settings.levers_off
        self._keep_logits = 0 if "logits_to_keep" in off else 1  # 0: every position
        # one_sync off: each token goes to the host as it is drafted
        self._on_draft: Callable[[torch.Tensor], Any] = int if "one_sync" in off else (lambda t: t)
        self._to_host: Callable[[list], list[int]] = list if "one_sync" in off else _all_at_once
        self._cut = cut_for(off)

    def begin(self, prompt_ids: list[int], settings: RoundSettings) -> None:
        start_generation(self, prompt_ids, settings, lambda r: r._keep_logits, lambda: thread_count(self.threads))

    def draft(self, seq: list[int], g: int) -> tuple[list[int], torch.Tensor | None]:
        if g == 0:
            return [], None
        tokens, qs, alts = [], [], []
        with thread_count(self.threads):
            inp = as_ids(seq[self.length:], self.model.device)
            self.confidences = []
            for k in range(1, g + 1):
                logits = self.steps.step(inp, self._keep_logits, self.vocab)[-1]
                if self.suppress is not None:
                    logits = logits.masked_fill(self.suppress, float("-inf"))
                tok, q = pick(logits, self.temperature, self.settings.top_k, self.settings.top_p, self.generator)
                tokens.append(self._on_draft(tok))
                qs.append(q)
                if self.alternatives is not None:
                    alts.append(_runner_up(logits if q is None else None, q, tok))
                inp = tok.view(1, 1)
                if self.stop is not None:
                    self.confidences.append(top_probability(logits, q))
                    if k < g and self.stop(k, self.confidences[-1]):
                        break
            draft = self._to_host(tokens)
            if self.alternatives is not None:
                self.alternatives = [(int(r), p, s) for r, p, s in torch.stack(alts).tolist()]
        self.length = len(seq) + len(draft) - 1  # it fed seq + draft[:-1]
        self.calls += len(draft)
        return draft, torch.stack(qs) if self.sampling else None

    def catch_up(self, seq: list[int]) -> None:
        """Feed ``seq[self.length:-1]`` in one eager call, so that the next :meth:`draft` feeds one token. For
        a caller whose context grows by more than the 1 or 2 tokens a round feeds (a translating drafter
        re-syncing its text), with compiled steps that take only those shapes."""
        if len(seq) - 1 > self.length:
            with thread_count(self.threads):
                self.steps.prefill(seq[self.length:-1], self.vocab, self._keep_logits)
            self.calls += 1
            self.length = len(seq) - 1

    def rollback(self, length: int) -> None:
        keep = min(self.length, length)
        self._cut(self.steps.cache, self.length, keep)
        self.length = keep

    def stats(self) -> dict[str, Any]:
        return {"edge_calls": self.calls, "compile_s": self.steps.compile_s}
