"""Re-measure issue 24's table: fixed gamma 4/8/12/16/24 beside cost, heuristic, confidence and adaptive.

A local ``specnb serve`` (loopback gRPC) holds the cloud, the edge runs in this process; links
RTT 5, 20, 50 ms and two whose RTT changes during each generation
(:func:`specnb.study.adaptive_gamma.changing_link`, :func:`~specnb.study.adaptive_gamma.handover_link`),
100 Mbit/s; held-out prompts (``builtin:code``), greedy, interleaved; every output checked against the
cloud's greedy decoding. Writes ``rows.csv``, ``summary.csv``, ``table.md`` and ``run.json`` (conditions,
load before and after, wall time) under ``docs/measurements/adaptive-<date>/``. Schedules and caps: :data:`specnb.study.adaptive_gamma.SCHEDULES`.
About 10 minutes on 2 quiet cores with every link (estimated: 5.6 minutes for the
four links of 2026-12-04, 5.5 for ``--links 1,handover`` on 2026-12-05).

    PYTHONPATH=$PWD python tools/adaptive_table.py [--reps 2] [--prompts 6] [--tokens 64]
        [--links 5,20,50,changing,handover] [--gammas 4,8,12,16,24]
        [--schedules cost:16,heuristic:4,confidence:16,adaptive:32] [--seed 0] [--out DIR]
    PYTHONPATH=$PWD python tools/adaptive_table.py --combine DIR1 DIR2 --out DIR   # pool runs, no timing

``--seed`` changes the interleaving order and the links' seeds (a second run of the same conditions with
another seed is an independent sample). ``--combine`` pools the rows of runs made with the same conditions
(their repetitions renumbered one after another; each run's adaptive controller started fresh) and writes
the pooled ``summary.csv``, ``table.md`` and ``run.json`` (which runs, how many generations).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--cloud", default="zoo:tiny-cloud")
    ap.add_argument("--edge", default="zoo:tiny-edge")
    ap.add_argument("--links", default="5,20,50,changing,handover",
                    help="comma-separated: RTTs in ms, 'changing' (5->50->20 ms), 'handover' (1->300 ms)")
    ap.add_argument("--gammas", default=None, help="comma-separated fixed gammas (default 4,8,12,16,24)")
    ap.add_argument("--schedules", default=None,
                    help="comma-separated schedule:cap (default cost:16,heuristic:4,confidence:16,adaptive:32)")
    ap.add_argument("--seed", type=int, default=0, help="interleaving order and link seeds (default 0)")
    ap.add_argument("--combine", type=Path, nargs="+", default=None,
                    help="pool the rows.csv of these run folders (same conditions) instead of measuring")
    ap.add_argument("--out", type=Path, default=None, help="default docs/measurements/adaptive-<UTC date>/")
    args = ap.parse_args(argv)
    if args.combine:
        if args.out is None:
            ap.error("--combine needs --out (where the pooled table goes)")
        return combine(args.combine, args.out)
    try:
        gammas = tuple(int(g) for g in args.gammas.split(",")) if args.gammas else None
        schedules = tuple((name, int(cap)) for name, cap in (x.split(":") for x in args.schedules.split(","))) \
            if args.schedules else None
    except ValueError:
        ap.error("--gammas takes integers (4,8,12) and --schedules name:cap pairs (adaptive:32,cost:16)")

    from specnb import ModelSpec, connect, experiment, load
    from specnb.chat import Prompting
    from specnb.link import local_server
    from specnb.study.adaptive_gamma import (GAMMAS, SCHEDULES, changing_link, gamma_table, handover_link, markdown,
                                            stage_shares, summary)
    from specnb.prompts import load_prompts

    gammas, schedules = gammas or GAMMAS, schedules or SCHEDULES

    experiment.quiet()
    start = dt.datetime.now(dt.timezone.utc)
    out = args.out or Path("docs/measurements") / f"adaptive-{start:%Y-%m-%d}"
    out.mkdir(parents=True, exist_ok=True)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    profile, handover = changing_link(100), handover_link(100)
    named = {"changing": profile, "handover": handover}
    links = tuple(named[x] if x in named else (int(x) if x.isdigit() else float(x)) for x in args.links.split(","))
    edge = load(ModelSpec(args.edge, dtype="float32", device="cpu", threads=1))
    with local_server(args.cloud, dtype="float32", threads=1) as address:
        cloud = connect(address)
        texts = [Prompting(cloud.tokenizer, "auto", "cloud").render(p) for p in load_prompts("builtin:code", args.prompts)]
        df = gamma_table(edge, cloud, texts, links=links, gammas=gammas, schedules=schedules,
                         max_new_tokens=args.tokens, reps=args.reps, seed=args.seed,
                         progress=lambda m: print(m, file=sys.stderr, flush=True))
    wall, load_after = time.perf_counter() - t0, os.getloadavg()
    s = summary(df)
    table = markdown(s)
    df.assign(tokens=df.tokens.map(list), drafted=df.drafted.map(list)).to_csv(out / "rows.csv", index=False)
    s.to_csv(out / "summary.csv", index=False)
    (out / "table.md").write_text(table + "\n")
    run = {"started_utc": start.isoformat(timespec="seconds"), "wall_s": round(wall, 1),
           "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
           "cloud": args.cloud, "edge": args.edge, "dtype": "float32", "threads": 1, "prompts": f"builtin:code x {args.prompts}",
           "max_new_tokens": args.tokens, "reps": args.reps, "seed": args.seed, "bandwidth_mbps": 100,
           "links": args.links,
           "changing_link": profile.label, "handover_link": handover.label,
           "gammas": list(gammas), "schedules": [list(x) for x in schedules],
           "changing_link_rounds_by_delay_ms": stage_shares(df, profile.label),
           "handover_link_rounds_by_delay_ms": stage_shares(df, handover.label),
           "all_identical": bool(df.identical.all()), "generations": len(df)}
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(table)
    print(json.dumps(run))
    return 0 if run["all_identical"] else 1


def combine(runs: list[Path], out: Path) -> int:
    """Pool the rows of ``runs`` (folders this tool wrote, same conditions): repetitions renumbered run after
    run, then the summary and table of the pool. Returns 1 when a run's conditions differ or an output was not
    the cloud's greedy one."""
    import pandas as pd

    from specnb.study.adaptive_gamma import markdown, summary

    parts, conditions, offset = [], [], 0
    for run in runs:
        if not (run / "rows.csv").exists():
            print(f"{run}: no rows.csv (give folders that tools/adaptive_table.py wrote)", file=sys.stderr)
            return 1
        meta = json.loads((run / "run.json").read_text())
        key = {k: meta.get(k) for k in ("cloud", "edge", "prompts", "max_new_tokens", "links", "gammas", "schedules")}
        if conditions and key != conditions[0]:
            print(f"{run}: other conditions than {runs[0]}: {key} vs {conditions[0]}", file=sys.stderr)
            return 1
        conditions.append(key)
        df = pd.read_csv(run / "rows.csv")
        df["drafted"] = df["drafted"].map(json.loads)
        df["rtt_ms"] = df["rtt_ms"].map(lambda v: int(v) if str(v).isdigit() else v)
        parts.append(df.assign(rep=df.rep + offset))
        offset += int(df.rep.max()) + 1
    df = pd.concat(parts, ignore_index=True)
    s = summary(df)
    out.mkdir(parents=True, exist_ok=True)
    s.to_csv(out / "summary.csv", index=False)
    (out / "table.md").write_text(markdown(s) + "\n")
    pooled = {"combined_from": [str(r) for r in runs], **conditions[0], "reps": offset,
              "all_identical": bool(df.identical.all()), "generations": len(df)}
    (out / "run.json").write_text(json.dumps(pooled, indent=1) + "\n")
    print(markdown(s))
    print(json.dumps(pooled))
    return 0 if pooled["all_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
