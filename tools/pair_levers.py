"""What each lever buys on one edge-cloud pair, measured side by side: interleaved repetitions, paired intervals.

    PYTHONPATH=$PWD python tools/pair_levers.py --edge registry:qwen2.5-coder-0.5b-instruct \
        --cloud registry:qwen2.5-coder-1.5b-instruct --dtype bfloat16 --edge-dtype float16 \
        --prompts params/data/code_tasks/question.jsonl --limit 6 --max-new-tokens 32 --reps 2 \
        --json docs/measurements/qwen-coder-<date>/levers.json

Variants, each over the same prompts (rendered with the cloud's chat template), greedy, in one process:

* ``cloud``: the cloud alone, one thread (the baseline every ratio is taken against);
* ``cloud 2 threads``: the cloud alone on both cores (what one machine gives without an edge);
* ``speculative``: the edge in the cloud's dtype drafts ``gamma``, one thread each, one after the other;
* ``speculative, edge <edge-dtype>``: the edge in the dtype whose single step is fastest here;
* ``... ahead``: the same, the edge drafting ahead on its own core while the cloud verifies
  (``speculative(..., ahead=True)``; when the installed specnb has it).

Each repetition runs every variant over every prompt, the variants' order rotated per prompt and
repetition, inside one timed section (the machine-wide timing lock). A ratio's 95% interval is the
paired bootstrap over prompts x repetitions (:func:`specnb.measure.stats.ratio_interval`); an interval
holding 1.0 is "no measurable difference". Every drafting variant must write the cloud's own tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect

from specnb import ModelSpec, autoregressive, load, speculative
from specnb.chat import Prompting
from specnb.measure.provenance import git_state, machine, now, versions, write_json_atomic
from specnb.measure.stats import ratio_interval, speed
from specnb.measure.timing import timed_section
from specnb.prompts import load_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edge", required=True)
    ap.add_argument("--cloud", required=True)
    ap.add_argument("--dtype", default="bfloat16", help="the cloud's dtype (and the plain edge's)")
    ap.add_argument("--edge-dtype", default=None, help="a second edge in this dtype (default: none)")
    ap.add_argument("--prompts", default="params/data/code_tasks/question.jsonl")
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=[], help="variant names to leave out")
    ap.add_argument("--json")
    args = ap.parse_args()

    cloud = load(ModelSpec(args.cloud, dtype=args.dtype, device="cpu", threads=1))
    cloud2 = dataclasses.replace(cloud, spec=dataclasses.replace(cloud.spec, threads=2))  # same weights, 2 threads
    edge = load(ModelSpec(args.edge, dtype=args.dtype, device="cpu", threads=1))
    edge_x = load(ModelSpec(args.edge, dtype=args.edge_dtype, device="cpu", threads=1)) if args.edge_dtype else None
    prompting = Prompting(cloud.tokenizer, "auto", "cloud")
    questions = load_prompts(args.prompts, limit=args.limit)
    prompts = [prompting.render(q) for q in questions]
    n, g = args.max_new_tokens, args.gamma
    has_ahead = "ahead" in inspect.signature(speculative).parameters

    variants = {
        "cloud": lambda p: autoregressive(cloud, p, n),
        "cloud 2 threads": lambda p: autoregressive(cloud2, p, n),
        "speculative": lambda p: speculative(edge, cloud, p, n, gamma=g),
    }
    if has_ahead:
        variants["speculative ahead"] = lambda p: speculative(edge, cloud, p, n, gamma=g, ahead=True)
    if edge_x is not None:
        variants[f"speculative, edge {args.edge_dtype}"] = lambda p: speculative(edge_x, cloud, p, n, gamma=g)
        if has_ahead:
            variants[f"speculative, edge {args.edge_dtype}, ahead"] = (
                lambda p: speculative(edge_x, cloud, p, n, gamma=g, ahead=True))
    for name in args.skip:
        variants.pop(name)
    names = list(variants)
    print(f"{args.edge} -> {args.cloud}, {args.dtype}; {len(prompts)} prompts x {n} tokens, gamma {g}, "
          f"{args.reps} reps; variants: {', '.join(names)}", flush=True)

    for name in names:  # warm-up: first calls, allocations, the worker thread
        variants[name](prompts[0][:])
    runs = {name: [[None] * len(prompts) for _ in range(args.reps)] for name in names}
    with timed_section() as section:
        for r in range(args.reps):
            for i, p in enumerate(prompts):
                k = r * len(prompts) + i
                for name in names[k % len(names):] + names[: k % len(names)]:
                    runs[name][r][i] = variants[name](p)
            print(f"rep {r + 1}: " + ", ".join(
                f"{name} {sum(x.metrics['new_tokens'] for x in runs[name][r]) / sum(x.metrics['wall_s'] for x in runs[name][r]):.2f}"
                for name in names), flush=True)

    table = {name: [[[x.metrics["new_tokens"], x.metrics["wall_s"]] for x in rep] for rep in runs[name]] for name in names}
    base = table["cloud"]
    rows = []
    for name in names:
        gens = [x for rep in runs[name] for x in rep]
        same = all(x.tokens == y.tokens for x, y in zip(gens, (y for rep in runs["cloud"] for y in rep)))
        iv = ratio_interval(table[name], base, paired_reps=True)
        drafted = sum(x.metrics.get("drafted", 0) for x in gens)
        rows.append({
            "variant": name, "tokens_per_s": speed(__import__("numpy").asarray(table[name], dtype=float)),
            "vs_cloud": iv.value, "low": iv.low, "high": iv.high, "measurable": not iv.holds_one,
            "acceptance": sum(x.metrics.get("accepted", 0) for x in gens) / drafted if drafted else None,
            "tokens_per_round": (sum(x.metrics["new_tokens"] for x in gens) / sum(x.metrics.get("rounds", 0) for x in gens)
                                 if drafted else None),
            "edge_idle_share": (sum(x.metrics.get("edge_idle_share", 0) * x.metrics["wall_s"] for x in gens)
                                / sum(x.metrics["wall_s"] for x in gens)) if "ahead" in name else None,
            "writes_cloud_tokens": same,
        })
    print(f"\n{'variant':<36}{'tok/s':>8}  vs cloud (95% CI)            acceptance  tok/round  cloud's tokens")
    for row in rows:
        acc = "-" if row["acceptance"] is None else f"{row['acceptance']:.3f}"
        tpr = "-" if row["tokens_per_round"] is None else f"{row['tokens_per_round']:.2f}"
        note = "" if row["measurable"] else ", no measurable difference"
        print(f"{row['variant']:<36}{row['tokens_per_s']:>8.2f}  {row['vs_cloud']:.2f} ({row['low']:.2f}-{row['high']:.2f}){note:<26}"
              f"{acc:>10}{tpr:>11}  {'yes' if row['writes_cloud_tokens'] else 'NO'}")
    if args.json:
        write_json_atomic(args.json, {"tool": "tools/pair_levers.py", "args": vars(args), "rows": rows, "tables": table,
                                      "prompts": [q.text for q in questions], "timing": section.info,
                                      "machine": machine(), "git": git_state(), "versions": versions(), "created": now()})
        print(f"record: {args.json}")


if __name__ == "__main__":
    main()
