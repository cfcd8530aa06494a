"""``specnb demo``: one prompt through every method on one pair, metrics printed side by side.

A quick look, not a benchmark (single run, no warm-up repetitions): use ``specnb bench`` or
the grid for figures you would quote.
"""

from __future__ import annotations

import argparse

from .decoding import autoregressive, speculative
from .models import ModelSpec, load
from .peers import hf_assisted
from .prompts import load_prompts

SHOWN = ("new_tokens", "tokens_per_s", "acceptance_rate", "tokens_per_round", "cloud_calls", "edge_calls")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edge", default="zoo:tiny-edge", help="edge model (folder, hub id or zoo:NAME)")
    parser.add_argument("--cloud", default="zoo:tiny-cloud", help="cloud model")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--edge-threads", type=int, default=1)
    parser.add_argument("--prompt", default=None, help="default: the first prompt of builtin:code")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--gamma", type=int, default=4)


def run(args: argparse.Namespace) -> int:
    if args.prompt is None:
        args.prompt = load_prompts("builtin:code", limit=1)[0].text
    edge = load(ModelSpec(args.edge, dtype=args.dtype, device="cpu", threads=args.edge_threads))
    cloud = load(ModelSpec(args.cloud, dtype=args.dtype, device="auto"))
    runs = {
        "edge": lambda: autoregressive(edge, args.prompt, args.max_new_tokens),
        "cloud": lambda: autoregressive(cloud, args.prompt, args.max_new_tokens),
        "cloud_optimized": lambda: autoregressive(cloud, args.prompt, args.max_new_tokens, optimized=True),
        "speculative": lambda: speculative(edge, cloud, args.prompt, args.max_new_tokens, gamma=args.gamma),
        "hf_assisted": lambda: hf_assisted(edge, cloud, args.prompt, args.max_new_tokens, gamma=args.gamma),
    }
    print(f"prompt: {args.prompt!r}  dtype: {args.dtype}  gamma: {args.gamma}")
    print(f"{'method':<16}" + "".join(f"{k:>18}" for k in SHOWN))
    texts = {}
    for name, fn in runs.items():
        g = fn()
        texts[name] = g.text
        cells = (g.metrics[k] for k in SHOWN)
        print(f"{name:<16}" + "".join(f"{'-' if v is None else (f'{v:.3f}' if isinstance(v, float) else v):>18}" for v in cells))
    print("\ncloud greedy text:", repr(texts["cloud"]))
    same = texts["speculative"] == texts["cloud"]
    print("speculative text identical to the cloud's greedy text:", same)
    return 0 if same else 1
