"""A trimmed output layer: logits for a frequent subset of the vocabulary, returned at full size.

A small edge drafting for a real cloud spends most of its step in the output layer: SmolLM2-135M's
is 49,152 x 576 (28.3M parameters), more than four of its decoder layers. Drafting only ever needs
the tokens the cloud is likely to emit, so the edge computes logits for ``K`` kept rows (FR-Spec,
2025: the draft's head cut to the most frequent tokens) and places them in a vocabulary-sized
tensor filled with ``-inf``:

    logits[..., kept] = h @ W[kept]^T        logits[..., other] = -inf

Callers see an ordinary causal LM of the full vocabulary: greedy drafts are the argmax over the
kept set, a sampled draft has probability 0 outside it (softmax of -inf), and the cloud still
verifies every token over its full vocabulary, so greedy outputs stay the cloud's and speculative
sampling stays exact (the acceptance rule only needs the draft's probabilities, zeros included).
The scatter costs O(vocabulary) memory writes, against O(K x hidden) multiply-adds for the matmul.

On disk an edge stays a plain tied-embedding model (anyone's ``from_pretrained`` reads it, with the
full head); the kept ids live beside it in :data:`HEAD_FILE`, and :func:`apply` swaps the head in
after loading (:func:`specnb.models.load` does so).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

HEAD_FILE = "trimmed_head.json"  # {"kept": [ids...], "vocab_size": V, ...} beside config.json


class TrimmedHead(torch.nn.Module):
    """``h -> logits`` over the full vocabulary from the ``kept`` rows of ``weight`` only (-inf elsewhere)."""

    def __init__(self, weight: torch.Tensor, kept: torch.Tensor) -> None:
        super().__init__()
        kept = torch.as_tensor(kept, dtype=torch.long, device=weight.device)
        if kept.ndim != 1 or kept.numel() == 0 or len(set(kept.tolist())) != kept.numel():
            raise ValueError("kept must be a non-empty list of distinct token ids")
        if int(kept.min()) < 0 or int(kept.max()) >= weight.shape[0]:
            raise ValueError(f"kept ids must lie in [0, {weight.shape[0]}), got {int(kept.min())}..{int(kept.max())}")
        self.vocab_size = int(weight.shape[0])
        self.register_buffer("kept", kept, persistent=False)
        self.register_buffer("rows", weight.detach()[kept].clone(), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        small = torch.nn.functional.linear(hidden, self.rows)  # [..., K]
        out = small.new_full((*small.shape[:-1], self.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.kept, small)

    def extra_repr(self) -> str:
        return f"kept={self.kept.numel()}, vocab_size={self.vocab_size}"


def read_kept(folder: str | Path) -> list[int] | None:
    """The kept ids recorded in ``folder`` (None when the folder has no trimmed head)."""
    path = Path(folder) / HEAD_FILE
    if not path.is_file():
        return None
    return [int(i) for i in json.loads(path.read_text(encoding="utf-8"))["kept"]]


def apply(model: torch.nn.Module, kept: list[int] | torch.Tensor) -> torch.nn.Module:
    """Swap ``model``'s output layer for a :class:`TrimmedHead` over ``kept`` (in place; returned).

    The kept rows are copied from the output layer's weight (the tied embedding for SmolLM2), in the
    model's dtype and on its device, so load the model in its final dtype first.
    """
    head = model.get_output_embeddings()
    if isinstance(head, TrimmedHead):
        raise ValueError("the model's output layer is trimmed already")
    if getattr(head, "bias", None) is not None:
        raise ValueError("a trimmed head needs an output layer without bias")
    model.set_output_embeddings(TrimmedHead(head.weight, kept))
    return model
