"""Speculative sampling split across the link (DSSD's split), exact in distribution.

The rule (Leviathan et al. 2023) needs, per drafted token x_i, only q_i(x_i) to decide acceptance,
and the full row q_n only to resample after the first rejection. So the edge sends up the draft
ids and q_i(x_i) (4 + 4 bytes per token), the cloud decides acceptance and either samples the bonus
token itself (full acceptance) or sends its row p_n down (4 bytes per vocabulary entry) and the
edge, which holds q_n, samples the residual normalize(max(0, p_n - q_n)). Full q rows up would cost
4 * V bytes per drafted token every round; this costs 4 * V bytes only in rounds with a rejection.
"""

from __future__ import annotations

import torch


def accept_split(draft: list[int], p: torch.Tensor, qx: torch.Tensor, generator) -> tuple[int, int | None]:
    """Cloud side. p: [g+1, V] cloud probabilities; qx: [g] edge probability of each drafted token.

    Accept x_i with probability min(1, p_i(x_i) / q_i(x_i)) until the first rejection. Returns
    (accepted, bonus token) after a full acceptance, (accepted, None) when the edge must resample.
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
    if n == g:
        return n, int(torch.multinomial(p[g], 1, generator=generator))
    return n, None


def resample(p_row: torch.Tensor, q_row: torch.Tensor, generator) -> int:
    """Edge side, after a rejection: a sample of normalize(max(0, p - q)) (p itself if that is all zero)."""
    v = min(len(p_row), len(q_row))  # a padded output layer on either side: the shared vocabulary
    p_row, q_row = p_row[:v], q_row[:v]
    residual = (p_row - q_row).clamp_min(0.0)
    total = residual.sum()
    dist = residual / total if total > 0 else p_row
    return int(torch.multinomial(dist, 1, generator=generator))
