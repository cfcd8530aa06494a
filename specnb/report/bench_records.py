"""``specnb bench`` records read back for the summary notebook: the ratios against their goals, the
lever table, the methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..measure.provenance import read_json


BENCH_GOALS = {"R1": 1.5, "R2": 1.3, "R3": 0.9}  # the goals the bench is judged by (fp32, greedy, embedded pair): docs/numbers.md


def load_bench(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``specnb bench --json`` record in a folder (``bench*.json``), oldest first."""
    records = [read_json(f) for f in sorted(Path(run_dir).glob("bench*.json"))]
    return sorted((r for r in records if isinstance(r, dict) and r.get("kind") == "bench"), key=lambda r: r.get("created", ""))


def bench_methods(record: dict[str, Any]) -> pd.DataFrame:
    """One row per benchmarked method: median tokens/s, acceptance, share of time in the models."""
    cols = ["label", "method", "gamma", "schedule", "optimized", "tokens_per_s", "acceptance_rate", "model_share"]
    return pd.DataFrame([{c: m.get(c) for c in cols} for m in record["methods"]], columns=cols)


# bench_ratios row -> key of its interval in record["ratios"]["intervals"] (specnb bench >= 9361fa0)
BENCH_INTERVAL_KEYS = {"R1": "R1", "R1 plain loop": "R1_plain", "R1 heuristic": "R1_heuristic", "R1 cost": "R1_cost",
                       "R2": "R2", "R2 plain / hf_assisted": "R2_same_stack", "R2 spec+opt / hf+static": "R2_static",
                       "speed-up vs cloud (plain loop)": "speedup_vs_cloud", "prompt lookup / HF prompt lookup": "PL",
                       "prompt lookup / cloud": "PL_vs_cloud"}


def bench_ratios(record: dict[str, Any]) -> pd.DataFrame:
    """R1, R2 (and its same-stack and compiled-vs-compiled forms), the speed-up vs cloud, prompt lookup, R3 and
    loop overhead, with their paired 95% intervals (records of older benches have none) and the goals."""
    r = record["ratios"]
    rows = [
        ("R1", r["R1"], r.get("R1_method"), BENCH_GOALS["R1"]),
        ("R1 plain loop", r.get("R1_plain"), f"speculative g={r['best_gamma']}", None),
        ("R1 heuristic", r["R1_heuristic"], "speculative heuristic", None),
        ("R1 cost", r["R1_cost"], "speculative cost", None),
        ("R2", r["R2"], r.get("R2_method"), BENCH_GOALS["R2"]),
        ("R2 plain / hf_assisted", r.get("R2_same_stack"), "both eager, dynamic caches", None),
        ("R2 spec+opt / hf+static", r.get("R2_static"), "both static caches, compiled", None),
        ("speed-up vs cloud (plain loop)", r.get("speedup_vs_cloud"), f"speculative g={r['best_gamma']} / cloud", None),
        ("R3", r["R3"], f"alpha {r['alpha']:.3f}, c {r['c']:.3f}, S {r['S']:.2f}", BENCH_GOALS["R3"]),
        ("R3 with verification cost", r.get("R3_with_verify_cost"),
         f"verification = {r.get('verify_cost', float('nan')):.2f} cloud steps", None),
        ("loop overhead", r["loop_overhead"], f"hf_assisted {r['loop_overhead_hf']:.3f}", 0.10),
    ]
    if "PL" in r:
        rows[7:7] = [("prompt lookup / HF prompt lookup", r["PL"], f"{r['PL_method']}, both plain", None),
                     ("prompt lookup / cloud", r["PL_vs_cloud"], f"{r['PL_method']} / cloud", None)]
    df = pd.DataFrame(rows, columns=["ratio", "value", "what", "goal"])
    ivs = r.get("intervals") or {}  # absent from records of older benches
    iv = [ivs.get(BENCH_INTERVAL_KEYS.get(name, ""), {}) for name in df["ratio"]]
    df["low"] = [i.get("low") for i in iv]
    df["high"] = [i.get("high") for i in iv]
    df["measurable"] = pd.array([i.get("measurable") for i in iv], dtype="boolean")
    met = [None if g is None or v is None else (v <= g if name == "loop overhead" else v >= g)
           for name, v, _, g in rows]
    df["met"] = pd.array(met, dtype="boolean")
    return df


def bench_levers(record: dict[str, Any]) -> pd.DataFrame:
    """The lever table: tokens/s with and without each lever, measured alone in the same run, the gain's
    paired 95% interval and its range over repetitions."""
    cols = ["lever", "gamma", "with", "without", "gain", "gain_low", "gain_high", "measurable", "gain_min", "gain_max"]
    return pd.DataFrame(record.get("levers", []), columns=cols)
