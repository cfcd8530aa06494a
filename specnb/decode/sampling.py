"""Choosing a token: greedy or sampled, after temperature / top-k / top-p (:func:`warp`)."""

from __future__ import annotations

import torch


def warp(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Probabilities (float32, last dim) after temperature, then top-k, then top-p (nucleus) filtering."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def pick(logits: torch.Tensor, temperature: float, top_k, top_p, generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Choose the next token from ``logits`` [V]: argmax when temperature is 0, else a sample.

    Returns the token as a 1-element tensor (left on the device: no host sync) and the
    probabilities it was drawn from (None for greedy).
    """
    if temperature == 0:
        return logits.argmax(-1, keepdim=True), None
    probs = warp(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator), probs


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
