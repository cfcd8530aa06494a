"""Bilingual (English / 中文) findings and recommendations generated from a run's tables.

Every sentence is built from the numbers it states; nothing here is fixed prose about a
particular run. :func:`recommendations` returns :class:`Text` pairs; :func:`markdown` renders
them for a notebook (English line, then the Chinese line).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .clock import THRESHOLD
from .report import METHOD_NAMES


@dataclass(frozen=True)
class Text:
    """One finding in both languages."""

    en: str
    zh: str


def markdown(items: list[Text], numbered: bool = True) -> str:
    """A Markdown list, each item English then 中文."""
    return "\n".join(f"{f'{i}.' if numbered else '-'} {t.en}  \n   {t.zh}" for i, t in enumerate(items, 1))


def heading(en: str, zh: str, level: int = 2) -> str:
    return f"{'#' * level} {en} / {zh}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def on_fairness(audit: pd.DataFrame) -> list[Text]:
    """How many compared pairs are unfair, and which set-up would make them fair."""
    sp = audit[audit["kind"] == "speed-up"]
    unfair = sp[~sp["fair"].astype(bool)]
    out = []
    if sp.empty:
        return [Text("No speed-up was compared (no run beside a cloud / cloud_optimized reference).",
                     "没有可比较的加速比（没有与 cloud / cloud_optimized 参考基线同时运行的结果）。")]
    if unfair.empty:
        out.append(Text(f"All {len(sp)} speed-up comparisons use the same cloud dtype, device class, set-up class and "
                        "workload: they can be quoted (with their intervals and the clock audit's verdict).",
                        f"全部 {len(sp)} 个加速比比较使用相同的云端精度、设备类别、配置类别和工作负载，可以引用"
                        "（需同时给出置信区间和时钟审计结论）。"))
    else:
        ids = ", ".join(unfair["cell_id"])
        out.append(Text(f"{len(unfair)} of {len(sp)} comparisons are unfair and their speed-up is not quoted ({ids}): "
                        f"{'; '.join(sorted(set(unfair['differs'])))}.",
                        f"{len(sp)} 个比较中有 {len(unfair)} 个不公平，未给出加速比（{ids}）："
                        f"{'；'.join(sorted(set(unfair['differs_zh'])))}。"))
        if unfair["differs"].str.contains("device class").any():
            out.append(Text("Runs on different device classes compare hardware, not methods: run the reference on the "
                            "same device (a cloud_optimized run on CPU, or the edge model on the GPU) before quoting.",
                            "不同设备类别的运行比较的是硬件而不是方法：请在相同设备上运行参考基线"
                            "（在 CPU 上运行 cloud_optimized，或在 GPU 上运行边缘模型）后再引用。"))
        if unfair["differs"].str.contains("set-up").any():
            out.append(Text("A plain loop (eager, dynamic caches) compared with the optimized baseline (static caches, "
                            "compiled), or the reverse, measures the set-up, not the method: run both baselines "
                            "(grid: method: [cloud, cloud_optimized, ...]) and both forms (grid: optimized: [false, true]).",
                            "普通循环（eager、动态缓存）与优化基线（静态缓存、编译）相比，或反之，衡量的是配置而不是方法："
                            "请同时运行两个基线（grid: method: [cloud, cloud_optimized, ...]）和两种形式"
                            "（grid: optimized: [false, true]）。"))
        if unfair["differs"].str.contains("dtype").any():
            out.append(Text("Add the missing cloud_optimized dtypes to the grid so each run has a reference at its own "
                            "precision (grid: dtype: [float32, bfloat16, float16]).",
                            "在网格中补齐缺少精度的 cloud_optimized 运行，使每个运行都有同精度的参考"
                            "（grid: dtype: [float32, bfloat16, float16]）。"))
    return out


def on_mixes(audit: pd.DataFrame, df: pd.DataFrame) -> list[Text]:
    """Speculative runs whose edge and cloud differ in dtype or device class."""
    mixed = audit[audit["kind"] == "within run"]
    if mixed.empty:
        return [Text("Every speculative / HF-assisted run used one dtype and device class for both models.",
                     "所有推测解码 / HF 辅助生成运行中，两个模型使用相同的精度和设备类别。")]
    ids = ", ".join(mixed["cell_id"])
    return [Text(f"{len(mixed)} run(s) mix set-ups inside one run ({ids}); their acceptance rate measures the mix "
                 "as well as the models: compare it with the matched-dtype run.",
                 f"{len(mixed)} 个运行在同一运行内混用配置（{ids}）；其接受率同时反映了这种混用，"
                 "请与精度一致的运行对比。")]


def on_drift(drift_summary: pd.DataFrame) -> list[Text]:
    """Per low-precision dtype: safe for greedy equivalence on these prompts, or not."""
    out = []
    for dtype, row in drift_summary.iterrows():
        agree, kl, n, div = row["top1_agreement"], row["mean_kl"], int(row["prompts"]), int(row["diverged"])
        if div == 0:
            out.append(Text(f"The cloud in {dtype} reproduces float32's greedy output on all {n} prompts "
                            f"(top-1 agreement {_pct(agree)}, mean KL {kl:.2e}).",
                            f"云端模型在 {dtype} 下在全部 {n} 个提示词上与 float32 的贪心输出一致"
                            f"（top-1 一致率 {_pct(agree)}，平均 KL {kl:.2e}）。"))
        else:
            first = int(row["earliest_divergence"])
            out.append(Text(f"In {dtype} the cloud's greedy output differs from float32 on {div}/{n} prompts (first at "
                            f"new token {first}; top-1 agreement {_pct(agree)}, mean KL {kl:.2e}): runs in {dtype} "
                            "produce different text, so use float32 to check exactness and compare speed only "
                            "within one dtype.",
                            f"在 {dtype} 下，云端模型在 {div}/{n} 个提示词上的贪心输出与 float32 不同"
                            f"（最早在第 {first} 个新词元；top-1 一致率 {_pct(agree)}，平均 KL {kl:.2e}）："
                            f"{dtype} 运行生成的文本不同，请用 float32 检验正确性，并只在同一精度内比较速度。"))
    return out


def on_acceptance(acceptance: pd.DataFrame) -> list[Text]:
    """Where acceptance is highest and how much precision moves it."""
    cells = acceptance.stack().dropna() if not acceptance.empty else pd.Series(dtype=float)
    if cells.empty:
        return []
    (be, bc), best = cells.idxmax(), cells.max()
    (we, wc), worst = cells.idxmin(), cells.min()
    spread = best - worst
    if len(cells) == 1 or spread < 0.02:
        return [Text(f"Precision barely moves acceptance: {_pct(worst)}–{_pct(best)} over {len(cells)} (edge, cloud) "
                     "dtype pair(s).",
                     f"精度对接受率影响很小：{len(cells)} 个（边缘，云端）精度组合的接受率为 {_pct(worst)}–{_pct(best)}。")]
    return [Text(f"Acceptance is highest with edge {be} / cloud {bc} ({_pct(best)}) and lowest with edge {we} / cloud "
                 f"{wc} ({_pct(worst)}).",
                 f"边缘 {be} / 云端 {bc} 时接受率最高（{_pct(best)}），边缘 {we} / 云端 {wc} 时最低（{_pct(worst)}）。")]


def on_speed(speedups: pd.DataFrame, df: pd.DataFrame) -> list[Text]:
    """The best fair speed-up per dtype and set-up class (with its interval and the clock's
    verdict), and the reference's fastest dtype on its device."""
    out = []
    fair = speedups[speedups["fair"].astype(bool) & speedups["same_output"].astype(bool)
                    & speedups["speedup"].notna()]
    for (dtype, setup), group in fair.groupby(["dtype", "setup"], sort=False):
        best = group.loc[group["speedup"].idxmax()]
        name, ref = METHOD_NAMES.get(best["method"], best["method"]), best["reference"]
        ref_method = ref.split("-", 1)[0] if isinstance(ref, str) else "?"
        has_ci = pd.notna(best["speedup_low"])
        ci = f" (95% CI {best['speedup_low']:.2f}-{best['speedup_high']:.2f})" if has_ci else " (timed once: no interval)"
        ci_zh = f"（95% 置信区间 {best['speedup_low']:.2f}-{best['speedup_high']:.2f}）" if has_ci else "（只计时一次：无区间）"
        if has_ci and best["speedup_low"] <= 1.0 <= best["speedup_high"]:
            verdict, verdict_zh = "no measurable difference from", "与之无可测差异："
        elif best["speedup"] > 1:
            verdict, verdict_zh = "faster than", "快于"
        else:
            verdict, verdict_zh = "slower than", "慢于"
        why, why_zh = _draft_share(df, best["cell_id"]) if best["speedup"] <= 1 else ("", "")
        clock = " TIMING DISTURBED: re-run before quoting." if best["timing_disturbed"] else ""
        clock_zh = "计时受干扰：引用前请重新运行。" if best["timing_disturbed"] else ""
        out.append(Text(f"At {dtype} on {best['device']} ({setup} set-up), {name} runs at {best['speedup']:.2f}x "
                        f"{ref_method}{ci}: {verdict} the {setup} baseline, fair comparison{why}.{clock}",
                        f"在 {best['device']} 上的 {dtype} 精度下（{setup} 配置），{name} 的速度是 {ref_method} 的 "
                        f"{best['speedup']:.2f} 倍{ci_zh}：{verdict_zh}{setup} 基线，公平比较{why_zh}。{clock_zh}"))
    ref = df[(df["status"] == "ok") & (df["method"] == "cloud_optimized")]
    for device, group in ref.groupby("cloud_class"):
        if len(group) > 1:
            fast, slow = group.loc[group["tokens_per_s"].idxmax()], group.loc[group["tokens_per_s"].idxmin()]
            ratio = fast["tokens_per_s"] / slow["tokens_per_s"]
            out.append(Text(f"On {device}, the optimized cloud baseline is fastest in {fast['cloud_dtype']} and "
                            f"{ratio:.2f}x slower in {slow['cloud_dtype']}: pick the dtype per device, then compare "
                            "methods within it.",
                            f"在 {device} 上，优化云端基线在 {fast['cloud_dtype']} 下最快，在 {slow['cloud_dtype']} 下"
                            f"慢 {ratio:.2f} 倍：应按设备选择精度，再在同一精度内比较方法。"))
    return out


def _draft_share(df: pd.DataFrame, cell_id: str) -> tuple[str, str]:
    """Where a slow speculative run spent its time (when the run measured the split)."""
    row = df[df["cell_id"] == cell_id].iloc[0]
    if not row.get("wall_s") or not row.get("draft_s"):
        return "", ""
    share = row["draft_s"] / row["wall_s"]
    acc = row.get("acceptance_rate")
    acc_en = f", acceptance {_pct(acc)}" if pd.notna(acc) else ""
    acc_zh = f"，接受率 {_pct(acc)}" if pd.notna(acc) else ""
    return (f"; drafting took {_pct(share)} of its time{acc_en}",
            f"；起草占用了 {_pct(share)} 的时间{acc_zh}")


def on_clock(clock: pd.DataFrame, df: pd.DataFrame) -> list[Text]:
    """The clock audit in words: disturbed cells, and cloud_optimized slower than cloud (clock or set-up)."""
    from .clock import slower_optimized

    out = []
    if not clock.empty:
        bad = clock[clock["disturbed"].astype(bool)]
        if bad.empty:
            out.append(Text(f"All {len(clock)} timed cells ran on an undisturbed clock (every probe within "
                            f"{_pct(THRESHOLD)} of the run's median, no overlapping timed sections).",
                            f"全部 {len(clock)} 个计时单元的时钟未受干扰（所有校准探针与本次运行中位数相差不超过 "
                            f"{_pct(THRESHOLD)}，计时区间互不重叠）。"))
        else:
            ids = ", ".join(bad["cell_id"])
            out.append(Text(f"TIMING DISTURBED in {len(bad)} cell(s) ({ids}): something else used their cores while "
                            "they were timed; every speed-up using them is flagged. Re-run them on a quiet machine "
                            "(`specnb grid PARAMS.yaml --out RUN_DIR --only CELL_ID`).",
                            f"{len(bad)} 个单元计时受干扰（{ids}）：计时期间有其他任务占用了它们的 CPU 核心；"
                            "所有用到它们的加速比都已标记。请在空闲的机器上重新运行"
                            "（`specnb grid PARAMS.yaml --out RUN_DIR --only CELL_ID`）。"))
    out += [Text(case["en"] + ".", case["zh"] + "。") for case in slower_optimized(df, clock)]
    return out


def on_failures(df: pd.DataFrame) -> list[Text]:
    failed = df[df["status"] != "ok"]
    if failed.empty:
        return []
    ids = ", ".join(failed["cell_id"])
    return [Text(f"{len(failed)} cell(s) failed ({ids}); they are missing from every comparison above. Re-run them "
                 "with `specnb grid PARAMS.yaml --out RUN_DIR` (ok cells are skipped).",
                 f"{len(failed)} 个单元运行失败（{ids}），未参与上面的任何比较。可用 "
                 "`specnb grid PARAMS.yaml --out RUN_DIR` 重新运行（已成功的单元会被跳过）。")]


def recommendations(df: pd.DataFrame, audit: pd.DataFrame, speedups: pd.DataFrame,
                    drift_summary: pd.DataFrame | None = None, acceptance: pd.DataFrame | None = None,
                    clock: pd.DataFrame | None = None) -> list[Text]:
    """All generated findings, most important first: fairness, the clock, failures, drift,
    acceptance, speed. ``clock`` is :func:`specnb.clock.clock_audit` (computed from ``df`` when None)."""
    from .clock import clock_audit
    from .report import frame_records

    clock = clock_audit(frame_records(df)) if clock is None else clock
    items = on_fairness(audit) + on_clock(clock, df) + on_failures(df) + on_mixes(audit, df)
    if drift_summary is not None and not drift_summary.empty:
        items += on_drift(drift_summary)
    if acceptance is not None:
        items += on_acceptance(acceptance)
    return items + on_speed(speedups, df)

