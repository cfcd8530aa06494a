"""Adaptive draft lengths: the per-token stop rule, the cost model's maths, and greedy output kept."""

from __future__ import annotations

import pytest

from specnb import ModelSpec, PromptLookup, autoregressive, load, speculative
from specnb.decode.adaptive import (Calibration, Controller, Costs, best_length, continuation_pays, expected_emitted,
                                    keep_drafting, round_time)
from specnb.decode.schedule import Schedule

PROMPTS = ["def parse(text):", "class Stack:\n    def push(self, item):", "for i in range(10):\n    print("]
N = 24


def test_expected_emitted_is_one_plus_the_survival_sums():
    assert expected_emitted([]) == 1.0
    assert expected_emitted([0.5, 0.5]) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_emitted([1.0, 0.0, 1.0]) == 2.0


@pytest.mark.parametrize("p", [0.3, 0.6, 0.8, 0.95])
@pytest.mark.parametrize("t_draft,a,b", [(0.002, 0.005, 0.0005), (0.002, 0.05, 0.0005), (0.01, 0.003, 0.001)])
def test_marginal_rule_stops_at_the_best_length_when_acceptance_is_steady(p, t_draft, a, b):
    """With the same p per token the rate E(k)/T(k) is unimodal: stopping at the first k where one more
    does not pay is the argmax (the drafter decides after its k-th token, so k >= 1)."""
    cap = 32
    k, prefix, emitted = 1, p, 1 + p
    while k < cap and keep_drafting(prefix, emitted, k, p, t_draft, a, b):
        k += 1
        prefix *= p
        emitted += prefix
    assert k == max(1, best_length([p] * cap, t_draft, a, b))


@pytest.mark.parametrize("p", [0.3, 0.6, 0.8, 0.95])
@pytest.mark.parametrize("t_draft,a,b", [(0.002, 0.005, 0.0005), (0.002, 0.05, 0.0005), (0.01, 0.003, 0.001)])
def test_lookahead_rule_agrees_with_the_marginal_rule_when_acceptance_is_steady(p, t_draft, a, b):
    cap = 32
    k, prefix, emitted = 1, p, 1 + p
    while k < cap and continuation_pays(prefix, emitted, k, p, cap - k, t_draft, a, b):
        k += 1
        prefix *= p
        emitted += prefix
    assert k == max(1, best_length([p] * cap, t_draft, a, b))


def test_lookahead_rides_over_one_unsure_token_where_the_marginal_rule_stops():
    """Slow link, sure drafts (alpha 0.9), then one token at acceptance 0.3: one more at 0.3 does not pay
    by itself, but the sure tokens after it do."""
    t_draft, a, b = 0.002, 0.05, 0.0005
    ps = [0.9, 0.9, 0.3]
    prefix, emitted = 0.9 * 0.9 * 0.3, expected_emitted(ps)
    assert not keep_drafting(prefix, emitted, 3, 0.3, t_draft, a, b)
    assert continuation_pays(prefix, emitted, 3, 0.9, 13, t_draft, a, b)


def test_best_length_grows_with_the_round_cost():
    ps = [0.8] * 32
    lengths = [best_length(ps, 0.002, a, 0.0005) for a in (0.001, 0.005, 0.02, 0.1)]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]


def test_calibration_learns_only_from_judged_drafts():
    c = Calibration(bins=10, prior=2.0)
    assert c.p(0.95) == pytest.approx(0.95)  # the prior: calibrated
    c.observe([0.95, 0.95, 0.95, 0.95], accepted=1)  # 1st kept, 2nd rejected, 3rd and 4th never judged
    assert c.tries[9] == 2 and c.hits[9] == 1
    for _ in range(50):
        c.observe([0.95, 0.95], accepted=0)
    assert c.p(0.95) < 0.1


def test_costs_recover_the_verify_line_and_follow_a_change():
    costs = Costs()
    for k in [1, 4, 8, 2, 6, 3] * 5:
        costs.observe(k, draft_s=k * 0.002, verify_s=0.01 + 0.001 * k)
    a, b = costs.line()
    assert costs.t_draft == pytest.approx(0.002)
    assert a == pytest.approx(0.01, rel=0.02) and b == pytest.approx(0.001, rel=0.05)
    for k in [1, 4, 8]:  # the RTT grows by 40 ms: a few rounds re-learn it
        costs.observe(k, draft_s=k * 0.002, verify_s=0.05 + 0.001 * k)
    assert costs.line()[0] == pytest.approx(0.05, rel=0.05)


def test_costs_blame_a_slower_link_on_the_intercept_when_the_draft_lengthens_with_it():
    """Under the controller the draft length moves with the link: 40 ms more RTT arrives with 8 more drafts.
    The slope must stay the cloud's cost per token, not 40 ms / 8 drafts (a least-squares line over the
    recent rounds reads it so, and would then cut every draft short)."""
    costs = Costs()
    for k in [3, 5, 4, 6, 2, 4] * 5:  # 5 ms link
        costs.observe(k, draft_s=k * 0.001, verify_s=0.015 + 0.0004 * k)
    for k in [12, 13, 12]:  # 45 ms link, longer drafts
        costs.observe(k, draft_s=k * 0.001, verify_s=0.055 + 0.0004 * k)
    a, b = costs.line()
    assert b < 0.001 and a == pytest.approx(0.055, rel=0.15)


def test_costs_still_learn_a_changed_slope_after_many_rounds():
    """The slope creeps (a bandwidth change): learnt again within ~100 rounds, though 200 steady ones came first."""
    costs = Costs()
    ks = [3, 9, 5, 12, 2, 7, 15, 4]
    for i in range(200):
        costs.observe(ks[i % 8], draft_s=0.001 * ks[i % 8], verify_s=0.015 + 0.0004 * ks[i % 8])
    for i in range(100):
        costs.observe(ks[i % 8], draft_s=0.001 * ks[i % 8], verify_s=0.015 + 0.0012 * ks[i % 8])
    a, b = costs.line()
    assert b == pytest.approx(0.0012, rel=0.1) and a == pytest.approx(0.015, rel=0.1)


def _first_stop(controller: Controller, confidence: float, cap: int = 32) -> int:
    controller.begin_round()
    return next((k for k in range(1, cap) if controller.stop(k, confidence)), cap)


def test_controller_drafts_longer_over_a_slower_link():
    lengths = []
    for verify_s in (0.003, 0.06):
        c = Controller()
        for _ in range(5):
            c.observe([0.8] * 4, drafted=4, accepted=3, draft_s=4 * 0.002, verify_s=verify_s)
        lengths.append(_first_stop(c, 0.8))
    assert lengths[0] < lengths[1]


def test_controller_drafts_to_the_cap_before_it_knows_costs():
    """No round seen: no cost to price a draft with; draft the cap, as the cost schedule's first round does."""
    c = Controller()
    assert _first_stop(c, 0.01, cap=16) == 16
    c.observe([0.01] * 4, drafted=4, accepted=0, draft_s=0.004, verify_s=0.005)
    assert _first_stop(c, 0.01, cap=16) < 16


def test_a_controller_carries_what_it_learnt_over_generations_and_reset_forgets(models):
    cloud, edge = models["cloud"], models["edge"]
    c = Controller()
    first = speculative(edge, cloud, PROMPTS[0], N, gamma=8, schedule="adaptive", controller=c)
    seen = sum(c.calibration.tries)
    assert c.costs.known and seen > 0
    second = speculative(edge, cloud, PROMPTS[1], N, gamma=8, schedule="adaptive", controller=c)
    assert sum(c.calibration.tries) > seen  # the same controller learnt on
    assert second.tokens == autoregressive(cloud, PROMPTS[1], N).tokens
    assert first.drafted_trace[0] == 8  # a fresh controller's first round drafts the cap
    c.reset()
    assert not c.costs.known and sum(c.calibration.tries) == 0


def test_a_controller_with_another_schedule_is_refused(models):
    with pytest.raises(ValueError, match="schedule='adaptive'"):
        speculative(models["edge"], models["cloud"], PROMPTS[0], 4, schedule="cost", controller=Controller())


@pytest.fixture(scope="module")
def models(related_pair):
    return {name: load(ModelSpec(str(related_pair / name), device="cpu")) for name in ("cloud", "edge")}


@pytest.mark.parametrize("schedule", ["confidence", "adaptive"])
def test_stopping_schedules_keep_greedy_output_and_vary_the_length(models, schedule):
    cloud, edge = models["cloud"], models["edge"]
    lengths = set()
    for prompt in PROMPTS:
        g = speculative(edge, cloud, prompt, N, gamma=8, schedule=schedule)
        assert g.tokens == autoregressive(cloud, prompt, N).tokens
        assert sum(g.drafted_trace) == g.metrics["drafted"]
        assert max(g.drafted_trace) <= 8
        lengths |= set(g.drafted_trace[:-1])  # the last round is cut by max_new_tokens
    if schedule == "confidence":  # adaptive's lengths follow measured costs (unit tests above): not asserted here
        assert len(lengths) > 1


def test_sampling_with_the_confidence_schedule_is_seeded(models):
    """The confidence rule's lengths depend on the draft alone: a seed repeats the sample. (The adaptive
    schedule's lengths follow measured times, so its seeded samples repeat only when the lengths do.)"""
    cloud, edge = models["cloud"], models["edge"]
    runs = [speculative(edge, cloud, PROMPTS[0], N, gamma=6, schedule="confidence", verify="sample",
                        temperature=1.0, seed=3).tokens for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == N


def test_sampling_with_the_adaptive_schedule_runs(models):
    g = speculative(models["edge"], models["cloud"], PROMPTS[0], N, gamma=6, schedule="adaptive", verify="sample",
                    temperature=1.0, seed=3)
    assert len(g.tokens) == N and max(g.drafted_trace) <= 6


def test_prompt_lookup_keeps_its_rule_and_adaptive_caps_it_by_cost(models):
    cloud = models["cloud"]
    plan = Schedule("adaptive", 6)
    plan.attach(PromptLookup())
    assert plan.drafter is None
    g = speculative(PromptLookup(), cloud, PROMPTS[1], N, gamma=6, schedule="adaptive")
    assert g.tokens == autoregressive(cloud, PROMPTS[1], N).tokens


def test_params_accept_every_schedule():
    from typing import get_args

    from specnb.decode.schedule import SCHEDULES
    from specnb.study.params import MethodParams

    assert get_args(MethodParams.model_fields["schedule"].annotation) == SCHEDULES


def _delays(direction, sent_times):
    return [round((direction.arrival(0, t) - t) * 1e3, 6) for t in sent_times]


def test_link_profile_by_rounds_changes_the_delay_and_restarts_per_session():
    from specnb.link.emulate import Direction, Link
    from specnb.link.profile import LinkProfile

    profile = LinkProfile.steps([(0, Link(rtt_ms=5)), (2, Link(rtt_ms=50)), (4, Link(rtt_ms=20))], by="round")
    d = Direction(profile, 0)
    sent = [10.0 * i for i in range(6)]  # far apart: no queueing behind the previous message
    assert _delays(d, sent) == [2.5, 2.5, 25.0, 25.0, 10.0, 10.0]
    d.restart()
    assert _delays(d, [100.0]) == [2.5]


def test_link_profile_by_elapsed_time_and_a_trace():
    from specnb.link.emulate import Direction
    from specnb.link.profile import LinkProfile

    d = Direction(LinkProfile.trace([4, 40, 8], every=1.0, by="s"), 0)
    assert _delays(d, [5.0, 5.5, 6.2, 7.0, 9.0]) == [2.0, 2.0, 20.0, 4.0, 4.0]


def test_link_profile_refuses_bad_stages():
    from specnb.link.emulate import Link
    from specnb.link.profile import LinkProfile

    with pytest.raises(ValueError, match="increasing starts beginning at 0"):
        LinkProfile.steps([(1, Link(5)), (2, Link(50))])
    with pytest.raises(ValueError, match="by='s' or by='round'|changes by"):
        LinkProfile.steps([(0, Link(5))], by="minute")


def test_the_bench_times_adaptive_with_one_controller_across_its_runs(models, monkeypatch):
    """specnb bench's 'speculative adaptive' keeps learning over its warm-up and timed runs, as a deployment
    keeping one controller per edge-cloud pair would."""
    from specnb.bench import variants as bench_variants

    made = []
    monkeypatch.setattr(bench_variants, "Controller", lambda: made.append(Controller()) or made[-1])
    adaptive = next(v for v in bench_variants.variants(models["edge"], models["cloud"], N, [2]) if v.label == "speculative adaptive")
    adaptive.run(PROMPTS[0])
    seen = sum(made[0].calibration.tries)
    adaptive.run(PROMPTS[1])
    assert len(made) == 1 and sum(made[0].calibration.tries) > seen


def test_a_grid_cell_runs_adaptive_with_one_controller_over_its_prompts(models, monkeypatch):
    import specnb.decode.adaptive as adaptive
    from specnb.study.methods import METHODS
    from specnb.study.params import MethodParams

    made = []
    monkeypatch.setattr(adaptive, "Controller", lambda **kw: made.append(Controller(**kw)) or made[-1])
    decode = METHODS["speculative"].build(models, MethodParams(gamma=8, schedule="adaptive"))
    assert decode.controller is made[0]  # what experiment.run saves beside the result
    decode(PROMPTS[0], N)
    seen = sum(made[0].calibration.tries)
    assert decode(PROMPTS[1], N).tokens == autoregressive(models["cloud"], PROMPTS[1], N).tokens
    assert len(made) == 1 and sum(made[0].calibration.tries) > seen
