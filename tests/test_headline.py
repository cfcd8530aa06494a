"""The headline: only the quoted (fair) speed-ups, lossless runs first, the audit's qualifiers kept."""

from pathlib import Path

import pandas as pd

from specnb.report.fairness import SPEEDUP_COLUMNS
from specnb.grid.analysis import headline_text
from specnb.report.headline import headline, verdict

EXAMPLE_RUN = Path(__file__).resolve().parents[1] / "notebooks" / "example_run"


def _row(cell, method, speedup, fair=True, same=True, note="fair: Cloud float32+CPU vs Cloud float32+CPU", setup="plain"):
    row = dict.fromkeys(SPEEDUP_COLUMNS)
    row.update(cell_id=cell, method=method, dtype="float32", setup=setup, reference="cloud-float32",
               speedup=speedup, speedup_low=speedup * 0.9, speedup_high=speedup * 1.1, fair=fair,
               same_output=same, note=note)
    return row


def test_headline_quotes_fair_runs_lossless_first_best_first():
    sp = pd.DataFrame([
        _row("edge-float32", "edge", 7.0, same=False,
             note="fair: Edge float32+CPU vs Cloud float32+CPU (edge model alone: other text); TIMING DISTURBED"),
        _row("pl", "prompt_lookup", 0.8),
        _row("spec", "speculative", 1.5, note="fair: A vs B; no measurable difference (95% CI holds 1.0)"),
        _row("spec-bf16", "speculative", 3.0, fair=False, note="not comparable: dtype differs"),
        _row("spec-once", "speculative", float("nan")),
    ])
    t = headline(sp)
    assert list(t["method"]) == ["Speculative", "Prompt lookup", "Edge baseline"]
    assert list(t["speed-up (95% CI)"]) == ["1.50x (1.35-1.65)", "0.80x (0.72-0.88)", "7.00x (6.30-7.70)"]
    assert list(t["verdict"]) == ["no measurable difference (95% CI holds 1.0)", "fair",
                                  "edge model alone: other text; TIMING DISTURBED"]
    assert list(t["vs"]) == ["Cloud baseline"] * 3


def test_verdict_keeps_what_qualifies_the_number():
    assert verdict("fair: Cloud float32+CPU vs Cloud float32+CPU") == "fair"
    assert verdict("fair: X vs Y; TIMING DISTURBED") == "TIMING DISTURBED"


def test_the_example_run_prints_its_headline():
    text = headline_text(EXAMPLE_RUN)
    assert text.startswith("fair speed-ups (95% intervals):")
    assert "Speculative" in text and "Cloud optimized" in text


def test_a_folder_without_results_says_so(tmp_path):
    assert "no results" in headline_text(tmp_path)
