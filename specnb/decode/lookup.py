"""Prompt lookup decoding (Saxena 2023; Hugging Face ``prompt_lookup_num_tokens``; Spec-Bench's PLD):
a drafter without a model, which proposes what followed the last n-gram where it occurred before."""

from __future__ import annotations

from typing import Any

import torch

from .roles import RoundSettings


MAX_NGRAM = 3  # longest n-gram matched: Spec-Bench's prompt-lookup setting, ours and Hugging Face's

class PromptLookup:
    """Drafts by n-gram match in the prompt and the output so far (greedy verification only).

    For n from ``max_ngram`` down to ``min_ngram``: if the last n tokens of ``seq`` occurred
    earlier in it, the draft is the (up to g) tokens that followed their FIRST occurrence; the
    first n with a match wins. No match: an empty draft (that round is one plain cloud step).
    As Hugging Face's ``PromptLookupCandidateGenerator`` (``max_matching_ngram_size`` = ``max_ngram``),
    except that HF also cuts a draft before an EOS token it contains.

    An index of each n-gram's first start is extended with the tokens added since the last round,
    so a round costs O(max_ngram) dictionary look-ups, not a scan of ``seq``.
    """

    def __init__(self, max_ngram: int = MAX_NGRAM, min_ngram: int = 1):
        if not isinstance(max_ngram, int) or not isinstance(min_ngram, int) or not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need integers 1 <= min_ngram <= max_ngram, got min_ngram={min_ngram!r}, max_ngram={max_ngram!r}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self._reset()

    def __repr__(self) -> str:
        return f"PromptLookup(max_ngram={self.max_ngram}, min_ngram={self.min_ngram})"

    def _reset(self) -> None:
        self.first: dict[tuple[int, ...], int] = {}  # n-gram -> start of its first occurrence
        self.seen: list[int] = []  # the tokens indexed so far (a prefix of seq)

    def begin(self, prompt_ids: list[int], settings: RoundSettings) -> None:
        if settings.rule == "sample":
            raise ValueError("PromptLookup drafts without probabilities, so it cannot be verified with "
                             "verify='sample'; use verify='greedy' (or 'rank'), or an edge model to sample")
        self._reset()

    def _index(self, seq: list[int]) -> None:
        seen = self.seen
        if seq[: len(seen)] != seen:  # not an extension of what was indexed: start over
            self._reset()
            seen = self.seen
        first = self.first
        for end in range(len(seen) + 1, len(seq) + 1):  # every n-gram ending at a new position
            for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
                first.setdefault(tuple(seq[end - n:end]), end - n)
        seen.extend(seq[len(seen):])

    def draft(self, seq: list[int], g: int) -> tuple[list[int], torch.Tensor | None]:
        if g == 0:
            return [], None
        self._index(seq)
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            start = self.first[tuple(seq[-n:])] + n  # the tail's own occurrence is in the index too
            if start < len(seq):  # an earlier occurrence, with at least one token after it
                return seq[start:start + g], None
        return [], None

    def rollback(self, length: int) -> None:
        """Nothing to undo: the index only holds tokens of ``seq``, which are all kept."""

    def stats(self) -> dict[str, Any]:
        return {}
