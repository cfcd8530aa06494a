"""Timers that synchronize the accelerator, peak memory, and the :class:`Generation` record."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch



def synchronize(*devices: torch.device) -> None:
    """Wait for queued CUDA work, so that a wall-clock reading covers it."""
    for dev in devices:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)


class Stopwatch:
    """Accumulates wall time of ``with sw:`` blocks, synchronizing the given devices at both ends."""

    def __init__(self, *devices: torch.device):
        self.devices = devices
        self.total = 0.0
        self._start = 0.0

    def __enter__(self) -> "Stopwatch":
        synchronize(*self.devices)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(*self.devices)
        self.total += time.perf_counter() - self._start


def reset_peak_memory(*devices: torch.device) -> None:
    for dev in devices:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)


def _indexed(dev: torch.device) -> torch.device:
    return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())


def peak_memory_bytes(*devices: torch.device) -> int:
    """CUDA max-allocated bytes when any device is a GPU (summed over GPUs), else the process peak RSS.

    The CPU figure is the process high-water mark since start (it cannot be reset), so it
    includes the weights of every model loaded in the process.
    """
    gpus = {_indexed(dev) for dev in devices if dev.type == "cuda"}  # "cuda" and "cuda:0": one GPU, counted once
    if gpus:
        return int(sum(torch.cuda.max_memory_allocated(dev) for dev in gpus))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)



def estimate_alpha(accepted: int, rejected_rounds: int) -> float:
    """Per-token acceptance probability alpha under the i.i.d. model, by maximum likelihood.

    A round that drafted g tokens and kept n < g shows n acceptances and one rejection; a fully
    accepted round shows g acceptances and no rejection (the next draft was never made). The
    likelihood alpha^accepted * (1 - alpha)^rejected_rounds peaks at
    accepted / (accepted + rejected_rounds). accepted / drafted is NOT this alpha: the drafts after
    a rejection are discarded unseen, so it underestimates alpha (0.54 for alpha 0.8 at gamma 5),
    and S(alpha, gamma, c) computed from it is too low.
    """
    total = accepted + rejected_rounds
    return accepted / total if total else 1.0


@dataclass
class Generation:
    """One decoded continuation (batch size 1).

    ``tokens`` are the new token ids only; ``trace`` holds, per speculative round, how many
    drafted tokens the cloud accepted, and ``drafted_trace`` how many the edge drafted (both
    empty for autoregressive runs).

    Metrics (``metrics`` dict): ``new_tokens``; ``wall_s`` (whole call, prefill included);
    ``tokens_per_s`` = new_tokens / wall_s; ``ttft_s`` (time to the first new token);
    ``rounds`` (draft-verify rounds); ``drafted`` / ``accepted`` (draft tokens proposed /
    accepted by the cloud); ``acceptance_rate`` = accepted / drafted; ``rejected_rounds``
    (rounds whose draft the cloud cut short); ``alpha`` = accepted / (accepted + rejected_rounds),
    the per-token acceptance probability of Leviathan et al. (2023) estimated by maximum likelihood
    under their i.i.d. model (:func:`estimate_alpha`; None where the rounds are not
    observed, as for Hugging Face). ``acceptance_rate`` is not that alpha: drafts after the first
    rejection are discarded unseen, so it reads 0.54 where alpha is 0.8 at gamma 5. Two per-round
    averages that peers define differently:

    * ``mean_accepted_len`` = accepted / rounds: accepted *draft* tokens per round, as gpt-fast
      counts it;
    * ``tokens_per_round`` = new_tokens / rounds: tokens *emitted* per round including the
      cloud's own (correction or bonus) token, as Spec-Bench and vLLM count it (the
      "mean accepted tokens" of those papers).

    ``cloud_calls`` / ``edge_calls`` count forward calls (prefill included); ``draft_s`` /
    ``verify_s`` the time in drafting / verifying; ``peak_mem_bytes`` see
    :func:`peak_memory_bytes`; ``compile_s`` the one-off compile + warm-up time of an
    optimized run, reported apart from ``wall_s``. Autoregressive runs report 0 for the
    speculative counters and None for their ratios.
    """

    tokens: list[int]
    text: str
    metrics: dict[str, Any]
    trace: list[int] = field(default_factory=list)
    drafted_trace: list[int] = field(default_factory=list)


def summarize(
    *,
    new_tokens: int,
    wall_s: float,
    ttft_s: float,
    rounds: int = 0,
    drafted: int = 0,
    accepted: int = 0,
    rejected_rounds: int | None = 0,
    cloud_calls: int = 0,
    edge_calls: int = 0,
    draft_s: float = 0.0,
    verify_s: float = 0.0,
    peak_mem_bytes: int = 0,
    compile_s: float = 0.0,
) -> dict[str, Any]:
    """The metrics dict of one generation, ratios derived here and nowhere else."""
    return {
        "new_tokens": new_tokens,
        "wall_s": wall_s,
        "tokens_per_s": new_tokens / wall_s if wall_s > 0 else None,
        "ttft_s": ttft_s,
        "rounds": rounds,
        "drafted": drafted,
        "accepted": accepted,
        "acceptance_rate": accepted / drafted if drafted else None,
        "alpha": estimate_alpha(accepted, rejected_rounds) if drafted and rejected_rounds is not None else None,
        "rejected_rounds": rejected_rounds,
        "mean_accepted_len": accepted / rounds if rounds else None,
        "tokens_per_round": new_tokens / rounds if rounds else None,
        "cloud_calls": cloud_calls,
        "edge_calls": edge_calls,
        "draft_s": draft_s,
        "verify_s": verify_s,
        "peak_mem_bytes": peak_mem_bytes,
        "compile_s": compile_s,
    }


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """First index where two token lists differ (a length difference counts), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
