"""Intervals for speed-ups: a percentile bootstrap over prompts x repetitions.

A timed run is a table of (tokens, seconds), one entry per repetition and prompt. Its speed is
tokens per second over the whole table (all tokens / all time, the way the grid aggregates).
A speed-up is the ratio of two such speeds, and two things make it uncertain:

* the prompts: they differ in length and in how well the edge guesses them, and the speed-up
  is a statement about the workload the prompts stand for. Both runs decoded the same prompts,
  so prompts are resampled *paired*: one resampled set of prompt indices for both runs;
* the clock: repetitions of the same work take different times on a shared machine. Runs made
  in different processes (grid cells) have unrelated repetitions, so each run's repetitions are
  resampled on their own; repetitions interleaved in one process (``specnb bench``) share the
  machine's state, so there they are resampled *paired* too (``paired_reps=True``).

The 95% interval is the 2.5th and 97.5th percentile of the ratio over ``n_boot`` resamples
(a fixed seed: the same data give the same interval). With few prompts and repetitions the
percentile bootstrap is somewhat too narrow; it is a floor on the uncertainty, not a ceiling.
An interval that holds 1.0 means "no measurable difference".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
N_BOOT = 2000


@dataclass(frozen=True)
class Interval:
    """A ratio with its bootstrap interval."""

    value: float
    low: float
    high: float

    @property
    def holds_one(self) -> bool:
        """True when the interval cannot tell the ratio from 1.0: no measurable difference."""
        return self.low <= 1.0 <= self.high

    def text(self, digits: int = 2) -> str:
        """``1.32x (95% CI 1.25-1.40)``."""
        return f"{self.value:.{digits}f}x (95% CI {self.low:.{digits}f}-{self.high:.{digits}f})"


def as_table(entries: list[dict] | np.ndarray) -> np.ndarray:
    """A [reps, prompts, 2] array of (tokens, seconds) from a nested list or from per-entry dicts
    ``{"rep": r, "prompt": i, "new_tokens": n, "wall_s": s}``."""
    if isinstance(entries, np.ndarray):
        return entries.astype(float)
    if entries and isinstance(entries[0], dict):
        reps = max(e["rep"] for e in entries) + 1
        prompts = max(e["prompt"] for e in entries) + 1
        out = np.full((reps, prompts, 2), np.nan)
        for e in entries:
            out[e["rep"], e["prompt"]] = (e["new_tokens"], e["wall_s"])
        if np.isnan(out).any():
            raise ValueError("every repetition must time every prompt (missing entries in the table)")
        return out
    return np.asarray(entries, dtype=float)


def speed(table: np.ndarray) -> float:
    """Tokens per second over a whole [reps, prompts, 2] table."""
    return float(table[..., 0].sum() / table[..., 1].sum())


def ratio_interval(a, b, *, paired_reps: bool = False, n_boot: int = N_BOOT, level: float = LEVEL,
                   seed: int = 0) -> Interval:
    """Speed of ``a`` over speed of ``b``, each a [reps, prompts, 2] table of (tokens, seconds) on
    the same prompts (same order), with its percentile-bootstrap interval (see the module doc)."""
    a, b = as_table(a), as_table(b)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1] != b.shape[1]:
        raise ValueError(f"both tables must be [reps, prompts, 2] over the same prompts, got {a.shape} and {b.shape}")
    if paired_reps and a.shape[0] != b.shape[0]:
        raise ValueError("paired repetitions need the same number of repetitions on both sides")
    rng = np.random.default_rng(seed)
    prompts = a.shape[1]
    p_idx = rng.integers(0, prompts, size=(n_boot, prompts))
    ra = rng.integers(0, a.shape[0], size=(n_boot, a.shape[0]))
    rb = ra if paired_reps else rng.integers(0, b.shape[0], size=(n_boot, b.shape[0]))
    low, high = _percentiles(_speeds(a, ra, p_idx) / _speeds(b, rb, p_idx), level)
    return Interval(speed(a) / speed(b), low, high)


def mean_interval(values, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the percentile-bootstrap interval of the mean of ``values`` (resampled with
    replacement, ``n_boot`` times, a fixed seed); one value gives a zero-width interval."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("no values to average")
    if x.size == 1:
        return float(x[0]), float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    low, high = _percentiles(x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1), level)
    return float(x.mean()), low, high


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` interval of the resampled statistic (percentile bootstrap)."""
    tail = (1.0 - level) / 2
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)


def _speeds(t: np.ndarray, reps: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """Speed of each resample: rows of ``reps`` x columns of ``prompts``, summed."""
    # t[reps][:, :, prompts] for every resample k: [n_boot, R, P, 2]
    picked = t[reps[:, :, None], prompts[:, None, :]]
    return picked[..., 0].sum(axis=(1, 2)) / picked[..., 1].sum(axis=(1, 2))


def spread(values: list[float] | np.ndarray) -> float:
    """Relative spread of repeated measurements: (max - min) / median."""
    v = np.asarray(values, dtype=float)
    return float((v.max() - v.min()) / np.median(v)) if v.size else float("nan")
