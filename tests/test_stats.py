"""The speed-up interval: a percentile bootstrap over prompts x repetitions."""

from __future__ import annotations

import numpy as np
import pytest

from specnb.measure.stats import Interval, as_table, ratio_interval, speed


def table(tokens, seconds_by_rep):
    """[reps, prompts, 2] from per-prompt token counts and per-rep per-prompt seconds."""
    return np.array([[(t, s) for t, s in zip(tokens, secs)] for secs in seconds_by_rep], dtype=float)


def test_exact_ratio_without_noise_has_a_point_interval():
    tokens = [32, 20, 28, 32]
    b = table(tokens, [[1.0, 0.8, 0.9, 1.1]] * 3)
    a = table(tokens, [[0.5, 0.4, 0.45, 0.55]] * 3)
    iv = ratio_interval(a, b)
    assert iv.value == pytest.approx(2.0)
    assert iv.low == pytest.approx(2.0) and iv.high == pytest.approx(2.0)
    assert not iv.holds_one
    assert iv.text() == "2.00x (95% CI 2.00-2.00)"


def test_same_run_twice_is_no_measurable_difference():
    rng = np.random.default_rng(1)
    tokens = [32, 20, 28, 32, 16]
    secs = lambda: rng.uniform(0.8, 1.2, size=(4, 5))  # noqa: E731
    iv = ratio_interval(table(tokens, secs()), table(tokens, secs()))
    assert iv.holds_one


def _coverage(level: float, sims: int = 150) -> float:
    """Share of simulated experiments (true speed-up 1.5, noisy clock, varied prompts) whose
    interval holds the true ratio."""
    rng = np.random.default_rng(7)
    hits = 0
    for k in range(sims):
        prompts = 6
        tokens = rng.integers(16, 64, size=prompts)
        base = tokens / rng.uniform(80, 160, size=prompts)  # seconds per prompt of the slower method
        b = np.stack([np.stack([tokens, base * rng.lognormal(0, 0.08, prompts)], -1) for _ in range(4)])
        a = np.stack([np.stack([tokens, base / 1.5 * rng.lognormal(0, 0.08, prompts)], -1) for _ in range(4)])
        iv = ratio_interval(a, b, level=level, n_boot=400, seed=k)
        hits += iv.low <= 1.5 <= iv.high
    return hits / sims


def test_interval_covers_the_true_ratio_and_a_narrow_one_does_not():
    assert _coverage(0.95) >= 0.85
    assert _coverage(0.30) < 0.6  # the same check catches an interval that is too narrow


def test_paired_repetitions_cancel_a_shared_slowdown():
    tokens = [32, 32, 32]
    slow = [1.0, 3.0, 1.0]  # the machine was 3x slower during repetition 2, for both methods
    b = table(tokens, [[s] * 3 for s in slow])
    a = table(tokens, [[s / 2] * 3 for s in slow])
    paired = ratio_interval(a, b, paired_reps=True)
    assert paired.low == pytest.approx(2.0) and paired.high == pytest.approx(2.0)
    unpaired = ratio_interval(a, b)
    assert unpaired.high - unpaired.low > 1.0


def test_table_from_entries_and_clear_errors():
    entries = [{"rep": r, "prompt": p, "new_tokens": 10, "wall_s": 0.5} for r in range(2) for p in range(3)]
    t = as_table(entries)
    assert t.shape == (2, 3, 2) and speed(t) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="every repetition"):
        as_table(entries[:-1])
    with pytest.raises(ValueError, match="same prompts"):
        ratio_interval(t, t[:, :2])
    assert Interval(1.1, 0.9, 1.3).holds_one


def test_speed_interval_brackets_the_speed_and_narrows_with_more_prompts():
    from specnb.measure.stats import speed_interval

    rng = np.random.default_rng(1)
    small = np.stack([rng.uniform(0.4, 0.6, (2, 4)) * 0 + 64, rng.uniform(0.4, 0.6, (2, 4))], axis=-1)
    big = np.stack([np.full((2, 64), 64.0), rng.uniform(0.4, 0.6, (2, 64))], axis=-1)
    for t in (small, big):
        iv = speed_interval(t)
        assert iv.low <= iv.value <= iv.high and iv.value == pytest.approx(t[..., 0].sum() / t[..., 1].sum())
    assert speed_interval(big).high - speed_interval(big).low < speed_interval(small).high - speed_interval(small).low
