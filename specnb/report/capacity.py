"""The capacity study's findings (English / 中文), its curves, and its records on disk.

Every sentence is built from the tables of :mod:`specnb.study.capacity` it states; nothing here is
fixed prose about one run.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..measure import provenance
from ..study.capacity import SERVED, Result, with_schedule
from ..study.methods import LINK_METHODS
from .findings import Text

NAMES = {name: m.label for name, m in LINK_METHODS.items()}
NAMES_ZH = {name: m.label_zh for name, m in LINK_METHODS.items()}


def _n(x: float) -> str:
    return "none" if not x else f"{int(x)}"


def on_capacity(with_without: pd.DataFrame, slo: float, top_n: int) -> list[Text]:
    """The capacity at the SLO of each method and RTT, without batching and with the best batching policy."""
    out = []
    batched = [c for c in with_without.columns if c not in ("method", "rtt_ms", "none")]
    for _, r in with_without.iterrows():
        base = r.get("none", np.nan)
        best = max((r[c] for c in batched if pd.notna(r[c])), default=np.nan)
        cap = "" if max(base if pd.notna(base) else 0, best if pd.notna(best) else 0) < top_n else \
            f" (the largest N tested, {top_n}: the capacity is at least that)"
        cap_zh = "" if not cap else f"（已达测试的最大 N = {top_n}：实际容量不低于此值）"
        out.append(Text(
            f"{NAMES[r.method]} at RTT {r.rtt_ms:g} ms: capacity at a p90 per-edge rate of {slo:g} tok/s is "
            f"{_n(base)} edges without batching, {_n(best)} with batching{cap}.",
            f"{NAMES_ZH[r.method]}，RTT {r.rtt_ms:g} ms：在 p90 单边缘速率 {slo:g} 词元/秒的 SLO 下，"
            f"不批处理时容量为 {_n(base)} 个边缘，批处理时为 {_n(best)} 个{cap_zh}。"))
    return out


def on_bound(bounds: pd.DataFrame) -> list[Text]:
    """The measured capacity gain at the solo rate against the bound, unbatched (where the bound applies)."""
    out = []
    for _, r in bounds[bounds.policy == "none"].iterrows():
        out.append(Text(
            f"Unbatched, RTT {r.rtt_ms:g} ms, gamma {r.gamma}: t_draft {r.t_draft_ms:.2f} ms/token and t_verify "
            f"{r.t_verify_ms:.2f} ms/round give the bound B = {r.bound:.2f} (with the link, RTT + {r.t_link_ms:.2f} ms of transport per round: "
            f"{r.bound_with_link:.2f}); at N = {r.max_n} the server sustained {r.sustained_edge_cloud:.2f} edge-cloud "
            f"users and {r.sustained_cloud_only:.2f} cloud-only users at their solo rates: a gain of "
            f"{r.measured_gain:.2f}, {r.measured_over_bound:.2f} of B"
            + (f" and {r.measured_over_bound_with_link:.2f} of the bound with the link." if r.rtt_ms else "."),
            f"不批处理，RTT {r.rtt_ms:g} ms，gamma {r.gamma}：t_draft {r.t_draft_ms:.2f} 毫秒/词元、t_verify "
            f"{r.t_verify_ms:.2f} 毫秒/轮，得上界 B = {r.bound:.2f}（计入链路，即 RTT 加每轮 {r.t_link_ms:.2f} 毫秒传输：{r.bound_with_link:.2f}）；"
            f"N = {r.max_n} 时服务器以单用户速率维持了 {r.sustained_edge_cloud:.2f} 个边缘–云端用户和 "
            f"{r.sustained_cloud_only:.2f} 个仅云端用户：增益 {r.measured_gain:.2f}，为 B 的 {r.measured_over_bound:.2f}"
            + (f"，为计入链路的上界的 {r.measured_over_bound_with_link:.2f}。" if r.rtt_ms else "。")))
    return out


def on_goodput(gain: pd.DataFrame) -> list[Text]:
    """Goodput over cloud-only at the largest N, per method, policy and RTT."""
    out = []
    if gain.empty:
        return out
    top = gain[gain.n == gain.n.max()]
    for _, r in top.sort_values(["method", "rtt_ms", "policy"]).iterrows():
        out.append(Text(
            f"N = {int(r.n)}, RTT {r.rtt_ms:g} ms, policy {r.policy}: {NAMES[r.method]} delivers {r.goodput:.0f} tok/s "
            f"in all, {r.gain:.2f}x cloud-only streaming's goodput on the same server.",
            f"N = {int(r.n)}，RTT {r.rtt_ms:g} ms，策略 {r.policy}：{NAMES_ZH[r.method]}总吞吐 {r.goodput:.0f} 词元/秒，"
            f"为同一服务器上仅云端流式生成的 {r.gain:.2f} 倍。"))
    return out


def on_fairness(summ: pd.DataFrame) -> list[Text]:
    """The least fair configuration by Jain's index."""
    if summ.empty or summ.jain.isna().all():
        return []
    r = summ.loc[summ.jain.idxmin()]
    return [Text(f"Fairness: Jain's index is at least {r.jain:.3f} everywhere (lowest: {NAMES[r.method]}, policy "
                 f"{r.policy}, RTT {r.rtt_ms:g} ms, N = {int(r.n)}; 1 = every edge at the same rate).",
                 f"公平性：所有配置的 Jain 指数不低于 {r.jain:.3f}（最低：{NAMES_ZH[r.method]}，策略 {r.policy}，"
                 f"RTT {r.rtt_ms:g} ms，N = {int(r.n)}；1 表示所有边缘速率相同）。")]


def on_replay(check: pd.DataFrame) -> list[Text]:
    """Replayed against real edges: the range of goodput ratios."""
    if check.empty:
        return [Text("No real-edge runs: the replayed edges were not checked against real ones in this run.",
                     "本次没有真实边缘运行：未将回放边缘与真实边缘对比。")]
    lo, hi = check.replayed_over_real.min(), check.replayed_over_real.max()
    ns = ", ".join(str(int(n)) for n in sorted(check.n.unique()))
    return [Text(f"Replayed vs real edges (N = {ns}): replayed goodput / real goodput ranges {lo:.2f}-{hi:.2f} over "
                 f"{len(check)} configurations (real edges also take this machine's cores from the server).",
                 f"回放边缘与真实边缘对比（N = {ns}）：在 {len(check)} 个配置中，回放吞吐 / 真实吞吐为 {lo:.2f}-{hi:.2f}"
                 "（真实边缘还会与服务器争用本机 CPU 核）。")]


def on_failures(summ: pd.DataFrame) -> list[Text]:
    failed = int(summ.failed.sum())
    if not failed:
        return []
    return [Text(f"{failed} user generations failed (their rows carry the error); the rates above leave them out.",
                 f"{failed} 个用户生成失败（错误记录在对应行中）；上述速率不含它们。")]


def findings(summ: pd.DataFrame, with_without: pd.DataFrame, bounds: pd.DataFrame, gain: pd.DataFrame,
             check: pd.DataFrame, slo: float) -> list[Text]:
    """All the study's findings, in order: capacity, bound, goodput, fairness, replay check, failures."""
    top = int(summ.n.max())
    return (on_capacity(with_without, slo, top) + on_bound(bounds) + on_goodput(gain) + on_fairness(summ)
            + on_replay(check) + on_failures(summ))


def curves(summ: pd.DataFrame, slo: float | None = None) -> plt.Figure:
    """Goodput (top) and the p90 edge's rate (bottom) against N, one column per RTT, a line per method x
    policy (edge methods at their best gamma per N); log-2 N axis; the SLO as a dashed line."""
    rtts = sorted(summ.rtt_ms.unique())
    fig, axes = plt.subplots(2, len(rtts), figsize=(5.5 * len(rtts), 7), squeeze=False, sharex=True)
    best = summ.sort_values("p90_edge_rate", ascending=False).groupby(["method", "policy", "rtt_ms", "n"]).head(1)
    for j, rtt in enumerate(rtts):
        for (method, policy), part in best[best.rtt_ms == rtt].groupby(["method", "policy"]):
            part = part.sort_values("n")
            style = "-" if policy != "none" else "--"
            label = f"{method} / {policy}"
            axes[0, j].errorbar(part.n, part.goodput, yerr=[part.goodput - part.goodput_low, part.goodput_high - part.goodput],
                                linestyle=style, marker="o", capsize=3, label=label)
            axes[1, j].plot(part.n, part.p90_edge_rate, linestyle=style, marker="o", label=label)
        axes[0, j].set_title(f"RTT {rtt:g} ms: goodput (all users)")
        axes[1, j].set_title(f"RTT {rtt:g} ms: p90 edge's rate")
        axes[0, j].set_ylabel("tokens/s")
        axes[1, j].set_ylabel("tokens/s per edge")
        axes[1, j].set_xlabel("edges N")
        axes[1, j].set_xscale("log", base=2)
        if slo:
            axes[1, j].axhline(slo, color="grey", linestyle=":", label=f"SLO {slo:g}")
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return fig


def table_markdown(summ: pd.DataFrame) -> str:
    """The capacity table for the docs: one Markdown table per RTT, a row per N, a column per method x
    policy; a cell is ``goodput (95% interval) / p90 edge's rate [mean edge rate]`` in tokens/s, the
    edge methods at their best schedule and gamma for that N (by the p90 edge's rate, written ``g4:``, or
    ``adaptive g8:`` for a schedule other than ``constant``, gamma its cap)."""
    best = with_schedule(summ).sort_values(["p90_edge_rate", "goodput"], ascending=False).groupby(
        ["method", "policy", "rtt_ms", "n"]).head(1)
    cols = [(m, p) for m in SERVED for p in sorted(summ.policy.unique(), key=lambda p: (p != "none", p))
            if ((best.method == m) & (best.policy == p)).any()]
    out = []
    for rtt in sorted(best.rtt_ms.unique()):
        out += [f"RTT {rtt:g} ms:", "", "| N | " + " | ".join(f"{m}, {p}" for m, p in cols) + " |",
                "| --- |" + " --- |" * len(cols)]
        for n in sorted(best.n.unique()):
            cells = []
            for m, p in cols:
                r = best[(best.method == m) & (best.policy == p) & (best.rtt_ms == rtt) & (best.n == n)]
                if r.empty:
                    cells.append("")
                    continue
                r = r.iloc[0]
                g = (f"{r.schedule} " if r.schedule != "constant" else "") + f"g{int(r.gamma)}: " if r.gamma else ""
                cells.append(f"{g}{r.goodput:.0f} ({r.goodput_low:.0f}-{r.goodput_high:.0f}) / {r.p90_edge_rate:.1f} "
                             f"[{r.edge_rate:.1f}]")
            out.append(f"| {int(n)} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def save(result: Result, folder: str | Path, tables: dict[str, pd.DataFrame]) -> list[Path]:
    """The study's records: ``rows.csv`` (one row per user generation), ``times.csv``, ``config.json``,
    ``provenance.json`` (machine, commit, versions, when) and each of ``tables`` as CSV; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, df in {"rows": result.rows, "times": result.times, **tables}.items():
        path = folder / f"{name}.csv"
        df.to_csv(path, index=False)
        out.append(path)
    path = folder / "config.json"
    path.write_text(json.dumps(result.config, indent=1, sort_keys=True))
    where = folder / "provenance.json"
    where.write_text(json.dumps({"machine": provenance.machine(), "git": provenance.git_state(),
                                 "versions": provenance.versions(), "written_at": provenance.now()}, indent=1, sort_keys=True))
    return out + [path, where]
