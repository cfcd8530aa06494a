"""The capacity study (specnb/study/capacity.py, specnb/report/capacity.py) and server-side speculation
on a batching server (specnb/link/server_speculation.py).

The summaries are pure functions checked on hand-made rows; one tiny study (N = 1, 2, every method,
both policies, real and replayed edges) runs end to end through real local servers. No timing asserts.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from specnb import ModelSpec, connect, load, speculative
from specnb.measure.stats import mean_interval
from specnb.study import capacity as C
from specnb.link.server import CloudService, start
from specnb.report import capacity as R
from serving import run_concurrently



# ---- pure maths


def test_jain_index_is_one_for_equal_rates_and_one_over_n_for_one_taker():
    assert C.jain([7.0, 7.0, 7.0]) == pytest.approx(1.0)
    assert C.jain([5.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert C.jain([1.0, 2.0, 3.0]) == pytest.approx(36 / 42)  # (1+2+3)^2 / (3 * (1+4+9))
    with pytest.raises(ValueError):
        C.jain([1.0, -1.0])
    with pytest.raises(ValueError):
        C.jain([])


def test_p90_edge_rate_is_what_nine_in_ten_edges_reach():
    rates = [10.0 * k for k in range(1, 11)]  # 10 .. 100
    assert C.p90_edge_rate(rates) == pytest.approx(19.0)  # 10th percentile, linear interpolation
    assert C.p90_edge_rate([4.0] * 9 + [100.0]) == pytest.approx(4.0)  # one fast edge does not lift it
    assert C.p90_edge_rate([100.0] * 9 + [1.0]) < 100.0  # one slow edge pulls it down


def test_capacity_is_the_largest_n_before_the_slo_is_first_missed():
    assert C.capacity({1: 30.0, 2: 25.0, 4: 18.0, 8: 25.0}, 20.0) == 2  # cut at the dip
    assert C.capacity({1: 30.0, 2: 25.0, 4: 21.0}, 20.0) == 4
    assert C.capacity({4: 21.0, 1: 30.0, 2: 20.0}, 20.0) == 4  # order of the dict does not matter; meets = >=
    assert C.capacity({1: 19.0, 2: 30.0}, 20.0) == 0
    assert C.capacity({1: float("nan"), 2: 30.0}, 20.0) == 0  # no rate is no pass
    with pytest.raises(ValueError, match="SLO"):
        C.capacity({1: 30.0}, 0.0)


def test_interpolated_capacity_lies_between_the_tested_n_where_the_rate_crosses_the_slo():
    # 32.9 at 16, 18.2 at 32: 20 is crossed at log2 N = 4 + 12.9 / 14.7
    assert C.capacity_interpolated({8: 45.0, 16: 32.9, 32: 18.2}, 20.0) == pytest.approx(2 ** (4 + 12.9 / 14.7))
    assert C.capacity_interpolated({1: 30.0, 2: 10.0}, 20.0) == pytest.approx(2 ** 0.5)  # halfway in rate
    assert C.capacity_interpolated({1: 30.0, 2: 25.0}, 20.0) == 2.0  # every N meets it: a lower bound
    assert C.capacity_interpolated({1: 19.0, 2: 30.0}, 20.0) == 0.0
    assert C.capacity_interpolated({1: 30.0, 2: 20.0, 4: 5.0}, 20.0) == 2.0  # a rate exactly at the SLO meets it
    assert C.capacity_interpolated({1: 30.0, 2: 10.0}, 30.0) == 1.0


def test_bound_and_sustained_users():
    assert C.bound(3, 0.001, 0.006) == pytest.approx(1.5)  # 1 + 3 * 1 / 6
    assert C.bound(3, 0.001, 0.006, link_s=0.006) == pytest.approx(2.5)  # the link idles the verifier too
    assert C.bound(0, 0.001, 0.006) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        C.bound(3, 0.001, 0.0)
    assert C.sustained(300.0, 100.0) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        C.sustained(300.0, 0.0)


def test_mean_interval():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    mean, low, high = mean_interval(values)
    assert mean == pytest.approx(4.0)
    assert min(values) <= low < mean < high <= max(values)
    assert mean_interval(values) == (mean, low, high)  # fixed seed: same data, same interval
    assert mean_interval([3.0, 3.0, 3.0]) == pytest.approx((3.0, 3.0, 3.0))
    assert mean_interval([5.0]) == (5.0, 5.0, 5.0)
    wide = mean_interval([0.0, 100.0] * 3)
    narrow = mean_interval([0.0, 100.0] * 300)
    assert narrow[2] - narrow[1] < wide[2] - wide[1]  # more entries, a narrower interval
    with pytest.raises(ValueError):
        mean_interval([])


def test_mean_batch_from_two_histograms():
    assert C.mean_batch({"1": 5, "2": 1}, {"1": 7, "2": 1, "4": 2}) == pytest.approx((2 * 1 + 2 * 4) / 4)
    assert np.isnan(C.mean_batch({}, {}))


# ---- tables from hand-made rows


def _rows(method: str, policy: str, n: int, rates: list[float], tokens: int = 10, rep: int = 0, gamma: int = 3,
          rtt: float = 0.0, edges: str = "replayed", start: float = 100.0, schedule: str = "constant") -> list[dict]:
    return [{"method": method, "policy": policy, "rtt_ms": rtt, "schedule": schedule, "gamma": gamma, "n": n, "rep": rep,
             "edges": edges,
             "edge": i, "prompt": 0, "ok": True, "new_tokens": tokens, "start_s": start, "end_s": start + tokens / r,
             "rate": r, "error": "", "mean_batch": 1.0} for i, r in enumerate(rates)]


def test_goodput_is_all_tokens_over_the_runs_span_and_the_summary_keeps_configurations_apart():
    rows = pd.DataFrame(_rows("edge_cloud", "none", 2, [10.0, 5.0]) + _rows("edge_cloud", "none", 2, [10.0, 10.0], rep=1)
                        + _rows("cloud", "none", 1, [4.0], gamma=0))
    runs = C.runs_table(rows)
    two = runs[(runs.method == "edge_cloud")].sort_values("rep")
    assert two.goodput.tolist() == pytest.approx([20 / 2.0, 20 / 1.0])  # the slowest edge ends the run
    assert two.jain.tolist() == pytest.approx([225 / 250, 1.0])
    summ = C.summary(rows)
    ec = summ[summ.method == "edge_cloud"].iloc[0]
    assert ec.goodput == pytest.approx(15.0) and ec.reps == 2
    assert ec.edge_rate == pytest.approx(8.75)  # mean over repetitions x edges
    assert ec.edge_rate_low <= ec.edge_rate <= ec.edge_rate_high
    assert ec.p90_edge_rate == pytest.approx(np.quantile([10, 5, 10, 10], 0.1))
    assert len(summ) == 2 and summ[summ.method == "cloud"].goodput.iloc[0] == pytest.approx(4.0)


def test_failed_users_are_counted_and_left_out_of_the_rates():
    rows = _rows("edge_cloud", "dynamic", 2, [10.0, 10.0])
    rows[1] |= {"ok": False, "new_tokens": 0, "rate": float("nan"), "error": "RuntimeError: diverged"}
    summ = C.summary(pd.DataFrame(rows))
    assert summ.failed.iloc[0] == 1 and summ.edge_rate.iloc[0] == pytest.approx(10.0)
    assert any("failed" in t.en for t in R.on_failures(summ))


def test_capacity_best_policy_and_the_bound_table():
    rows = []
    for policy, slow in (("none", 1.0), ("dynamic", 2.0)):  # batching doubles every rate beyond N = 1
        rows += _rows("edge_cloud", policy, 1, [60.0])
        rows += _rows("edge_cloud", policy, 4, [30.0 * slow] * 4)
        rows += _rows("edge_cloud", policy, 8, [12.0 * slow] * 8)
        rows += _rows("cloud", policy, 1, [40.0], gamma=0)
        rows += _rows("cloud", policy, 4, [10.0 * slow] * 4, gamma=0)
        rows += _rows("cloud", policy, 8, [5.0 * slow] * 8, gamma=0)
    summ = C.summary(pd.DataFrame(rows))
    caps = C.capacities(summ, 20.0)
    ww = C.capacity_with_without_batching(caps).set_index("method")
    assert ww.loc["edge_cloud", "none"] == 4 and ww.loc["edge_cloud", "dynamic"] == 8
    assert ww.loc["cloud", "none"] == 1 and ww.loc["cloud", "dynamic"] == 4  # 20 tok/s meets an SLO of 20
    best = C.best_per_n(summ)
    assert best[(best.method == "edge_cloud") & (best.n == 8)].policy.iloc[0] == "dynamic"
    times = pd.DataFrame([{"gamma": 3, "t_draft_s": 0.001, "t_verify_s": 0.006, "t_link_s": 0.003, "rounds": 10}])
    bt = C.bound_table(summ, times).set_index("policy")
    # none: S(edge_cloud) = 8 * 12 / 60 = 1.6; S(cloud) = 8 * 5 / 40 = 1.0; B = 1.5
    assert bt.loc["none", "measured_gain"] == pytest.approx(1.6)
    assert bt.loc["none", "bound"] == pytest.approx(1.5)
    assert bt.loc["none", "measured_over_bound"] == pytest.approx(1.6 / 1.5)
    assert bt.loc["none", "bound_with_link"] == pytest.approx(2.0)  # RTT 0: 1 + (3 * 1 + 3) / 6
    assert bt.loc["none", "measured_over_bound_with_link"] == pytest.approx(1.6 / 2.0)
    gain = C.goodput_gain(summ)
    assert gain[(gain.policy == "none") & (gain.n == 8)].gain.iloc[0] == pytest.approx(96 / 40)
    texts = R.findings(summ, C.capacity_with_without_batching(caps), C.bound_table(summ, times), gain,
                       C.replay_check(pd.DataFrame(rows)), 20.0)
    capacity_lines = [t.en for t in texts if t.en.startswith("edge-cloud speculation at RTT 0 ms")]
    assert capacity_lines == ["edge-cloud speculation at RTT 0 ms: capacity at a p90 per-edge rate of 20 tok/s is 4 edges "
                              "without batching, 8 with batching (the largest N tested, 8: the capacity is at least that)."]
    assert all(t.zh for t in texts)


def test_replay_check_pairs_real_and_replayed_runs():
    rows = pd.DataFrame(_rows("edge_cloud", "none", 2, [10.0, 10.0]) + _rows("edge_cloud", "none", 2, [5.0, 5.0], edges="real"))
    check = C.replay_check(rows)
    assert check.real.iloc[0] == pytest.approx(10.0) and check.replayed.iloc[0] == pytest.approx(20.0)
    assert check.replayed_over_real.iloc[0] == pytest.approx(2.0)
    assert C.summary(rows).goodput.iloc[0] == pytest.approx(20.0)  # the summary reads replayed edges only
    assert C.replay_check(pd.DataFrame(_rows("edge_cloud", "none", 2, [10.0, 10.0]))).empty


def test_config_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="unknown"):
        C.Config(methods=["edge_only"]).check()
    with pytest.raises(ValueError, match="real_ns"):
        C.Config(ns=[1, 2], real_ns=[4]).check()
    assert C.cases(C.Config(gammas=[2, 4], rtts_ms=[0], policies=["none"]))[:1] == [("edge_cloud", "none", 0.0, "constant", 2)]
    assert ("cloud", "none", 0.0, "constant", 0) in C.cases(C.Config(gammas=[2, 4], rtts_ms=[0], policies=["none"]))
    with pytest.raises(ValueError, match="constant, heuristic, cost, confidence, adaptive"):
        C.Config(schedules=["adaptiv"]).check()
    with pytest.raises(ValueError, match="schedules"):
        C.Config(schedules=[]).check()
    both = C.cases(C.Config(gammas=[4], rtts_ms=[0], policies=["none"], schedules=["constant", "adaptive"]))
    assert {(m, s) for m, _, _, s, _ in both} == {("edge_cloud", "constant"), ("edge_cloud", "adaptive"),
                                                 ("cloud", "constant"), ("server_speculative", "constant")}


def test_schedules_are_configurations_of_their_own_and_old_rows_ran_constant():
    rows = pd.DataFrame(_rows("edge_cloud", "none", 1, [60.0], gamma=8) + _rows("edge_cloud", "none", 2, [25.0, 25.0], gamma=8)
                        + _rows("edge_cloud", "none", 1, [50.0], gamma=8, schedule="adaptive")
                        + _rows("edge_cloud", "none", 2, [30.0, 30.0], gamma=8, schedule="adaptive")
                        + _rows("cloud", "none", 1, [40.0], gamma=0) + _rows("cloud", "none", 2, [20.0, 20.0], gamma=0))
    summ = C.summary(rows)
    assert len(summ) == 6 and set(summ[summ.method == "edge_cloud"].schedule) == {"constant", "adaptive"}
    assert summ[summ.schedule == "adaptive"].reps.tolist() == [1, 1]  # not pooled with the constant runs
    caps = C.capacities(summ, 28.0).set_index(["method", "schedule"])
    assert caps.loc[("edge_cloud", "adaptive"), "capacity"] == 2 and caps.loc[("edge_cloud", "constant"), "capacity"] == 1
    best = C.best_per_n(summ).set_index(["method", "n"])
    assert best.loc[("edge_cloud", 1), "schedule"] == "constant" and best.loc[("edge_cloud", 2), "schedule"] == "adaptive"
    assert best.loc[("cloud", 2), "schedule"] == "constant"
    times = pd.DataFrame([{"schedule": s, "gamma": 8, "t_draft_s": 0.001, "t_verify_s": 0.008, "t_link_s": 0.0, "rounds": 9}
                          for s in ("constant", "adaptive")])
    bt = C.bound_table(summ, times)
    assert len(bt) == 1 and bt.measured_gain.iloc[0] == pytest.approx((50 / 60) / (40 / 40))  # a fixed gamma's bound only
    assert "adaptive g8: 60 (60-60) / 30.0 [30.0]" in R.table_markdown(summ)
    old = rows[rows.schedule == "constant"].drop(columns="schedule")  # records from before the study took schedules
    assert C.summary(old).schedule.eq("constant").all() and len(C.bound_table(C.summary(old), times.iloc[:1].drop(columns="schedule"))) == 1
    assert C.best_per_n(C.summary(old)).schedule.eq("constant").all() and "g8: 50" in R.table_markdown(C.summary(old))


# ---- end to end, through real local servers


def test_a_tiny_study_through_real_servers(tmp_path):
    cfg = C.Config(ns=[1, 2], rtts_ms=[0.0], policies=["none", "dynamic"], gammas=[2], max_new_tokens=6, real_ns=[2])
    result = C.run(cfg)
    rows = result.rows
    assert rows.ok.all(), rows[~rows.ok].error.tolist()
    # 3 methods x 2 policies at N = 1 and 2 (1 + 2 users each), and real edges at N = 2 under both policies
    assert len(rows) == 3 * 2 * 3 + 2 * 2
    assert (rows.new_tokens > 0).all() and (rows.new_tokens <= 6).all()
    summ = C.summary(rows)
    assert len(summ) == 3 * 2 * 2 and summ.goodput.gt(0).all()
    assert summ[summ.policy == "dynamic"].mean_batch.notna().all()  # the batching server ran batches
    assert summ[summ.policy == "none"].mean_batch.isna().all()
    assert set(result.times.columns) >= {"gamma", "t_draft_s", "t_verify_s", "t_link_s"} and result.times.t_verify_s.gt(0).all()
    check = C.replay_check(rows)
    assert len(check) == 2 and check.replayed_over_real.gt(0).all()
    bounds = C.bound_table(summ, result.times)
    assert len(bounds) == 2 and bounds.bound.gt(1).all()
    written = R.save(result, tmp_path / "rec", {"summary": summ})
    assert {p.name for p in written} == {"rows.csv", "times.csv", "summary.csv", "config.json", "provenance.json"}
    where = json.loads((tmp_path / "rec" / "provenance.json").read_text())
    assert where["machine"]["cpus"] >= 1 and "commit" in where["git"]  # the record names its machine and commit


def test_an_adaptive_study_records_per_rtt_replays_and_carries_its_schedule():
    cfg = C.Config(methods=["edge_cloud", "cloud"], ns=[1, 2], rtts_ms=[0.0, 10.0], policies=["dynamic"], gammas=[6],
                   schedules=["constant", "adaptive"], max_new_tokens=12, real_ns=[2])
    result = C.run(cfg)
    rows = result.rows
    assert rows.ok.all(), rows[~rows.ok].error.tolist()
    ec = rows[rows.method == "edge_cloud"]
    assert set(ec.schedule) == {"constant", "adaptive"} and set(rows[rows.method == "cloud"].schedule) == {"constant"}
    # per schedule: 2 RTTs x (1 + 2 replayed users + 2 real users at N = 2)
    assert ec.groupby("schedule").size().to_dict() == {"adaptive": 10, "constant": 10}
    assert ec.drafted_per_round.gt(0).all() and ec.drafted_per_round.le(6).all()
    summ = C.summary(rows)
    assert len(summ[summ.method == "edge_cloud"]) == 2 * 2 * 2  # schedule x RTT x N, never pooled
    assert set(C.best_per_n(summ).columns) >= {"policy", "schedule", "gamma"}
    assert len(C.replay_check(rows)) == 2 * 2  # real against replayed, per schedule and RTT at N = 2
    times = result.times.set_index("schedule")
    assert times.loc["adaptive", "drafted_per_round"] <= 6 and times.loc["constant", "t_verify_s"] > 0
    assert times.loc["adaptive", "t_link_s"] < 0.010  # the emulated delay is not the transport's
    assert result.config["schedules"] == ["constant", "adaptive"]


def test_a_recording_takes_the_schedules_stop_rule_and_replays_its_lengths(pair):
    from specnb.study.replay import RecordingDrafter, ReplayedEdge

    prompt = PROMPTS[0]
    plain = speculative(pair["edge"], pair["cloud"], prompt, 24, gamma=8, schedule="confidence")
    rec = RecordingDrafter(pair["edge"])
    recorded = speculative(rec, pair["cloud"], prompt, 24, gamma=8, schedule="confidence")
    assert [len(r.draft) for r in rec.recording.rounds] == recorded.drafted_trace == plain.drafted_trace
    assert min(plain.drafted_trace) < 8  # the stop rule cut some drafts short
    replay = speculative(ReplayedEdge(rec.recording, wait=False), pair["cloud"], prompt, 24, gamma=8)  # constant, the cap
    assert replay.tokens == plain.tokens and replay.drafted_trace == plain.drafted_trace


# ---- server-side speculation on a batching server


@pytest.fixture(scope="module")
def pair():
    return {name: load(ModelSpec(f"zoo:tiny-{name}", dtype="float32", device="cpu")) for name in ("cloud", "edge")}


@pytest.fixture(scope="module")
def draft_servers(pair):
    made = {}
    for name, kw in (("solo", {}), ("batched", {"batch": "wait", "max_batch": 4, "batch_wait_ms": 30})):
        cloud = CloudService(pair["cloud"], pair["edge"], **kw)
        server, port = start(cloud)
        made[name] = (cloud, server, f"127.0.0.1:{port}")
    yield {name: m[2] for name, m in made.items()} | {"batched_cloud": made["batched"][0]}
    for cloud, server, _ in made.values():
        server.stop(grace=None).wait()
        cloud.close()




def _several(status: dict) -> int:
    return sum(count for size, count in status["batches"].items() if int(size) > 1)


PROMPTS = ["def parse(text):", "class Stack:", "import os", "x"]


def test_server_side_speculation_batches_its_verify_rounds_and_keeps_solo_outputs(pair, draft_servers):
    want = [speculative(pair["edge"], pair["cloud"], p, 16, gamma=3).tokens for p in PROMPTS]
    before = _several(connect(draft_servers["batched"]).status())
    got = run_concurrently([lambda p=p: connect(draft_servers["batched"]).server_speculative(p, 16, gamma=3).tokens
                         for p in PROMPTS])
    assert got == want
    status = connect(draft_servers["batched"]).status()
    assert _several(status) > before
    assert sum(c for size, c in status["draft_batches"].items() if int(size) > 1) > 0  # draft steps batched too
    assert draft_servers["batched_cloud"].caches == 0  # every generation freed its cache


def test_server_side_sampling_on_a_batching_server_draws_as_solo(draft_servers):
    kw = {"gamma": 3, "verify": "sample", "temperature": 1.0}
    want = [connect(draft_servers["solo"]).server_speculative(p, 16, seed=i, **kw).tokens for i, p in enumerate(PROMPTS)]
    got = run_concurrently([lambda i=i, p=p: connect(draft_servers["batched"]).server_speculative(p, 16, seed=i, **kw).tokens
                         for i, p in enumerate(PROMPTS)])
    assert got == want


def test_uncached_cost_times_both_rounds_and_leaves_the_cache_as_it_found_it(pair):
    df = C.uncached_cost(pair["cloud"], [8, 16], gamma=2, reps=2)
    assert df.context.tolist() == [8, 16] and (df.gamma == 2).all()
    assert (df.round_cached_ms > 0).all() and (df.round_uncached_ms > 0).all()
    assert df.uncached_over_cached.tolist() == pytest.approx((df.round_uncached_ms / df.round_cached_ms).tolist())


def test_the_preset_and_the_notebook_name_the_studys_settings():
    """params/capacity.yaml sets only the notebook's parameters, makes a valid Config, and covers what
    docs/capacity.md measures (N 1..32, RTT 0 and 20 ms, the three methods, with and without batching); the notebook
    can set every field of Config."""
    import dataclasses
    from pathlib import Path

    import papermill
    import yaml

    root = Path(__file__).resolve().parents[1]
    preset = yaml.safe_load((root / "params" / "capacity.yaml").read_text())
    params = papermill.inspect_notebook(str(root / "notebooks" / "capacity.ipynb"))
    assert set(preset) <= set(params), set(preset) - set(params)
    fields = {f.name for f in dataclasses.fields(C.Config)}
    assert fields <= set(params), fields - set(params)
    cfg = C.Config(**{k: v for k, v in preset.items() if k in fields}).check()
    assert {1, 2, 4, 8, 16, 32} <= set(cfg.ns) and {0.0, 20.0} <= set(map(float, cfg.rtts_ms))
    assert set(cfg.methods) == set(C.SERVED) and {"none", "dynamic"} <= set(cfg.policies)


def test_the_docs_table_has_a_row_per_n_and_a_column_per_method_and_policy():
    rows = pd.DataFrame(_rows("edge_cloud", "none", 1, [60.0]) + _rows("edge_cloud", "none", 1, [50.0], gamma=4)
                        + _rows("edge_cloud", "none", 2, [30.0, 20.0]) + _rows("cloud", "dynamic", 1, [40.0], gamma=0)
                        + _rows("cloud", "dynamic", 2, [15.0, 15.0], gamma=0))
    text = R.table_markdown(C.summary(rows))
    lines = text.splitlines()
    assert lines[0] == "RTT 0 ms:" and lines[2] == "| N | edge_cloud, none | cloud, dynamic |"
    assert lines[4].startswith("| 1 | g3: 60 (60-60) / 60.0 [60.0] | 40 (40-40) / 40.0 [40.0] |")  # gamma 3 beat 4
    assert lines[5].startswith("| 2 | g3: 40 (40-40) / 21.0 [25.0] |")  # 20 tokens over the slowest edge's 0.5 s
