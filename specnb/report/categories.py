"""Spec-Bench's per-category view: each quoted speed-up recomputed on the prompts of one category, with
the same paired bootstrap, and the mean accepted tokens per verification round."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..prompts import SPEC_BENCH_TASKS
from .fairness import _interval, speedups
from .frame import METHOD_NAMES, NA, results_frame, speedup_text


CATEGORY_LABELS = {"mt_bench": "multi-turn conversation / 多轮对话", "translation": "translation / 翻译",
                   "summarization": "summarization / 摘要", "qa": "question answering / 问答",
                   "math_reasoning": "math reasoning / 数学推理", "rag": "RAG / 检索增强生成"}
OVERALL = "overall"
CATEGORY_COLUMNS = ["cell_id", "method", "dtype", "setup", "reference", "category", "prompts", "tokens_per_s",
                    "reference_tokens_per_s", "speedup", "speedup_low", "speedup_high", "interval_over",
                    "measurable", "tokens_per_round", "mean_accepted_len", "same_output", "timing_disturbed"]


def prompt_groups(record: dict[str, Any], tasks: dict[str, str] | None = None) -> dict[str, list[int]]:
    """Category -> positions of the record's per-prompt rows, in order of first appearance.

    Grouped by category, never by id: a multi-turn prompt's turns are rows of their own (own ids,
    same category). ``tasks`` maps a category to the task it is reported under (default: Spec-Bench's,
    MT-bench's eight categories as ``mt_bench``); rows without a category are ``uncategorized``.
    """
    tasks = SPEC_BENCH_TASKS if tasks is None else tasks
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(record.get("prompts") or []):
        category = p.get("category") or "uncategorized"
        groups.setdefault(tasks.get(category, category), []).append(i)
    return groups


def _ratio_of_sums(rows: list[dict[str, Any]], top: str, bottom: str) -> float:
    """sum(top) / sum(bottom) over the rows, the way the aggregate divides (NaN when unknown or 0)."""
    values = [(r.get(top), r.get(bottom)) for r in rows]
    if not values or any(a is None or b is None for a, b in values):
        return float("nan")
    den = sum(b for _, b in values)
    return sum(a for a, _ in values) / den if den else float("nan")


def _category_row(quote: pd.Series, run: dict[str, Any], ref: dict[str, Any] | None, category: str,
                  positions: list[int], row: pd.Series, ref_row: pd.Series) -> dict[str, Any]:
    """One (run, category) row: the speed-up over the same prompts of the reference, and the run's
    tokens per round and accepted drafts per round on them. ``ref`` None: the prompts differ, no ratio."""
    rows = [run["prompts"][i] for i in positions]
    out = {k: quote[k] for k in ("cell_id", "method", "dtype", "setup", "reference", "same_output", "timing_disturbed")}
    out |= {"category": category, "prompts": len(rows), "tokens_per_round": _ratio_of_sums(rows, "new_tokens", "rounds"),
            "mean_accepted_len": _ratio_of_sums(rows, "accepted", "rounds")}
    if ref is None:
        return out | dict.fromkeys(("tokens_per_s", "reference_tokens_per_s", "speedup", "speedup_low", "speedup_high",
                                    "interval_over", "measurable"))
    speed = _ratio_of_sums(rows, "new_tokens", "wall_s")
    ref_speed = _ratio_of_sums([ref["prompts"][i] for i in positions], "new_tokens", "wall_s")
    iv, over = _interval(row, ref_row, positions)
    return out | {"tokens_per_s": speed, "reference_tokens_per_s": ref_speed, "speedup": speed / ref_speed,
                  "speedup_low": iv.low if iv else float("nan"), "speedup_high": iv.high if iv else float("nan"),
                  "interval_over": over,
                  "measurable": None if iv is None else not iv.holds_one}


def category_table(records: list[dict[str, Any]], *, tasks: dict[str, str] | None = None,
                   df: pd.DataFrame | None = None, sp: pd.DataFrame | None = None) -> pd.DataFrame:
    """Speed-up and mean accepted tokens per prompt category and overall, for every quoted speed-up.

    Spec-Bench's per-task table. The pairs are those :func:`speedups` quotes (the fairness audit's
    like-for-like pairs; ``df`` / ``sp``: the frame and speed-up table already computed), and its
    ``overall`` row is that table's row. Per category, the ratio is the run's tokens/s over the
    reference's on the same prompts, with the same paired bootstrap restricted to them; when the two
    runs' prompt ids differ no category ratio is given. ``tokens_per_round`` (new tokens / rounds,
    the cloud's own token included) is Spec-Bench's "mean accepted tokens"; ``mean_accepted_len``
    (accepted drafts / rounds) is gpt-fast's count, one less per round. Both NaN where a run has no
    rounds (autoregressive) or does not expose them.
    """
    df = results_frame(records) if df is None else df
    sp = speedups(df) if sp is None else sp
    by_id, by_cell = df.set_index("cell_id"), {r["cell"]["cell_id"]: r for r in records}
    out = []
    for _, quote in sp[sp["speedup"].notna()].iterrows():
        run, ref = by_cell[quote["cell_id"]], by_cell[quote["reference"]]
        ids = [p.get("id") for p in run.get("prompts") or []]
        same = ids == [p.get("id") for p in ref.get("prompts") or []]
        row, ref_row = by_id.loc[quote["cell_id"]], by_id.loc[quote["reference"]]
        for category, positions in prompt_groups(run, tasks).items():
            out.append(_category_row(quote, run, ref if same else None, category, positions, row, ref_row))
        overall = _category_row(quote, run, None, OVERALL, list(range(len(ids))), row, ref_row)
        out.append(overall | {k: quote[k] for k in ("tokens_per_s", "reference_tokens_per_s", "speedup", "speedup_low",
                                                     "speedup_high", "interval_over", "measurable")})
    return pd.DataFrame(out, columns=CATEGORY_COLUMNS)



def category_view(table: pd.DataFrame, value: str = "speedup", same_output_only: bool = True) -> pd.DataFrame:
    """Spec-Bench's layout of :func:`category_table`: one row per run, one column per category, then overall.

    ``value``: ``speedup`` (written with its 95% interval) or a number column such as
    ``tokens_per_round``. ``same_output_only`` keeps runs that reproduce the cloud's output, as
    Spec-Bench compares lossless methods (the edge alone and the rank rule write other text).
    """
    t = table[table["same_output"].astype(bool)] if same_output_only else table
    if t.empty:
        return pd.DataFrame()
    if value == "speedup":
        cells = [speedup_text(*v) for v in zip(t["speedup"], t["speedup_low"], t["speedup_high"])]
    else:
        cells = [NA if pd.isna(v) else round(float(v), 4) for v in t[value]]
    wide = t.assign(value=cells).pivot(index="cell_id", columns="category", values="value")
    categories = [c for c in dict.fromkeys(t["category"]) if c != OVERALL] + [OVERALL]
    wide = wide.reindex(index=list(dict.fromkeys(t["cell_id"])), columns=categories).fillna(NA)
    wide.columns = [CATEGORY_LABELS.get(c, "overall / 总体" if c == OVERALL else c) for c in categories]
    runs = t.drop_duplicates("cell_id").set_index("cell_id")
    wide.insert(0, "method / 方法", runs["method"].map(METHOD_NAMES))
    if value == "speedup":  # the clock audit's verdict travels with every quoted speed-up
        wide["timing disturbed / 计时受干扰"] = runs["timing_disturbed"].map({True: "YES / 是", False: "no / 否"})
    wide.index.name = "run / 运行"
    return wide
