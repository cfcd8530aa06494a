"""The fairness audit and the speed-ups it allows.

The fairness rule: a speed-up is the ratio of two runs' tokens/s and is quoted only when the
run and its reference used the same cloud model, the same cloud dtype, the same device class
and the same set-up class, on the same workload (prompts, max new tokens, temperature, chat
template or raw text). The set-up class is ``plain`` (eager steps, dynamic KV caches) or ``optimized`` (static caches,
compiled steps); plain runs are compared with the plain ``cloud`` baseline, optimized runs with
``cloud_optimized``. The edge baseline has no cloud model and writes other text: its ratio is
shown apart, labelled as a different model. Every compared pair is listed in the audit, flagged
with what differs, in English and Chinese. Each quoted speed-up carries a 95% interval
(:mod:`specnb.measure.stats`) and the clock audit's verdict on both runs (:mod:`specnb.measure.clock`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .frame import METHOD_NAMES, REFERENCE, REFERENCES, ROLE_USE, WORKLOAD


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
                   "reference_tokens_per_s", "speedup", "speedup_low", "speedup_high", "interval_over", "measurable",
                   "fair", "same_output", "timing_disturbed", "note", "note_zh"]

# What a speed-up's interval resamples (the ``interval_over`` column): prompts and repetitions, or, for a
# run timed once, prompts only (the workload's spread; the clock's is not in it).
OVER_PROMPTS_REPS = "prompts x repetitions"
OVER_PROMPTS = "prompts only (timed once)"


def speedups(df: pd.DataFrame, audit: pd.DataFrame | None = None) -> pd.DataFrame:
    """tokens/s of each run over its reference's, quoted only where the audit says fair (else NaN).

    Each quoted ratio carries its 95% interval (``speedup_low`` / ``speedup_high``, a bootstrap
    over prompts x repetitions, :func:`specnb.measure.stats.ratio_interval`); when either run was
    timed once the bootstrap is over prompts only (``interval_over`` says which): it covers the
    workload, not the clock, so it is narrower than a repeated run's would be, and the note says so;
    NaN when fewer than two prompts were compared. ``measurable`` is False when the interval holds
    1.0 ("no measurable difference");
    ``timing_disturbed`` when the clock audit flags either run; ``same_output`` is False for
    runs that do not reproduce the cloud's output (the edge alone, the lossy rank rule).
    """
    from ..measure.clock import clock_audit, disturbed_cells

    audit = fairness_audit(df) if audit is None else audit
    pairs = audit[audit["kind"] == "speed-up"].set_index("cell_id")
    by_id = df.set_index("cell_id")
    bad = disturbed_cells(clock_audit(frame_records(df)))
    rows = []
    for cid, a in pairs.iterrows():
        row, ref = by_id.loc[cid], a["reference"]
        quoted = bool(a["fair"]) and pd.notna(ref)
        iv, over = _interval(row, by_id.loc[ref]) if quoted else (None, None)
        speeds = (row["tokens_per_s"], by_id.loc[ref, "tokens_per_s"]) if quoted else (None, None)
        ratio = speeds[0] / speeds[1] if all(pd.notna(s) for s in speeds) and speeds[1] else float("nan")
        disturbed = cid in bad or (pd.notna(ref) and ref in bad)
        same = bool(row["same_output"])
        note, note_zh = a["verdict"], a["verdict_zh"]
        if quoted and iv is not None and iv.holds_one:
            note, note_zh = note + "; no measurable difference (95% CI holds 1.0)", note_zh + "；无可测差异（95% 置信区间包含 1.0）"
        if over == OVER_PROMPTS:
            note = note + "; timed once: interval over prompts only"
            note_zh = note_zh + "；只计时一次：区间仅对提示词重采样"
        if disturbed:
            note, note_zh = note + "; TIMING DISTURBED", note_zh + "；计时受干扰"
        rows.append({"cell_id": cid, "method": row["method"], "dtype": row["dtype"],
                     "device": row[f"{compared_role(row)}_class"], "setup": row["setup"], "reference": ref,
                     "tokens_per_s": row["tokens_per_s"],
                     "reference_tokens_per_s": by_id.loc[ref, "tokens_per_s"] if pd.notna(ref) else None,
                     "speedup": ratio, "speedup_low": iv.low if iv else float("nan"),
                     "speedup_high": iv.high if iv else float("nan"), "interval_over": over,
                     "measurable": None if iv is None else not iv.holds_one, "fair": a["fair"], "same_output": same,
                     "timing_disturbed": disturbed, "note": note, "note_zh": note_zh})
    return pd.DataFrame(rows, columns=SPEEDUP_COLUMNS)


def _interval(row: pd.Series, ref: pd.Series, prompts: list[int] | None = None):
    """(interval, what it resamples) of ``row`` over ``ref`` from their timing entries; ``prompts``:
    only these prompt positions (one category). Over prompts x repetitions (:data:`OVER_PROMPTS_REPS`),
    or over prompts only when either run was timed once (:data:`OVER_PROMPTS`); (None, None) when either
    has no entries or fewer than two prompts remain (one prompt timed once has no spread to resample)."""
    from ..measure.stats import as_table, ratio_interval

    tables = []
    for r in (row, ref):
        timing = r.get("timing")
        if not isinstance(timing, dict) or not timing.get("entries"):
            return None, None
        tables.append(as_table(timing["entries"]))
    if tables[0].shape[1] != tables[1].shape[1]:
        return None, None
    if prompts is not None:
        if max(prompts) >= tables[0].shape[1]:
            return None, None
        tables = [t[:, prompts] for t in tables]
    once = min(t.shape[0] for t in tables) < 2
    if once and tables[0].shape[1] < 2:
        return None, None
    return ratio_interval(*tables), OVER_PROMPTS if once else OVER_PROMPTS_REPS


def frame_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The parts of each row's record the clock audit reads (status, id, timing, rep spread)."""
    if df.empty or "timing" not in df:
        return []
    return [{"status": r["status"], "cell": {"cell_id": r["cell_id"]}, "timing": r["timing"],
             "aggregate": {"rep_spread": r.get("rep_spread")}} for _, r in df.iterrows()]
