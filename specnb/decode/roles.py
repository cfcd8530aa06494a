"""The two roles of a speculative round, as interfaces: a *drafter* proposes, a *verifier* decides.

One round (:func:`specnb.decode.loops.speculative` drives it; it does not know which implementations
it holds)::

    draft, q = drafter.draft(seq, g)          # up to g token ids; q: [len(draft), V] probabilities
                                              # they were sampled from (None when drafting greedily)
    verdict  = verifier.verify(seq[-1], draft, q)
    drafter.rollback(len(seq) + verdict.accepted)   # forget what the cloud threw away
    seq     += draft[:verdict.accepted] + [verdict.token]

Implementations:

* drafters: the edge model in this process (a ``LoadedModel`` passed as ``edge`` becomes one),
  :class:`specnb.PromptLookup` (n-gram match in the prompt and output so far, no model);
* verifiers: the cloud model in this process (a ``LoadedModel`` passed as ``cloud`` becomes one),
  a cloud across a link (:func:`specnb.connect`).

``speculative(edge, cloud, ...)`` turns its arguments into these roles in :mod:`specnb.decode.pair`
(an object that already is one is used as is, a loaded model becomes the in-process role, a remote
cloud builds one for this generation), after checking the pair there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Verdict:
    """What a verifier answers for one round."""

    accepted: int  # drafted tokens kept, a prefix of the draft (0..len(draft))
    token: int  # the cloud's own next token: the correction at the first rejection, or the bonus token
    # the cloud's own greedy tokens after ``token``, decoded while it waited for this round (``lead``:
    # specnb.decode.lead); committed with it
    extra: tuple[int, ...] = ()

    def emitted(self, draft: list[int], eos: frozenset[int]) -> list[int]:
        """The round's new tokens: the accepted drafts, the cloud's token and its ``extra`` tokens, cut after the
        first EOS (drafts accepted past an EOS still count in ``accepted``: the acceptance rate measures
        agreement, not length)."""
        tokens = draft[:self.accepted] + [self.token] + list(self.extra)
        for i, t in enumerate(tokens):
            if t in eos:
                return tokens[: i + 1]
        return tokens


@dataclass(frozen=True)
class RoundSettings:
    """Everything a verifier (and a sampling drafter) needs to know about one generation.

    ``rule``: ``greedy`` | ``sample`` | ``rank``; ``rank_k`` for ``rank``; ``temperature`` /
    ``top_k`` / ``top_p`` shape the distributions both sides sample from (``sample`` only);
    ``seed`` seeds the side's own generator (None: unseeded); ``optimized`` / ``compile``: the
    side's set-up (static cache, compiled steps; see :class:`specnb.decode.steps.Steps`);
    ``widths``: verification input lengths to pad to for fixed-shape compiled steps (empty: no
    padding); ``levers_off``: ablations of the plain loop (:data:`specnb.decode.loops.LEVERS`);
    ``max_len``: prompt + new tokens + longest draft + 1, so static caches can be sized;
    ``vocab``: the token ids both sides may emit, when the loop knows it (0: the model's own; a pair
    cuts its logits to the smaller of the two); ``lead``: a remote cloud decodes its own greedy tokens while it
    waits for the next round and sends them with the next verdict (:mod:`specnb.decode.lead`).
    """

    rule: str = "greedy"
    rank_k: int = 5
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    optimized: bool = False
    compile: bool | None = None
    widths: tuple[int, ...] = ()
    levers_off: frozenset[str] = frozenset()
    max_len: int = 0
    vocab: int = 0
    lead: bool = False


@runtime_checkable
class Drafter(Protocol):
    """Proposes tokens. Holds whatever state it drafts from (a KV cache, an n-gram index)."""

    def begin(self, prompt_ids: list[int], settings: RoundSettings) -> None:
        """Start a generation from ``prompt_ids`` (e.g. prefill all but the last token)."""

    def draft(self, seq: list[int], g: int) -> tuple[list[int], torch.Tensor | None]:
        """Up to ``g`` proposed next tokens after ``seq`` (prompt + output so far; may be fewer,
        even none) and, when sampling, the [len(draft), V] probabilities they were drawn from."""

    def rollback(self, length: int) -> None:
        """Only ``seq[:length]`` survived the round: drop state built on anything after it."""

    def stats(self) -> dict[str, Any]:
        """Extra metrics of this generation (e.g. forward calls), merged into ``Generation.metrics``."""


@runtime_checkable
class Verifier(Protocol):
    """Scores the last token plus the draft in ONE call and applies the acceptance rule.

    Keeps its own KV cache holding ``seq[:-1]`` between rounds (it crops the rejected positions
    itself). ``vocab`` is the number of token ids both sides may emit; ``eos_ids`` ends a generation.
    """

    vocab: int
    eos_ids: frozenset[int]

    def begin(self, prompt_ids: list[int], settings: RoundSettings) -> None:
        """Start a generation: take all prompt tokens but the last into the cache."""

    def verify(self, last: int, draft: list[int], q: torch.Tensor | None) -> Verdict:
        """Score ``[last] + draft``; keep a prefix of ``draft`` by the rule; add the cloud's token."""

    def close(self) -> None:
        """Free the generation's state (a remote session, a cache)."""

    def stats(self) -> dict[str, Any]:
        """Extra metrics of this generation (a link adds ``link_s``, ``bytes_up``, ``bytes_down``,
        ``round_trips``), merged into ``Generation.metrics``."""

