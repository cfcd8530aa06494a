"""Draft-length schedules and the speed-up formula."""

from __future__ import annotations

import pytest

from specnb.decode.schedule import Schedule, expected_tokens, speedup_bound


def test_expected_tokens_and_speedup_limit():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    # Leviathan et al. 2023, Thm 3.8 at alpha=0.8, gamma=4, c=0.05
    assert speedup_bound(0.8, 4, 0.05) == pytest.approx((1 - 0.8**5) / (0.2 * 1.2))


def test_heuristic_follows_hf_rule():
    s = Schedule("heuristic", 4)
    assert s.next() == 4
    s.update(4, 4, 0.0, 0.0)
    assert s.next() == 6
    s.update(6, 2, 0.0, 0.0)
    assert s.next() == 5
    for _ in range(10):
        s.update(s.next(), 0, 0.0, 0.0)
    assert s.next() == 1


def test_cost_rule_picks_long_drafts_when_cheap_and_accepted_and_short_otherwise():
    cheap = Schedule("cost", 8)
    cheap.update(8, 8, draft_s=8 * 0.001, verify_s=0.02)  # edge step 1 ms, verify 20 ms, all accepted
    assert cheap.next() == 8
    costly = Schedule("cost", 8)
    costly.update(8, 1, draft_s=8 * 0.015, verify_s=0.02)  # edge step nearly a verify, few accepted
    assert costly.next() == 1


def test_constant_and_bad_name():
    s = Schedule("constant", 3)
    s.update(3, 0, 1.0, 1.0)
    assert s.next() == 3
    with pytest.raises(ValueError, match="unknown draft schedule 'fast'; use one of constant, heuristic, cost, confidence, adaptive"):
        Schedule("fast", 3)


def test_estimate_alpha_recovers_iid_acceptance_where_acceptance_rate_does_not():
    """Simulated rounds with i.i.d. acceptance 0.8 at gamma 5: the MLE finds 0.8, accepted/drafted reads ~0.54."""
    import random

    from specnb.measure.metrics import estimate_alpha

    rng = random.Random(0)
    alpha, gamma = 0.8, 5
    accepted = rejected = drafted = 0
    for _ in range(20000):
        n = 0
        while n < gamma and rng.random() < alpha:
            n += 1
        accepted += n
        drafted += gamma
        rejected += n < gamma
    assert abs(estimate_alpha(accepted, rejected) - alpha) < 0.01
    assert abs(accepted / drafted - alpha * (1 - alpha**gamma) / ((1 - alpha) * gamma)) < 0.01  # ~0.54
    assert estimate_alpha(10, 0) == 1.0 and estimate_alpha(0, 3) == 0.0


def test_verification_widths_cover_every_draft_with_at_most_double_padding():
    for rule, gamma in (("constant", 4), ("heuristic", 4), ("cost", 8), ("cost", 5), ("cost", 1)):
        s = Schedule(rule, gamma)
        widths = s.widths()
        assert widths == tuple(sorted(set(widths))) and widths[-1] == s.longest() + 1
        for g in range(s.longest() + 1):  # a draft of g tokens is verified as g + 1 positions
            w = next(w for w in widths if w >= g + 1)
            assert rule == "constant" or w <= 2 * (g + 1)
    assert Schedule("constant", 4).widths() == (5,)
    assert Schedule("heuristic", 4).widths() == (2, 3, 5, 9, 17)
