"""The adaptive controller from a cold start: its prior, how the prior fades, what a session carries, save/load."""

from __future__ import annotations

import itertools
import json
import random

import pandas as pd
import pytest

from specnb.decode.adaptive import Calibration, Controller, Prior, bound_length, recorded_prior
from specnb.link.predict import best_gamma


def _first_stop(controller: Controller, confidence: float, cap: int = 32) -> int:
    controller.begin_round(cap)
    return next((k for k in range(1, cap) if controller.stop(k, confidence)), cap)


@pytest.mark.parametrize("alpha", [0.6, 0.8, 0.9])
@pytest.mark.parametrize("rtt_s", [0.001, 0.005, 0.05, 0.3])
@pytest.mark.parametrize("t_draft,cloud_s", [(0.001, 0.01), (0.15, 0.42)])  # the embedded pair; Qwen 0.5B/1.5B on CPU
def test_a_prior_with_costs_drafts_the_bound_gamma_in_its_first_round(alpha, rtt_s, t_draft, cloud_s):
    """Before any round, a prior with the RTT, the step costs and the acceptance drafts the gamma that
    maximizes the speed-up bound S = E(a, g) / (g c + v + r) (c = t_draft / cloud step, v = 1, r = RTT / cloud
    step), whatever the first token's confidence (every bin starts at the prior acceptance)."""
    prior = Prior(alpha=alpha, t_draft_s=t_draft, cloud_s=cloud_s, rtt_s=rtt_s)
    want = best_gamma(alpha, t_draft / cloud_s, 1.0, rtt_s / cloud_s, max_gamma=32)
    for confidence in (0.05, 0.5, 0.99):
        assert _first_stop(Controller(prior=prior), confidence) == want
    assert bound_length(alpha, t_draft, cloud_s + rtt_s, 0.0, 32) == want


def test_the_bound_gamma_grows_with_the_rtt_and_the_acceptance():
    lengths = [_first_stop(Controller(prior=Prior(alpha=0.85, t_draft_s=0.001, cloud_s=0.01, rtt_s=r)), 0.5)
               for r in (0.001, 0.02, 0.3)]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    by_alpha = [_first_stop(Controller(prior=Prior(alpha=a, t_draft_s=0.001, cloud_s=0.01, rtt_s=0.02)), 0.5)
                for a in (0.5, 0.7, 0.9)]
    assert by_alpha == sorted(by_alpha) and by_alpha[0] < by_alpha[-1]


def _ticking(step_s: float):
    """A clock that advances ``step_s`` per reading: begin_round reads it once, each stop(k) once (k steps)."""
    calls = itertools.count()
    return lambda: next(calls) * step_s


@pytest.mark.parametrize("alpha", [None, 0.9])
@pytest.mark.parametrize("t_draft,rtt_s", [(0.001, 0.005), (0.001, 0.05), (0.15, 0.005)])
def test_a_prior_without_costs_prices_its_first_round_with_the_draft_step_it_measures(alpha, t_draft, rtt_s):
    """A pair with no record: the draft step as the round shows it, a verify round of at least the RTT plus one
    such step: the bound's length at those costs (short), never the cap drafted blind. No prior: the cap."""
    prior = Prior(alpha=alpha, rtt_s=rtt_s)
    k = _first_stop(Controller(prior=prior, clock=_ticking(t_draft)), 0.5)
    if alpha is not None:  # steady acceptance: exactly the bound's length at those costs
        assert k == bound_length(alpha, t_draft, rtt_s + t_draft, 0.0, 32)
    assert k < 32
    assert _first_stop(Controller(clock=_ticking(t_draft)), 0.5) == 32
    if t_draft == 0.15:  # a slow edge (Qwen 0.5B on one thread) over a fast link: one or two drafts
        assert k <= 2


def _simulate(controller: Controller, alpha: float, rounds: int, seed: int = 0, k: int = 8) -> None:
    """Rounds of ``k`` drafts each accepted with probability ``alpha`` (i.i.d.), confidences uniform."""
    rng = random.Random(seed)
    for _ in range(rounds):
        confidences = [rng.random() for _ in range(k)]
        accepted = next((i for i in range(k) if rng.random() >= alpha), k)
        controller.observe(confidences, k, accepted, draft_s=k * 0.001, verify_s=0.02 + 0.0004 * k)


@pytest.mark.parametrize("truth", [0.5, 0.75, 0.95])
def test_the_learnt_acceptance_moves_from_the_prior_to_the_run(truth):
    """The prior counts as ``weight`` judged drafts: it decides the first round, and after a few hundred judged
    drafts of the run the estimate is the run's acceptance whatever the prior said."""
    c = Controller(prior=Prior(alpha=0.9, weight=16))
    assert c.calibration.mean() == pytest.approx(0.9)
    _simulate(c, truth, rounds=150)
    seen = sum(c.calibration.tries)
    assert seen > 250
    assert c.calibration.mean() == pytest.approx(truth, abs=0.06)
    # the prior's share is weight / (tries + weight)
    hits = sum(c.calibration.hits)
    assert c.calibration.mean() == pytest.approx((hits + 16 * 0.9) / (seen + 16))


def test_one_bad_first_round_does_not_drag_a_prior_acceptance_down():
    """What made the cold controller draft 2-6 a round after its first: 1 of 2 judged drafts read as alpha 0.5
    under the +1/+2 prior. With the pair's recorded acceptance counted as 16 drafts it stays near the record."""
    cold, primed = Controller(), Controller(prior=Prior(alpha=0.89, weight=16))
    for c in (cold, primed):
        c.observe([0.3] * 32, drafted=32, accepted=1, draft_s=0.032, verify_s=0.03)
    assert cold.calibration.mean() == pytest.approx(0.5)
    assert primed.calibration.mean() == pytest.approx((1 + 16 * 0.89) / (2 + 16))
    assert primed.calibration.p(0.3) > 0.65 and cold.calibration.p(0.3) < 0.45


def test_a_prior_measured_elsewhere_is_corrected_within_a_round():
    """Recorded costs from another machine: the first round far off the primed line restarts the intercept."""
    c = Controller(prior=Prior(alpha=0.8, t_draft_s=0.001, cloud_s=0.010, rtt_s=0.005))  # a = 15 ms
    c.observe([0.9] * 10, drafted=10, accepted=10, draft_s=0.010, verify_s=0.080)  # the real round: 80 ms
    a, b = c.costs.line()
    assert a + 10 * b == pytest.approx(0.080, rel=0.05)


def test_reset_returns_to_the_prior():
    prior = Prior(alpha=0.8, t_draft_s=0.001, cloud_s=0.01, rtt_s=0.02)
    c = Controller(prior=prior)
    first = _first_stop(c, 0.5)
    _simulate(c, 0.3, rounds=40)
    assert _first_stop(c, 0.5) < first
    c.reset()
    assert _first_stop(c, 0.5) == first and sum(c.calibration.tries) == 0


def test_save_and_load_give_the_same_controller(tmp_path):
    c = Controller(prior=Prior(alpha=0.85, t_draft_s=0.001, cloud_s=0.01, rtt_s=0.02, source="test"))
    _simulate(c, 0.7, rounds=25, seed=3, k=6)
    path = c.save(tmp_path / "run" / "controller.json", edge="zoo:tiny-edge", link="20 ms")
    saved = json.loads(path.read_text())
    assert saved["about"] == {"edge": "zoo:tiny-edge", "link": "20 ms"}
    back = Controller.load(path)
    assert back.state() == c.state() and back.prior == c.prior
    assert [_first_stop(back, x) for x in (0.1, 0.5, 0.9)] == [_first_stop(c, x) for x in (0.1, 0.5, 0.9)]
    _simulate(back, 0.7, rounds=5, seed=4)  # it goes on learning from where it stopped
    _simulate(c, 0.7, rounds=5, seed=4)
    assert back.state() == c.state()
    cold = Controller()
    assert Controller.load(cold.save(tmp_path / "cold.json")).state() == cold.state()


def test_load_refuses_another_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="specnb-controller/1"):
        Controller.load(path)


def test_the_embedded_pair_has_a_recorded_prior_and_other_pairs_none():
    prior = recorded_prior("zoo:tiny-edge", "zoo:tiny-cloud")
    assert prior is not None and prior.priced and 0.5 < prior.alpha < 1.0
    assert prior.cloud_s > prior.t_draft_s > 0
    assert recorded_prior("zoo:tiny-cloud", "zoo:tiny-edge") is None
    assert recorded_prior("/some/edge", "zoo:tiny-cloud") is None


def test_calibration_without_a_prior_acceptance_is_unchanged():
    """No recorded acceptance: bins shrink to their centres until the run has judged ``bins`` drafts (as before)."""
    c = Calibration()
    assert c.p(0.95) == pytest.approx(0.95) and c.mean() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        Prior(alpha=1.0)


# ---------------------------------------------------------------------------- a connect() session

@pytest.fixture(scope="module")
def pair(related_pair):
    import subprocess

    from serving import start_server, stop
    from specnb import ModelSpec, load

    proc, address = start_server(str(related_pair / "cloud"), stderr=subprocess.DEVNULL)
    yield {name: load(ModelSpec(str(related_pair / name), device="cpu")) for name in ("cloud", "edge")} | {"address": address}
    stop(proc)


def test_a_session_keeps_one_controller_per_edge_over_its_generations(pair):
    """``schedule="adaptive"`` without ``controller=`` over a connect() session: the session's controller, made at
    the first use with the link's round trip in its prior, goes on learning over the generations; another link
    starts again from its prior. Outputs stay the cloud's greedy ones."""
    from specnb import autoregressive, connect, speculative
    from specnb.link.emulate import Link

    cloud = connect(pair["address"])
    assert 0 < cloud.rtt_s < 1.0
    remote = cloud.with_link(Link(rtt_ms=5))
    assert remote.controllers == {} and remote.round_trip_s() == pytest.approx(cloud.rtt_s + 0.005, abs=1e-3)
    prompts = ["def parse(text):", "import os"]
    g1 = speculative(pair["edge"], remote, prompts[0], 12, gamma=8, schedule="adaptive")
    (name, ctl), = remote.controllers.items()
    seen = sum(ctl.calibration.tries)
    assert seen > 0 and ctl.prior.rtt_s == pytest.approx(remote.round_trip_s()) and ctl.prior.alpha is None  # no record
    g2 = speculative(pair["edge"], remote, prompts[1], 12, gamma=8, schedule="adaptive")
    assert remote.controllers[name] is ctl and sum(ctl.calibration.tries) > seen
    for g, p in zip((g1, g2), prompts):
        assert g.tokens == autoregressive(pair["cloud"], p, 12).tokens
    mine = Controller()
    speculative(pair["edge"], remote, prompts[0], 12, gamma=8, schedule="adaptive", controller=mine)
    assert sum(mine.calibration.tries) > 0 and remote.controllers[name] is ctl  # an explicit one is used instead
    assert cloud.with_link(Link(rtt_ms=50)).controllers == {}


def test_the_cold_start_study_pairs_each_generation_with_the_fixed_gammas(pair):
    from specnb import connect
    from specnb.link.emulate import Link
    from specnb.study.cold_start import cold_markdown, cold_start, cold_summary

    prompts = ["def parse(text):", "import os", "class Stack:"]
    df = cold_start(pair["edge"], connect(pair["address"]), prompts, Link(rtt_ms=2), name="2", proc=0,
                    prompt_ids=[2, 0, 1], gammas=(2, 4), cap=8, max_new_tokens=8, warmup="x")
    assert len(df) == 3 * 4 and df.identical.all() and list(df.generation.unique()) == [1, 2, 3]
    assert set(df.method) == {"edge_cloud", "edge_cloud:default", "edge_cloud:carried"}
    assert list(df[df.method == "edge_cloud:default"].prompt) == [2, 0, 1]
    assert set(df.attrs["controllers"]) == {"carried", "session-" + str(pair["edge"].spec.name_or_path)}
    s = cold_summary(pd.concat([df, df.assign(rep=1)]), windows=((1, 1), (2, 3), (1, 3)))
    assert len(s) == 2 * 3 and s.identical.all()
    assert ((s.low <= s.vs_best_fixed) & (s.vs_best_fixed <= s.high)).all()
    assert "generations 2-3" in cold_markdown(s)


def test_a_session_defaults_to_the_adaptive_schedule_only_when_nothing_is_given(pair):
    """Over a connect() session a bare call drafts by the session's controller up to 32; a gamma or a schedule
    given, sampling, drafting ahead or an in-process cloud keep the constant schedule (gamma 4 when not given)."""
    from specnb import autoregressive, connect, speculative
    from specnb.decode.loops import _defaults

    cloud = connect(pair["address"])
    edge, local = pair["edge"], pair["cloud"]
    g = speculative(edge, cloud, "def parse(text):", 16)
    assert g.tokens == autoregressive(local, "def parse(text):", 16).tokens
    assert len(cloud.controllers) == 1 and sum(next(iter(cloud.controllers.values())).calibration.tries) > 0
    assert _defaults(edge, cloud, None, None, "greedy") == ("adaptive", 32)
    assert _defaults(edge, cloud, None, 4, "greedy") == ("constant", 4)
    assert _defaults(edge, cloud, "cost", None, "greedy") == ("cost", 4)
    assert _defaults(edge, cloud, None, None, "sample") == ("constant", 4)
    assert _defaults(edge, local, None, None, "greedy") == ("constant", 4)
    assert _defaults(edge, cloud, None, None, "greedy", ahead=True) == ("constant", 4)  # its stop rule: one draft
    fixed = speculative(edge, cloud, "def parse(text):", 16, gamma=4)
    assert fixed.drafted_trace[0] == max(fixed.drafted_trace) == 4
