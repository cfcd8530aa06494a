"""Results -> one DataFrame; fair speed-ups; the fairness audit; acceptance by dtype pair.

The fairness rule: a speed-up is the ratio of two runs' tokens/s and is quoted only when the
run and its reference used the same cloud model, the same cloud dtype, the same device class
and the same set-up class, on the same workload (prompts, max new tokens, temperature, chat
template or raw text). The set-up class is ``plain`` (eager steps, dynamic KV caches) or ``optimized`` (static caches,
compiled steps); plain runs are compared with the plain ``cloud`` baseline, optimized runs with
``cloud_optimized``. The edge baseline has no cloud model and writes other text: its ratio is
shown apart, labelled as a different model. Every compared pair is listed in the audit, flagged
with what differs, in English and Chinese. Each quoted speed-up carries a 95% interval
(:mod:`specnb.stats`) and the clock audit's verdict on both runs (:mod:`specnb.clock`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from . import methods as _methods
from .prompts import SPEC_BENCH_TASKS
from .runinfo import read_json

REFERENCE = "cloud_optimized"  # the strongest baseline
REFERENCES = _methods.references()  # set-up class -> its baseline (plain: cloud, optimized: cloud_optimized)
DTYPE_ORDER = ("float32", "bfloat16", "float16")
METHOD_NAMES = {name: m.label for name, m in _methods.METHODS.items()}
METRICS = ("new_tokens", "wall_s", "tokens_per_s", "ttft_s", "rounds", "drafted", "accepted", "acceptance_rate", "alpha",
           "rejected_rounds",
           "mean_accepted_len", "tokens_per_round", "cloud_calls", "edge_calls", "draft_s", "verify_s",
           "peak_mem_bytes", "compile_s", "warmup_s", "warmup_compile_s", "rep_spread")
WORKLOAD = ("prompts", "num_prompts", "max_new_tokens", "temperature", "prompt_format")
ROLE_USE = {name: m.roles for name, m in _methods.METHODS.items()}
NA = "\u2013"  # an en dash: how a table shows a value that does not apply (or was not measured)


# ---------------------------------------------------------------------------- loading

def load_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every result record of a run folder (``cells/*/result.json``) or of a folder of JSON files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} not found; pass the folder `specnb grid` printed")
    files = sorted(run_dir.glob("cells/*/result.json")) or sorted(run_dir.glob("*.json"))
    records = []
    for f in files:
        rec = read_json(f)
        if isinstance(rec, dict) and "status" in rec:
            rec.setdefault("cell", {}).setdefault("cell_id", f.parent.name if f.name == "result.json" else f.stem)
            records.append(rec)
    return records


def resolve_run(run_dir: str | Path | None) -> Path:
    """The run folder to analyse; None means the example run shipped beside the notebooks."""
    from .runinfo import REPO_ROOT

    path = REPO_ROOT / "notebooks" / "example_run" if run_dir is None else Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {str(path)!r} not found; set run_dir to the folder `specnb grid` printed")
    return path


def _device_class(device: str | None) -> str | None:
    """:func:`specnb.dtypes.device_class` of a recorded device; None when not known (none, or
    ``auto`` in the settings of a cell that failed before loading its model)."""
    if device is None or str(device) == "auto":
        return None
    from .dtypes import device_class  # imports torch: only for records without the loaded role's class

    return device_class(device)


def _role(rec: dict[str, Any], role: str) -> dict[str, Any]:
    """One role's model/dtype/device/class/threads, from the loaded-model info or the settings."""
    if role not in ROLE_USE.get(rec.get("method", ""), ()):
        return dict.fromkeys(("model", "dtype", "device", "class", "threads"))
    info, s = rec.get(role) or {}, rec.get("settings") or {}
    device = info.get("device", s.get(f"{role}_device"))
    return {"model": info.get("model", s.get(f"{role}_model")),
            "dtype": info.get("dtype", s.get(f"{role}_dtype") or s.get("dtype")),
            "device": device, "class": info.get("device_class", _device_class(device)),
            "threads": info.get("threads", s.get(f"{role}_threads"))}


def prompt_format(settings: dict[str, Any]) -> str:
    """What the models were fed: "chat template" or "raw text" (records made before ``chat_template``
    existed, ``none``, and ``auto`` with a tokenizer that has no template all fed raw text). Part of the
    workload: a templated run is compared with a raw-text one only under a loud flag."""
    return "chat template" if settings.get("chat_template_applied") else "raw text"


def record_row(rec: dict[str, Any]) -> dict[str, Any]:
    """The flat row of one record: identity, both roles, decoding settings, aggregate metrics."""
    s, agg = rec.get("settings") or {}, rec.get("aggregate") or {}
    row: dict[str, Any] = {"cell_id": rec["cell"]["cell_id"], "method": rec.get("method"), "status": rec.get("status"),
                           "error": rec.get("error")}
    for role in ("edge", "cloud"):
        row.update({f"{role}_{k}": v for k, v in _role(rec, role).items()})
    row.update({k: s.get(k) for k in ("gamma", "verify", "seed", "optimized", "reps") + WORKLOAD})
    row["prompt_format"] = prompt_format(s)
    row["setup"] = setup_class(rec.get("method", ""), s)
    known = _methods.METHODS.get(rec.get("method", ""))
    row["same_output"] = bool(known and known.reproduces_cloud(s))
    row.update({k: agg.get(k) for k in METRICS})
    row["num_prompts"] = agg.get("prompts", s.get("num_prompts"))
    pair = rec.get("pair") or {}  # a pair with two tokenizers drafts through a translation (specnb.translate)
    row["tokenizers"], row["vocab_overlap"] = pair.get("tokenizers"), pair.get("vocab_overlap")
    row["mismatches_per_round"] = agg.get("mismatches_per_round")
    row["timing"] = rec.get("timing")  # per-repetition entries and probes: intervals and the clock audit
    return row


def setup_class(method: str, settings: dict[str, Any]) -> str:
    """``plain`` or ``optimized`` (static caches, compiled steps), as the fairness rule compares them."""
    known = _methods.METHODS.get(method)
    return known.setup(settings) if known else "unknown"


def results_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell (failed cells included, with their error), sorted by method and dtype."""
    df = pd.DataFrame([record_row(r) for r in records])
    if df.empty:
        return df
    mixed = df["edge_dtype"].notna() & df["cloud_dtype"].notna() & (df["edge_dtype"] != df["cloud_dtype"])
    df["dtype"] = df["cloud_dtype"].fillna(df["edge_dtype"]).where(
        ~mixed, "edge-" + df["edge_dtype"].astype(str) + "_cloud-" + df["cloud_dtype"].astype(str))
    df["variant"] = [variant(m, s) for m, s in zip(df["method"], df["setup"])]
    df["peak_mem_mib"] = df["peak_mem_bytes"] / 2**20
    order = {m: i for i, m in enumerate(list(METHOD_NAMES) + list(DTYPE_ORDER))}
    return df.sort_values(["method", "dtype", "cell_id"], ignore_index=True,
                          key=lambda c: c.map(lambda v: (order.get(v, len(order)), str(v))) if c.name != "cell_id" else c)


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    df.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------- fairness

def side(row: pd.Series | dict, role: str) -> str:
    """``Edge float32+CPU``."""
    return f"{role.capitalize()} {row[f'{role}_dtype']}+{row[f'{role}_class']}"


def label(row: pd.Series | dict) -> str:
    """``Speculative (Edge float32+CPU, Cloud float16+GPU)``."""
    roles = ROLE_USE[row["method"]]
    return f"{METHOD_NAMES[row['method']]} ({', '.join(side(row, r) for r in roles)})"


def compared_role(row: pd.Series | dict) -> str:
    """The role whose speed is compared with the reference's cloud: the cloud, or the edge alone."""
    return "cloud" if "cloud" in ROLE_USE.get(row["method"], ("cloud",)) else "edge"


def differences(row: pd.Series | dict, ref: pd.Series | dict) -> list[tuple[str, str]]:
    """What differs between a run's compared role and the reference's cloud, as (English, 中文)."""
    r = compared_role(row)
    out = []
    if row[f"{r}_dtype"] != ref["cloud_dtype"]:
        out.append((f"dtype {row[f'{r}_dtype']} vs {ref['cloud_dtype']}", f"精度 {row[f'{r}_dtype']} 与 {ref['cloud_dtype']} 不同"))
    if row[f"{r}_class"] != ref["cloud_class"]:
        out.append((f"device class {row[f'{r}_class']} vs {ref['cloud_class']}",
                    f"设备类别 {row[f'{r}_class']} 与 {ref['cloud_class']} 不同"))
    if r == "cloud" and row["cloud_model"] != ref["cloud_model"]:
        out.append((f"cloud model {row['cloud_model']} vs {ref['cloud_model']}", "云端模型不同"))
    if row["setup"] != ref["setup"]:
        out.append((f"set-up {row['setup']} vs {ref['setup']}", f"配置类别 {row['setup']} 与 {ref['setup']} 不同"))
    if any(row[k] != ref[k] and not (pd.isna(row[k]) and pd.isna(ref[k])) for k in WORKLOAD):
        out.append(("workload (prompts / max new tokens / temperature / chat template)",
                    "工作负载（提示词/最大新词元/温度/对话模板）不同"))
    return out


def _reference(row: pd.Series, refs: pd.DataFrame) -> tuple[pd.Series | None, list[tuple[str, str]]]:
    """The fairest reference for ``row``: fewest differences, preferring the same dtype."""
    best, best_key, best_diff = None, None, None
    for _, ref in refs.iterrows():
        diff = differences(row, ref)
        key = (len(diff), row[f"{compared_role(row)}_dtype"] != ref["cloud_dtype"])
        if best_key is None or key < best_key:
            best, best_key, best_diff = ref, key, diff
    return best, best_diff or []


def fairness_audit(df: pd.DataFrame) -> pd.DataFrame:
    """Every pair the summary compares, flagged when dtype, device class or set-up class (or model,
    workload) differ.

    Kinds: ``speed-up`` (a run vs the baseline of its set-up class: ``cloud`` for plain runs,
    ``cloud_optimized`` for optimized ones) and ``within run`` (the edge and cloud of one
    speculative / HF-assisted run, when their dtype or device class differ: the acceptance rate
    then also measures that mix).
    """
    ok = df[df["status"] == "ok"] if not df.empty else df
    refs = ok[ok["method"].isin(list(REFERENCES.values()))]
    rows = []
    for _, row in ok.iterrows():
        if row["method"] not in REFERENCES.values():
            rows.append(_speedup_audit(row, refs))
        if len(ROLE_USE[row["method"]]) == 2 and (row["edge_dtype"] != row["cloud_dtype"]
                                                   or row["edge_class"] != row["cloud_class"]):
            rows.append(_within_audit(row))
        if row.get("tokenizers") == "different":
            rows.append(_tokenizer_audit(row))
    cols = ["kind", "cell_id", "reference", "comparison", "fair", "differs", "differs_zh", "verdict", "verdict_zh"]
    return pd.DataFrame(rows, columns=cols)


def _speedup_audit(row: pd.Series, refs: pd.DataFrame) -> dict[str, Any]:
    ref, diff = _reference(row, refs)
    r = compared_role(row)
    if ref is None:
        want = REFERENCES.get(row["setup"], REFERENCE)
        return {"kind": "speed-up", "cell_id": row["cell_id"], "reference": None,
                "comparison": f"{label(row)} vs (no {want} run)", "fair": False,
                "differs": "no reference run", "differs_zh": "没有参考运行",
                "verdict": f"speed-up not quoted: no {want} run", "verdict_zh": f"未给出加速比：没有 {want} 参考运行"}
    fair = not diff
    pair = f"{side(row, r)} vs {side(ref, 'cloud')}"
    note = " (edge model alone: a different, smaller model writing other text, not a speed-up of the cloud)" if r == "edge" else ""
    note_zh = "（仅边缘模型：不同的、更小的模型，生成的文本不同，不是云端模型的加速）" if r == "edge" else ""
    return {
        "kind": "speed-up", "cell_id": row["cell_id"], "reference": ref["cell_id"],
        "comparison": f"{label(row)} vs {label(ref)}", "fair": fair,
        "differs": "; ".join(d[0] for d in diff) or "nothing",
        "differs_zh": "；".join(d[1] for d in diff) or "无",
        "verdict": (f"fair: {pair}{note}" if fair else f"UNFAIR: {pair}; speed-up not quoted"),
        "verdict_zh": (f"公平：{pair}{note_zh}" if fair else f"不公平：{pair}；不给出加速比"),
    }


def _within_audit(row: pd.Series) -> dict[str, Any]:
    pair = f"{side(row, 'edge')} vs {side(row, 'cloud')}"
    diff = [d for d in (("dtype", "精度", row["edge_dtype"], row["cloud_dtype"]),
                        ("device class", "设备类别", row["edge_class"], row["cloud_class"])) if d[2] != d[3]]
    return {
        "kind": "within run", "cell_id": row["cell_id"], "reference": None, "comparison": f"{label(row)}: {pair}",
        "fair": False, "differs": "; ".join(f"{en} {a} vs {b}" for en, _, a, b in diff),
        "differs_zh": "；".join(f"{zh} {a} 与 {b} 不同" for _, zh, a, b in diff),
        "verdict": f"mixed set-up inside one run ({pair}): its acceptance rate reflects the mix",
        "verdict_zh": f"同一运行内配置不一致（{pair}）：接受率受此影响",
    }


def _tokenizer_audit(row: pd.Series) -> dict[str, Any]:
    """A pair with two tokenizers: its output is still the cloud's (the translation is lossless), so its
    speed-up stands; its acceptance measures the translation as well as the models."""
    overlap = row.get("vocab_overlap")
    share = f"{100 * overlap:.1f}%" if overlap is not None and not pd.isna(overlap) else "unknown"
    return {
        "kind": "tokenizers", "cell_id": row["cell_id"], "reference": None,
        "comparison": f"{label(row)}: edge {row['edge_model']} / cloud {row['cloud_model']}", "fair": True,
        "differs": f"tokenizers differ (vocabulary overlap {share})", "differs_zh": f"分词器不同（词表重合 {share}）",
        "verdict": (f"different tokenizers: the edge drafts through a translation (overlap {share}); the output is "
                    "still the cloud's, its acceptance rate also measures the translation"),
        "verdict_zh": (f"分词器不同：边缘模型经转换后起草（词表重合 {share}）；输出仍与云端一致，"
                       "其接受率同时反映了转换的损失"),
    }


SPEEDUP_COLUMNS = ["cell_id", "method", "dtype", "device", "setup", "reference", "tokens_per_s",
                   "reference_tokens_per_s", "speedup", "speedup_low", "speedup_high", "measurable", "fair",
                   "same_output", "timing_disturbed", "note", "note_zh"]


def speedups(df: pd.DataFrame, audit: pd.DataFrame | None = None) -> pd.DataFrame:
    """tokens/s of each run over its reference's, quoted only where the audit says fair (else NaN).

    Each quoted ratio carries its 95% interval (``speedup_low`` / ``speedup_high``, a bootstrap
    over prompts x repetitions, :func:`specnb.stats.ratio_interval`; NaN for a run timed once);
    ``measurable`` is False when the interval holds 1.0 ("no measurable difference");
    ``timing_disturbed`` when the clock audit flags either run; ``same_output`` is False for
    runs that do not reproduce the cloud's output (the edge alone, the lossy rank rule).
    """
    from .clock import clock_audit, disturbed_cells

    audit = fairness_audit(df) if audit is None else audit
    pairs = audit[audit["kind"] == "speed-up"].set_index("cell_id")
    by_id = df.set_index("cell_id")
    bad = disturbed_cells(clock_audit(frame_records(df)))
    rows = []
    for cid, a in pairs.iterrows():
        row, ref = by_id.loc[cid], a["reference"]
        quoted = bool(a["fair"]) and pd.notna(ref)
        iv = _interval(row, by_id.loc[ref]) if quoted else None
        ratio = row["tokens_per_s"] / by_id.loc[ref, "tokens_per_s"] if quoted else float("nan")
        disturbed = cid in bad or (pd.notna(ref) and ref in bad)
        same = bool(row["same_output"])
        note, note_zh = a["verdict"], a["verdict_zh"]
        if quoted and iv is not None and iv.holds_one:
            note, note_zh = note + "; no measurable difference (95% CI holds 1.0)", note_zh + "；无可测差异（95% 置信区间包含 1.0）"
        if disturbed:
            note, note_zh = note + "; TIMING DISTURBED", note_zh + "；计时受干扰"
        rows.append({"cell_id": cid, "method": row["method"], "dtype": row["dtype"],
                     "device": row[f"{compared_role(row)}_class"], "setup": row["setup"], "reference": ref,
                     "tokens_per_s": row["tokens_per_s"],
                     "reference_tokens_per_s": by_id.loc[ref, "tokens_per_s"] if pd.notna(ref) else None,
                     "speedup": ratio, "speedup_low": iv.low if iv else float("nan"),
                     "speedup_high": iv.high if iv else float("nan"),
                     "measurable": None if iv is None else not iv.holds_one, "fair": a["fair"], "same_output": same,
                     "timing_disturbed": disturbed, "note": note, "note_zh": note_zh})
    return pd.DataFrame(rows, columns=SPEEDUP_COLUMNS)


def _interval(row: pd.Series, ref: pd.Series, prompts: list[int] | None = None):
    """The bootstrap interval of ``row`` over ``ref`` from their timing entries (None if either
    was timed once or has no entries); ``prompts``: only these prompt positions (one category)."""
    from .stats import as_table, ratio_interval

    tables = []
    for r in (row, ref):
        timing = r.get("timing")
        if not isinstance(timing, dict) or not timing.get("entries") or timing.get("reps", 1) < 2:
            return None
        tables.append(as_table(timing["entries"]))
    if tables[0].shape[1] != tables[1].shape[1]:
        return None
    if prompts is not None:
        if max(prompts) >= tables[0].shape[1]:
            return None
        tables = [t[:, prompts] for t in tables]
    return ratio_interval(*tables)


def frame_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The parts of each row's record the clock audit reads (status, id, timing, rep spread)."""
    if df.empty or "timing" not in df:
        return []
    return [{"status": r["status"], "cell": {"cell_id": r["cell_id"]}, "timing": r["timing"],
             "aggregate": {"rep_spread": r.get("rep_spread")}} for _, r in df.iterrows()]


# ---------------------------------------------------------------------------- per category (Spec-Bench style)

CATEGORY_LABELS = {"mt_bench": "multi-turn conversation / 多轮对话", "translation": "translation / 翻译",
                   "summarization": "summarization / 摘要", "qa": "question answering / 问答",
                   "math_reasoning": "math reasoning / 数学推理", "rag": "RAG / 检索增强生成"}
OVERALL = "overall"
CATEGORY_COLUMNS = ["cell_id", "method", "dtype", "setup", "reference", "category", "prompts", "tokens_per_s",
                    "reference_tokens_per_s", "speedup", "speedup_low", "speedup_high", "measurable",
                    "tokens_per_round", "mean_accepted_len", "same_output", "timing_disturbed"]


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
                                    "measurable"))
    speed = _ratio_of_sums(rows, "new_tokens", "wall_s")
    ref_speed = _ratio_of_sums([ref["prompts"][i] for i in positions], "new_tokens", "wall_s")
    iv = _interval(row, ref_row, positions)
    return out | {"tokens_per_s": speed, "reference_tokens_per_s": ref_speed, "speedup": speed / ref_speed,
                  "speedup_low": iv.low if iv else float("nan"), "speedup_high": iv.high if iv else float("nan"),
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
                                                     "speedup_high", "measurable")})
    return pd.DataFrame(out, columns=CATEGORY_COLUMNS)


def _speedup_text(speedup: float, low: float, high: float) -> str:
    """``1.52x (1.40-1.63)``; without the interval for a run timed once; "–" when not quoted."""
    if pd.isna(speedup):
        return NA
    return f"{speedup:.2f}x" + ("" if pd.isna(low) else f" ({low:.2f}-{high:.2f})")


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
        cells = [_speedup_text(*v) for v in zip(t["speedup"], t["speedup_low"], t["speedup_high"])]
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


# ---------------------------------------------------------------------------- tables

def for_reading(t: pd.DataFrame, digits: int | None = None, float_format: str | None = None) -> pd.DataFrame:
    """``t`` as a reader should see it: a missing value shown as "–", not NaN, None or <NA>.

    A reader of the report takes "NaN" for a failed computation; in these tables it means "does not
    apply" (the cloud dtype of the edge baseline, the interval of a run timed once). Only columns
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


def variant(method: str, setup: str) -> str:
    """A method with its set-up class when the method has both: ``speculative (optimized)``."""
    known = _methods.METHODS.get(method)
    fixed = known is not None and known.fixed_setup is not None  # one set-up only: its name says it
    return method if fixed or setup == "plain" else f"{method} ({setup})"


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
    """One row per speculative round: accepted drafts (the decoding trace) and the cell's dtype."""
    rows = []
    for rec in records:
        if rec.get("status") == "ok" and rec.get("method") == "speculative":
            dt = (rec.get("settings") or {}).get("cloud_dtype")
            rows += [{"cell_id": rec["cell"]["cell_id"], "dtype": dt, "accepted": n}
                     for p in rec.get("prompts", []) for n in p.get("trace", [])]
    return pd.DataFrame(rows, columns=["cell_id", "dtype", "accepted"])



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
    from .clock import clock_audit

    records = load_results(run_dir)
    df = results_frame(records)
    audit = fairness_audit(df)
    sp = speedups(df, audit)
    return {"results": write_csv(df.drop(columns=["timing"], errors="ignore"), run_dir / "results.csv"),
            "audit": write_csv(audit, run_dir / "audit.csv"),
            "speedups": write_csv(sp, run_dir / "speedups.csv"),
            "categories": write_csv(category_table(records, df=df, sp=sp), run_dir / "categories.csv"),
            "clock": write_csv(clock_audit(records), run_dir / "clock.csv")}


def add_arguments(parser: Any) -> None:
    """``specnb summarize RUN_DIR``: re-run the analysis notebooks on a finished (or partial) run."""
    parser.add_argument("run_dir", help="a run folder written by `specnb grid`")


def run(args: Any) -> int:
    from .gridcli import run_analysis

    run_dir = Path(args.run_dir).resolve()
    if not (run_dir / "cells").is_dir():
        print(f"error: {run_dir} has no cells/ folder; pass a folder written by `specnb grid`")
        return 2
    for name, html in run_analysis(run_dir).items():
        print(f"{name}: {html}")
    return 0


# ---------------------------------------------------------------------------- specnb bench records

BENCH_GOALS = {"R1": 1.5, "R2": 1.3, "R3": 0.9}  # issue 6's goals on the 2-core CPU, fp32, greedy, embedded pair


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
