"""What a verifier without a session KV cache pays per round: docs/capacity.md, "Beyond one server".

A serving engine that scores a client's draft as ``prompt_logprobs`` recomputes the whole context every
round (vLLM does not cache prompt logprobs); a ``specnb serve`` session keeps its KV cache and runs only
``gamma + 1`` tokens. Prints, per model and context length, both per-round costs on this machine (one
CPU thread, float32, medians) and their ratio (:func:`specnb.study.capacity.uncached_cost`).

    PYTHONPATH=$PWD python tools/verify_cost.py --model zoo:tiny-cloud --lengths 64 128 256 448
    PYTHONPATH=$PWD python tools/verify_cost.py --model registry:smollm2-135m-instruct --lengths 256 512 1024 2048
"""

from __future__ import annotations

import argparse
import os

import torch

from specnb import ModelSpec, load
from specnb.study.capacity import uncached_cost


def markdown(df) -> str:
    """A Markdown table (pandas' own needs the tabulate package, which specnb does not depend on)."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + " --- |" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in df.itertuples(index=False)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, help="repeat for several models")
    ap.add_argument("--lengths", type=int, nargs="+", action="append", required=True, help="context lengths, once per --model")
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if len(args.lengths) != len(args.model):
        ap.error("give one --lengths list per --model")
    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}")
    for name, lengths in zip(args.model, args.lengths):
        model = load(ModelSpec(name, dtype="float32", device="cpu", threads=args.threads))
        df = uncached_cost(model, lengths, args.gamma, args.reps)
        print(f"\n{name} (float32, {args.threads} CPU thread(s), gamma {args.gamma}, medians of {args.reps})\n")
        print(markdown(df.round(2)))
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
