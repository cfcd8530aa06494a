"""``specnb bench``: a smoke run (no timing asserts: speed belongs to the benchmark's printout) and
the wiring of its intervals and clock audit on synthetic methods."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest

from specnb.bench import passes, ratios, variants
from specnb.measure.clock import probe_summary
from specnb.measure import stats
from specnb.cli import build_parser, main
from specnb.measure.metrics import Generation


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, related_pair):
    """One ``specnb bench --quick`` on the related tiny pair: (printed output, record, its folder)."""
    tmp_path = tmp_path_factory.mktemp("bench")
    out = tmp_path / "bench.json"
    env = pytest.MonkeyPatch()
    env.setenv("SPECNB_TIMING_LOCK", str(tmp_path / "timing.lock"))  # never wait for a bench or grid on this machine
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            code = main(["bench", "--quick", "--edge", str(related_pair / "edge"), "--cloud", str(related_pair / "cloud"),
                         "--json", str(out)])
    finally:
        env.undo()
    assert code == 0
    return buf.getvalue(), json.loads(out.read_text()), tmp_path


def test_bench_quick_writes_a_complete_record(quick_run):
    printed, record, _ = quick_run
    for key in ("R1 speculative / cloud_optimized", "R2 speculative / hf_assisted", "plain loop / hf_assisted",
                "spec+opt / hf+static", "R3 speed-up", "loop overhead", "lever (measured alone)", "95% CI",
                "clock: ", "threads: edge", "prompt lookup / HF prompt lookup"):
        assert key in printed, key
    assert "WARNING: torch compiled" not in printed  # every compiled method was warmed up before the clock
    labels = {m["label"] for m in record["methods"]}
    assert {"cloud", "cloud_optimized", "edge", "speculative g=2", "hf_assisted g=4", "hf+static g=2", "speculative cost",
            "speculative g=4 edge compiled", "speculative g=4 -crop", "prompt_lookup g=2", "hf_prompt_lookup g=4"} <= labels
    assert record["graphs_compiled_while_timing"] == 0
    levers = {row["lever"]: row for row in record["levers"]}
    assert {"edge compiled", "cloud compiled", "logits_to_keep", "one_sync", "crop", "edge + cloud compiled (spec+opt)",
            "heuristic schedule vs best fixed gamma", "cost schedule vs best fixed gamma",
            "adaptive schedule vs best fixed gamma"} <= set(levers)
    for row in levers.values():  # one rep in --quick: the per-rep ratio is the ratio of the speeds
        assert math.isclose(row["gain"], row["with"] / row["without"])
        assert math.isclose(row["gain_min"], row["gain"]) and math.isclose(row["gain_max"], row["gain"])
        assert row["gain_low"] <= row["gain"] <= row["gain_high"]
    r = record["ratios"]
    assert r["best_gamma"] in (2, 4)
    for key in ("R1", "R2", "R2_same_stack", "R2_static", "R3", "alpha", "c", "S", "loop_overhead"):
        assert math.isfinite(r[key]), key
    assert 0 <= r["alpha"] <= 1 and 0 <= r["loop_overhead"] <= 1
    assert record["git"]["commit"]
    # the tiny tokenizer has no chat template: auto (the default) decodes raw text, and the record says so
    assert record["settings"]["chat_template"] == "auto"
    assert record["prompting"] == {"chat_template": "auto", "applied": False, "tokenizer": "cloud"}
    assert len(record["prompts"]) == 2 and all(isinstance(p, str) for p in record["prompts"])


def test_bench_record_has_intervals_tables_probes_and_threads(quick_run):
    printed, record, _ = quick_run
    r = record["ratios"]
    ivs = r["intervals"]
    for key in ("R1", "R1_plain", "R1_heuristic", "R1_cost", "R2", "R2_same_stack", "R2_static", "speedup_vs_cloud",
                "R2_by_gamma g=2", "R2_by_gamma g=4", "R2_same_stack_by_gamma g=4", "R2_static_by_gamma g=2",
                "PL", "PL_by_gamma g=2", "PL_by_gamma g=4", "PL_vs_cloud"):
        iv = ivs[key]
        assert iv["low"] <= iv["value"] <= iv["high"], key
        assert iv["measurable"] == (not iv["low"] <= 1.0 <= iv["high"])
    for key in ("R1", "R1_plain", "R1_heuristic", "R1_cost", "R2", "R2_same_stack", "R2_static", "speedup_vs_cloud"):
        assert r[key] == ivs[key]["value"]  # the printed value is the interval's
    assert r["R2_by_gamma"] == {str(g): ivs[f"R2_by_gamma g={g}"]["value"] for g in (2, 4)}
    assert ivs["PL"]["numerator"] == r["PL_method"] and ivs["PL"]["denominator"].startswith("hf_prompt_lookup g=")
    assert ivs["PL"]["denominator"][-1] == r["PL_method"][-1]  # the same gamma
    for m in record["methods"]:  # --quick: 1 rep x 2 prompts of (tokens, seconds)
        assert np.asarray(m["table"]).shape == (1, 2, 2)
        t = np.asarray(m["table"], dtype=float)
        assert math.isclose(m["tokens_per_s"], t[..., 0].sum() / t[..., 1].sum())
    wheres = [p["where"] for p in record["timing"]["probes"]]
    assert wheres[0] == "before" and wheres[-1] == "after" and all(p["seconds"] > 0 for p in record["timing"]["probes"])
    assert record["timing"]["start"] <= record["timing"]["end"]
    assert record["timing"]["lock"].endswith("timing.lock")  # the timed reps held the (here: the test's own) timing lock
    assert record["clock"]["probes"] == len(wheres) and isinstance(record["clock"]["disturbed"], bool)
    assert ("TIMING DISTURBED" in printed) == record["clock"]["disturbed"]
    assert {"usable_cores", "default_threads", "torch_threads", "edge", "cloud"} <= set(record["threads"])
    assert record["threads"]["edge"] == record["threads"]["default_threads"]  # --edge-threads left to the default


def test_bench_rejects_bad_gammas(tmp_path):
    with pytest.raises(SystemExit, match="--gammas must be positive integers"):
        main(["bench", "--gammas", "0,x"])


def test_bench_help_gives_every_option_a_description_and_its_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["bench"]
    for action in sub._actions:
        if action.dest == "help":
            continue
        assert action.help and "default" in action.help, action.option_strings
    for name in ("edge_threads", "cloud_threads"):
        assert sub.get_default(name) is None
    text = " ".join(sub.format_help().split())  # unwrapped
    assert "(default: 1,2,3,4,6,8)" in text and "(default: 3)" in text and "OMP_NUM_THREADS" in text


def test_bench_record_reads_into_the_summary_tables(quick_run):
    """The summary notebook's view of a bench record: ratios with goals, the lever table, the methods."""
    from specnb.report import plots, bench_records

    _, _, folder = quick_run
    (folder / "bench-other.json").write_text('{"kind": "something else"}')
    [rec] = bench_records.load_bench(folder)
    table = bench_records.bench_ratios(rec).set_index("ratio")
    r = rec["ratios"]
    assert table.loc["R2", "value"] == r["R2"] and table.loc["R2", "goal"] == 1.3
    assert bool(table.loc["R1", "met"]) == (r["R1"] >= 1.5)
    assert bool(table.loc["loop overhead", "met"]) == (r["loop_overhead"] <= 0.10)
    assert table.loc["R2 plain / hf_assisted", "value"] == r["R2_same_stack"]
    assert list(bench_records.bench_levers(rec)["lever"]) == [row["lever"] for row in rec["levers"]]
    assert len(bench_records.bench_methods(rec)) == len(rec["methods"])
    drawn = plots.bench(rec).axes[0]
    assert [t.get_text() for t in drawn.get_yticklabels()] == [m["label"] for m in rec["methods"]]
    assert sorted(round(b.get_width(), 6) for b in drawn.patches if b.get_width()) == sorted(
        round(m["tokens_per_s"], 6) for m in rec["methods"])
    assert plots.bench(None).axes[0].get_title() != drawn.get_title()  # no record: an empty figure says so


# ---------------------------------------------------------------------------- synthetic methods

def _table(speed: float, reps: int, tokens: np.ndarray, rng: np.random.Generator, noise: float = 0.05) -> list:
    """[reps][prompts] of (tokens, seconds) at about ``speed`` tokens/s."""
    return [[(int(n), float(n / speed * (1 + noise * rng.standard_normal()))) for n in tokens] for _ in range(reps)]


def _synthetic(speeds: dict[str, float], reps: int = 4, prompts: int = 6, seed: int = 0) -> list[variants.Variant]:
    """The methods :func:`ratios.ratios` and :func:`ratios.lever_table` need, with made-up tables."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(20, 40, size=prompts)  # greedy: every method emits the same tokens per prompt
    kinds = {"cloud": ("cloud", None, None), "cloud_optimized": ("cloud_optimized", None, None), "edge": ("edge", None, None)}
    out = []
    for label, speed in speeds.items():
        kind, gamma, schedule = kinds.get(label, (None, None, None))
        optimized, lever = False, None
        if kind is None:
            head, _, rest = label.partition(" ")
            kind = {"hf_prompt_lookup": "hf_prompt_lookup", "prompt_lookup": "prompt_lookup"}.get(
                head, "hf_assisted" if head.startswith("hf") else "speculative")
            optimized = head in ("spec+opt", "hf+static")
            if rest.startswith("g="):
                gamma = int(rest.split()[0][2:])
                schedule = "constant" if kind in ("speculative", "prompt_lookup") else None
                lever = rest.partition(" ")[2] or None
            else:
                gamma, schedule = 4, rest
        m = variants.Variant(label, kind, run=lambda p: None, gamma=gamma, schedule=schedule, optimized=optimized, lever=lever,
                         table=_table(speed, reps, tokens, rng), accepted=80, drafted=100, rejected_rounds=20, rounds=30,
                         verify_s=0.3, model_share=None if optimized or kind == "cloud_optimized" else 0.9)
        out.append(m)
    return out


SPEEDS = {"cloud": 50.0, "cloud_optimized": 60.0, "edge": 400.0,
          "speculative g=2": 100.0, "spec+opt g=2": 120.0, "hf_assisted g=2": 60.0, "hf+static g=2": 100.0,
          "speculative g=4": 90.0, "spec+opt g=4": 110.0, "hf_assisted g=4": 89.0, "hf+static g=4": 100.0,
          "speculative heuristic": 95.0, "speculative cost": 98.0, "speculative adaptive": 99.0,
          "speculative g=4 edge compiled": 180.0, "speculative g=4 -crop": 90.5,
          "prompt_lookup g=2": 70.0, "hf_prompt_lookup g=2": 50.0, "prompt_lookup g=4": 75.0, "hf_prompt_lookup g=4": 60.0}


def test_ratios_carry_paired_intervals_of_the_right_tables():
    ms = _synthetic(SPEEDS)
    by = {m.label: m for m in ms}
    r = ratios.ratios(ms, 1 / by["edge"].tokens_per_s, 1 / by["cloud"].tokens_per_s)
    ivs = r["intervals"]
    assert r["best_gamma"] == 2 and r["R1_method"] == "spec+opt g=2" and r["R2_method"] == "spec+opt g=2"
    expected = stats.ratio_interval(np.asarray(by["spec+opt g=2"].table), np.asarray(by["cloud_optimized"].table),
                                    paired_reps=True)
    assert (ivs["R1"]["value"], ivs["R1"]["low"], ivs["R1"]["high"]) == (expected.value, expected.low, expected.high)
    assert ivs["R1"]["numerator"] == "spec+opt g=2" and ivs["R1"]["denominator"] == "cloud_optimized"
    assert math.isclose(r["R1"], 2.0, rel_tol=0.1) and ivs["R1"]["measurable"]
    # the same-stack ratio at g=4 is 90 / 89: the interval holds 1.0, said in words
    g4 = ivs["R2_same_stack_by_gamma g=4"]
    assert g4["denominator"] == "hf_assisted g=4" and not g4["measurable"]
    assert ratios.ci_text(g4).endswith("no measurable difference")
    assert "no measurable difference" not in ratios.ci_text(ivs["R1"])
    assert ivs["speedup_vs_cloud"]["denominator"] == "cloud" and r["speedup_vs_cloud"] == ivs["speedup_vs_cloud"]["value"]
    assert set(r["R2_by_gamma"]) == {2, 4} and r["R2_by_gamma"][4] == ivs["R2_by_gamma g=4"]["value"]
    assert ivs["R2_by_gamma g=4"]["numerator"] == "spec+opt g=4"  # the faster of ours at that gamma
    # prompt lookup: the fastest of ours (g=4, 75) over HF's at the same gamma (60), not HF's slower g=2
    assert r["PL_method"] == "prompt_lookup g=4" and ivs["PL"]["denominator"] == "hf_prompt_lookup g=4"
    assert math.isclose(r["PL"], 1.25, rel_tol=0.05) and set(r["PL_by_gamma"]) == {2, 4}
    assert ivs["PL_vs_cloud"]["denominator"] == "cloud"
    assert r["best_gamma"] == 2 and r["R1_method"] == "spec+opt g=2"  # prompt lookup never counts as "speculative"
    json.dumps(r)  # the record holds it as it is


def test_lever_gains_carry_intervals_and_the_range_over_reps():
    ms = _synthetic(SPEEDS)
    rows = {row["lever"]: row for row in ratios.lever_table(ms)}
    edge = rows["edge compiled"]
    assert math.isclose(edge["gain"], 2.0, rel_tol=0.1) and edge["measurable"]
    assert edge["gain_low"] <= edge["gain"] <= edge["gain_high"] and edge["gain_min"] <= edge["gain_max"]
    crop = rows["crop"]  # the plain loop (90) "with" crop over "-crop" (90.5): nothing measurable
    assert not crop["measurable"] and crop["gain_low"] <= 1.0 <= crop["gain_high"]
    assert rows["heuristic schedule vs best fixed gamma"]["gamma"] == 2


def test_timed_reps_keep_a_table_per_method_and_probe_between_reps(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECNB_TIMING_LOCK", str(tmp_path / "lock"))
    from specnb.measure.timing import timed_section

    calls = []

    def fake(label: str):
        def run(prompt: str) -> Generation:
            calls.append((label, prompt))
            return Generation(tokens=[1] * len(prompt), text="", metrics={
                "new_tokens": len(prompt), "wall_s": 0.01 * len(prompt), "accepted": 2, "drafted": 3, "rejected_rounds": None,
                "rounds": 1, "verify_s": None})
        return run

    ms = [variants.Variant(label, "speculative", fake(label)) for label in ("a", "b", "c")]
    prompts = ["x", "yy", "zzz", "wwww"]
    with timed_section() as section:
        passes.timed_reps(ms, prompts, 3, section)
    for m in ms:
        assert np.asarray(m.table).shape == (3, 4, 2)
        assert [n for n, _ in m.table[0]] == [1, 2, 3, 4]  # prompts in the same order in every rep: pairable
        assert m.accepted == 3 * 4 * 2 and m.rejected_rounds == 0 and m.verify_s == 0.0
        assert math.isclose(m.tokens_per_s, 100.0) and len(m.rep_tokens_per_s) == 3
    assert [label for label, _ in calls[::4]] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # rotated order
    assert [p["where"] for p in section.info["probes"]] == ["before", "rep 1", "rep 2", "after"]


def test_probe_summary_flags_a_straying_probe_in_both_languages():
    calm = [{"where": w, "seconds": s} for w, s in (("before", 0.020), ("rep 1", 0.021), ("after", 0.0195))]
    ok = probe_summary(calm)
    assert not ok["disturbed"] and math.isclose(ok["median_ms"], 20.0) and ok["probes"] == 3
    assert "计时未受干扰" in ok["verdict_zh"]
    busy = calm[:2] + [{"where": "rep 2", "seconds": 0.026}, calm[2]]
    bad = probe_summary(busy)
    assert bad["disturbed"] and bad["worst"] == "rep 2"
    assert bad["verdict"].startswith("TIMING DISTURBED") and bad["verdict_zh"].startswith("计时受干扰")


def test_variants_run_what_the_registry_builds_and_keep_their_labels(related_pair):
    """The variants a grid cell can run come from the method registry: the same rows as before, and the
    same tokens as the direct calls they replaced (greedy)."""
    from specnb import ModelSpec, PromptLookup, autoregressive, load, speculative
    from specnb.decode.hf_reference import hf_assisted

    edge, cloud = (load(ModelSpec(str(related_pair / r), device="cpu", threads=1)) for r in ("edge", "cloud"))
    ms = {m.label: m for m in variants.variants(edge, cloud, 8, [2], lever_gamma=2)}
    assert list(ms) == [
        "cloud", "cloud_optimized", "edge", "speculative g=2", "spec+opt g=2", "hf_assisted g=2", "hf+static g=2",
        "prompt_lookup g=2", "hf_prompt_lookup g=2", "speculative heuristic", "speculative cost", "speculative adaptive",
        *(f"speculative g=2 {name}" for name in variants.LEVER_VARIANTS)]
    prompt = cloud.encode("def add(a, b):")
    direct = {
        "cloud": autoregressive(cloud, prompt, 8), "edge": autoregressive(edge, prompt, 8),
        "speculative g=2": speculative(edge, cloud, prompt, 8, gamma=2),
        "hf_assisted g=2": hf_assisted(edge, cloud, prompt, 8, gamma=2),
        "prompt_lookup g=2": speculative(PromptLookup(), cloud, prompt, 8, gamma=2),
        "speculative cost": speculative(edge, cloud, prompt, 8, gamma=8, schedule="cost"),
    }
    for label, g in direct.items():
        ran = ms[label].run(prompt)
        assert ran.tokens == g.tokens, label
        assert (ran.metrics.get("drafted"), ran.metrics.get("accepted")) == (g.metrics.get("drafted"), g.metrics.get("accepted")), label
