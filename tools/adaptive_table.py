"""Re-measure the adaptive-gamma table (docs/adaptive-gamma.md): fixed gamma 4/8/12/16/24 beside cost, heuristic, confidence and adaptive.

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
    PYTHONPATH=$PWD python tools/adaptive_table.py --cold [--procs 3] [--generations 12] [--tokens 64]
        [--links 5,20,50,handover] [--gammas 8,12,16,24] [--seed 0] [--out DIR]

``--seed`` changes the interleaving order and the links' seeds (a second run of the same conditions with
another seed is an independent sample). ``--combine`` pools the rows of runs made with the same conditions
(their repetitions renumbered one after another; each run's adaptive controller started fresh) and writes
the pooled ``summary.csv``, ``table.md`` and ``run.json`` (which runs, how many generations).

``--cold`` measures the adaptive schedule from a cold start (:mod:`specnb.study.cold_start`): per
link, ``--procs`` fresh processes, one after another, each loading the edge, starting its own ``specnb serve``
and connecting, one warm-up generation at gamma 4, then generations 1..``--generations`` on as many held-out
prompts (rotated by process), on each the fixed gammas and the adaptive variants interleaved. Writes
``rows.csv``, ``summary.csv`` (ratio to the best fixed gamma per window of generations), ``table.md``,
``run.json`` (conditions, machine, git commit, load before and after) under
``docs/measurements/adaptive-cold-<date>/``, and the controllers each process ended with under ``controllers/``
(when the library can save them). About 22 minutes on 2 quiet cores with the default links and 3 processes
(1308 s and 1288 s, 2-core AMD EPYC, 2026-12-06).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--cloud", default="zoo:tiny-cloud")
    ap.add_argument("--edge", default="zoo:tiny-edge")
    ap.add_argument("--links", default=None,
                    help="comma-separated: RTTs in ms, 'changing' (5->50->20 ms), 'handover' (1->300 ms) "
                         "(default 5,20,50,changing,handover; with --cold 5,20,50,handover)")
    ap.add_argument("--gammas", default=None, help="comma-separated fixed gammas (default 4,8,12,16,24)")
    ap.add_argument("--schedules", default=None,
                    help="comma-separated schedule:cap (default cost:16,heuristic:4,confidence:16,adaptive:32)")
    ap.add_argument("--seed", type=int, default=0, help="interleaving order and link seeds (default 0)")
    ap.add_argument("--combine", type=Path, nargs="+", default=None,
                    help="pool the rows.csv of these run folders (same conditions) instead of measuring")
    ap.add_argument("--out", type=Path, default=None, help="default docs/measurements/adaptive-<UTC date>/")
    ap.add_argument("--cold", action="store_true", help="the cold-start table: fresh processes, generations 1..N")
    ap.add_argument("--procs", type=int, default=3, help="--cold: fresh processes per link (default 3)")
    ap.add_argument("--generations", type=int, default=12, help="--cold: generations per process (default 12)")
    ap.add_argument("--cold-child", default=None, help=argparse.SUPPRESS)  # one process of --cold (JSON)
    ap.add_argument("--resummarize", type=Path, default=None,
                    help="--cold: rewrite summary.csv and table.md of this run folder from its rows.csv, no timing")
    args = ap.parse_args(argv)
    if args.cold_child:
        return cold_child(json.loads(args.cold_child))
    if args.cold and args.resummarize:
        return cold_resummarize(args.resummarize)
    if args.cold:
        return cold(args)
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
    from specnb.measure.provenance import git_state, machine, versions
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
    links = tuple(named[x] if x in named else (int(x) if x.isdigit() else float(x))
                  for x in (args.links or "5,20,50,changing,handover").split(","))
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
    _write_tables(out, df, s, table)
    run = {"started_utc": start.isoformat(timespec="seconds"), "wall_s": round(wall, 1),
           "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
           "cloud": args.cloud, "edge": args.edge, "dtype": "float32", "threads": 1, "prompts": f"builtin:code x {args.prompts}",
           "max_new_tokens": args.tokens, "reps": args.reps, "seed": args.seed, "bandwidth_mbps": 100,
           "links": args.links or "5,20,50,changing,handover",
           "changing_link": profile.label, "handover_link": handover.label,
           "gammas": list(gammas), "schedules": [list(x) for x in schedules],
           "changing_link_rounds_by_delay_ms": stage_shares(df, profile.label),
           "handover_link_rounds_by_delay_ms": stage_shares(df, handover.label),
           "all_identical": bool(df.identical.all()), "generations": len(df)}
    run |= {"machine": machine(), "git": git_state(), "versions": versions()}
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(table)
    print(json.dumps({k: v for k, v in run.items() if k not in ("machine", "versions")}))
    return 0 if run["all_identical"] else 1


COLD_LINKS = "5,20,50,handover"
COLD_GAMMAS = "8,12,16,24"


def _link(name: str):
    from specnb.link.emulate import Link
    from specnb.study.adaptive_gamma import changing_link, handover_link

    named = {"changing": changing_link, "handover": handover_link}
    return named[name](100) if name in named else Link(float(name), 100)


def cold(args: argparse.Namespace) -> int:
    """--cold: one fresh process per (repetition, link), one at a time; then the pooled summary."""
    import random
    import subprocess

    import pandas as pd

    from specnb.measure.provenance import git_state, machine, versions
    from specnb.study.cold_start import cold_markdown, cold_summary

    start = dt.datetime.now(dt.timezone.utc)
    out = args.out or Path("docs/measurements") / f"adaptive-cold-{start:%Y-%m-%d}"
    (out / "parts").mkdir(parents=True, exist_ok=True)
    links = args.links or COLD_LINKS
    gammas = args.gammas or COLD_GAMMAS
    load_before, t0 = os.getloadavg(), time.perf_counter()
    order = random.Random(args.seed)
    children = []
    for proc in range(args.procs):
        for link in order.sample(links.split(","), len(links.split(","))):
            spec = {"link": link, "proc": proc, "procs": args.procs, "generations": args.generations,
                    "tokens": args.tokens, "gammas": gammas, "seed": args.seed, "cloud": args.cloud, "edge": args.edge,
                    "out": str(out)}
            t1 = time.perf_counter()
            res = subprocess.run([sys.executable, __file__, "--cold-child", json.dumps(spec)])
            children.append({"link": link, "proc": proc, "rc": res.returncode, "wall_s": round(time.perf_counter() - t1, 1)})
            if res.returncode:
                print(f"process {proc} on {link} failed ({res.returncode})", file=sys.stderr)
                return 1
    wall, load_after = time.perf_counter() - t0, os.getloadavg()
    df = pd.concat([_read_rows(p) for p in sorted((out / "parts").glob("*.csv"))], ignore_index=True)
    s = cold_summary(df)
    table = cold_markdown(s)
    _write_tables(out, df, s, table)
    run = {"started_utc": start.isoformat(timespec="seconds"), "wall_s": round(wall, 1),
           "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
           "machine": machine(), "git": git_state(), "versions": versions(),
           "cloud": args.cloud, "edge": args.edge, "dtype": "float32", "threads": 1,
           "prompts": f"builtin:code x {args.generations}, rotated by process", "max_new_tokens": args.tokens,
           "generations": args.generations, "procs_per_link": args.procs, "seed": args.seed, "bandwidth_mbps": 100,
           "links": links, "gammas": [int(g) for g in gammas.split(",")], "adaptive_cap": 32,
           "warmup": "one generation of 16 tokens at gamma 4 on a prompt outside the set, per process",
           "children": children, "all_identical": bool(df.identical.all()), "rows": len(df)}
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(table)
    return 0 if run["all_identical"] else 1


def cold_resummarize(run: Path) -> int:
    """Summary and table of a --cold run folder again, from its rows (e.g. after a change of the table's layout);
    run.json says with which commit."""
    from specnb.measure.provenance import git_state
    from specnb.study.cold_start import cold_markdown, cold_summary

    df = _read_rows(run / "rows.csv")
    s = cold_summary(df)
    s.to_csv(run / "summary.csv", index=False)
    (run / "table.md").write_text(cold_markdown(s) + "\n")
    meta = json.loads((run / "run.json").read_text())
    meta["resummarized_with"] = git_state()
    (run / "run.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(cold_markdown(s))
    return 0


def _write_tables(out: Path, df: pd.DataFrame, s: pd.DataFrame, table: str) -> None:
    """A run's ``rows.csv`` (token lists as lists), ``summary.csv`` and ``table.md``."""
    df.assign(tokens=df.tokens.map(list), drafted=df.drafted.map(list)).to_csv(out / "rows.csv", index=False)
    s.to_csv(out / "summary.csv", index=False)
    (out / "table.md").write_text(table + "\n")


def _read_rows(path: Path):
    import pandas as pd

    df = pd.read_csv(path)
    for col in ("tokens", "drafted"):
        df[col] = df[col].map(json.loads)
    df["rtt_ms"] = df["rtt_ms"].astype(str)
    return df


def cold_child(spec: dict) -> int:
    """One fresh process of --cold: load, serve, connect, warm up, generations 1..N on one link."""
    from specnb import ModelSpec, connect, experiment, load
    from specnb.chat import Prompting
    from specnb.link import local_server
    from specnb.prompts import load_prompts
    from specnb.study.cold_start import cold_start

    experiment.quiet()
    n, proc, procs = spec["generations"], spec["proc"], spec["procs"]
    link = _link(spec["link"])
    name = getattr(link, "label", None) or spec["link"]
    out = Path(spec["out"])
    edge = load(ModelSpec(spec["edge"], dtype="float32", device="cpu", threads=1))
    with local_server(spec["cloud"], dtype="float32", threads=1) as address:
        cloud = connect(address)
        render = Prompting(cloud.tokenizer, "auto", "cloud").render
        chosen = load_prompts("builtin:code", n)
        spare = [p for p in load_prompts("builtin:code", n + 1) if p.id not in {c.id for c in chosen}]
        shift = proc * n // procs  # each process starts at another prompt: none is always generation 1
        ids = [(i + shift) % n for i in range(n)]
        df = cold_start(edge, cloud, [render(chosen[i]) for i in ids], link, name=name, proc=proc, prompt_ids=ids,
                        gammas=tuple(int(g) for g in spec["gammas"].split(",")), max_new_tokens=spec["tokens"],
                        seed=spec["seed"], warmup=render(spare[0]) if spare else render(chosen[-1]),
                        progress=lambda m: print(m, file=sys.stderr, flush=True))
    safe = spec["link"].replace(".", "_")
    for variant, ctl in df.attrs.get("controllers", {}).items():
        if hasattr(ctl, "save"):  # a library whose controllers can be saved
            ctl.save(out / "controllers" / f"{safe}-{proc}-{variant.replace(':', '_').replace('/', '_')}.json", link=name, process=proc, variant=variant)
    df.assign(tokens=df.tokens.map(list), drafted=df.drafted.map(list)).to_csv(out / "parts" / f"{safe}-{proc}.csv",
                                                                                index=False)
    return 0


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
