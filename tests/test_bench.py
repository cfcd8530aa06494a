"""Smoke run of ``specnb bench`` (no timing asserts: speed belongs to the benchmark's printout)."""

from __future__ import annotations

import json
import math

from specnb.cli import main
from tiny_models import build_llama, build_tokenizer


def test_bench_quick_writes_a_complete_record(tmp_path, capsys):
    tok = build_tokenizer(tmp_path / "tok")
    build_llama(tmp_path / "cloud", tok, seed=0)
    build_llama(tmp_path / "edge", tok, seed=0, base=tmp_path / "cloud", noise=0.05)
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--edge", str(tmp_path / "edge"), "--cloud", str(tmp_path / "cloud"),
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for key in ("R1 speculative / cloud_optimized", "R2 speculative / hf_assisted", "plain loop / hf_assisted",
                "spec+opt / hf+static", "R3 speed-up", "loop overhead", "lever (measured alone)"):
        assert key in printed
    assert "WARNING: torch compiled" not in printed  # every compiled method was warmed up before the clock
    record = json.loads(out.read_text())
    labels = {m["label"] for m in record["methods"]}
    assert {"cloud", "cloud_optimized", "edge", "speculative g=2", "hf_assisted g=4", "hf+static g=2", "speculative cost",
            "speculative g=4 edge compiled", "speculative g=4 -crop"} <= labels
    assert record["graphs_compiled_while_timing"] == 0
    levers = {row["lever"]: row for row in record["levers"]}
    assert {"edge compiled", "cloud compiled", "logits_to_keep", "one_sync", "crop", "edge + cloud compiled (spec+opt)",
            "heuristic schedule vs best fixed gamma", "cost schedule vs best fixed gamma"} <= set(levers)
    for row in levers.values():  # one rep in --quick: the paired ratio is the ratio of the medians
        assert math.isclose(row["gain"], row["with"] / row["without"]) and row["gain_min"] == row["gain"] == row["gain_max"]
    r = record["ratios"]
    assert r["best_gamma"] in (2, 4)
    for key in ("R1", "R2", "R2_same_stack", "R2_static", "R3", "alpha", "c", "S", "loop_overhead"):
        assert math.isfinite(r[key]), key
    assert 0 <= r["alpha"] <= 1 and 0 <= r["loop_overhead"] <= 1
    assert record["git"]["commit"]


def test_bench_rejects_bad_gammas(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="--gammas must be positive integers"):
        main(["bench", "--gammas", "0,x"])


def test_bench_record_reads_into_the_summary_tables(tmp_path):
    """The summary notebook's view of a bench record: ratios with goals, the lever table, the methods."""
    from specnb import plots, report

    tok = build_tokenizer(tmp_path / "tok")
    build_llama(tmp_path / "cloud", tok, seed=0)
    build_llama(tmp_path / "edge", tok, seed=0, base=tmp_path / "cloud", noise=0.05)
    assert main(["bench", "--quick", "--edge", str(tmp_path / "edge"), "--cloud", str(tmp_path / "cloud"),
                 "--json", str(tmp_path / "bench.json")]) == 0
    (tmp_path / "bench-other.json").write_text('{"kind": "something else"}')
    [rec] = report.load_bench(tmp_path)
    ratios = report.bench_ratios(rec).set_index("ratio")
    r = rec["ratios"]
    assert ratios.loc["R2", "value"] == r["R2"] and ratios.loc["R2", "goal"] == 1.3
    assert bool(ratios.loc["R1", "met"]) == (r["R1"] >= 1.5)
    assert bool(ratios.loc["loop overhead", "met"]) == (r["loop_overhead"] <= 0.10)
    assert ratios.loc["R2 plain / hf_assisted", "value"] == r["R2_same_stack"]
    assert list(report.bench_levers(rec)["lever"]) == [row["lever"] for row in rec["levers"]]
    assert len(report.bench_methods(rec)) == len(rec["methods"])
    assert plots.bench(rec) is not None and plots.bench(None) is not None
