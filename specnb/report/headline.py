"""The headline of a run: its fair speed-ups with their 95% intervals and the audits' verdicts.

What a reader needs first, before any list of cells: the summary notebook opens with it, and
``specnb grid`` / ``specnb summarize`` print it in the terminal beside the report paths
(:func:`specnb.grid.analysis.headline_text`). Only the
speed-ups the fairness audit quotes appear (same cloud model, dtype, device class, set-up class and
workload); the verdict column carries the audit's words and the clock audit's flag.
"""

from __future__ import annotations

import re

import pandas as pd

from .frame import METHOD_NAMES, REFERENCES, speedup_text

COLUMNS = ["method", "dtype", "vs", "speed-up (95% CI)", "same output", "verdict"]


def verdict(note: str) -> str:
    """The audit's note without its "fair: A vs B" head (every headline row is fair): what is left
    qualifies the number (not the cloud's text, no measurable difference, timing disturbed)."""
    rest = re.sub(r"^fair: [^(;]*", "", note).strip()
    inner = re.match(r"\((.*?)\)(.*)", rest)  # "(edge model alone: ...); TIMING DISTURBED"
    if inner:
        rest = inner.group(1) + inner.group(2)
    return rest.strip(" ;") or "fair"


def headline(sp: pd.DataFrame) -> pd.DataFrame:
    """One row per quoted speed-up of ``sp`` (:func:`specnb.report.fairness.speedups`): the runs that
    write the cloud's own text first, each group best first."""
    quoted = sp[sp["fair"].astype(bool) & sp["speedup"].notna()]
    quoted = quoted.assign(_lossy=~quoted["same_output"].astype(bool)).sort_values(["_lossy", "speedup"],
                                                                                 ascending=[True, False])
    rows = [{"method": METHOD_NAMES.get(r.method, r.method), "dtype": r.dtype,
             "vs": METHOD_NAMES.get(REFERENCES.get(r.setup), r.reference),
             "speed-up (95% CI)": speedup_text(r.speedup, r.speedup_low, r.speedup_high),
             "same output": "yes" if r.same_output else "no", "verdict": verdict(r.note)}
            for r in quoted.itertuples()]
    return pd.DataFrame(rows, columns=COLUMNS)

