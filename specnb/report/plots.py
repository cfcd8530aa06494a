"""Seaborn figures for the notebooks; each function returns a matplotlib Figure.

Titles are English only (CJK fonts are often missing); the notebooks caption each figure
in both languages.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..study import methods as _methods
from .frame import DTYPE_ORDER, METHOD_NAMES


def _order(values: pd.Series) -> list[str]:
    present = list(dict.fromkeys(values.dropna()))
    return [d for d in DTYPE_ORDER if d in present] + [d for d in present if d not in DTYPE_ORDER]


def _variant_names(df: pd.DataFrame) -> pd.Series:
    """``Speculative (optimized)``: the method's name with its set-up class where it has both."""
    names = df["method"].map(METHOD_NAMES).fillna(df["method"])
    suffix = df["variant"].str.partition(" ")[2] if "variant" in df else ""
    return (names + " " + suffix).str.strip()


def _empty(title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}: no data", ha="center", va="center")
    return fig


def tokens_per_s(df: pd.DataFrame) -> plt.Figure:
    """Tokens/s by method x dtype (ok cells)."""
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return _empty("tokens/s")
    ok = ok.assign(Method=_variant_names(ok))
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.barplot(ok, x="Method", y="tokens_per_s", hue="dtype", hue_order=_order(ok["dtype"]), ax=ax)
    ax.set(xlabel="", ylabel="tokens / s", title="Tokens per second by method and dtype")
    ax.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    return fig


def acceptance(df: pd.DataFrame) -> plt.Figure:
    """Acceptance rate by dtype pair, one bar per method that drafts (the registry says which)."""
    ok = df[(df["status"] == "ok") & df["method"].isin(_methods.drafting())]
    if ok.empty:
        return _empty("acceptance")
    ok = ok.assign(Method=_variant_names(ok), pair=ok["edge_dtype"] + " / " + ok["cloud_dtype"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(ok, x="pair", y="acceptance_rate", hue="Method", ax=ax)
    ax.set(xlabel="edge dtype / cloud dtype", ylabel="acceptance rate", ylim=(0, 1.05),
           title="Acceptance by dtype pair")
    fig.tight_layout()
    return fig


def speedups(sp: pd.DataFrame) -> plt.Figure:
    """Fair speed-ups of runs that reproduce the cloud's output, against the baseline of their set-up
    class, with their 95% intervals; disturbed timings hatched. Unfair pairs and runs writing other
    text (the edge alone, the rank rule) are left out (the table lists them)."""
    keep = sp["fair"].astype(bool) & sp["same_output"].astype(bool) & sp["speedup"].notna()
    fair = sp[keep].assign(label=lambda d: d["method"].map(METHOD_NAMES).fillna(d["method"]) + " (" + d["setup"] + ")")
    if fair.empty:
        return _empty("speed-up")
    labels, dtypes = list(dict.fromkeys(fair["label"])), _order(fair["dtype"])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(dtypes))
    colors = sns.color_palette(n_colors=len(dtypes))
    for j, dtype in enumerate(dtypes):
        part = fair[fair["dtype"] == dtype]
        xs = [labels.index(lab) + (j - (len(dtypes) - 1) / 2) * width for lab in part["label"]]
        low = (part["speedup"] - part["speedup_low"]).fillna(0).clip(lower=0)
        high = (part["speedup_high"] - part["speedup"]).fillna(0).clip(lower=0)
        bars = ax.bar(xs, part["speedup"], width, yerr=[low, high], capsize=3, color=colors[j], label=dtype)
        for bar, disturbed in zip(bars, part["timing_disturbed"].astype(bool)):
            if disturbed:
                bar.set_hatch("//")
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.set_xticks(range(len(labels)), labels, rotation=15)
    ax.set(xlabel="", ylabel="speed-up (95% CI)", title="Fair speed-ups vs the baseline of the same set-up "
           "(plain: cloud, optimized: cloud_optimized); hatched: timing disturbed")
    ax.legend(title="dtype")
    fig.tight_layout()
    return fig


def accepted_lengths(lengths: pd.DataFrame, gamma: int | None = None) -> plt.Figure:
    """Histogram of accepted drafts per round (the traces of every drafting method), by method and dtype."""
    if lengths.empty:
        return _empty("accepted length")
    if "method" in lengths:  # one bar colour per method and dtype: prompt lookup's rounds are not the edge's
        names = lengths["method"].map(METHOD_NAMES).fillna(lengths["method"])
        lengths = lengths.assign(dtype=(names + " " + lengths["dtype"].fillna("").astype(str)).str.strip())
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.histplot(lengths, x="accepted", hue="dtype", hue_order=_order(lengths["dtype"]), discrete=True,
                 multiple="dodge", stat="probability", common_norm=False, shrink=0.8, ax=ax)
    ax.set_xticks(range(int(lengths["accepted"].max()) + 1))
    ax.set(xlabel="accepted drafts per round", title="Accepted length per round")
    fig.tight_layout()
    return fig


def drift(drift_df: pd.DataFrame) -> plt.Figure:
    """Top-1 agreement with float32 per prompt, by dtype."""
    if drift_df.empty:
        return _empty("drift")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(drift_df, x="prompt", y="top1_agreement", hue="dtype", ax=ax)
    ax.set(ylim=(0, 1.05), xlabel="", ylabel="top-1 agreement with float32",
           title="Cloud drift vs float32")
    ax.tick_params(axis="x", rotation=30)
    _legend_outside(ax, "dtype")  # the bars reach 1.0: a legend inside the axes covers one
    fig.tight_layout()
    return fig


def _legend_outside(ax: plt.Axes, title: str | None = None, right: bool = False) -> None:
    """The axes' legend outside the axes (below, or to the right for many long names), so that it
    covers no bar."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if not handles:
        return
    if right:
        ax.legend(handles, labels, title=title, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    else:
        ax.legend(handles, labels, title=title, loc="upper center", bbox_to_anchor=(0.5, -0.3),
                  ncol=min(4, len(labels)), fontsize=8, frameon=False)


def category_speedups(table: pd.DataFrame) -> plt.Figure:
    """Fair speed-ups per prompt category and overall (:func:`specnb.report.categories.category_table`), one bar
    per run with its 95% interval; runs writing other text left out, as in :func:`speedups`."""
    keep = table["same_output"].astype(bool) & table["speedup"].notna()
    t = table[keep]
    if t.empty:
        return _empty("speed-up per category")
    categories, runs = list(dict.fromkeys(t["category"])), list(dict.fromkeys(t["cell_id"]))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.25 * len(categories) * len(runs) + 1) + 3, 4))
    width = 0.8 / len(runs)
    colors = sns.color_palette("tab20" if len(runs) > 10 else None, n_colors=len(runs))
    for j, (run, color) in enumerate(zip(runs, colors)):
        part = t[t["cell_id"] == run]
        xs = [categories.index(c) + (j - (len(runs) - 1) / 2) * width for c in part["category"]]
        low = (part["speedup"] - part["speedup_low"]).fillna(0).clip(lower=0)
        high = (part["speedup_high"] - part["speedup"]).fillna(0).clip(lower=0)
        ax.bar(xs, part["speedup"], width, yerr=[low, high], capsize=2, color=color, label=run)
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.set_xticks(range(len(categories)), categories)
    ax.set(xlabel="prompt category", ylabel="speed-up (95% CI)", title="Fair speed-ups per prompt category")
    _legend_outside(ax, "run", right=True)
    fig.tight_layout()
    return fig


def record(rec: dict[str, Any]) -> plt.Figure:
    """One run: tokens/s per prompt, and acceptance per prompt for the speculative methods."""
    rows = pd.DataFrame(rec.get("prompts", []))
    if rows.empty:
        return _empty("prompts")
    pair = rows.get("drafted", pd.Series(dtype=float)).fillna(0).sum() > 0
    fig, axes = plt.subplots(1, 2 if pair else 1, figsize=(9 if pair else 5, 3.2), squeeze=False)
    sns.barplot(rows, x="id", y="tokens_per_s", ax=axes[0, 0], color="tab:blue")
    axes[0, 0].set(xlabel="", ylabel="tokens / s", title="Tokens per second")
    if pair:
        sns.barplot(rows, x="id", y="acceptance_rate", ax=axes[0, 1], color="tab:green")
        axes[0, 1].set(xlabel="", ylabel="acceptance", ylim=(0, 1.05), title="Acceptance")
    for ax in axes.flat:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def bench(record: dict[str, Any] | None) -> plt.Figure:
    """Tokens/s of every method of one ``specnb bench`` record (horizontal bars, medians)."""
    if not record:
        return _empty("specnb bench")
    df = pd.DataFrame(record["methods"])
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(df) + 1))
    sns.barplot(df, y="label", x="tokens_per_s", hue="method", dodge=False, ax=ax)
    ax.set(ylabel="", xlabel="tokens / s (all tokens / all time)", title="specnb bench: every method, one process, interleaved")
    fig.tight_layout()
    return fig


def link_speedups(sp: pd.DataFrame) -> plt.Figure:
    """Speed-up over cloud-only streaming vs RTT, one line per method (edge-cloud at each gamma), with
    95% intervals (:func:`specnb.study.rtt.speedups`)."""
    if sp.empty:
        return _empty("speed-up vs RTT")
    fig, ax = plt.subplots(figsize=(8, 4))
    for (method, gamma), part in sp.groupby(["method", sp["gamma"].fillna(0)], sort=True):
        part = part.sort_values("rtt_ms")
        base, _, schedule = method.partition(":")  # edge_cloud:adaptive: a draft-length schedule
        name = _methods.LINK_METHODS[base].label + (f" ({schedule})" if schedule else "") + (f" g={int(gamma)}" if gamma else "")
        ax.errorbar(part["rtt_ms"], part["speedup"], yerr=[part["speedup"] - part["low"], part["high"] - part["speedup"]],
                    marker="o", capsize=3, label=name)
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.set(xlabel="RTT (ms)", ylabel="x cloud-only streamed (95% CI)",
           title="Speed-up over cloud-only generation across the same link")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig
