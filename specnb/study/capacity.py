"""The capacity study: N edges against one ``specnb serve``, with and without batched verification.

Edge-cloud speculation pays a round trip per round, so for one user it wins only at small RTTs; its
case is *capacity*: the edges draft, so one verifier serves more users at the same per-user rate.
:func:`run` loads one local server (127.0.0.1) with N concurrent users of three methods:

* ``edge_cloud``: edge-cloud speculation. For large N the edges are *replayed*
  (:mod:`specnb.study.replay`): each plays back a real edge run of its prompt (its drafts after its
  drafting times, sleeping), so 32 edges cost the machine sleeps, not 32 edge models; for the N in
  ``real_ns`` the same runs are also made with real edges (the edge model drafting in threads of this
  process) and both goodputs are kept (:func:`replay_check`);
* ``cloud``: cloud-only streaming, batched autoregressive decoding on the server (each token a
  round with an empty draft);
* ``server_speculative``: server-side speculation (``serve --draft``): the server drafts and verifies; on a
  batching server its verify rounds join the cloud's batches and its draft steps the draft model's
  (:mod:`specnb.link.server_speculation`).

Each user gets its own emulated link (``Link(rtt_ms)``) and its own prompt (round robin over the
prompts, so rounds are ragged as real traffic is). A *run* is one (method, policy, RTT, schedule, gamma,
N, repetition): N users start together, each times its own generation.

Edge-cloud speculation runs under each draft-length schedule of ``schedules`` (``speculative``'s:
``constant`` by default; ``adaptive`` and the others with ``gamma`` as the cap). A replayed edge plays
back the lengths its real edge chose alone against the server: a schedule that prices measured times
(``cost``, ``adaptive``: :data:`TIMED`) is recorded on each RTT's emulated link, so its lengths follow
the link, but not the load of N users, which only the real edges of ``real_ns`` meet (each starts from a
copy of the controller the recordings taught). Server-side speculation and cloud-only streaming keep
``constant``.

Summaries (pure functions of the rows, unit-tested):

* goodput = all users' new tokens / (last end - first start) of a run; per-edge rate = an edge's new
  tokens / its own wall time; 95% percentile-bootstrap intervals: goodput over repetitions, the
  mean per-edge rate over (repetition x edge) entries (:func:`specnb.measure.stats.mean_interval`);
* the p90 edge's rate: the rate 90% of edges reach (the 10th percentile of per-edge rates, pooled
  over repetitions) (:func:`p90_edge_rate`);
* Jain's fairness index over a run's edges, J = (sum x)^2 / (n sum x^2), 1 = all equal, 1/n = one edge
  gets everything (:func:`jain`), averaged over repetitions;
* capacity at an SLO = the largest tested N such that every tested N' <= N has a p90 edge rate >= SLO
  (:func:`capacity`; 0 when N = 1 misses it);
* the bound of a saturated, unbatched verifier (:func:`bound`): each edge-cloud user's cycle is
  gamma t_draft + t_verify (+ the link's r), of which the verifier is busy t_verify, so it sustains
  B = 1 + (gamma t_draft + r) / t_verify users at the solo per-user rate, where a cloud-only user
  keeps it busy all the time (B = 1); the bound without the link has r = 0, the bound "with the link" r = RTT +
  the measured transport time per round. Measured beside it (:func:`sustained`): S = goodput at the
  largest N / the per-edge rate at N = 1, the users at the solo rate the saturated server delivers,
  and S(edge_cloud) / S(cloud), the measured capacity gain, over B.
"""

from __future__ import annotations

import contextlib
import copy
import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from ..decode.adaptive import Controller
from ..decode.loops import speculative
from ..decode.schedule import SCHEDULES
from ..measure.stats import mean_interval
from ..models import ModelSpec, load
from ..link.client import connect
from ..link.emulate import Link
from ..link.loopback import local_server
from .replay import RecordingDrafter, ReplayedEdge

SERVED = ("edge_cloud", "cloud", "server_speculative")  # the LINK_METHODS this study runs against a server (specnb.study.methods)
POLICIES = ("none", "dynamic", "wait")
# one configuration; rows add rep, edge. gamma 0: no drafts (cloud-only); schedule: edge-cloud's draft-length
# rule (the other methods: constant)
KEYS = ["method", "policy", "rtt_ms", "schedule", "gamma", "n"]
TIMED = ("cost", "adaptive")  # schedules whose lengths follow the times they measure: recorded per RTT
HANG_S = 600.0


# ---------------------------------------------------------------------------- pure summaries


def jain(rates) -> float:
    """Jain's fairness index (sum x)^2 / (n * sum x^2) of non-negative rates: 1 when all are equal,
    1/n when one gets everything; NaN for no rates or all zero."""
    x = np.asarray(list(rates), dtype=float)
    if x.size == 0 or not np.all(x >= 0):
        raise ValueError(f"Jain's index needs one or more non-negative rates, got {x.tolist()}")
    sq = float((x ** 2).sum())
    return float("nan") if sq == 0 else float(x.sum() ** 2 / (x.size * sq))


def p90_edge_rate(rates) -> float:
    """The rate 90% of edges reach or beat: the 10th percentile (linear interpolation) of per-edge rates."""
    x = np.asarray(list(rates), dtype=float)
    if x.size == 0:
        raise ValueError("no per-edge rates")
    return float(np.quantile(x, 0.10))


def capacity(p90_by_n: dict[int, float], slo: float) -> int:
    """The largest tested N whose p90 edge rate, and that of every smaller tested N, meets ``slo``
    (tokens/s); 0 when the smallest N misses it. A noisy curve that dips and recovers is cut at the dip."""
    if slo <= 0:
        raise ValueError(f"the SLO must be a rate > 0 tokens/s, got {slo}")
    best = 0
    for n in sorted(p90_by_n):
        if not p90_by_n[n] >= slo:
            break
        best = n
    return best


def capacity_interpolated(p90_by_n: dict[int, float], slo: float) -> float:
    """Where the p90 edge rate crosses ``slo`` between the tested N (which double): :func:`capacity`'s N
    and the next tested N, interpolating the rate linearly in log2 N. The tested N when the next one
    also meets the SLO or none follows (a lower bound then), 0 when the smallest N misses it. A
    reading aid for a coarse grid of N, not a measurement: the tables quote it beside :func:`capacity`."""
    n0 = capacity(p90_by_n, slo)
    ns = sorted(p90_by_n)
    later = [n for n in ns if n > n0]
    if n0 == 0 or not later:
        return float(n0)
    n1 = later[0]
    r0, r1 = p90_by_n[n0], p90_by_n[n1]
    if not r1 < slo or not r0 > r1:
        return float(n0)
    x = np.log2(n0) + (r0 - slo) / (r0 - r1) * (np.log2(n1) - np.log2(n0))
    return float(2.0 ** x)


def bound(gamma: int, t_draft: float, t_verify: float, link_s: float = 0.0) -> float:
    """B = 1 + (gamma * t_draft + link_s) / t_verify: users at their solo rate one saturated, unbatched
    verifier sustains with edge-cloud speculation, relative to cloud-only users (each keeps it busy).
    ``t_draft``: seconds to draft one token at the edge; ``t_verify``: the server's seconds per verify
    round; ``link_s``: the link's seconds per round (``link_s = 0``: the bound without the link)."""
    if gamma < 0 or t_draft < 0 or link_s < 0 or not t_verify > 0:
        raise ValueError(f"need gamma, t_draft, link_s >= 0 and t_verify > 0, got {gamma}, {t_draft}, {link_s}, {t_verify}")
    return 1.0 + (gamma * t_draft + link_s) / t_verify


def sustained(goodput_at_max_n: float, solo_rate: float) -> float:
    """Users at the solo per-user rate that the server delivers when loaded: goodput / solo rate."""
    if not solo_rate > 0:
        raise ValueError(f"the solo rate must be > 0, got {solo_rate}")
    return goodput_at_max_n / solo_rate


# ---------------------------------------------------------------------------- tables from rows


def with_schedule(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``schedule`` column: records made before the study took schedules ran ``constant``."""
    return df if "schedule" in df.columns else df.assign(schedule="constant")


def runs_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run (configuration x repetition): goodput, Jain's index, edges ok and failed."""
    rows = with_schedule(rows)
    out = []
    for key, part in rows.groupby(KEYS + ["rep", "edges"], sort=True):
        ok = part[part.ok]
        span = ok.end_s.max() - ok.start_s.min() if len(ok) else float("nan")
        out.append(dict(zip(KEYS + ["rep", "edges"], key)) | {
            "goodput": ok.new_tokens.sum() / span if len(ok) else float("nan"),
            "jain": jain(ok.rate) if len(ok) else float("nan"), "ok": len(ok), "failed": int((~part.ok).sum()),
            "mean_batch": part.mean_batch.iloc[0]})
    return pd.DataFrame(out)


def summary(rows: pd.DataFrame, *, real: bool = False) -> pd.DataFrame:
    """Per configuration: goodput and mean per-edge rate with 95% intervals, the p90 edge's rate,
    Jain's index (mean over repetitions), failed edges, the mean batch size, the mean drafted length per
    round (what a schedule chose; NaN for cloud-only and for rows recorded before it was kept). ``real``:
    the runs of real edges (edge-cloud at ``real_ns`` only) instead of the others (replayed edges,
    cloud-only, server-side)."""
    rows = with_schedule(rows[(rows.edges == "real") == real])
    runs = {key: part for key, part in runs_table(rows).groupby(KEYS, sort=True)}
    out = []
    for key, part in rows.groupby(KEYS, sort=True):
        ok, rr = part[part.ok], runs[key]
        g, g_lo, g_hi = mean_interval(rr.goodput.dropna()) if rr.goodput.notna().any() else (np.nan,) * 3
        r, r_lo, r_hi = mean_interval(ok.rate) if len(ok) else (np.nan,) * 3
        out.append(dict(zip(KEYS, key)) | {
            "goodput": g, "goodput_low": g_lo, "goodput_high": g_hi, "edge_rate": r, "edge_rate_low": r_lo,
            "edge_rate_high": r_hi, "p90_edge_rate": p90_edge_rate(ok.rate) if len(ok) else np.nan,
            "jain": float(rr.jain.mean()), "reps": len(rr), "failed": int(rr.failed.sum()),
            "mean_batch": float(rr.mean_batch.mean()),
            "drafted_per_round": float(ok.drafted_per_round.mean()) if "drafted_per_round" in ok and len(ok) else np.nan})
    return pd.DataFrame(out)


def capacities(summ: pd.DataFrame, slo: float) -> pd.DataFrame:
    """Capacity at ``slo`` per (method, policy, RTT, schedule, gamma): :func:`capacity` and
    :func:`capacity_interpolated`."""
    out, keys = [], ["method", "policy", "rtt_ms", "schedule", "gamma"]
    for key, part in with_schedule(summ).groupby(keys, sort=True):
        by_n = dict(zip(part.n.astype(int), part.p90_edge_rate))
        out.append(dict(zip(keys, key)) | {
            "slo": slo, "capacity": capacity(by_n, slo), "capacity_interpolated": capacity_interpolated(by_n, slo)})
    return pd.DataFrame(out)


def capacity_with_without_batching(caps: pd.DataFrame) -> pd.DataFrame:
    """Per (method, RTT): the capacity under each policy, at its best schedule and gamma (a column per policy)."""
    best = caps.groupby(["method", "rtt_ms", "policy"]).capacity.max().reset_index()
    return best.pivot_table(index=["method", "rtt_ms"], columns="policy", values="capacity").reset_index()


def best_per_n(summ: pd.DataFrame) -> pd.DataFrame:
    """Per (method, RTT, N): the policy, schedule and gamma with the highest p90 edge rate (ties: higher
    goodput)."""
    ranked = with_schedule(summ).sort_values(["p90_edge_rate", "goodput"], ascending=False)
    best = ranked.groupby(["method", "rtt_ms", "n"], sort=True).head(1)
    return best[["method", "rtt_ms", "n", "policy", "schedule", "gamma", "p90_edge_rate", "goodput"]].sort_values(
        ["method", "rtt_ms", "n"]).reset_index(drop=True)


def bound_table(summ: pd.DataFrame, times: pd.DataFrame) -> pd.DataFrame:
    """Per (policy, RTT, gamma): S(edge_cloud), S(cloud) (:func:`sustained`), their ratio (the
    measured capacity gain at the solo rate), the bound B from the measured t_draft and t_verify
    (without and with the link: the emulated RTT plus the measured transport time per round), and
    measured / B. The bound is for an unbatched
    verifier: under batching, a ratio above 1 is batching's own gain. It is for a fixed gamma: the
    ``constant`` schedule's rows only."""
    out = []
    summ, times = with_schedule(summ), with_schedule(times)
    co = summ[summ.method == "cloud"]
    for _, t in times[times.schedule == "constant"].iterrows():
        fixed = summ[(summ.method == "edge_cloud") & (summ.schedule == "constant") & (summ.gamma == t.gamma)]
        for (policy, rtt), part in fixed.groupby(["policy", "rtt_ms"]):
            ref = co[(co.policy == policy) & (co.rtt_ms == rtt)]
            if part.n.min() != 1 or ref.empty or ref.n.min() != 1:
                continue
            top = part.n.max()
            s_ec = sustained(part[part.n == top].goodput.iloc[0], part[part.n == 1].edge_rate.iloc[0])
            s_co = sustained(ref[ref.n == ref.n.max()].goodput.iloc[0], ref[ref.n == 1].edge_rate.iloc[0])
            b0 = bound(int(t.gamma), t.t_draft_s, t.t_verify_s)
            b_link = bound(int(t.gamma), t.t_draft_s, t.t_verify_s, rtt / 1000.0 + t.get("t_link_s", 0.0))
            out.append({"policy": policy, "rtt_ms": rtt, "gamma": int(t.gamma), "max_n": int(top),
                        "t_draft_ms": 1000 * t.t_draft_s, "t_verify_ms": 1000 * t.t_verify_s,
                        "t_link_ms": 1000 * t.get("t_link_s", 0.0),
                        "sustained_edge_cloud": s_ec, "sustained_cloud_only": s_co, "measured_gain": s_ec / s_co,
                        "bound": b0, "bound_with_link": b_link, "measured_over_bound": s_ec / s_co / b0,
                        "measured_over_bound_with_link": s_ec / s_co / b_link})
    return pd.DataFrame(out)


def goodput_gain(summ: pd.DataFrame, over: str = "cloud") -> pd.DataFrame:
    """Goodput of each method over ``over``'s at the same policy, RTT and N (edge methods at their best
    schedule and gamma)."""
    best = summ.groupby(["method", "policy", "rtt_ms", "n"]).goodput.max().reset_index()
    ref = best[best.method == over].rename(columns={"goodput": "ref"}).drop(columns="method")
    both = best[best.method != over].merge(ref, on=["policy", "rtt_ms", "n"])
    return both.assign(gain=both.goodput / both.ref).drop(columns="ref")


def replay_check(rows: pd.DataFrame) -> pd.DataFrame:
    """Replayed against real edges, same configurations: goodput of each (mean over repetitions) and
    replayed / real (1: the replay loads the server as real edges do; the real edges also compete with
    the server for this machine's cores, the replayed ones do not)."""
    runs = runs_table(rows[rows.method == "edge_cloud"])
    real = runs[runs.edges == "real"]
    if real.empty:
        return pd.DataFrame(columns=KEYS + ["real", "replayed", "replayed_over_real"])
    keys = real.groupby(KEYS).goodput.mean().rename("real").reset_index()
    rep = runs[runs.edges == "replayed"].groupby(KEYS).goodput.mean().rename("replayed").reset_index()
    both = keys.merge(rep, on=KEYS)
    return both.assign(replayed_over_real=both.replayed / both.real)


# ---------------------------------------------------------------------------- running it


@dataclass
class Config:
    """What :func:`run` measures (the notebook's parameters; ``params/capacity.yaml``)."""

    edge_model: str = "zoo:tiny-edge"
    cloud_model: str = "zoo:tiny-cloud"
    dtype: str = "float32"
    threads: int = 1  # the server's model calls (and the real edges')
    prompts: list[str] = field(default_factory=lambda: ["def parse(text):", "class Stack:"])
    ns: list[int] = field(default_factory=lambda: [1, 2, 4])
    rtts_ms: list[float] = field(default_factory=lambda: [0.0, 20.0])
    methods: list[str] = field(default_factory=lambda: list(SERVED))
    policies: list[str] = field(default_factory=lambda: ["none", "dynamic"])
    gammas: list[int] = field(default_factory=lambda: [3])
    schedules: list[str] = field(default_factory=lambda: ["constant"])  # edge-cloud's draft-length rules; gamma: the cap
    max_new_tokens: int = 24
    reps: int = 1
    real_ns: list[int] = field(default_factory=lambda: [1, 2])
    batch_wait_ms: float = 2.0
    seed: int = 0

    def check(self) -> "Config":
        bad = [m for m in self.methods if m not in SERVED] + [p for p in self.policies if p not in POLICIES]
        if bad:
            raise ValueError(f"unknown methods / policies {bad}: choose from {SERVED} and {POLICIES}")
        if not self.ns or min(self.ns) < 1 or not self.prompts or self.reps < 1 or self.max_new_tokens < 1:
            raise ValueError("need ns >= 1, at least one prompt, reps >= 1 and max_new_tokens >= 1")
        if not self.gammas or min(self.gammas) < 1 or min(self.rtts_ms) < 0:
            raise ValueError("need gammas >= 1 and rtts_ms >= 0")
        if not self.schedules or set(self.schedules) - set(SCHEDULES):
            raise ValueError(f"schedules {self.schedules}: choose one or more of {', '.join(SCHEDULES)}")
        if set(self.real_ns) - set(self.ns):
            raise ValueError(f"real_ns {self.real_ns} must be among ns {self.ns} (the comparison is at the same N)")
        return self


@dataclass
class Result:
    """The study's records: per-edge rows, the measured t_draft / t_verify per schedule and gamma, the config."""

    rows: pd.DataFrame
    times: pd.DataFrame
    config: dict[str, Any]


@contextlib.contextmanager
def servers(cfg: Config) -> Iterator[dict[str, str]]:
    """One ``specnb serve`` per policy (loopback, the draft model loaded for server-side speculation),
    all up together so that the shared machine's load falls on every policy alike."""
    top = max(cfg.ns)
    with contextlib.ExitStack() as stack:
        out = {}
        for policy in cfg.policies:
            extra = ["--batch", policy, "--max-batch", str(top), "--max-sessions", str(top + 4),
                     "--batch-wait-ms", str(cfg.batch_wait_ms)]
            draft = cfg.edge_model if "server_speculative" in cfg.methods else None
            out[policy] = stack.enter_context(local_server(cfg.cloud_model, dtype=cfg.dtype, threads=cfg.threads,
                                                           draft=draft, draft_threads=cfg.threads, extra=extra))
        yield out


def recording_key(schedule: str, gamma: int, rtt_ms: float, prompt: int) -> tuple:
    """Where the recording a replayed edge plays back is kept: one per RTT for the schedules of
    :data:`TIMED` (their lengths follow the link's times), one for every RTT for the others (greedy
    drafts of a given length do not depend on the link)."""
    return schedule, gamma, float(rtt_ms) if schedule in TIMED else None, prompt


def record(edge: Any, address: str, cfg: Config) -> tuple[dict[tuple, Any], pd.DataFrame, dict[tuple, Controller]]:
    """Real edge runs, one per (schedule, gamma, prompt), alone against the server, and per RTT (on its
    emulated link) for a schedule of :data:`TIMED`: the recordings replayed edges play back
    (:func:`recording_key`), and the per-round drafting and server times of the bound (medians: robust to
    a stray slow round on a shared machine). ``t_draft`` is per drafted token; ``t_link`` is a round's time
    on the real connection (its round trip minus the server's time and the emulated delay: gRPC and
    loopback), which idles the verifier as drafting does; ``drafted_per_round`` the mean drafted length.

    The ``adaptive`` schedule gets one controller per (gamma, RTT), taught by one unrecorded pass over
    the prompts first (a deployed edge's controller has learnt over its earlier generations; a fresh one
    drafts the cap); the third value returned holds them, for the real edges to start from."""
    recordings, times, controllers = {}, [], {}
    remote = connect(address)
    for schedule in cfg.schedules:
        for gamma in cfg.gammas:
            per_token, verify, link, drafted = [], [], [], []
            for rtt in cfg.rtts_ms if schedule in TIMED else [None]:
                cloud = remote if rtt is None else remote.with_link(Link(rtt, seed=cfg.seed))
                ctl = controllers.setdefault((gamma, float(rtt)), Controller()) if schedule == "adaptive" else None
                for prompt in cfg.prompts if ctl is not None else []:
                    speculative(edge, cloud, prompt, cfg.max_new_tokens, gamma=gamma, schedule=schedule, controller=ctl)
                for pi, prompt in enumerate(cfg.prompts):
                    rec = RecordingDrafter(edge)
                    g = speculative(rec, cloud, prompt, cfg.max_new_tokens, gamma=gamma, schedule=schedule, controller=ctl)
                    recordings[recording_key(schedule, gamma, rtt, pi)] = rec.recording
                    per_token += [r.draft_s / len(r.draft) for r in rec.recording.rounds if r.draft]
                    verify += list(g.metrics["round_server_s"][1:])  # the first round carries the prefill
                    link += [t - e for t, e in zip(g.metrics["round_link_s"][1:], g.metrics["round_emulated_s"][1:])]
                    drafted += g.drafted_trace
            times.append({"schedule": schedule, "gamma": gamma, "t_draft_s": statistics.median(per_token),
                          "t_verify_s": statistics.median(verify), "t_link_s": statistics.median(link),
                          "rounds": len(verify), "drafted_per_round": statistics.mean(drafted)})
    remote.close()
    return recordings, pd.DataFrame(times), controllers


def one_run(remote: Any, method: str, rtt_ms: float, schedule: str, gamma: int, n: int, cfg: Config,
            recordings: dict, edge: Any = None, controllers: dict | None = None) -> list[dict]:
    """N users of ``method`` start together against ``remote``; one row per user (``edge`` given: real
    edge-cloud edges drafting with that model here under ``schedule``, each ``adaptive`` one with its own
    copy of the recordings' controller for (gamma, RTT) in ``controllers``; else replayed ones, which
    play back the recorded lengths under ``constant``)."""
    start = threading.Barrier(n)
    rows: list[dict] = [{} for _ in range(n)]

    def user(i: int) -> None:
        pi = i % len(cfg.prompts)
        prompt = cfg.prompts[pi]
        cloud = remote.with_link(Link(rtt_ms, seed=cfg.seed + i))  # each user its own link
        start.wait(HANG_S)
        t0 = time.perf_counter()
        try:
            if method == "cloud":
                g = cloud.autoregressive(prompt, cfg.max_new_tokens)
            elif method == "server_speculative":
                g = cloud.server_speculative(prompt, cfg.max_new_tokens, gamma=gamma)
            elif edge is not None:
                ctl = copy.deepcopy(controllers[gamma, rtt_ms]) if schedule == "adaptive" else None
                g = speculative(edge, cloud, prompt, cfg.max_new_tokens, gamma=gamma, schedule=schedule, controller=ctl)
            else:
                replay = ReplayedEdge(recordings[recording_key(schedule, gamma, rtt_ms, pi)])
                g = speculative(replay, cloud, prompt, cfg.max_new_tokens, gamma=gamma)
            t1 = time.perf_counter()
            rows[i] = {"ok": True, "new_tokens": len(g.tokens), "start_s": t0, "end_s": t1,
                       "rate": len(g.tokens) / (t1 - t0), "error": "",
                       "drafted_per_round": statistics.mean(g.drafted_trace) if g.drafted_trace else np.nan}
        except Exception as err:  # noqa: BLE001 - one user's failure is a row, not the study's end
            rows[i] = {"ok": False, "new_tokens": 0, "start_s": t0, "end_s": time.perf_counter(), "rate": np.nan,
                       "error": f"{type(err).__name__}: {err}"[:300], "drafted_per_round": np.nan}

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_S)
    hung = {"ok": False, "new_tokens": 0, "start_s": np.nan, "end_s": np.nan, "rate": np.nan,
            "error": f"did not finish within {HANG_S:g} s", "drafted_per_round": np.nan}
    return [(r or hung) | {"edge": i, "prompt": i % len(cfg.prompts)} for i, r in enumerate(rows)]


def mean_batch(before: dict[str, int], after: dict[str, int]) -> float:
    """Mean batch size of the batches run between two ``Status`` histograms (NaN: none ran, or no batching)."""
    diff = {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    total = sum(diff.values())
    return sum(k * v for k, v in diff.items()) / total if total else float("nan")


def cases(cfg: Config) -> list[tuple[str, str, float, str, int]]:
    """Every (method, policy, RTT, schedule, gamma) of one N; cloud-only has gamma 0 (it drafts nothing),
    edge-cloud every schedule of the config, the others ``constant``."""
    out = []
    for method in cfg.methods:
        for policy in cfg.policies:
            for rtt in cfg.rtts_ms:
                for schedule in cfg.schedules if method == "edge_cloud" else ["constant"]:
                    for gamma in ([0] if method == "cloud" else cfg.gammas):
                        out.append((method, policy, float(rtt), schedule, gamma))
    return out


def run(cfg: Config, progress: Callable[[str], None] | None = None) -> Result:
    """The whole study: servers up, recordings, then per repetition and N every case in a shuffled
    order (the real-edge runs of ``real_ns`` among them); the servers stop at the end."""
    cfg.check()
    order = random.Random(cfg.seed)
    edge = load(ModelSpec(cfg.edge_model, dtype=cfg.dtype, device="cpu", threads=cfg.threads))
    rows: list[dict] = []
    with servers(cfg) as addresses:
        remotes = {p: connect(a) for p, a in addresses.items()}
        recordings, times, controllers = record(edge, addresses[cfg.policies[0]], cfg)
        for rep in range(cfg.reps):
            for n in cfg.ns:
                todo = [(c, "replayed" if c[0] == "edge_cloud" else "none") for c in cases(cfg)]
                if n in cfg.real_ns and "edge_cloud" in cfg.methods:
                    todo += [(c, "real") for c in cases(cfg) if c[0] == "edge_cloud"]
                for (method, policy, rtt, schedule, gamma), edges in order.sample(todo, len(todo)):
                    remote = remotes[policy]
                    before = remote.status()
                    got = one_run(remote, method, rtt, schedule, gamma, n, cfg, recordings,
                                  edge if edges == "real" else None, controllers)
                    after = remote.status()
                    mb = mean_batch(before["batches"], after["batches"])
                    md = mean_batch(before.get("draft_batches", {}), after.get("draft_batches", {}))
                    rows += [r | {"method": method, "policy": policy, "rtt_ms": rtt, "schedule": schedule, "gamma": gamma,
                                  "n": n, "rep": rep, "edges": edges, "mean_batch": mb, "mean_draft_batch": md} for r in got]
                if progress:
                    progress(f"rep {rep + 1}/{cfg.reps}, N={n}: {len(todo)} runs done")
        for r in remotes.values():
            r.close()
    return Result(pd.DataFrame(rows), times, asdict(cfg))


# ---------------------------------------------------------------------------- a verifier without a session cache


def uncached_cost(model: Any, lengths: list[int], gamma: int = 4, reps: int = 5, seed: int = 0) -> pd.DataFrame:
    """Per context length L: the seconds of one verify round with a session KV cache (a forward of
    ``gamma + 1`` tokens on a cache of L) against one without (a forward of all ``L + gamma + 1`` tokens,
    what a serving engine pays when it scores a draft as ``prompt_logprobs``, which it does not cache),
    medians of ``reps``, and their ratio. ``model``: a loaded model (``specnb.load``). Random token ids:
    the cost of a forward does not depend on which tokens."""
    from transformers import DynamicCache  # noqa: PLC0415 - only this measurement needs it
    import torch  # noqa: PLC0415

    net, device = model.model, model.device
    rng = np.random.default_rng(seed)
    out = []
    for length in lengths:
        ids = torch.tensor(rng.integers(0, model.vocab_size, size=(1, length + gamma + 1)), device=device)
        full, cached = [], []
        with torch.inference_mode():
            cache = DynamicCache(config=net.config)
            net(input_ids=ids[:, :length], cache=cache, use_cache=True)
            for _ in range(reps):
                t0 = time.perf_counter()
                net(input_ids=ids, use_cache=False)
                full.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                net(input_ids=ids[:, length:], cache=cache, use_cache=True)
                cached.append(time.perf_counter() - t0)
                cache.crop(-(gamma + 1))  # back to the L cached positions
        f, c = statistics.median(full), statistics.median(cached)
        out.append({"context": length, "gamma": gamma, "round_cached_ms": 1000 * c, "round_uncached_ms": 1000 * f,
                    "uncached_over_cached": f / c})
    return pd.DataFrame(out)
