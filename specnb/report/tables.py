"""Tables for reading: missing values shown as "–", the study's table, metric tables by method and
dtype, the time split, failed cells, accepted and drafted lengths; one record's tables; the run's CSV files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..study import methods as _methods
from .categories import category_table
from .fairness import fairness_audit, speedups
from .frame import DTYPE_ORDER, METHOD_NAMES, NA, load_results, results_frame, write_csv


def for_reading(t: pd.DataFrame, digits: int | None = None, float_format: str | None = None) -> pd.DataFrame:
    """``t`` as a reader should see it: a missing value shown as "–", not NaN, None or <NA>.

    A reader of the report takes "NaN" for a failed computation; in these tables it means "does not
    apply" (the cloud dtype of the edge baseline, the interval of one prompt timed once). Only columns
    with a missing value become text; their numbers are written with ``digits`` decimals (or
    ``float_format``), whole numbers that pandas turned into floats (a gamma beside a NaN) as
    integers. ``digits`` also rounds the other float columns, like ``DataFrame.round``.
    """
    out = t.round(digits) if digits is not None else t.copy()
    for col in t.columns:
        missing = t[col].isna()
        if missing.any():
            out[col] = _as_text(out[col], missing, _whole(t[col][~missing]), digits, float_format)
    return out


def _whole(values: pd.Series) -> bool:
    """True when every value is a float holding a whole number: ints that a NaN beside them made floats
    (judged before rounding: 256.04 rounded to 256.0 is not one)."""
    floats = [v for v in values if isinstance(v, float)]
    return bool(floats) and len(floats) == len(values) and all(v.is_integer() for v in floats)


def _as_text(column: pd.Series, missing: pd.Series, whole: bool, digits: int | None,
             float_format: str | None) -> list[Any]:
    """A column holding missing values, for reading: "–" for them, its floats as text, the rest as is."""

    def text(v: Any) -> Any:
        if not isinstance(v, float):
            return v
        if whole:
            return str(int(v))
        return float_format.format(v) if float_format else f"{v:.{digits}f}" if digits is not None else str(v)

    return [NA if m else text(v) for v, m in zip(column, missing)]


def study_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table the study started from: method | edge dtype | cloud dtype | edge device | cloud device | threads."""
    ok = df[df["status"] == "ok"]
    t = pd.DataFrame({
        "method / 方法": ok["method"].map(METHOD_NAMES),
        "edge dtype / 边缘精度": ok["edge_dtype"].fillna("N/A"), "cloud dtype / 云端精度": ok["cloud_dtype"].fillna("N/A"),
        "edge device / 边缘设备": ok["edge_class"].fillna("N/A"),
        "cloud device / 云端设备": ok["cloud_class"].fillna("N/A"),
        "threads / 线程": ok["edge_threads"].map(lambda t: "N/A" if pd.isna(t) else int(t)),
    })
    return t.drop_duplicates().reset_index(drop=True)


def acceptance_by_dtype(df: pd.DataFrame, method: str = "speculative") -> pd.DataFrame:
    """Acceptance rate of ``method`` for each (edge dtype, cloud dtype) pair present."""
    ok = df[(df["status"] == "ok") & (df["method"] == method)]
    if ok.empty:
        return pd.DataFrame()
    return ok.pivot_table(index="edge_dtype", columns="cloud_dtype", values="acceptance_rate", aggfunc="mean")



def metric_table(df: pd.DataFrame, value: str) -> pd.DataFrame:
    """``value`` for method variant (rows) x dtype (columns), ok cells only."""
    ok = df[df["status"] == "ok"]
    t = ok.pivot_table(index="variant", columns="dtype", values=value, aggfunc="mean")
    rank = {m: i for i, m in enumerate(METHOD_NAMES)}
    rows = sorted(t.index, key=lambda v: (rank.get(v.split(" ", 1)[0], len(rank)), v))
    cols = [d for d in DTYPE_ORDER if d in t.columns] + sorted(c for c in t.columns if c not in DTYPE_ORDER)
    return t.reindex(index=rows, columns=cols)


def time_split(df: pd.DataFrame) -> pd.DataFrame:
    """Drafting vs verifying time (share of the wall time) of the runs that measure it (HF's
    assisted generation does not expose the split)."""
    ok = df[(df["status"] == "ok") & (df["draft_s"].fillna(0) + df["verify_s"].fillna(0) > 0)]
    t = ok[["cell_id", "wall_s", "draft_s", "verify_s"]].copy()
    t["draft_share"] = t["draft_s"] / t["wall_s"]
    t["verify_share"] = t["verify_s"] / t["wall_s"]
    return t.reset_index(drop=True)


def failed_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Failed cells with their error (listed, never dropped silently)."""
    return df[df["status"] != "ok"][["cell_id", "method", "dtype", "error"]].reset_index(drop=True)


def accepted_lengths(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per round of a drafting method: accepted drafts (the decoding trace) and the cell's dtype."""
    rows = []
    for rec in records:
        if rec.get("status") == "ok" and rec.get("method") in _methods.drafting():
            dt = (rec.get("settings") or {}).get("cloud_dtype")
            rows += [{"cell_id": rec["cell"]["cell_id"], "method": rec["method"], "dtype": dt, "accepted": n}
                     for p in rec.get("prompts", []) for n in p.get("trace", [])]
    return pd.DataFrame(rows, columns=["cell_id", "method", "dtype", "accepted"])


DRAFTED_COLUMNS = ["cell_id", "method", "dtype", "schedule", "gamma", "rounds", "drafted_mean", "drafted_p10",
                   "drafted_p50", "drafted_p90"]


def drafted_lengths(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Per cell of a drafting method: its rounds and the distribution of the drafted length per round
    (mean, 10th / 50th / 90th percentile over every round of every prompt; the first repetition's rounds,
    as the prompt rows keep them).

    Under ``constant`` every round but a generation's last drafts ``gamma``; the other schedules
    (``heuristic``, ``cost``, ``confidence``, ``adaptive``) choose the length per round, and this is where
    a reader sees what they chose. Records made before the prompt rows kept ``drafted_trace`` show their
    rounds and no distribution (missing, not guessed from ``gamma``); cells without rounds (Hugging Face's
    assisted generation does not expose them) have no row."""
    rows = []
    for rec in records:
        if rec.get("status") != "ok" or rec.get("method") not in _methods.drafting():
            continue
        prompts = rec.get("prompts", [])
        rounds = sum(len(p.get("trace", [])) for p in prompts)
        if not rounds:
            continue
        kept = all("drafted_trace" in p for p in prompts)
        lengths = [n for p in prompts for n in p.get("drafted_trace", [])] if kept else []
        s = rec.get("settings") or {}
        e, c = s.get("edge_dtype"), s.get("cloud_dtype")
        q = pd.Series(lengths, dtype=float).quantile([0.1, 0.5, 0.9]).tolist() if lengths else [None] * 3
        rows.append({"cell_id": rec["cell"]["cell_id"], "method": rec["method"],
                     "dtype": c if e in (None, c) else f"edge-{e}_cloud-{c}", "schedule": s.get("schedule", "constant"),
                     "gamma": s.get("gamma"), "rounds": rounds,
                     "drafted_mean": sum(lengths) / len(lengths) if lengths else None,
                     "drafted_p10": q[0], "drafted_p50": q[1], "drafted_p90": q[2]})
    return pd.DataFrame(rows, columns=DRAFTED_COLUMNS)



# ---------------------------------------------------------------------------- one record

def roles_table(record: dict[str, Any]) -> pd.DataFrame:
    """The models of one run: role, model, dtype, device class, threads, parameter count."""
    rows = [{"role": role, "model": info["model"], "dtype": info["dtype"], "device": info["device_class"],
             "threads": info.get("threads"), "parameters": info.get("parameters")}
            for role in ("edge", "cloud") if (info := record.get(role))]
    return pd.DataFrame(rows).astype({"threads": "Int64"}) if rows else pd.DataFrame(rows)


def audit_view(audit: pd.DataFrame) -> pd.DataFrame:
    """The audit for reading: comparison, fair flag, what differs and the verdict in both languages."""
    return pd.DataFrame({
        "kind": audit["kind"], "comparison / 比较": audit["comparison"],
        "fair / 公平": audit["fair"].map({True: "yes / 是", False: "NO / 否"}),
        "what differs": audit["differs"], "差异": audit["differs_zh"],
        "verdict": audit["verdict"], "结论": audit["verdict_zh"],
    })


def prompt_table(record: dict[str, Any], width: int = 60) -> pd.DataFrame:
    """Deterministic per-prompt outputs of one run: tokens, acceptance, the text's start."""
    rows = [{"prompt": p["id"], "new tokens": p["new_tokens"], "rounds": p.get("rounds"),
             "accepted/drafted": f"{p.get('accepted', 0)}/{p.get('drafted', 0)}" if p.get("drafted") else "-",
             "text": p["text"][:width].replace("\n", "\u21b5")} for p in record.get("prompts", [])]
    return pd.DataFrame(rows)


def timing_table(record: dict[str, Any]) -> pd.DataFrame:
    """Timing and memory of one run, per prompt and overall (varies run to run)."""
    keys = ["new_tokens", "wall_s", "tokens_per_s", "ttft_s", "draft_s", "verify_s", "peak_mem_bytes"]
    rows = [{"prompt": p["id"], **{k: p.get(k) for k in keys}} for p in record.get("prompts", [])]
    rows.append({"prompt": "all", **{k: (record.get("aggregate") or {}).get(k) for k in keys}})
    t = pd.DataFrame(rows)
    t["peak_mem_mib"] = t.pop("peak_mem_bytes") / 2**20
    return t


def summarize_run(run_dir: str | Path) -> dict[str, Path]:
    """Write ``results.csv``, ``speedups.csv`` (with intervals), ``categories.csv`` (the same per prompt
    category, with mean accepted tokens), ``audit.csv`` and ``clock.csv`` into the run folder."""
    run_dir = Path(run_dir)
    from ..measure.clock import clock_audit

    records = load_results(run_dir)
    df = results_frame(records)
    audit = fairness_audit(df)
    sp = speedups(df, audit)
    return {"results": write_csv(df.drop(columns=["timing"], errors="ignore"), run_dir / "results.csv"),
            "audit": write_csv(audit, run_dir / "audit.csv"),
            "speedups": write_csv(sp, run_dir / "speedups.csv"),
            "categories": write_csv(category_table(records, df=df, sp=sp), run_dir / "categories.csv"),
            "clock": write_csv(clock_audit(records), run_dir / "clock.csv")}
