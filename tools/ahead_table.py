"""The drafting-ahead table: edge-cloud speculation with and without drafting ahead, per link, on the embedded pair.

A local ``specnb serve`` (loopback gRPC) holds the cloud, the edge runs in this process; links RTT 0, 5, 20,
50 ms (``Link(rtt_ms, 100 Mbit/s)``), and ``inproc`` (both models in this process, the cloud verifying on a
second thread when drafting ahead). Variants: fixed gammas (the baseline: the best of them per link, chosen
after the fact) and, at other gammas, ``ahead`` (``speculative(..., ahead=...)``), ``ahead5ms``: drafting
ahead with the interpreter's default switch interval (5 ms) instead of ``specnb.decode.ahead.SWITCH_S``, and
``hedgeK``: drafting ahead with K branches per round in flight (``speculative(..., ahead=..., hedge=K)``;
``--hedge-gammas``, ``--hedges``; their branches sent and verified are counted, and the model's column gives
the unhedged S_ahead at the same parameters: the model does not cover branches), and ``hedgeKlenL``: the same
with branches of at most L drafts (``speculative(..., hedge=K, hedge_len=L)``; ``--hedge-lens``); ``--lead`` repeats
variants with the cloud leading (``speculative(..., lead=True)``: it decodes its own tokens while it waits, named
``<variant>+lead``; the model's column gives :func:`specnb.decode.schedule.lead_rate` for plain rounds with the
cloud's own step taken from this process's greedy decoding of the prompts (the reference outputs), and nothing for
rounds drafted ahead with the lead, which it does not cover). Greedy, interleaved (per
repetition and prompt: the links in a shuffled order, on each the variants in a shuffled order), one untimed
warm-up generation per link and variant first; every output checked against the cloud's greedy decoding.

Per link and variant: tokens/s over all generations with its 95% bootstrap interval
(:func:`specnb.measure.stats.speed_interval`), the ratio to the best fixed gamma with the paired interval
(:func:`~specnb.measure.stats.ratio_interval`), the edge's idle share (1 - drafting time / wall time), rounds
kept and dropped ahead, and the model's prediction (:func:`specnb.link.speedup_bound`, in seconds) of the
steady rate, tokens after the first round / time after it, from the parameters of the same rows: alpha
(pooled maximum likelihood), the edge's step (draft_s / edge_calls), the server's time per round (rounds
after the first; in this process: the plain rows' verify time per round, so that any slowdown of sharing
the process shows as the prediction's error), the link (RTT + the plain rows' transport per round).

Writes ``rows.csv``, ``summary.csv``, ``table.md`` and ``run.json`` (conditions, machine, git commit, load
before and after, wall time) under ``docs/measurements/ahead-<date>/``.

    PYTHONPATH=$PWD python tools/ahead_table.py [--reps 2] [--prompts 12] [--tokens 64]
        [--links inproc,0,5,20,50] [--gammas 8,12,16] [--ahead-gammas 4,6,8] [--ahead 64] [--seed 0] [--out DIR]
        [--hedge-gammas 6,8] [--hedges 2,4] [--hedge-lens 2,4] [--default-switch-gammas 6] [--lead fixed@12,hedge4]
    PYTHONPATH=$PWD python tools/ahead_table.py --model-only DIR   # the model's best gammas and rates, no timing
    PYTHONPATH=$PWD python tools/ahead_table.py --resummarize DIR  # summary.csv / table.md again from rows.csv

``--model-only`` writes ``model.csv`` / ``model.md``: per link, the model's best gamma and steady rate without
and with drafting ahead from the parameters the record measured (:func:`ceiling`), and the alpha at which,
with the same costs, drafting ahead would reach 1.3x of the plain loop (each at its best gamma).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROW_KEYS = ("new_tokens", "wall_s", "tokens_per_s", "ttft_s", "rounds", "drafted", "accepted", "rejected_rounds", "alpha",
            "draft_s", "verify_s", "edge_calls", "server_s", "link_s", "emulated_s", "round_trips", "edge_idle_share",
            "ahead_rounds", "ahead_void", "ahead_kept", "ahead_dropped", "edge_wait_s", "ahead_hedged", "hedge_hits", "hedge_drafted",
            "lead_tokens")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--cloud", default="zoo:tiny-cloud")
    ap.add_argument("--edge", default="zoo:tiny-edge")
    ap.add_argument("--dtype", default="float32", help="both models' dtype (a real pair on this CPU: bfloat16)")
    ap.add_argument("--prompt-set", default="builtin:code", help="prompts (specnb.prompts.load_prompts)")
    ap.add_argument("--links", default="inproc,0,5,20,50", help="comma-separated: RTTs in ms, 'inproc' (no link)")
    ap.add_argument("--gammas", default="8,12,16", help="fixed gammas (the baseline)")
    ap.add_argument("--ahead-gammas", default="4,6,8", help="gammas drafted ahead")
    ap.add_argument("--ahead", type=int, default=64, help="rounds allowed ahead (64: what ahead=True allows)")
    ap.add_argument("--hedge-gammas", default="", help="gammas drafted ahead with branches ('' for none)")
    ap.add_argument("--hedges", default="2", help="branches per round in flight for --hedge-gammas (comma-separated)")
    ap.add_argument("--hedge-lens", default="",
                    help="also, per --hedge-gammas and --hedges, branches of at most this many drafts (comma-separated; "
                         "'' for none: only branches as long as the spine's rounds)")
    ap.add_argument("--default-switch-gammas", default="6",
                    help="gammas also drafted ahead with the interpreter's default switch interval (5 ms) instead of "
                         "specnb.decode.ahead.SWITCH_S ('' for none)")
    ap.add_argument("--lead", default="",
                    help="variants to repeat with the cloud leading (lead=True), comma-separated: a kind (fixed, ahead, "
                         "hedge4, hedge4len2: all its gammas) or kind@gamma (fixed@12); not in process")
    ap.add_argument("--bandwidth", type=float, default=100.0, help="Mbit/s of the emulated links")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default docs/measurements/ahead-<UTC date>/")
    ap.add_argument("--model-only", type=Path, default=None,
                    help="no timing: write model.csv / model.md from the summary.csv of this record folder")
    ap.add_argument("--resummarize", type=Path, default=None,
                    help="no timing: summary.csv / table.md again from this record folder's rows.csv and run.json")
    args = ap.parse_args(argv)
    if args.resummarize:
        info = json.loads((args.resummarize / "run.json").read_text())
        s = summary(pd.read_csv(args.resummarize / "rows.csv"), info["ahead"], info.get("cloud_step_s"))
        s.to_csv(args.resummarize / "summary.csv", index=False)
        (args.resummarize / "table.md").write_text(markdown(s) + "\n")
        print(markdown(s))
        return 0
    if args.model_only:
        m = ceiling(pd.read_csv(args.model_only / "summary.csv"), args.ahead)
        m.to_csv(args.model_only / "model.csv", index=False)
        (args.model_only / "model.md").write_text(model_markdown(m) + "\n")
        print(model_markdown(m))
        return 0

    import torch

    from specnb import Link, ModelSpec, autoregressive, connect, experiment, load, speculative
    from specnb.chat import Prompting
    from specnb.link import local_server
    from specnb.measure.provenance import git_state, machine, versions
    from specnb.prompts import load_prompts

    torch.set_num_threads(1)
    experiment.quiet()
    gammas = [int(g) for g in args.gammas.split(",")]
    ahead_gammas = [int(g) for g in args.ahead_gammas.split(",")]
    links = [x if x == "inproc" else float(x) for x in args.links.split(",")]
    variants = [("fixed", g) for g in gammas] + [("ahead", g) for g in ahead_gammas]
    variants += [("ahead5ms", int(g)) for g in args.default_switch_gammas.split(",") if g]
    variants += [(f"hedge{k}", int(g)) for g in args.hedge_gammas.split(",") if g for k in args.hedges.split(",")]
    variants += [(f"hedge{k}len{n}", int(g)) for g in args.hedge_gammas.split(",") if g for k in args.hedges.split(",")
                 for n in args.hedge_lens.split(",") if n]
    variants += _leading(variants, args.lead)
    start = dt.datetime.now(dt.timezone.utc)
    out = args.out or Path("docs/measurements") / f"ahead-{start:%Y-%m-%d}"
    out.mkdir(parents=True, exist_ok=True)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    edge = load(ModelSpec(args.edge, dtype=args.dtype, device="cpu", threads=1))
    local = load(ModelSpec(args.cloud, dtype=args.dtype, device="cpu", threads=1))
    rows = []
    with local_server(args.cloud, dtype=args.dtype, threads=1) as address:
        remote = connect(address)
        texts = [Prompting(remote.tokenizer, "auto", "cloud").render(p) for p in load_prompts(args.prompt_set, args.prompts)]
        reference = [autoregressive(local, t, args.tokens) for t in texts]
        want = [g.tokens for g in reference]
        # the cloud's own step (one token after the first; the model of the lead): the reference decodings
        cloud_step_s = (sum(g.metrics["wall_s"] - g.metrics["ttft_s"] for g in reference)
                        / sum(len(g.tokens) - 1 for g in reference))
        clouds = {link: local if link == "inproc" else remote.with_link(Link(link, args.bandwidth, seed=args.seed))
                  for link in links}

        from specnb.decode import ahead as ahead_mod

        def run(link, kind, gamma, text):
            lead, kind = kind.endswith("+lead"), kind.removesuffix("+lead")
            if lead and link == "inproc":
                return None
            switch = ahead_mod.SWITCH_S
            ahead_mod.SWITCH_S = 0.005 if kind == "ahead5ms" else switch  # the interpreter's default
            try:
                hedge, length = _hedge_of(kind)
                return speculative(edge, clouds[link], text, args.tokens, gamma=gamma,
                                   ahead=0 if kind == "fixed" else args.ahead, hedge=hedge, hedge_len=length, lead=lead)
            finally:
                ahead_mod.SWITCH_S = switch

        for link in links:  # warm-up: first calls of each shape, the server's session set-up
            for kind, gamma in variants:
                run(link, kind, gamma, texts[0])
        order = random.Random(args.seed)
        for rep in range(args.reps):
            for pi, text in enumerate(texts):
                for link in order.sample(links, len(links)):
                    for kind, gamma in order.sample(variants, len(variants)):
                        g = run(link, kind, gamma, text)
                        if g is None:  # the cloud leads across a link only
                            continue
                        m = g.metrics
                        rows.append({"link": str(link), "variant": kind, "gamma": gamma, "rep": rep, "prompt": pi,
                                     **{k: m.get(k) for k in ROW_KEYS}, "first_round_tokens": g.trace[0] + 1,
                                     "server_after_first_s": sum(m.get("round_server_s", [0.0])[1:]),
                                     "transport_s": _transport(m), "identical": g.tokens == want[pi]})
                print(f"rep {rep + 1}/{args.reps}, prompt {pi + 1}/{len(texts)} done", file=sys.stderr, flush=True)
        remote.close()
    wall, load_after = time.perf_counter() - t0, os.getloadavg()
    df = pd.DataFrame(rows)
    s = summary(df, args.ahead, cloud_step_s)
    table = markdown(s)
    df.to_csv(out / "rows.csv", index=False)
    s.to_csv(out / "summary.csv", index=False)
    (out / "table.md").write_text(table + "\n")
    info = {"started_utc": start.isoformat(timespec="seconds"), "wall_s": round(wall, 1),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
            "cloud": args.cloud, "edge": args.edge, "dtype": args.dtype, "threads": 1,
            "prompts": f"{args.prompt_set} x {args.prompts}", "max_new_tokens": args.tokens, "reps": args.reps,
            "seed": args.seed, "bandwidth_mbps": args.bandwidth, "links": args.links, "gammas": gammas,
            "ahead_gammas": ahead_gammas, "ahead": args.ahead, "switch_s": ahead_mod.SWITCH_S,
            "cloud_step_s": cloud_step_s,  # unrounded: --resummarize gives the same model figures
            "default_switch_gammas": args.default_switch_gammas, "hedge_gammas": args.hedge_gammas,
            "hedges": args.hedges, "hedge_lens": args.hedge_lens, "lead": args.lead, "all_identical": bool(df.identical.all()),
            "generations": len(df), "machine": machine(), "git": git_state(), "versions": versions(),
            "command": "PYTHONPATH=$PWD python tools/ahead_table.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    (out / "run.json").write_text(json.dumps(info, indent=1) + "\n")
    print(table)
    print(json.dumps({k: v for k, v in info.items() if k not in ("machine", "versions")}))
    return 0 if info["all_identical"] else 1


def _leading(variants: list[tuple[str, int]], spec: str) -> list[tuple[str, int]]:
    """The variants ``--lead`` names (``kind`` or ``kind@gamma``), as ``kind+lead``; an unknown one is an error."""
    out = []
    for item in (x for x in spec.split(",") if x):
        kind, _, gamma = item.partition("@")
        chosen = [(k + "+lead", g) for k, g in variants if k == kind and (not gamma or g == int(gamma))]
        if not chosen:
            raise SystemExit(f"--lead {item}: no such variant among {sorted({f'{k}@{g}' for k, g in variants})}")
        out += chosen
    return out


def _hedge_of(kind: str) -> tuple[int, int | None]:
    """A variant's branches per round and their most drafts: ``hedge4`` -> (4, None), ``hedge4len2`` -> (4, 2)."""
    kind = kind.removesuffix("+lead")
    if not kind.startswith("hedge"):
        return 0, None
    k, _, n = kind[5:].partition("len")
    return int(k), int(n) if n else None


def _transport(m: dict) -> float:
    """A generation's transport per round (link time less emulated delay, rounds after the first); NaN in process."""
    link, emulated = m.get("round_link_s"), m.get("round_emulated_s")
    if not link or len(link) < 2:
        return float("nan")
    return float(np.mean([a - b for a, b in zip(link[1:], emulated[1:])]))


def summary(df: pd.DataFrame, ahead: int, cloud_step_s: float | None = None) -> pd.DataFrame:
    """Per link and variant: speed with its interval, the ratio to the link's best fixed gamma, the idle share,
    rounds ahead, and the model's steady rate against the measured one (see the module doc)."""
    from specnb.link.predict import speedup_bound
    from specnb.measure.stats import ratio_interval, speed_interval

    out = []
    for link, here in df.groupby("link", sort=False):
        table = {key: part[["rep", "prompt", "new_tokens", "wall_s"]].to_dict("records")
                 for key, part in here.groupby(["variant", "gamma"])}
        fixed = {k: v for k, v in table.items() if k[0] == "fixed"}
        best = max(fixed, key=lambda k: speed_interval(fixed[k]).value)
        led = {k: v for k, v in table.items() if k[0] == "fixed+lead"}  # the same with the cloud leading
        best_led = max(led, key=lambda k: speed_interval(led[k]).value) if led else None
        plain = here[here.variant == "fixed"]
        transport = 0.0 if link == "inproc" else float(plain.transport_s.mean())
        rtt_s = 0.0 if link == "inproc" else float(link) / 1e3
        for (kind, gamma), part in here.groupby(["variant", "gamma"]):
            speed = speed_interval(table[kind, gamma])
            ratio = ratio_interval(table[kind, gamma], table[best], paired_reps=True)
            vs_led = ratio_interval(table[kind, gamma], table[best_led], paired_reps=True) if led else None
            alpha = part.accepted.sum() / (part.accepted.sum() + part.rejected_rounds.sum())
            t_d = part.draft_s.sum() / part.edge_calls.sum()
            later = (part.rounds - 1).sum()
            if link == "inproc":  # the plain rows' own verification (prefill included, per round)
                same = plain[plain.gamma == gamma] if (plain.gamma == gamma).any() else plain
                v = same.verify_s.sum() / same.rounds.sum()
            else:
                v = part.server_after_first_s.sum() / later
            depth = 0 if kind.removesuffix("+lead") == "fixed" else ahead
            if not kind.endswith("+lead"):
                predicted = speedup_bound(alpha, gamma, t_d, v, rtt_s + transport, depth)
            elif depth or cloud_step_s is None:  # the model covers the lead with plain rounds only
                predicted = float("nan")
            else:  # a verify round's time from the plain rows (a lead row's rounds are often answered without one)
                same = plain[plain.gamma == gamma] if (plain.gamma == gamma).any() else plain
                v = same.server_after_first_s.sum() / (same.rounds - 1).sum()
                predicted = speedup_bound(alpha, gamma, t_d, v, rtt_s + transport, lead=cloud_step_s)
            steady = (part.new_tokens - part.first_round_tokens).sum() / (part.wall_s - part.ttft_s).sum()
            out.append({"link": link, "variant": kind, "gamma": gamma, "tokens_per_s": speed.value, "low": speed.low,
                        "high": speed.high, "best_fixed_gamma": best[1], "vs_best_fixed": ratio.value,
                        "vs_low": ratio.low, "vs_high": ratio.high,
                        **({"best_fixed_lead_gamma": best_led[1], "vs_best_fixed_lead": vs_led.value,
                            "vs_lead_low": vs_led.low, "vs_lead_high": vs_led.high} if led else {}),
                        "edge_idle_share": part.edge_idle_share.mean(),
                        "alpha": alpha, "t_draft_ms": 1e3 * t_d, "t_verify_ms": 1e3 * v, "t_link_ms": 1e3 * (rtt_s + transport),
                        "ahead_rounds": part.ahead_rounds.fillna(0).sum(), "ahead_void": part.ahead_void.fillna(0).sum(),
                        "ahead_hedged": part.ahead_hedged.fillna(0).sum() if "ahead_hedged" in part else 0,
                        "hedge_hits": part.hedge_hits.fillna(0).sum() if "hedge_hits" in part else 0,
                        "hedge_drafted": part.hedge_drafted.fillna(0).sum() if "hedge_drafted" in part else 0,
                        "lead_tokens": part.lead_tokens.fillna(0).sum() if "lead_tokens" in part else 0,
                        "steady_tokens_per_s": steady, "predicted_tokens_per_s": predicted,
                        "prediction_error": predicted / steady - 1, "identical": f"{int(part.identical.sum())}/{len(part)}"})
    return pd.DataFrame(out)


def ceiling(s: pd.DataFrame, ahead: int, max_gamma: int = 32) -> pd.DataFrame:
    """The model's best draft length and steady rate per link, without and with drafting ahead, from the
    parameters a record measured (:func:`summary`'s columns): alpha and the verify time per round pooled over
    the link's rows (their mean), the edge's step of the plain rows and of the rows drafted ahead apart
    (drafting ahead drafts one token per call), the link's time per round."""
    from specnb.link.predict import speedup_bound

    out = []
    s = s[~s.variant.str.endswith("+lead")]  # without the cloud's lead (its rounds are often answered without a verify)
    for link, here in s.groupby("link", sort=False):
        plain, ahead_rows = here[here.variant == "fixed"], here[here.variant == "ahead"]
        a, v, r = here.alpha.mean(), here.t_verify_ms.mean() / 1e3, here.t_link_ms.iloc[0] / 1e3
        t_plain, t_ahead = plain.t_draft_ms.mean() / 1e3, ahead_rows.t_draft_ms.mean() / 1e3
        gs = range(1, max_gamma + 1)
        g0 = max(gs, key=lambda g: speedup_bound(a, g, t_plain, v, r))
        g1 = max(gs, key=lambda g: speedup_bound(a, g, t_ahead, v, r, ahead))
        s0, s1 = speedup_bound(a, g0, t_plain, v, r), speedup_bound(a, g1, t_ahead, v, r, ahead)

        def gain(alpha: float) -> float:  # the best ahead over the best plain at another alpha, the same costs
            return max(speedup_bound(alpha, g, t_ahead, v, r, ahead) for g in gs) / max(speedup_bound(alpha, g, t_plain, v, r) for g in gs)

        needed = next((x / 1000 for x in range(800, 1000) if gain(x / 1000) >= 1.3), None)
        out.append({"link": link, "alpha": a, "t_verify_ms": 1e3 * v, "t_link_ms": 1e3 * r,
                    "t_draft_plain_ms": 1e3 * t_plain, "t_draft_ahead_ms": 1e3 * t_ahead,
                    "best_plain_gamma": g0, "plain_tokens_per_s": s0, "best_ahead_gamma": g1, "ahead_tokens_per_s": s1,
                    "ahead_over_plain": s1 / s0, "kept_whole": a ** (g1 + 1), "alpha_for_1_3x": needed})
    return pd.DataFrame(out)


def model_markdown(m: pd.DataFrame) -> str:
    lines = ["| link | alpha | verify / link per round (ms) | edge step plain / ahead (ms) | best plain: g, tok/s "
             "| best ahead: g, tok/s, kept whole | ahead / plain | alpha for 1.3x |", "|" + "---|" * 8]
    for r in m.itertuples():
        link = "in process" if r.link == "inproc" else f"{float(r.link):g} ms"
        lines.append(f"| {link} | {r.alpha:.3f} | {r.t_verify_ms:.1f} / {r.t_link_ms:.1f} | {r.t_draft_plain_ms:.2f} / "
                     f"{r.t_draft_ahead_ms:.2f} | g{r.best_plain_gamma}, {r.plain_tokens_per_s:.0f} | g{r.best_ahead_gamma}, "
                     f"{r.ahead_tokens_per_s:.0f}, {r.kept_whole:.2f} | {r.ahead_over_plain:.2f} | "
                     f"{'-' if pd.isna(r.alpha_for_1_3x) else format(r.alpha_for_1_3x, '.3f')} |")
    return "\n".join(lines)


def markdown(s: pd.DataFrame) -> str:
    """The table of the docs: per link, every variant's speed, ratio to the best fixed gamma, idle share and
    the model's error."""
    hedged = "ahead_hedged" in s and s.ahead_hedged.fillna(0).gt(0).any()
    led = "vs_best_fixed_lead" in s
    lines = ["| link | variant | tok/s [95% CI] | vs best fixed [95% CI] "
             + ("| vs best fixed, cloud leading [95% CI] " if led else "") + "| edge idle | rounds ahead kept / void "
             + ("| branches sent / verified " if hedged else "")
             + "| steady tok/s: measured / model (error) | identical |", "|" + "---|" * (8 + hedged + led)]
    for r in s.itertuples():
        link = "in process" if r.link == "inproc" else f"{float(r.link):g} ms"
        names = {"fixed": "", "ahead": " ahead", "ahead5ms": " ahead, 5 ms switch"}
        kind = r.variant.removesuffix("+lead")
        k, n = _hedge_of(kind)
        name = f"g{r.gamma}" + (names[kind] if kind in names else
                                f" ahead, hedge {k}" + (f", branches <= {n}" if n else ""))
        if kind != r.variant:
            name += f", cloud leads ({int(r.lead_tokens)} of its tokens)"
        ahead = f"{int(r.ahead_rounds)} / {int(r.ahead_void)}" if kind != "fixed" else "–"
        if hedged:
            ahead += " | " + (f"{int(r.ahead_hedged)} / {int(r.hedge_hits)}" if kind.startswith("hedge") else "–")
        vs_led = f" {r.vs_best_fixed_lead:.2f} [{r.vs_lead_low:.2f}, {r.vs_lead_high:.2f}] |" if led else ""
        lines.append(f"| {link} | {name} | {r.tokens_per_s:.0f} [{r.low:.0f}, {r.high:.0f}] | {r.vs_best_fixed:.2f} "
                     f"[{r.vs_low:.2f}, {r.vs_high:.2f}] |{vs_led} {r.edge_idle_share:.2f} | {ahead} | {r.steady_tokens_per_s:.0f} / "
                     + ("– (not modelled)" if np.isnan(r.predicted_tokens_per_s) else
                        f"{r.predicted_tokens_per_s:.0f} ({r.prediction_error:+.0%})") + f" | {r.identical} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
