"""The clock audit: was each cell timed on an undisturbed core, and did timed sections overlap?

Every cell times a fixed probe (:func:`specnb.measure.timing.probe`) before, between and after its
repetitions. On an undisturbed machine the probe takes the same time in every cell of a run;
a probe that strays from the run's median by more than :data:`THRESHOLD` means something else
ran on the cell's core while it was timed: the cell is flagged "timing disturbed" (计时受干扰),
and so is every speed-up that uses it. Cells whose timed sections overlapped on one host are
flagged too (the timing lock should make that impossible; a cell run without it can cause it).
The probe does not feel everything (a busy neighbour slows a Python-heavy decode loop more than a
matrix product), so a cell is also flagged when other processes used more than
:data:`specnb.measure.neighbours.OTHERS_CORES` cores during its timed section, or its repetitions' tokens/s
spread by more than :data:`specnb.measure.neighbours.SPREAD` (:mod:`specnb.measure.neighbours`), saying by how much.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable

import pandas as pd

from . import neighbours
from .timing import overlaps

THRESHOLD = 0.10  # a probe more than 10% away from the run's median flags its cell
COLUMNS = ["cell_id", "probe_ms", "run_probe_ms", "worst_deviation", "rep_spread", "overlaps_with",
           "others_cores", "cpu_pressure", "disturbed", "verdict", "verdict_zh"]


def worst_deviation(seconds: list[float], reference: float) -> tuple[int, float]:
    """The probe furthest from ``reference`` (its index) and its relative deviation (+0.2 = 20% slower)."""
    i = max(range(len(seconds)), key=lambda k: abs(seconds[k] / reference - 1.0))
    return i, seconds[i] / reference - 1.0


def _probes(rec: dict[str, Any]) -> list[float]:
    return [p["seconds"] for p in (rec.get("timing") or {}).get("probes", [])]


def _stray(probe_s: float, median_s: float, deviation: float, where: str | None = None) -> tuple[str, str]:
    """Why a probe flags its timing, in English and 中文: the one wording of both clock verdicts."""
    at, at_zh = (f" '{where}'", f"“{where}”处的") if where else ("", "")
    return (f"probe{at} {probe_s * 1e3:.1f} ms vs median {median_s * 1e3:.1f} ms ({deviation:+.0%})",
            f"{at_zh}校准探针 {probe_s * 1e3:.1f} ms，中位数 {median_s * 1e3:.1f} ms（{deviation:+.0%}）")


def probe_summary(probes: list[dict[str, Any]], threshold: float = THRESHOLD) -> dict[str, Any]:
    """The clock audit of one process's timed section (``specnb bench``): its probes (before, between
    the repetitions, after) against their median; a probe more than ``threshold`` away flags it."""
    secs = [p["seconds"] for p in probes]
    med = statistics.median(secs)
    i, dev = worst_deviation(secs, med)
    disturbed = abs(dev) > threshold
    en, zh = _stray(secs[i], med, dev, probes[i]["where"])
    return {
        "probes": len(secs), "min_ms": min(secs) * 1e3, "median_ms": med * 1e3, "max_ms": max(secs) * 1e3,
        "worst": probes[i]["where"], "worst_deviation": dev, "threshold": threshold, "disturbed": disturbed,
        "verdict": (f"TIMING DISTURBED: {en} (threshold {threshold:.0%}): something else used the CPU while it was "
                    "timed; its figures are not fit to quote, re-run on a quiet machine")
        if disturbed else f"undisturbed clock (every probe within {threshold:.0%} of the median)",
        "verdict_zh": (f"计时受干扰：{zh}（阈值 {threshold:.0%}）：计时期间有其他程序占用 CPU，结果不宜引用，请在空闲机器上重新运行")
        if disturbed else f"计时未受干扰（所有校准探针均在中位数的 {threshold:.0%} 以内）",
    }


def clock_audit(records: Iterable[dict[str, Any]], threshold: float = THRESHOLD) -> pd.DataFrame:
    """One row per ok cell with a timing record: its probes against the run's median, overlaps,
    and whether its timing was disturbed, in English and 中文."""
    timed = [r for r in records if r.get("status") == "ok" and _probes(r)]
    if not timed:
        return pd.DataFrame(columns=COLUMNS)
    run_median = statistics.median(p for r in timed for p in _probes(r))
    pairs = overlaps([(r["cell"]["cell_id"], r["timing"]) for r in timed])
    rows = []
    for r in timed:
        cid, probes = r["cell"]["cell_id"], _probes(r)
        i, deviation = worst_deviation(probes, run_median)
        worst = probes[i]
        others = sorted({b if a == cid else a for a, b in pairs if cid in (a, b)})
        near = neighbours.read(r["timing"])
        spread = (r.get("aggregate") or {}).get("rep_spread")
        spread_bad = spread is not None and spread == spread and spread > neighbours.SPREAD  # (NaN: not bad)
        disturbed = abs(deviation) > threshold or bool(others) or neighbours.shared(near) or spread_bad
        why, why_zh = [], []
        if abs(deviation) > threshold:
            en, zh = _stray(worst, run_median, deviation)
            why.append(en)
            why_zh.append(zh)
        if others:
            why.append(f"timed section overlapped {', '.join(others)}")
            why_zh.append(f"计时区间与 {', '.join(others)} 重叠")
        if neighbours.shared(near):
            en, zh = neighbours.words(near)
            why.append(en)
            why_zh.append(zh)
        if spread_bad:
            why.append(f"its repetitions' tokens/s spread {spread:.0%} (over {neighbours.SPREAD:.0%})")
            why_zh.append(f"各次重复的词元/秒相差 {spread:.0%}（超过 {neighbours.SPREAD:.0%}）")
        rows.append({
            "cell_id": cid, "probe_ms": statistics.median(probes) * 1e3, "run_probe_ms": run_median * 1e3,
            "worst_deviation": deviation, "rep_spread": (r.get("aggregate") or {}).get("rep_spread"),
            "overlaps_with": ", ".join(others), "others_cores": near.others_cores, "cpu_pressure": near.pressure,
            "disturbed": disturbed,
            "verdict": f"TIMING DISTURBED: {'; '.join(why)}" if disturbed else "undisturbed clock",
            "verdict_zh": f"计时受干扰：{'；'.join(why_zh)}" if disturbed else "计时未受干扰",
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def disturbed_cells(audit: pd.DataFrame) -> set[str]:
    return set(audit.loc[audit["disturbed"].astype(bool), "cell_id"]) if not audit.empty else set()


def slower_optimized(df: pd.DataFrame, audit: pd.DataFrame) -> list[dict[str, str]]:
    """``cloud_optimized`` slower than ``cloud`` at the same dtype and device class: each case,
    and whether the probes point at the clock (a disturbed cell) or at the set-up (both clean:
    the optimized set-up does not pay on this device), in English and 中文."""
    ok = df[df["status"] == "ok"] if not df.empty else df
    bad = disturbed_cells(audit)
    out = []
    for (dtype, device), group in ok.groupby(["cloud_dtype", "cloud_class"]):
        plain, opt = group[group["method"] == "cloud"], group[group["method"] == "cloud_optimized"]
        for _, o in opt.iterrows():
            for _, p in plain.iterrows():
                if o["tokens_per_s"] >= p["tokens_per_s"]:
                    continue
                clock = o["cell_id"] in bad or p["cell_id"] in bad
                what = (f"cloud_optimized ({o['tokens_per_s']:.1f} tok/s) is slower than cloud ({p['tokens_per_s']:.1f}) "
                        f"at {dtype} on {device}")
                what_zh = f"在 {device} 上的 {dtype} 精度下 cloud_optimized（{o['tokens_per_s']:.1f} 词元/秒）慢于 cloud（{p['tokens_per_s']:.1f}）"
                out.append({
                    "en": what + (": the clock audit flags one of them, so the clock is the likely cause; re-run them"
                                  if clock else ": both were timed undisturbed, so it is the set-up: the optimized "
                                  "set-up does not pay on this device"),
                    "zh": what_zh + ("：时钟审计标记了其中之一，原因很可能是计时受干扰，请重新运行"
                                     if clock else "：两者计时均未受干扰，原因在于配置：优化配置在该设备上没有收益"),
                    "cause": "clock" if clock else "set-up",
                })
    return out
