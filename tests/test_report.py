"""The report on synthetic records: frame, fair speed-ups, the audit's flags, acceptance pivot."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from specnb.report import categories, fairness, findings, frame, tables
from specnb.study import methods


def rec(cid, method, *, edge=None, cloud=None, tps=10.0, status="ok", acc=None, trace=(), **settings):
    """A result record: edge/cloud given as (dtype, device)."""
    s = {"prompts": "builtin:code", "num_prompts": 2, "max_new_tokens": 8, "temperature": 0.0, "gamma": 4,
         "verify": "greedy", **settings}
    r = {"status": status, "method": method, "cell": {"cell_id": cid}, "settings": s,
         "aggregate": {"tokens_per_s": tps, "new_tokens": 16, "wall_s": 16 / tps, "acceptance_rate": acc,
                       "drafted": 8 if acc is not None else 0, "accepted": 4 if acc is not None else 0,
                       "peak_mem_bytes": 2**20, "prompts": 2},
         "prompts": [{"trace": list(trace)}], "error": None if status == "ok" else "RuntimeError: boom"}
    for role, spec in (("edge", edge), ("cloud", cloud)):
        if spec:
            dtype, device = spec
            r[role] = {"model": f"zoo:tiny-{role}", "dtype": dtype, "device": device,
                       "device_class": "GPU" if device.startswith("cuda") else "CPU", "threads": 2 if role == "edge" else None}
            s[f"{role}_dtype"] = dtype
    return r


@pytest.fixture
def study():
    """The study's original mix: edge float32 on CPU, cloud float16 on GPU, plus a float32 reference."""
    return [
        rec("edge-float32", "edge", edge=("float32", "cpu"), tps=5),
        rec("cloud-float16", "cloud", cloud=("float16", "cuda:0"), tps=40),
        rec("cloud_optimized-float16", "cloud_optimized", cloud=("float16", "cuda:0"), tps=50),
        rec("cloud_optimized-float32", "cloud_optimized", cloud=("float32", "cuda:0"), tps=25),
        rec("speculative-mixed", "speculative", edge=("float32", "cpu"), cloud=("float16", "cuda:0"), tps=60, acc=0.5,
            trace=[4, 0, 2]),
        rec("speculative-float32", "speculative", edge=("float32", "cuda:0"), cloud=("float32", "cuda:0"), tps=30,
            acc=0.75, trace=[4, 4]),
        rec("cloud-bfloat16", "cloud", cloud=("bfloat16", "cuda:0"), status="failed"),
    ]


def test_frame_has_one_row_per_cell_with_roles(study):
    df = frame.results_frame(study)
    assert len(df) == 7 and list(df["method"].unique()) == ["edge", "cloud", "cloud_optimized", "speculative"]
    edge = df[df.cell_id == "edge-float32"].iloc[0]
    assert (edge.edge_dtype, edge.edge_class) == ("float32", "CPU") and pd.isna(edge.cloud_dtype)
    failed = tables.failed_cells(df)
    assert list(failed.cell_id) == ["cloud-bfloat16"] and "boom" in failed.error[0]


def test_audit_flags_dtype_and_device_class(study):
    df = frame.results_frame(study)
    audit = fairness.fairness_audit(df).set_index(["kind", "cell_id"])
    edge = audit.loc[("speed-up", "edge-float32")]
    # the edge baseline's fairest reference is the float32 cloud on GPU: the device class differs
    assert not edge.fair and edge.reference == "cloud_optimized-float32"
    assert "Edge float32+CPU vs Cloud float32+GPU" in edge.verdict and "device class CPU vs GPU" in edge.differs
    assert "设备类别" in edge.differs_zh and "不公平" in edge.verdict_zh
    assert ("speed-up", "cloud-float16") not in audit.index  # a reference (of plain runs) itself
    plain = audit.loc[("speed-up", "speculative-mixed")]
    assert plain.reference == "cloud-float16" and "set-up" not in plain.differs  # plain with plain
    mixed = audit.loc[("within run", "speculative-mixed")]
    assert not mixed.fair and "Edge float32+CPU vs Cloud float16+GPU" in mixed.comparison
    assert "dtype float32 vs float16" in mixed.differs and "device class CPU vs GPU" in mixed.differs
    assert ("within run", "speculative-float32") not in audit.index  # both roles float32 on GPU
    assert ("speed-up", "cloud-bfloat16") not in audit.index  # failed cells are not compared


def test_study_mix_edge_vs_float16_cloud_is_named():
    df = frame.results_frame([rec("edge-float32", "edge", edge=("float32", "cpu")),
                               rec("cloud_optimized-float16", "cloud_optimized", cloud=("float16", "cuda"))])
    a = fairness.fairness_audit(df).iloc[0]
    assert not a.fair and "Edge float32+CPU vs Cloud float16+GPU" in a.verdict
    assert "dtype float32 vs float16" in a.differs


def test_speedups_only_when_fair(study):
    df = frame.results_frame(study)
    sp = fairness.speedups(df).set_index("cell_id")
    assert sp.loc["speculative-mixed", "speedup"] == pytest.approx(60 / 40)  # plain vs the plain cloud
    # a plain loop against the optimized baseline is like with unlike: flagged, not quoted
    assert math.isnan(sp.loc["speculative-float32", "speedup"])
    assert "set-up plain vs optimized" in fairness.fairness_audit(df).set_index("cell_id").loc["speculative-float32", "differs"]
    assert math.isnan(sp.loc["edge-float32", "speedup"]) and not sp.loc["edge-float32", "same_output"]
    assert math.isnan(sp.loc["speculative-mixed", "speedup_low"])  # timed once: no interval


def test_optimized_runs_compare_with_cloud_optimized(study):
    study.append(rec("speculative-float32-opt", "speculative", edge=("float32", "cuda:0"), cloud=("float32", "cuda:0"),
                     tps=50, acc=0.75, optimized=True))
    sp = fairness.speedups(frame.results_frame(study)).set_index("cell_id")
    assert sp.loc["speculative-float32-opt", "reference"] == "cloud_optimized-float32"
    assert sp.loc["speculative-float32-opt", "speedup"] == pytest.approx(50 / 25)
    assert sp.loc["speculative-float32-opt", "setup"] == "optimized"


def timed(r, seconds, probes=(0.010, 0.010, 0.010), start=0.0):
    """Give a record timing entries (2 prompts x len(seconds) reps, 8 tokens each) and probes."""
    entries = [{"rep": k, "prompt": i, "new_tokens": 8, "wall_s": s / 2} for k, s in enumerate(seconds) for i in range(2)]
    r["timing"] = {"reps": len(seconds), "entries": entries, "host": "h", "start": start, "end": start + 1,
                   "probes": [{"where": "x", "seconds": p} for p in probes]}
    r["aggregate"]["tokens_per_s"] = 16 * len(seconds) / sum(seconds)
    return r


def test_speedup_interval_and_no_measurable_difference():
    base = dict(cloud=("float32", "cpu"))
    recs = [timed(rec("cloud", "cloud", **base), [1.0, 1.1, 0.9]),
            timed(rec("fast", "speculative", edge=("float32", "cpu"), **base), [0.5, 0.55, 0.45], start=2),
            timed(rec("same", "hf_assisted", edge=("float32", "cpu"), **base), [1.05, 0.95, 1.0], start=4)]
    sp = fairness.speedups(frame.results_frame(recs)).set_index("cell_id")
    fast, same = sp.loc["fast"], sp.loc["same"]
    assert fast.speedup == pytest.approx(2.0) and fast.speedup_low < 2.0 < fast.speedup_high and fast.measurable
    assert same.speedup_low < 1.0 < same.speedup_high and not same.measurable
    assert "no measurable difference" in same.note and "无可测差异" in same.note_zh
    assert not fast.timing_disturbed


def test_timed_once_interval_over_prompts_only_and_said_so():
    base = dict(cloud=("float32", "cpu"))
    def once(cid, method, seconds, **kw):  # one repetition over len(seconds) prompts, 8 tokens each
        r = rec(cid, method, num_prompts=len(seconds), **kw)
        r["timing"] = {"reps": 1, "entries": [{"rep": 0, "prompt": i, "new_tokens": 8, "wall_s": s}
                                              for i, s in enumerate(seconds)]}
        r["aggregate"]["tokens_per_s"] = 8 * len(seconds) / sum(seconds)
        return r
    recs = [once("cloud", "cloud", [1.0, 1.0, 1.0, 1.0], **base),
            once("spec", "speculative", [0.4, 0.5, 0.6, 0.5], edge=("float32", "cpu"), **base)]
    spec = fairness.speedups(frame.results_frame(recs)).set_index("cell_id").loc["spec"]
    assert spec.speedup == pytest.approx(2.0) and spec.speedup_low < 2.0 < spec.speedup_high  # the prompts' spread
    assert spec.speedup_low >= 1 / 0.6 - 1e-9 and spec.speedup_high <= 1 / 0.4 + 1e-9  # within the per-prompt ratios
    assert spec.interval_over == fairness.OVER_PROMPTS and spec.measurable
    assert "timed once: interval over prompts only" in spec.note and "仅对提示词" in spec.note_zh
    text = findings.markdown(findings.on_speed(fairness.speedups(frame.results_frame(recs)), frame.results_frame(recs)))
    assert "over prompts; timed once" in text and "仅对提示词" in text
    # one prompt timed once: nothing to resample, no interval
    recs = [once("cloud", "cloud", [1.0], **base), once("spec", "speculative", [0.5], edge=("float32", "cpu"), **base)]
    spec = fairness.speedups(frame.results_frame(recs)).set_index("cell_id").loc["spec"]
    assert spec.speedup == pytest.approx(2.0) and math.isnan(spec.speedup_low) and spec.interval_over is None
    # repeated runs: over prompts x repetitions, no note
    recs = [timed(rec("cloud", "cloud", **base), [1.0, 1.1]),
            timed(rec("spec", "speculative", edge=("float32", "cpu"), **base), [0.5, 0.55], start=2)]
    spec = fairness.speedups(frame.results_frame(recs)).set_index("cell_id").loc["spec"]
    assert spec.interval_over == fairness.OVER_PROMPTS_REPS and "prompts only" not in spec.note


def test_a_disturbed_clock_flags_every_speedup_using_the_cell():
    from specnb.measure.clock import clock_audit

    base = dict(cloud=("float32", "cpu"))
    recs = [timed(rec("cloud", "cloud", **base), [1.0, 1.0]),
            timed(rec("spec", "speculative", edge=("float32", "cpu"), **base), [0.5, 0.5], start=2),
            timed(rec("hf", "hf_assisted", edge=("float32", "cpu"), **base), [0.8, 0.8], probes=(0.010, 0.016), start=4)]
    clock = clock_audit(recs).set_index("cell_id")
    assert bool(clock.loc["hf", "disturbed"]) and not clock.loc["spec", "disturbed"]
    assert "TIMING DISTURBED" in clock.loc["hf", "verdict"] and "计时受干扰" in clock.loc["hf", "verdict_zh"]
    sp = fairness.speedups(frame.results_frame(recs)).set_index("cell_id")
    assert sp.loc["hf", "timing_disturbed"] and not sp.loc["spec", "timing_disturbed"]
    assert "TIMING DISTURBED" in sp.loc["hf", "note"] and "计时受干扰" in sp.loc["hf", "note_zh"]
    # the reference disturbed: every speed-up against it is flagged
    recs[0]["timing"]["probes"][0]["seconds"] = 0.02
    sp = fairness.speedups(frame.results_frame(recs))
    assert sp["timing_disturbed"].all()


def test_overlapping_timed_sections_are_flagged():
    from specnb.measure.clock import clock_audit

    recs = [timed(rec("a", "cloud", cloud=("float32", "cpu")), [1.0, 1.0], start=0),
            timed(rec("b", "cloud_optimized", cloud=("float32", "cpu")), [1.0, 1.0], start=0.5),
            timed(rec("c", "edge", edge=("float32", "cpu")), [1.0, 1.0], start=1.5)]
    clock = clock_audit(recs).set_index("cell_id")
    assert clock.loc["a", "overlaps_with"] == "b" and clock.loc["b", "disturbed"]
    assert not clock.loc["c", "disturbed"]  # starts when b ends: no overlap


def test_slower_optimized_cloud_points_at_clock_or_setup():
    from specnb.measure.clock import clock_audit, slower_optimized

    recs = [timed(rec("cloud", "cloud", cloud=("float32", "cpu")), [1.0, 1.0]),
            timed(rec("opt", "cloud_optimized", cloud=("float32", "cpu")), [1.2, 1.2], start=2)]
    df = frame.results_frame(recs)
    [case] = slower_optimized(df, clock_audit(recs))
    assert case["cause"] == "set-up" and "slower than cloud" in case["en"] and "慢于" in case["zh"]
    recs[1]["timing"]["probes"][1]["seconds"] = 0.013
    [case] = slower_optimized(df, clock_audit(recs))
    assert case["cause"] == "clock"


def test_workload_difference_is_unfair(study):
    study[4]["settings"]["max_new_tokens"] = 64
    audit = fairness.fairness_audit(frame.results_frame(study)).set_index(["kind", "cell_id"])
    assert not audit.loc[("speed-up", "speculative-mixed")].fair
    assert "workload" in audit.loc[("speed-up", "speculative-mixed")].differs


def test_a_templated_run_against_a_raw_text_reference_is_unfair(study):
    """auto with a template and none (or an old record, or auto without a template) fed different prompts."""
    fair = fairness.fairness_audit(frame.results_frame(study)).set_index(["kind", "cell_id"])
    assert "chat template" not in fair.loc[("speed-up", "speculative-mixed")].differs
    study[4]["settings"].update(chat_template="auto", chat_template_applied=True)
    audit = fairness.fairness_audit(frame.results_frame(study)).set_index(["kind", "cell_id"])
    assert not audit.loc[("speed-up", "speculative-mixed")].fair
    assert "chat template" in audit.loc[("speed-up", "speculative-mixed")].differs
    study[4]["settings"]["chat_template_applied"] = False  # auto, but the tokenizer had none: raw text, as the reference
    df = frame.results_frame(study)
    assert set(df["prompt_format"]) == {"raw text"}


def test_no_reference_is_flagged():
    df = frame.results_frame([rec("spec-float32", "speculative", edge=("float32", "cpu"), cloud=("float32", "cpu"))])
    a = fairness.fairness_audit(df).iloc[0]
    assert not a.fair and pd.isna(a.reference) and math.isnan(fairness.speedups(df).speedup[0])


def test_acceptance_pivot_and_lengths(study):
    df = frame.results_frame(study)
    acc = tables.acceptance_by_dtype(df)
    assert acc.loc["float32", "float16"] == 0.5 and acc.loc["float32", "float32"] == 0.75
    lengths = tables.accepted_lengths(study)
    assert sorted(lengths.accepted) == [0, 2, 4, 4, 4]


def test_drafted_lengths_per_cell_with_a_fallback_for_old_records(study):
    adaptive = rec("speculative-adaptive", "speculative", edge=("float32", "cpu"), cloud=("float32", "cpu"), acc=0.5,
                   schedule="adaptive", gamma=16)
    adaptive["prompts"] = [{"trace": [3, 0, 8], "drafted_trace": [4, 2, 8]}, {"trace": [1, 6], "drafted_trace": [2, 6]}]
    mixed = study[4] | {"prompts": [{"trace": [4, 0, 2], "drafted_trace": [4, 4, 4]}]}
    mixed["settings"] = mixed["settings"] | {"schedule": "constant"}
    hf = rec("hf_assisted-float32", "hf_assisted", edge=("float32", "cpu"), cloud=("float32", "cpu"), acc=0.5)
    t = tables.drafted_lengths([adaptive, mixed, study[5], hf]).set_index("cell_id")
    assert list(t.index) == ["speculative-adaptive", "speculative-mixed", "speculative-float32"]  # HF: no rounds, no row
    a = t.loc["speculative-adaptive"]
    assert (a.method, a["dtype"], a.schedule, a.gamma, a.rounds) == ("speculative", "float32", "adaptive", 16, 5)
    assert a.drafted_mean == pytest.approx(22 / 5) and a.drafted_p50 == 4.0  # pooled over both prompts' rounds
    assert a.drafted_p10 == pytest.approx(2.0) and a.drafted_p90 == pytest.approx(7.2)  # numpy's linear quantiles
    m = t.loc["speculative-mixed"]
    assert m["dtype"] == "edge-float32_cloud-float16" and m.drafted_mean == 4.0 and m.drafted_p90 == 4.0
    old = t.loc["speculative-float32"]  # recorded before drafted_trace: its rounds, no distribution
    assert (old.rounds, old.schedule) == (2, "constant") and pd.isna(old.drafted_mean) and pd.isna(old.drafted_p50)
    shown = tables.for_reading(t.reset_index(), 2)
    assert shown.loc[2, "drafted_mean"] == frame.NA and shown.loc[0, "drafted_mean"] == "4.40"
    assert list(tables.drafted_lengths([]).columns) == tables.DRAFTED_COLUMNS


def test_drafted_lengths_of_a_real_tiny_run(tiny_pair, tmp_path):
    """A speculative run's prompt rows keep the drafted length per round; the table reads them back."""
    from specnb.study import experiment
    from specnb.study.params import MethodParams

    p = MethodParams(edge_model=tiny_pair["edge"], cloud_model=tiny_pair["cloud"], prompts="builtin:code",
                     num_prompts=2, max_new_tokens=12, warmup=0, gamma=2, schedule="heuristic",
                     result_path=str(tmp_path / "r.json"))
    record = experiment.run("speculative", p) | {"cell": {"cell_id": "spec"}}
    for row in record["prompts"]:
        assert len(row["drafted_trace"]) == len(row["trace"]) == row["rounds"]
        assert sum(row["drafted_trace"]) == row["drafted"]
    t = tables.drafted_lengths([record]).iloc[0]
    agg = record["aggregate"]
    assert (t.schedule, t.gamma, t.rounds) == ("heuristic", 2, agg["rounds"])
    assert t.drafted_mean == pytest.approx(agg["drafted"] / agg["rounds"])
    assert t.drafted_p10 <= t.drafted_p50 <= t.drafted_p90


def test_study_table_and_csv(study, tmp_path):
    df = frame.results_frame(study)
    t = tables.study_table(df)
    first = t[t["method / 方法"] == "Edge baseline"].iloc[0]
    assert list(first) == ["Edge baseline", "float32", "N/A", "CPU", "N/A", 2]
    back = pd.read_csv(frame.write_csv(df, tmp_path / "r.csv"))
    assert len(back) == len(df)


def test_findings_are_bilingual_and_generated(study):
    from specnb.report import findings

    df = frame.results_frame(study)
    audit = fairness.fairness_audit(df)
    recs = findings.recommendations(df, audit, fairness.speedups(df, audit), acceptance=tables.acceptance_by_dtype(df))
    text = findings.markdown(recs)
    assert all(t.en and t.zh for t in recs)
    assert "edge-float32" in text and "device class" in text and "设备" in text  # the unfair edge comparison
    assert "cloud-bfloat16" in text  # the failed cell is named
    assert "1.50x" in text  # speculative (plain) float16: 60 / 40 tok/s against the plain cloud
    assert "推测解码 的速度是" in text  # the registry's Chinese label in the Chinese sentence
    assert "75.0%" in text and "50.0%" in text  # acceptance spread by dtype pair


def test_drift_math():
    import torch

    from specnb.report import drift

    a = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]], dtype=torch.float64), -1)
    same = drift.compare(a, a)
    assert same["top1_agreement"] == 1.0 and same["mean_kl"] == pytest.approx(0.0, abs=1e-12)
    b = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 3.0]], dtype=torch.float64), -1)
    diff = drift.compare(a, b)
    assert diff["top1_agreement"] == 0.5 and diff["mean_kl"] > 0 and diff["max_kl"] >= diff["mean_kl"]
    assert drift.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert drift.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert drift.first_divergence([1, 2], [1, 2, 3]) == 2


def test_drift_on_tiny_pair(tiny_pair):
    from specnb.report import drift
    from specnb.prompts import load_prompts

    rows = drift.measure(tiny_pair["cloud"], load_prompts("builtin:code", 2), 6)
    assert list(rows["dtype"]) == ["float16", "float16", "bfloat16", "bfloat16"]
    assert rows["positions"].eq(6).all() and rows["top1_agreement"].between(0, 1).all() and (rows["mean_kl"] >= 0).all()
    summary = drift.summary(rows)
    assert list(summary.index) == ["float16", "bfloat16"] and summary["prompts"].eq(2).all()


def test_plots_draw(study):
    import matplotlib

    matplotlib.use("Agg")
    from specnb.report import plots

    df = frame.results_frame(study)
    sp = fairness.speedups(df)
    # the speed-up bars: one per quoted run writing the cloud's text, at its value
    quoted = sp[sp["fair"].astype(bool) & sp["same_output"].astype(bool) & sp["speedup"].notna()]
    bars = [b.get_height() for b in plots.speedups(sp).axes[0].patches]
    assert sorted(bars) == pytest.approx(sorted(quoted["speedup"]))
    # acceptance: every method that drafts (the registry says which) and ran, prompt lookup included
    legend = plots.acceptance(df).axes[0].get_legend()
    drafted = {frame.METHOD_NAMES[m] for m in df.loc[df["status"] == "ok", "method"] if m in methods.drafting()}
    assert {t.get_text().split(" (")[0] for t in legend.get_texts()} == drafted
    lengths = tables.accepted_lengths(study)
    assert set(lengths["method"]) <= set(methods.drafting()) and not lengths.empty
    assert plots.accepted_lengths(lengths).axes[0].patches
    assert plots.tokens_per_s(df).axes[0].patches
    assert plots.drift(pd.DataFrame()).axes[0].get_title() != plots.tokens_per_s(df).axes[0].get_title()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["study", "all_failed"])
def test_analysis_notebooks_run_on_a_run_folder(study, tmp_path, which):
    """precision_analysis + summary execute without errors (mixed devices, or nothing ok) and export HTML."""
    import json

    import nbformat

    from specnb.grid.analysis import run_analysis

    records = study if which == "study" else [r | {"status": "failed"} for r in study[:2]]
    for r in records:
        r["settings"]["prompts"], r["settings"]["num_prompts"] = "builtin:code", 1
        folder = tmp_path / "cells" / r["cell"]["cell_id"]
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(r))
    html = run_analysis(tmp_path)
    assert set(html) == {"precision_analysis", "summary"} and all(p.is_file() for p in html.values())
    for name in html:
        nb = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, (name, errors[:1])
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "categories.csv").is_file()


def test_load_results_from_a_folder_of_json(study, tmp_path):
    import json

    (tmp_path / "a_manifest.json").write_text(json.dumps({"not": "a result"}))
    for r in study[:2]:
        body = {k: v for k, v in r.items() if k != "cell"}
        (tmp_path / f"{r['cell']['cell_id']}.json").write_text(json.dumps(body))
    ids = sorted(r["cell"]["cell_id"] for r in frame.load_results(tmp_path))
    assert ids == ["cloud-float16", "edge-float32"]


def test_findings_name_the_disturbed_clock_in_both_languages():
    from specnb.report import findings

    base = dict(cloud=("float32", "cpu"))
    recs = [timed(rec("cloud", "cloud", **base), [1.0, 1.0]),
            timed(rec("spec", "speculative", edge=("float32", "cpu"), **base), [0.5, 0.5], probes=(0.010, 0.02), start=2)]
    df = frame.results_frame(recs)
    audit = fairness.fairness_audit(df)
    text = findings.markdown(findings.recommendations(df, audit, fairness.speedups(df, audit)))
    assert "TIMING DISTURBED in 1 cell(s) (spec)" in text and "计时受干扰" in text
    assert "re-run before quoting" in text and "引用前请重新运行" in text


# ---------------------------------------------------------------------------- per category (Spec-Bench style)

def categorized(cid, method, rows, *, reps=3, **kw):
    """A record over prompts given as (id, category, new_tokens, seconds, rounds): per-prompt rows and
    timing entries repeating those seconds ``reps`` times (the same each time: a degenerate interval)."""
    r = rec(cid, method, num_prompts=len(rows), **kw)
    r["prompts"] = [{"id": i, "category": c, "new_tokens": n, "wall_s": s, "rounds": k,
                     "accepted": n - k if k else 0} for i, c, n, s, k in rows]
    r["timing"] = {"reps": reps, "entries": [{"rep": rep, "prompt": j, "new_tokens": n, "wall_s": s}
                                             for rep in range(reps) for j, (_, _, n, s, _) in enumerate(rows)]}
    r["aggregate"]["tokens_per_s"] = sum(x[2] for x in rows) / sum(x[3] for x in rows)
    return r


@pytest.fixture
def by_category():
    """Two MT-bench turns (own ids, category writing: Spec-Bench's mt_bench task) and two translations;
    speculative is twice as fast as the cloud on translation only."""
    base = dict(cloud=("float32", "cpu"))
    ids = [("81-t1", "writing"), ("81-t2", "writing"), ("161", "translation"), ("162", "translation")]
    cloud = categorized("cloud", "cloud", [(i, c, 8, 1.0, 0) for i, c in ids], **base)
    spec = categorized("spec", "speculative", [(i, c, 8, 0.5 if c == "translation" else 1.0,
                                                2 if c == "translation" else 4) for i, c in ids],
                       edge=("float32", "cpu"), **base)
    other = categorized("spec-fp16", "speculative", [(i, c, 8, 0.5, 2) for i, c in ids],
                        edge=("float16", "cpu"), cloud=("float16", "cpu"))  # no float16 cloud: not quoted
    return [cloud, spec, other]


def test_category_table_speedup_and_accepted_tokens_per_task(by_category):
    t = categories.category_table(by_category)
    assert set(t["cell_id"]) == {"spec"}  # only quoted (like-for-like) pairs; the reference itself is not a row
    t = t.set_index("category")
    assert list(t.index) == ["mt_bench", "translation", "overall"]  # Spec-Bench's task, in order of appearance
    assert t.loc["translation", "speedup"] == pytest.approx(2.0) and t.loc["mt_bench", "speedup"] == pytest.approx(1.0)
    assert t.loc["translation", "prompts"] == 2 and t.loc["overall", "prompts"] == 4
    assert t.loc["translation", "measurable"] and not t.loc["mt_bench", "measurable"]  # interval [1, 1] holds 1.0
    overall = fairness.speedups(frame.results_frame(by_category)).set_index("cell_id").loc["spec"]
    assert t.loc["overall", "speedup"] == overall.speedup == pytest.approx(32 / 3 / 8)  # the speed-up table's row
    # Spec-Bench's mean accepted tokens: tokens per round, the cloud's own token included; gpt-fast's one less
    assert t.loc["translation", "tokens_per_round"] == 4.0 and t.loc["mt_bench", "tokens_per_round"] == 2.0
    assert t.loc["overall", "tokens_per_round"] == pytest.approx(32 / 12)
    assert t.loc["translation", "mean_accepted_len"] == 3.0 and t.loc["mt_bench", "mean_accepted_len"] == 1.0
    assert (t["interval_over"] == fairness.OVER_PROMPTS_REPS).all()


def test_category_intervals_for_a_run_timed_once(by_category):
    for r in by_category:  # one repetition: the interval per category resamples that category's prompts
        r["timing"]["entries"] = [e for e in r["timing"]["entries"] if e["rep"] == 0]
        r["timing"]["reps"] = 1
    t = categories.category_table(by_category).set_index("category")
    assert t.loc["translation", "speedup_low"] == pytest.approx(2.0) == t.loc["translation", "speedup_high"]
    assert (t["interval_over"] == fairness.OVER_PROMPTS).all()


def test_category_table_groups_by_category_not_id_and_needs_the_same_prompts(by_category):
    cloud, spec, _ = by_category
    spec["prompts"][0]["id"] = "something-else"  # the reference decoded other prompts in that position
    t = categories.category_table([cloud, spec], tasks={}).set_index("category")
    assert list(t.index) == ["writing", "translation", "overall"]  # no task map: categories as recorded
    assert t.loc[["writing", "translation"], "speedup"].isna().all()  # no like-for-like pairs per category
    assert t.loc["overall", "speedup"] == pytest.approx(32 / 3 / 8)
    assert t.loc["translation", "tokens_per_round"] == 4.0  # the run's own counts need no reference


def test_category_view_is_spec_bench_layout(by_category):
    t = categories.category_table(by_category)
    view = categories.category_view(t)
    assert list(view.columns) == ["method / 方法", "multi-turn conversation / 多轮对话", "translation / 翻译",
                                  "overall / 总体", "timing disturbed / 计时受干扰"]
    assert view.loc["spec", "translation / 翻译"] == "2.00x (2.00-2.00)"
    mat = categories.category_view(t, "tokens_per_round")
    assert mat.loc["spec", "multi-turn conversation / 多轮对话"] == 2.0
    edge = categories.category_table([by_category[0], categorized("edge", "edge", [("1", "qa", 8, 0.1, 0)] * 4,
                                                                edge=("float32", "cpu"))])
    assert categories.category_view(edge).empty and not categories.category_view(edge, same_output_only=False).empty


def test_for_reading_shows_missing_values_as_a_dash():
    t = pd.DataFrame({"gamma": [4.0, None], "rate": [0.12345, float("nan")], "name": ["a", None],
                      "flag": pd.array([True, None], dtype="boolean"), "full": [1.23456, 2.0]})
    out = tables.for_reading(t, digits=3)
    assert list(out["gamma"]) == ["4", frame.NA] and list(out["rate"]) == ["0.123", frame.NA]
    assert list(out["name"]) == ["a", frame.NA] and list(out["flag"]) == [True, frame.NA]
    assert out["full"].dtype == float and out["full"][0] == 1.235  # no missing value: stays a number, rounded
    assert "NaN" not in out.to_string() and "None" not in out.to_string()
    assert tables.for_reading(t, float_format="{:.2g}")["rate"][0] == "0.12"


def test_category_and_drift_plots_keep_their_legends_off_the_bars(by_category):
    import matplotlib

    matplotlib.use("Agg")
    from specnb.report import plots

    rows = pd.DataFrame([{"prompt": f"p{i}", "dtype": d, "top1_agreement": 1.0} for i in range(3)
                         for d in ("float32 (noise floor)", "float16", "bfloat16")])
    for fig in (plots.drift(rows), plots.category_speedups(categories.category_table(by_category))):
        fig.canvas.draw()
        ax = fig.axes[0]
        legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert not legend.overlaps(box), "the legend sits on the axes: it covers a bar"


def test_for_reading_keeps_rounded_measurements_as_decimals():
    t = pd.DataFrame({"tokens_per_s": [256.04, float("nan")]})
    assert list(tables.for_reading(t, digits=1)["tokens_per_s"]) == ["256.0", frame.NA]


def test_findings_say_how_far_the_speedup_moves_across_categories(by_category):
    from specnb.report import findings

    t = categories.category_table(by_category)
    text = findings.markdown(findings.on_categories(t))
    assert "spec runs at 1.00x on mt_bench and 2.00x on translation (overall 1.33x)" in text
    assert "2.00 to 4.00" in text and "加速比取决于任务" in text
    assert findings.on_categories(t[t["category"] != "translation"]) == []  # one category: nothing to say


SPEC_BENCH_LINES = [  # Spec-Bench's question.jsonl: one question of each kind (turns shortened)
    {"question_id": 81, "category": "writing", "turns": ["Compose a travel blog post.", "Rewrite it."]},
    {"question_id": 91, "category": "roleplay", "turns": ["Pretend yourself to be Elon Musk.", "Do you like dancing?"]},
    {"question_id": 161, "category": "translation", "turns": ["Translate German to English: Pfandhäuser boomen"]},
    {"question_id": 241, "category": "summarization", "turns": ["Summarize: ..."]},
    {"question_id": 321, "category": "qa", "turns": ["Who played ...?"]},
    {"question_id": 401, "category": "math_reasoning", "turns": ["Janet's ducks lay 16 eggs ..."]},
    {"question_id": 481, "category": "rag", "turns": ["Some researchers state that forests ..."]},
]


def test_spec_bench_questions_group_into_its_six_tasks(tmp_path):
    import json

    from specnb.prompts import load_prompts

    path = tmp_path / "question.jsonl"
    path.write_text("\n".join(json.dumps(q) for q in SPEC_BENCH_LINES), encoding="utf-8")
    record = {"prompts": [{"id": p.id, "category": p.category} for p in load_prompts(str(path))]}
    groups = categories.prompt_groups(record)
    assert list(groups) == ["mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"]
    assert groups["mt_bench"] == [0, 1] and all(t in categories.CATEGORY_LABELS for t in groups)
