"""Bilingual (English / 中文) findings and recommendations generated from a run's tables.

Every sentence is built from the numbers it states; nothing here is fixed prose about a
particular run. :func:`recommendations` returns :class:`Text` pairs; :func:`markdown` renders
them for a notebook (English line, then the Chinese line).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..study import methods as _methods
from ..measure.clock import THRESHOLD
from .frame import METHOD_NAMES
from .fairness import OVER_PROMPTS


@dataclass(frozen=True)
class Text:
    """One finding in both languages."""

    en: str
    zh: str


def markdown(items: list[Text], numbered: bool = True) -> str:
    """A Markdown list, each item English then 中文."""
    return "\n".join(f"{f'{i}.' if numbered else '-'} {t.en}  \n   {t.zh}" for i, t in enumerate(items, 1))


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


def on_tokenizers(audit: pd.DataFrame) -> list[Text]:
    """Runs whose edge and cloud have different tokenizers (the edge drafted through a translation)."""
    two = audit[audit["kind"] == "tokenizers"] if not audit.empty else audit
    if two.empty:
        return []
    ids = ", ".join(two["cell_id"])
    return [Text(f"{len(two)} run(s) pair models with different tokenizers ({ids}): the edge drafted through a "
                 "translation, so their output is still the cloud's but their acceptance rate also measures the "
                 "translation (vocabulary overlap and mismatches per round in the results table).",
                 f"{len(two)} 个运行的两个模型分词器不同（{ids}）：边缘模型经转换后起草，输出仍与云端一致，"
                 "但接受率同时反映了转换的损失（词表重合率与每轮不匹配数见结果表）。")]


def on_drift(drift_summary: pd.DataFrame) -> list[Text]:
    """Drift in words: float32's noise floor first (when measured), then per low-precision dtype whether its
    greedy output departs from float32's, and whether float32's own noise between its two ways of computing
    (one prefill vs KV-cache decoding) explains it. See :mod:`specnb.report.drift` for the measures."""
    from .drift import FLOOR

    floor = drift_summary.loc[FLOOR] if FLOOR in drift_summary.index else None
    out = [] if floor is None else [_drift_floor(floor)]
    for dtype, row in drift_summary.drop(index=FLOOR, errors="ignore").iterrows():
        n, div = int(row["prompts"]), int(row["diverged"])
        en, zh = _drift_measures(row, floor)
        if div == 0:
            out.append(Text(f"In {dtype} the cloud reproduces float32's greedy output on all {n} prompts ({en}).",
                            f"云端模型在 {dtype} 下在全部 {n} 个提示词上与 float32 的贪心输出一致（{zh}）。"))
            continue
        first = int(row["earliest_divergence"])
        beyond = row.get("beyond_floor")
        if floor is not None and pd.notna(beyond) and int(beyond) == 0:
            out.append(Text(f"In {dtype} the cloud's greedy output departs from float32's on {div}/{n} prompts (first "
                            f"at new token {first}), each time at or after float32's own divergence between its two "
                            f"ways of computing, or within its KL: within the noise floor, not evidence of "
                            f"low-precision damage ({en}).",
                            f"在 {dtype} 下，云端模型在 {div}/{n} 个提示词上的贪心输出偏离 float32（最早在第 {first} "
                            "个新词元），但每次都发生在 float32 自身两种计算方式的偏离处或之后，或在其 KL 范围之内："
                            f"属于噪声基线之内，不能说明低精度造成了损害（{zh}）。"))
            continue
        cause_en = cause_zh = ""
        if floor is not None and pd.notna(beyond):
            some_en = "" if int(beyond) == div else f" on {int(beyond)} of them"
            some_zh = "这些位置" if int(beyond) == div else f"其中 {int(beyond)} 个提示词的偏离位置"
            cause_en = (f", where float32 gives the same token both ways{some_en}: the lower precision, not the way of "
                        "computing, changed the text")
            cause_zh = f"，而 float32 的两种计算方式在{some_zh}选出相同的词元：改变文本的是较低的精度，而不是计算方式"
        out.append(Text(f"In {dtype} the cloud's greedy output departs from float32's on {div}/{n} prompts (first at "
                        f"new token {first}){cause_en} ({en}). Teacher-forced agreement scores each position on "
                        "float32's own text, so one flipped near-tie counts once; the divergence is where "
                        f"{dtype}'s own text first differs, and every token after it may differ. Runs in {dtype} "
                        "produce different text: use float32 to check exactness and compare speed only within one "
                        "dtype.",
                        f"在 {dtype} 下，云端模型在 {div}/{n} 个提示词上的贪心输出偏离 float32（最早在第 {first} "
                        f"个新词元）{cause_zh}（{zh}）。教师强制的一致率是在 float32 自己的文本上逐位置打分，"
                        f"一次被翻转的近似平局只计一次；偏离位置是 {dtype} 自身文本首次不同之处，其后的每个词元都可能"
                        f"不同。{dtype} 运行生成的文本不同：请用 float32 检验正确性，并只在同一精度内比较速度。"))
    return out


def _drift_floor(floor: pd.Series) -> Text:
    """float32 against itself, one prefill vs KV-cache decoding: what the noise floor says."""
    n, div, kl = int(floor["prompts"]), int(floor["diverged"]), floor["mean_kl"]
    if div == 0:
        return Text(f"Noise floor: float32 against itself, scored in one prefill and decoded with a KV cache, picks "
                    f"the same token at every position on all {n} prompts (mean KL between the two ways {kl:.1e}); "
                    "a divergence below comes from the lower precision, not from the way of computing.",
                    f"噪声基线：float32 与自身比较（一次预填充打分 vs 使用 KV 缓存逐词解码），在全部 {n} 个提示词的"
                    f"每个位置上都选出相同的词元（两种方式之间的平均 KL 为 {kl:.1e}）；下文的偏离来自较低的精度，"
                    "而不是计算方式。")
    first, agree = int(floor["earliest_divergence"]), _pct(floor["top1_agreement"])
    return Text(f"Noise floor: float32 itself picks another token depending on how it computes (one prefill vs "
                f"KV-cache decoding) on {div}/{n} prompts, first at new token {first} (top-1 agreement between the two "
                f"ways {agree}, mean KL {kl:.1e}). These are near-ties that any change in the order of floating-point "
                "operations can flip, so two float32 set-ups may produce different text there too (e.g. speculative "
                "verification, which scores a draft in one pass, and the cloud decoding alone). A lower precision "
                "that diverges at or after float32's own divergence on a prompt shows no low-precision damage.",
                f"噪声基线：float32 自身因计算方式不同（一次预填充 vs KV 缓存逐词解码）在 {div}/{n} 个提示词上选出"
                f"不同的词元，最早在第 {first} 个新词元（两种方式的 top-1 一致率 {agree}，平均 KL {kl:.1e}）。"
                "这些是近似平局，浮点运算顺序的任何变化都可能翻转它们，因此两种 float32 配置在这些位置也可能生成不同"
                "的文本（例如推测解码的验证在一次前向计算中为草稿打分，而云端模型单独逐词解码）。较低精度若在某个"
                "提示词上于 float32 自身的偏离处或之后才偏离，并不说明低精度造成了损害。")


def _drift_measures(row: pd.Series, floor: pd.Series | None) -> tuple[str, str]:
    """'top-1 agreement ... ; mean KL ...' for one dtype, in English and 中文 (decoding figures when measured)."""
    agree, kl = _pct(row["top1_agreement"]), f"{row['mean_kl']:.1e}"
    dec_agree, dec_kl = row.get("decode_top1_agreement"), row.get("decode_mean_kl")
    if pd.isna(dec_agree):
        en, zh = f"top-1 agreement {agree} teacher-forced in one prefill, mean KL {kl}", \
            f"一次预填充（教师强制）的 top-1 一致率 {agree}，平均 KL {kl}"
    else:
        en = (f"top-1 agreement with float32 {agree} teacher-forced in one prefill and {_pct(dec_agree)} in KV-cache "
              f"decoding; mean KL {kl} / {dec_kl:.1e}")
        zh = (f"与 float32 的 top-1 一致率：一次预填充（教师强制）{agree}，KV 缓存逐词解码 {_pct(dec_agree)}；"
              f"平均 KL {kl} / {dec_kl:.1e}")
    if floor is not None:
        en += f", float32's own noise floor {floor['mean_kl']:.1e}"
        zh += f"，float32 自身噪声基线 {floor['mean_kl']:.1e}"
    return en, zh


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
        known = _methods.METHODS.get(best["method"])
        name_zh = known.label_zh if known else name
        ref_method = ref.split("-", 1)[0] if isinstance(ref, str) else "?"
        has_ci = pd.notna(best["speedup_low"])
        once = best.get("interval_over") == OVER_PROMPTS
        ci = (f" (95% CI {best['speedup_low']:.2f}-{best['speedup_high']:.2f}" + (", over prompts; timed once)" if once else ")")
              if has_ci else " (timed once: no interval)")
        ci_zh = (f"（95% 置信区间 {best['speedup_low']:.2f}-{best['speedup_high']:.2f}" + ("，仅对提示词；只计时一次）" if once else "）")
                 if has_ci else "（只计时一次：无区间）")
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
                        f"在 {best['device']} 上的 {dtype} 精度下（{setup} 配置），{name_zh} 的速度是 {ref_method} 的 "
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


def on_categories(categories: pd.DataFrame) -> list[Text]:
    """How far the speed-up moves across prompt categories (:func:`specnb.report.categories.category_table`), for the
    run with the best overall speed-up among those that reproduce the cloud's output: a workload-wide
    figure hides that (Spec-Bench's point), so the spread is said in words where there are 2+ categories."""
    from .categories import OVERALL

    t = categories[categories["same_output"].astype(bool) & categories["speedup"].notna()]
    per = t[t["category"] != OVERALL]
    if per.empty or per.groupby("cell_id")["category"].nunique().max() < 2:
        return []
    overall = t[t["category"] == OVERALL].set_index("cell_id")["speedup"]
    best = overall[overall.index.isin(per["cell_id"])].idxmax()
    rows = per[per["cell_id"] == best].set_index("category")
    lo, hi = rows["speedup"].idxmin(), rows["speedup"].idxmax()
    tpr = rows["tokens_per_round"].dropna()
    mat = (f"; mean accepted tokens (per round, the cloud's token included) {tpr.min():.2f} to {tpr.max():.2f}"
           if len(tpr) else "")
    mat_zh = f"；平均接受词元数（每轮，含云端词元）{tpr.min():.2f} 至 {tpr.max():.2f}" if len(tpr) else ""
    return [Text(f"The speed-up depends on the task: {best} runs at {rows.loc[lo, 'speedup']:.2f}x on {lo} and "
                 f"{rows.loc[hi, 'speedup']:.2f}x on {hi} (overall {overall[best]:.2f}x){mat}. Quote it per "
                 "category, as Spec-Bench does, when the workload's mix may differ from the prompts'.",
                 f"加速比取决于任务：{best} 在 {lo} 上为 {rows.loc[lo, 'speedup']:.2f} 倍，在 {hi} 上为 "
                 f"{rows.loc[hi, 'speedup']:.2f} 倍（总体 {overall[best]:.2f} 倍）{mat_zh}。当实际负载的构成可能与提示词"
                 "不同时，应像 Spec-Bench 一样按类别给出加速比。")]


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
    from ..measure.clock import slower_optimized

    out = []
    if not clock.empty:
        bad = clock[clock["disturbed"].astype(bool)]
        if bad.empty:
            from ..measure.neighbours import OTHERS_CORES, SPREAD
            out.append(Text(f"All {len(clock)} timed cells ran on an undisturbed clock (every probe within "
                            f"{_pct(THRESHOLD)} of the run's median, no overlapping timed sections, other processes "
                            f"under {OTHERS_CORES:g} cores where measured, repetitions within {_pct(SPREAD)}).",
                            f"全部 {len(clock)} 个计时单元的时钟未受干扰（所有校准探针与本次运行中位数相差不超过 "
                            f"{_pct(THRESHOLD)}，计时区间互不重叠，其他进程占用低于 {OTHERS_CORES:g} 个核心（有测量时），"
                            f"各次重复相差不超过 {_pct(SPREAD)}）。"))
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
                    clock: pd.DataFrame | None = None, categories: pd.DataFrame | None = None) -> list[Text]:
    """All generated findings, most important first: fairness, the clock, failures, drift,
    acceptance, speed, its spread across prompt categories. ``clock`` is
    :func:`specnb.measure.clock.clock_audit` (computed from ``df`` when None); ``categories`` is
    :func:`specnb.report.categories.category_table` (no category finding when None)."""
    from ..measure.clock import clock_audit
    from .fairness import frame_records

    clock = clock_audit(frame_records(df)) if clock is None else clock
    items = on_fairness(audit) + on_clock(clock, df) + on_failures(df) + on_mixes(audit, df) + on_tokenizers(audit)
    if drift_summary is not None and not drift_summary.empty:
        items += on_drift(drift_summary)
    if acceptance is not None:
        items += on_acceptance(acceptance)
    items += on_speed(speedups, df)
    return items + (on_categories(categories) if categories is not None else [])

