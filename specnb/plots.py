"""Seaborn figures for the notebooks; each function returns a matplotlib Figure.

Titles are English only (CJK fonts are often missing); the notebooks caption each figure
in both languages.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .report import DTYPE_ORDER, METHOD_NAMES


def _order(values: pd.Series) -> list[str]:
    present = list(dict.fromkeys(values.dropna()))
    return [d for d in DTYPE_ORDER if d in present] + [d for d in present if d not in DTYPE_ORDER]


def _empty(title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}: no data", ha="center", va="center")
    return fig


def tokens_per_s(df: pd.DataFrame) -> plt.Figure:
    """Tokens/s by method x dtype (ok cells)."""
    ok = df[df["status"] == "ok"].assign(Method=lambda d: d["method"].map(METHOD_NAMES))
    if ok.empty:
        return _empty("tokens/s")
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.barplot(ok, x="Method", y="tokens_per_s", hue="dtype", hue_order=_order(ok["dtype"]), ax=ax)
    ax.set(xlabel="", ylabel="tokens / s", title="Tokens per second by method and dtype")
    ax.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    return fig


def acceptance(df: pd.DataFrame) -> plt.Figure:
    """Acceptance rate by cloud dtype, one bar per edge dtype, for the speculative methods."""
    ok = df[(df["status"] == "ok") & df["method"].isin(["speculative", "hf_assisted"])]
    if ok.empty:
        return _empty("acceptance")
    ok = ok.assign(Method=ok["method"].map(METHOD_NAMES), pair=ok["edge_dtype"] + " / " + ok["cloud_dtype"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(ok, x="pair", y="acceptance_rate", hue="Method", ax=ax)
    ax.set(xlabel="edge dtype / cloud dtype", ylabel="acceptance rate", ylim=(0, 1.05),
           title="Acceptance by dtype pair")
    fig.tight_layout()
    return fig


def speedups(sp: pd.DataFrame) -> plt.Figure:
    """Fair speed-ups over cloud_optimized (same cloud dtype and device class); unfair ones are left out."""
    fair = sp[sp["fair"].astype(bool)].assign(Method=lambda d: d["method"].map(METHOD_NAMES))
    if fair.empty:
        return _empty("speed-up")
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.barplot(fair, x="Method", y="speedup", hue="dtype", hue_order=_order(fair["dtype"]), ax=ax)
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.set(xlabel="", ylabel="x cloud_optimized", title="Fair speed-ups vs cloud_optimized")
    ax.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    return fig


def accepted_lengths(lengths: pd.DataFrame, gamma: int | None = None) -> plt.Figure:
    """Histogram of accepted drafts per round (the speculative traces), by dtype."""
    if lengths.empty:
        return _empty("accepted length")
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
    ax.set(ylabel="", xlabel="tokens / s (median)", title="specnb bench: every method, one process, interleaved")
    fig.tight_layout()
    return fig
