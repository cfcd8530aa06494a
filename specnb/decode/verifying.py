"""The cloud side of a round: the acceptance rules (pure functions) and the in-process verifier.

:class:`CloudVerifier` is free of loop concerns (no schedule, no EOS, no timers): the local loop
drives it, and a cloud service runs the same class behind a link.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .roles import RoundSettings, Verdict
from .sampling import make_generator, warp
from .steps import Model, Steps, as_ids, cut_for, start_generation

def accept_greedy(draft: list[int], target: list[int]) -> tuple[int, int]:
    """Longest prefix of ``draft`` equal to the cloud's argmax ``target`` (len(draft)+1), then the cloud's token."""
    n = 0
    while n < len(draft) and draft[n] == target[n]:
        n += 1
    return n, target[n]


def accept_rank(draft: list[int], logits: torch.Tensor, k: int) -> tuple[int, int]:
    """Accept draft tokens while each is within the cloud's top-``k`` at its position (lossy on purpose);
    then add the cloud's argmax. ``k = 1`` is the greedy rule."""
    g = len(draft)
    if g:
        top = torch.topk(logits[:g], min(k, logits.shape[-1]), dim=-1).indices
        hits = (top == torch.tensor(draft, device=logits.device)[:, None]).any(-1).tolist()
    else:
        hits = []
    n = 0
    while n < g and hits[n]:
        n += 1
    return n, int(logits[n].argmax())


def accepted_prefix(draft: list[int], p: torch.Tensor, qx: torch.Tensor, generator) -> int:
    """How many drafts speculative sampling keeps: x_i is accepted with probability
    min(1, p_i(x_i) / q_i(x_i)), until the first rejection.

    p: cloud probabilities [>= g, V]; qx: [g] the edge's probability of each drafted token (all the
    rule needs of q to decide: what lets a link send 4 bytes per draft instead of a row of V).
    """
    g = len(draft)
    n = 0
    if g:
        x = torch.tensor(draft, device=p.device)
        ratio = p[torch.arange(g, device=p.device), x] / qx.to(p.device)
        u = torch.rand(g, generator=generator, device=p.device)
        accepted = (u < ratio).tolist()  # u < ratio  <=>  accepted with probability min(1, ratio)
        while n < g and accepted[n]:
            n += 1
    return n


def residual_sample(p_row: torch.Tensor, q_row: torch.Tensor, generator) -> int:
    """After a rejection: a sample of normalize(max(0, p - q)) (p itself if that is all zero).

    A padded output layer on either side leaves the shared vocabulary: the first min(len) entries.
    """
    v = min(len(p_row), len(q_row))
    p_row, q_row = p_row[:v], q_row[:v]
    residual = (p_row - q_row).clamp_min(0.0)
    total = residual.sum()
    dist = residual / total if total > 0 else p_row
    return int(torch.multinomial(dist, 1, generator=generator))


def accept_sample(draft: list[int], p: torch.Tensor, q: torch.Tensor, generator) -> tuple[int, int]:
    """Speculative sampling: exact in distribution to sampling from the cloud.

    p: cloud probabilities [g+1, V]; q: edge probabilities the drafts were drawn from [g, V].
    Accept draft x_i with probability min(1, p_i(x_i) / q_i(x_i)) (:func:`accepted_prefix`); at the
    first rejection, sample from normalize(max(0, p_i - q_i)) (:func:`residual_sample`); after a full
    acceptance, sample the bonus token from p_g.
    """
    g = len(draft)
    qx = q[torch.arange(g, device=q.device), torch.tensor(draft, device=q.device)] if g else q[:0, 0]
    n = accepted_prefix(draft, p, qx, generator)
    if n < g:
        return n, residual_sample(p[n], q[n], generator)
    return n, int(torch.multinomial(p[g], 1, generator=generator))


def accept_split(draft: list[int], p: torch.Tensor, qx: torch.Tensor, generator) -> tuple[int, int | None]:
    """The cloud's half of :func:`accept_sample` when the edge sits across a link (DSSD's split).

    The edge sends up the draft ids and q_i(x_i) (4 + 4 bytes per token); the cloud decides
    acceptance and either samples the bonus token itself (full acceptance: (accepted, token)) or
    returns (accepted, None), and sends its row p_n down (4 bytes per vocabulary entry) for the edge,
    which holds q_n, to draw :func:`residual_sample`. Full q rows up would cost 4 * V bytes per
    drafted token every round; this costs 4 * V bytes only in rounds with a rejection. Exact in
    distribution, as the same two steps run in the same order on the same generator.
    """
    g = len(draft)
    n = accepted_prefix(draft, p, qx, generator)
    if n == g:
        return n, int(torch.multinomial(p[g], 1, generator=generator))
    return n, None


class CloudVerifier:
    """The cloud model in this process as a :class:`~specnb.decode.roles.Verifier`, for one generation.

    Its KV cache (:class:`~specnb.decode.steps.Steps`: dynamic, or static and compiled when
    ``settings.optimized``) holds ``seq[:-1]`` between rounds. :meth:`score` runs ``[last] + draft``
    padded up to the next of ``settings.widths`` (one compiled graph per width) and :meth:`keep`
    cuts the cache back; :meth:`verify` is the two around the rule. Sampling draws from its own
    generator, seeded with ``settings.seed + 1`` (the drafter's is ``settings.seed``).
    """

    def __init__(self, model: Model, settings: RoundSettings):
        self.model = model
        self.eos_ids = model.eos_ids
        self.set_up(settings)

    def set_up(self, settings: RoundSettings) -> None:
        """A new cache and compiled steps for ``settings``; the rule, the padding and the levers resolved
        here, once: a round checks no flags."""
        self.vocab = settings.vocab or self.model.vocab_size
        self.steps = Steps(self.model, settings.max_len, settings.optimized, settings.compile,
                           shapes=tuple((w, w) for w in settings.widths))
        self.compile_s = self.steps.compile_s
        self.calls = 0
        self.length = 0  # tokens in the cache
        self.settings = settings
        widths = sorted(settings.widths)
        self._pad_to = {n: next(w for w in widths if w >= n) for n in range(1, widths[-1] + 1)} if widths else {}
        off = settings.levers_off
        self._keep_logits: Callable[[int], int] = (lambda n: 0) if "logits_to_keep" in off else (lambda n: n)  # 0: all
        self._cut = cut_for(off)
        self._rule = {"greedy": self._greedy, "rank": self._rank, "sample": self._sample}[settings.rule]
        seed = settings.seed
        self.generator = make_generator(None if seed is None else seed + 1, self.model.device)

    def begin(self, prompt_ids: list[int], settings: RoundSettings) -> None:
        if self.steps is None:
            raise RuntimeError("this verifier is closed; build a new one for the next generation")
        start_generation(self, prompt_ids, settings, lambda r: r._keep_logits(1))

    def score(self, last: int, draft: list[int]) -> torch.Tensor:
        """Logits [len(draft) + 1, vocab] of the cloud after each of ``[last] + draft``, in one forward call.

        The cache grows by the call's (padded) width; :meth:`keep` cuts it back.
        """
        n = len(draft) + 1
        width = self._pad_to.get(n, n)
        ids = as_ids([last] + draft + [0] * (width - n), self.model.device)
        with torch.inference_mode():
            logits = self.steps.step(ids, self._keep_logits(width), self.vocab)[:n]
        self.length += width
        self.calls += 1
        return logits

    def keep(self, length: int) -> None:
        """Cut the cache back to its first ``length`` tokens (the padding and rejected positions go)."""
        self._cut(self.steps.cache, self.length, length)
        self.length = length

    def verify(self, last: int, draft: list[int], q: torch.Tensor | None) -> Verdict:
        start = self.length
        return self.settle(start, draft, self.score(last, draft), q)

    def settle(self, start: int, draft: list[int], logits: torch.Tensor, q: torch.Tensor | None) -> Verdict:
        """The rule on a round's logits (scored here, or in a batch across sessions:
        :mod:`specnb.link.server_batching`), then the cache cut back; ``start``: the length before the round."""
        n, token = self._rule(draft, logits, q)
        self.keep(start + 1 + n)  # the cache then holds seq + draft[:n]; the cloud's token is next round's input
        return Verdict(n, token)

    def verify_split(self, last: int, draft: list[int], qx: torch.Tensor) -> tuple[int, int | None, torch.Tensor | None]:
        """The sample rule with the edge across a link (:func:`accept_split`): ``qx`` holds only the
        edge's probability of each draft. Returns (accepted, the cloud's token or None, the row p_n
        the edge resamples from after a rejection or None)."""
        start = self.length
        return self.settle_split(start, draft, self.score(last, draft), qx)

    def settle_split(self, start: int, draft: list[int], logits: torch.Tensor,
                     qx: torch.Tensor) -> tuple[int, int | None, torch.Tensor | None]:
        """:meth:`verify_split` on a round's logits already scored (:meth:`settle`)."""
        s = self.settings
        p = warp(logits, s.temperature, s.top_k, s.top_p)
        n, token = accept_split(draft, p, qx, self.generator)
        self.keep(start + 1 + n)
        return n, token, (p[n] if token is None else None)

    def _greedy(self, draft: list[int], logits: torch.Tensor, q) -> tuple[int, int]:
        return accept_greedy(draft, logits.argmax(-1).tolist())

    def _rank(self, draft: list[int], logits: torch.Tensor, q) -> tuple[int, int]:
        return accept_rank(draft, logits, self.settings.rank_k)

    def _sample(self, draft: list[int], logits: torch.Tensor, q: torch.Tensor | None) -> tuple[int, int]:
        s = self.settings
        p = warp(logits, s.temperature, s.top_k, s.top_p)
        q = q.to(p.device) if draft else p[:0]
        return accept_sample(draft, p, q, self.generator)

    def close(self) -> None:
        self.steps = None  # frees the cache
        self.length = 0

    def stats(self) -> dict[str, Any]:
        return {"cloud_calls": self.calls, "compile_s": self.compile_s}
