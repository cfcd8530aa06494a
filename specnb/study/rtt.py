"""The edge-cloud study across links: every method over the same emulated links, and its summary.

:func:`link_grid` runs, interleaved (per repetition and prompt: each RTT in a shuffled order, the
methods in a shuffled order), the four ways to answer a prompt: ``edge`` alone (no link),
``cloud`` alone streamed (RTT once), ``server_speculative`` (both models on the server, RTT once;
needs ``specnb serve --draft``) and ``edge_cloud`` speculation at each gamma (RTT every round). Each
row also carries ``predicted_wall_s``: :func:`specnb.link.predict` from the same work's run on the
first RTT of the list, so prediction is checked against every live run.

The summaries take those rows: :func:`speedups` (vs cloud-only over the same link, with the
bootstrap intervals of :mod:`specnb.measure.stats`), :func:`best_gammas`, :func:`prediction_errors`,
:func:`bytes_per_token` and :func:`crossover_rtt` (the RTT past which cloud-only streaming wins).

What these measured on the embedded pair, and when: docs/link.md.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import pandas as pd

from ..decode.adaptive import Controller
from ..decode.loops import autoregressive, speculative
from ..measure.stats import ratio_interval
from ..link.client import RemoteCloud
from ..link.emulate import Link
from ..link.predict import predict

KEPT = ("new_tokens", "wall_s", "tokens_per_s", "ttft_s", "rounds", "alpha", "draft_s", "link_s", "server_s",
        "emulated_s", "bytes_up", "bytes_down", "round_trips", "round_link_s", "round_emulated_s", "round_bytes_up",
        "round_bytes_down", "round_server_s", "edge_calls", "edge_idle_share", "ahead", "ahead_rounds",
        "ahead_void", "ahead_kept", "ahead_dropped", "lead", "lead_tokens")


def link_grid(edge: Any, cloud: RemoteCloud, prompts: list[str] | list[list[int]], *, rtts_ms=(0, 5, 20, 50), gammas=(1, 2, 4, 8),
              max_new_tokens: int = 64, bandwidth_mbps: float | None = None, jitter_ms: float = 0.0, reps: int = 2,
              server_gamma: int | None = 4, seed: int = 0, progress: Callable[[str], None] | None = None,
              schedules: tuple[str, ...] = (), ahead: bool | int = False, lead: bool = False) -> pd.DataFrame:
    """One row per generation (greedy): method, gamma, rtt_ms, rep, prompt, the metrics of :data:`KEPT`,
    ``drafted`` (draft length per round), ``predicted_wall_s`` (from the run at ``rtts_ms[0]``).
    ``server_gamma=None`` skips server-side speculation. ``schedules``: draft-length schedules run as
    methods ``edge_cloud:<schedule>`` with gamma = ``max(gammas)`` (their cap); ``adaptive`` keeps one
    controller per link over the run (:mod:`specnb.decode.adaptive`). ``ahead``: each gamma also runs as
    method ``edge_cloud:ahead``, the edge drafting ahead (``speculative(..., ahead=ahead)``,
    :mod:`specnb.decode.ahead`); its rows carry ``edge_idle_share`` and the rounds kept and dropped, as
    every speculative row carries its idle share. ``lead``: each gamma also runs as ``edge_cloud:lead``, the cloud
    decoding its own tokens while it waits (``speculative(..., lead=True)``, :mod:`specnb.decode.lead`), and with
    ``ahead`` as ``edge_cloud:ahead+lead``; their rows carry ``lead_tokens`` and no prediction (the number of rounds
    depends on the link). An entry of ``rtts_ms``
    may be a :class:`specnb.link.profile.LinkProfile` (a changing link; its rows carry its label and
    no prediction). ``prompts``: texts, or token ids already rendered (:class:`specnb.chat.Prompting`,
    as the study notebook does)."""
    order = random.Random(seed)
    rows: list[dict] = []
    controllers: dict[str, Controller] = {}  # the adaptive schedule's, one per link, carried over the run
    for rep in range(reps):
        for pi, prompt in enumerate(prompts):
            g = autoregressive(edge, prompt, max_new_tokens)
            rows.append(_row(g, "edge", None, None, rep, pi))
            for rtt in order.sample(list(rtts_ms), len(rtts_ms)):
                changing = hasattr(rtt, "at") and not isinstance(rtt, Link)  # a LinkProfile
                remote = cloud.with_link(rtt.with_seed(seed + rep) if changing else Link(rtt, bandwidth_mbps, jitter_ms, seed=seed + rep))
                rtt = rtt.label if changing else rtt
                runs = [("cloud", None, lambda r=remote, p=prompt: autoregressive(r, p, max_new_tokens))]
                if server_gamma:
                    runs.append(("server_speculative", server_gamma,
                                 lambda r=remote, p=prompt: r.server_speculative(p, max_new_tokens, gamma=server_gamma)))
                runs += [("edge_cloud", gm, lambda r=remote, p=prompt, gm=gm: speculative(edge, r, p, max_new_tokens, gamma=gm))
                         for gm in gammas]
                if ahead:
                    runs += [("edge_cloud:ahead", gm, lambda r=remote, p=prompt, gm=gm:
                              speculative(edge, r, p, max_new_tokens, gamma=gm, ahead=ahead)) for gm in gammas]
                if lead:
                    runs += [(f"edge_cloud:{'ahead+' if a else ''}lead", gm, lambda r=remote, p=prompt, gm=gm, a=a:
                              speculative(edge, r, p, max_new_tokens, gamma=gm, ahead=a, lead=True))
                             for a in ((False, ahead) if ahead else (False,)) for gm in gammas]
                if str(rtt) not in controllers:
                    controllers[str(rtt)] = Controller()
                ctl = controllers[str(rtt)]
                runs += [(f"edge_cloud:{sc}", max(gammas), lambda r=remote, p=prompt, sc=sc, c=ctl:
                          speculative(edge, r, p, max_new_tokens, gamma=max(gammas), schedule=sc,
                                      controller=c if sc == "adaptive" else None)) for sc in schedules]
                for method, gamma, fn in order.sample(runs, len(runs)):
                    g = fn()
                    rows.append(_row(g, method, gamma, rtt, rep, pi))
            if progress:
                progress(f"rep {rep + 1}/{reps}, prompt {pi + 1}/{len(prompts)} done")
    df = pd.DataFrame(rows)
    df["predicted_wall_s"] = predicted(df, rtts_ms[0], bandwidth_mbps, jitter_ms)
    return df


def predicted(df: pd.DataFrame, base_rtt: float, bandwidth_mbps: float | None = None, jitter_ms: float = 0.0) -> pd.Series:
    """Each row's wall time as :func:`predict` forecasts it from the same work's run at ``base_rtt``."""
    def key(r: dict) -> tuple:
        return r["method"], 0 if pd.isna(r["gamma"]) else int(r["gamma"]), r["rep"], r["prompt"]

    base = {key(r): r for r in df[df.rtt_ms == base_rtt].to_dict("records")}
    out = []
    for r in df.to_dict("records"):
        b = base.get(key(r))
        out.append(None if b is None or r["method"] == "edge" or isinstance(r["rtt_ms"], str) or r["method"].endswith("lead") else
                   predict(_Run(b), Link(r["rtt_ms"], bandwidth_mbps, jitter_ms)))
    return pd.Series(out, index=df.index, dtype=float)


class _Run:
    """A row seen as a generation: what :func:`predict` reads is its ``metrics``."""

    def __init__(self, row: dict):
        self.metrics = {k: v for k, v in row.items()
                        if isinstance(v, (list, tuple)) or not (k.startswith("round_") and k != "round_trips")}
        self.metrics["drafted"] = row.get("drafted_total")
        if not self.metrics.get("ahead") or pd.isna(self.metrics.get("ahead")):
            self.metrics.pop("ahead", None)


def _row(g: Any, method: str, gamma: int | None, rtt: float | None, rep: int, prompt: int) -> dict:
    return {"method": method, "gamma": gamma, "rtt_ms": rtt, "rep": rep, "prompt": prompt,
            **{k: g.metrics.get(k) for k in KEPT}, "drafted_total": g.metrics.get("drafted"),
            "tokens": tuple(g.tokens), "drafted": tuple(g.drafted_trace or ())}


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    """Speed of each method (and gamma) over cloud-only streaming across the same link: value and 95% interval."""
    out = []
    for rtt in sorted(df["rtt_ms"].dropna().unique(), key=_rtt_order):
        cloud = _entries(df[(df.method == "cloud") & (df.rtt_ms == rtt)])
        others = df[(df.method != "cloud") & ((df.rtt_ms == rtt) | df.rtt_ms.isna())]
        for (method, gamma), part in others.groupby(["method", others.gamma.fillna(0)]):
            iv = ratio_interval(_entries(part), cloud, paired_reps=True)
            out.append({"rtt_ms": rtt, "method": method, "gamma": int(gamma) or None, "speedup": iv.value,
                        "low": iv.low, "high": iv.high, "tokens_per_s": part.new_tokens.sum() / part.wall_s.sum()})
    return pd.DataFrame(out)


def _rtt_order(rtt: float | str) -> tuple:
    """Fixed RTTs by value, then changing links (labels) by name."""
    return (1, 0.0, rtt) if isinstance(rtt, str) else (0, float(rtt), "")


def against_best_fixed(df: pd.DataFrame) -> pd.DataFrame:
    """Per link: each method's speed over the best fixed gamma of edge-cloud speculation on that link
    (chosen after the fact, the strongest baseline), with the paired bootstrap interval, and the
    drafted length per round (mean, 10th / 50th / 90th percentile)."""
    out = []
    for rtt in sorted(df["rtt_ms"].dropna().unique(), key=_rtt_order):
        here = df[df.rtt_ms == rtt]
        spec = here[here.method.str.startswith("edge_cloud")]
        fixed = spec[spec.method == "edge_cloud"]
        speeds = fixed.groupby("gamma").apply(lambda x: x.new_tokens.sum() / x.wall_s.sum(), include_groups=False)
        best = fixed[fixed.gamma == speeds.idxmax()]
        for (method, gamma), part in spec.groupby(["method", "gamma"]):
            iv = ratio_interval(_entries(part), _entries(best), paired_reps=True)
            lengths = pd.Series([n for t in part.drafted for n in t], dtype=float)
            out.append({"link": rtt, "method": method, "gamma": int(gamma), "tokens_per_s": part.new_tokens.sum() / part.wall_s.sum(),
                        "vs_best_fixed": iv.value, "low": iv.low, "high": iv.high, "best_fixed_gamma": int(speeds.idxmax()),
                        "drafted_mean": lengths.mean(), "drafted_p10": lengths.quantile(0.1),
                        "drafted_p50": lengths.median(), "drafted_p90": lengths.quantile(0.9)})
    return pd.DataFrame(out)


def _entries(part: pd.DataFrame) -> list[dict]:
    return part[["rep", "prompt", "new_tokens", "wall_s"]].to_dict("records")


def best_gammas(df: pd.DataFrame) -> pd.DataFrame:
    """Per RTT: the gamma of the fastest edge-cloud speculation, and its speed-up over cloud-only."""
    s = speedups(df)
    s = s[s.method == "edge_cloud"]
    return s.loc[s.groupby("rtt_ms").speedup.idxmax(), ["rtt_ms", "gamma", "speedup", "low", "high"]].reset_index(drop=True)


def prediction_errors(df: pd.DataFrame) -> pd.DataFrame:
    """Per RTT and method: predicted vs live wall time, relative error of the totals and the worst single run."""
    d = df[df.method != "edge"].assign(err=lambda x: x.predicted_wall_s / x.wall_s - 1)
    return d.groupby(["rtt_ms", "method"]).apply(
        lambda x: pd.Series({"predicted_s": x.predicted_wall_s.sum(), "live_s": x.wall_s.sum(),
                             "error": x.predicted_wall_s.sum() / x.wall_s.sum() - 1, "worst_run": x.err.abs().max()}),
        include_groups=False).reset_index()


def bytes_per_token(df: pd.DataFrame) -> pd.DataFrame:
    """Bytes up and down per generated token, per method and gamma (all RTTs: bytes do not depend on it)."""
    d = df[df.method != "edge"]
    g = d.groupby(["method", d.gamma.fillna(0).astype(int)])
    return pd.DataFrame({"up_per_token": g.bytes_up.sum() / g.new_tokens.sum(),
                         "down_per_token": g.bytes_down.sum() / g.new_tokens.sum(),
                         "round_trips_per_token": g.round_trips.sum() / g.new_tokens.sum()}).reset_index()


def crossover_rtt(df: pd.DataFrame, max_ms: float = 1000.0, step_ms: float = 0.5) -> float | None:
    """The smallest RTT (ms) at which cloud-only streaming is predicted faster than edge-cloud speculation at
    its best gamma, from the runs at the first RTT (by :func:`specnb.link.predict`, totals over all runs).
    None when speculation still wins at ``max_ms``."""
    base = df[df.rtt_ms == df.rtt_ms.dropna().min()]
    spec = base[base.method == "edge_cloud"]
    cloud = base[base.method == "cloud"]
    cloud_tokens = cloud.new_tokens.sum()

    def total(part: pd.DataFrame, rtt: float) -> float:
        # predict() per run needs the Generation; rows keep what it reads: wall, link, bytes per round
        return float(sum(_predict_row(r, rtt) for r in part.itertuples()))

    rtt = 0.0
    while rtt <= max_ms:
        cloud_speed = cloud_tokens / total(cloud, rtt)
        best = max(part.new_tokens.sum() / total(part, rtt) for _, part in spec.groupby("gamma"))
        if cloud_speed >= best:
            return rtt
        rtt += step_ms
    return None


def _predict_row(r: Any, rtt_ms: float) -> float:
    """:func:`predict` from a row (no per-round bytes): each round trip pays the new RTT instead of the old."""
    return r.wall_s - r.emulated_s + r.round_trips * Link(rtt_ms).expected_round_s(0, 0)


def bound_table(df: pd.DataFrame) -> pd.DataFrame:
    """The latency-extended bound beside the measurement, per RTT and gamma of edge-cloud speculation
    (and of ``edge_cloud:ahead``, with the bound of drafting ahead; of ``edge_cloud:lead``, with the model of the
    cloud's lead, :func:`specnb.decode.schedule.lead_rate`, its own step being the cloud step).

    S = (1 - a^(g+1)) / ((1 - a)(g c + v + r)) (:func:`specnb.link.speedup_bound`; with ``ahead`` its
    S_ahead) with, from the same rows: a = the runs' alpha (maximum likelihood, pooled), c = edge step /
    cloud step (the edge alone vs cloud-only streaming at the lowest RTT, per token), v = the server's time
    per round in cloud steps, r = the link's time per round (measured, emulated delay included) in cloud
    steps. Rounds drafted ahead overlap, so their measured link time holds the wait behind earlier rounds:
    their r is that of the plain rounds at the same RTT (or the RTT alone when there are none).
    """
    from ..link.predict import speedup_bound

    base = df[df.rtt_ms == df.rtt_ms.dropna().min()]
    cloud, edge = base[base.method == "cloud"], df[df.method == "edge"]
    cloud_step = cloud.wall_s.sum() / cloud.new_tokens.sum()
    c = (edge.wall_s.sum() / edge.new_tokens.sum()) / cloud_step
    measured = speedups(df).set_index(["rtt_ms", "method", "gamma"])
    out = []
    spec = df[df.method.isin(["edge_cloud", "edge_cloud:ahead", "edge_cloud:lead"])]
    for (method, rtt, gamma), part in spec.groupby(["method", "rtt_ms", "gamma"]):
        rounds = part.rounds.sum()
        alpha = float(part.alpha.mean())
        v = part.server_s.sum() / rounds / cloud_step
        ahead = 0 if method != "edge_cloud:ahead" else int(part.ahead.iloc[0])
        plain = spec[(spec.method == "edge_cloud") & (spec.rtt_ms == rtt)]
        same = plain[plain.gamma == gamma]
        if method == "edge_cloud:lead":  # a lead round is often answered without a verify: v and r of plain rounds
            if not len(same):
                continue
            v = same.server_s.sum() / same.rounds.sum() / cloud_step
            r = same.link_s.sum() / same.rounds.sum() / cloud_step
        elif not ahead:
            r = part.link_s.sum() / rounds / cloud_step
        elif len(plain):
            r = plain.link_s.sum() / plain.round_trips.sum() / cloud_step
        else:
            r = float(rtt) / 1e3 / cloud_step
        s = speedup_bound(alpha, int(gamma), c, v, r, ahead, lead=1.0 if method == "edge_cloud:lead" else None)
        m = measured.loc[(rtt, method, int(gamma))]
        out.append({"method": method, "rtt_ms": rtt, "gamma": int(gamma), "alpha": alpha, "c": c, "v": v, "r": r,
                    "bound": s, "measured": m.speedup, "low": m.low, "high": m.high, "measured_over_bound": m.speedup / s})
    return pd.DataFrame(out)
