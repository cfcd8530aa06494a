"""``specnb demo``: one prompt through every method on one pair, metrics printed side by side.

A quick look, not a benchmark: each method is warmed up with one short generation (the
``cloud_optimized`` baseline compiles there), then timed once on one prompt. Figures to quote
come from ``specnb bench`` (repetitions, intervals, clock probes) or the grid.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from typing import Iterator

from .. import threads
from ..models import ModelSpec, load
from ..prompts import load_prompts
from ..threads import describe, resolve
from .methods import METHODS, WARMUP_TOKENS
from .params import MethodParams

SHOWN = ("new_tokens", "tokens_per_s", "acceptance_rate", "tokens_per_round", "cloud_calls", "edge_calls")


# Warnings transformers raises about its own internal calls, not about ours (transformers 5.x):
# logger -> (start of the message, a piece it must also contain). Each is dropped, nothing else.
HF_INTERNAL_WARNINGS = {
    # AssistedCandidateGenerator calls assistant_model.generate(generation_config=..., min_new_tokens=...,
    # max_new_tokens=...) in every round of generate(assistant_model=...); our call passes no generation_config
    "transformers.generation.utils": ("Passing `generation_config` together with generation-related", "deprecated"),
    # it copies the main model's generation config to the assistant and sets its cache_implementation to None,
    # keeping the max_cache_len of our static set-up (peers.hf_assisted(optimized=True)); the cloud's cache is static
    "transformers.generation.configuration_utils": ("`max_cache_len` is only used with static caches",
                                                    "`cache_implementation=None`"),
}


class _DropMessage(logging.Filter):
    def __init__(self, start: str, contains: str):
        super().__init__()
        self.start, self.contains = start, contains

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith(self.start) and self.contains in text)


@contextlib.contextmanager
def quiet_hf_internal_warnings() -> Iterator[None]:
    """Silence :data:`HF_INTERNAL_WARNINGS` (and nothing else) for the block."""
    added = []
    for name, (start, contains) in HF_INTERNAL_WARNINGS.items():
        logger, drop = logging.getLogger(name), _DropMessage(start, contains)
        logger.addFilter(drop)
        added.append((logger, drop))
    try:
        yield
    finally:
        for logger, drop in added:
            logger.removeFilter(drop)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edge", metavar="MODEL", default="zoo:tiny-edge", help="edge model: folder, hub id or zoo:NAME (default: %(default)s)")
    parser.add_argument("--cloud", metavar="MODEL", default="zoo:tiny-cloud", help="cloud model, same forms (default: %(default)s)")
    parser.add_argument("--dtype", metavar="DTYPE", default="float32", help="dtype of both models: float32, float16, bfloat16 (default: %(default)s)")
    threads.add_arguments(parser)
    parser.add_argument("--prompt", metavar="TEXT", default=None, help="the prompt (default: the first prompt of builtin:code)")
    parser.add_argument("--max-new-tokens", metavar="N", type=int, default=48, help="new tokens (default: %(default)s)")
    parser.add_argument("--gamma", metavar="G", type=int, default=MethodParams.model_fields["gamma"].default,
                        help="draft length of the drafting methods (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    if args.prompt is None:
        args.prompt = load_prompts("builtin:code", limit=1)[0].text
    edge = load(ModelSpec(args.edge, dtype=args.dtype, device="cpu", threads=args.edge_threads))
    cloud = load(ModelSpec(args.cloud, dtype=args.dtype, device="auto", threads=args.cloud_threads))
    # every method of the registry, each decoding as its notebook does at the notebooks' defaults
    settings = MethodParams(gamma=args.gamma)
    models = {"edge": edge, "cloud": cloud}
    runs = {name: m.build(models, settings) for name, m in METHODS.items()}
    print("specnb demo: a quick look, not a benchmark: one prompt, one repetition, each method warmed up "
          "once before it is timed.\nFor figures to quote, use `specnb bench` (repetitions, 95% intervals, "
          "clock probes) or the grid (`specnb grid params/default.yaml`).")
    print(f"prompt: {args.prompt!r}  dtype: {args.dtype}  gamma: {args.gamma}  threads: edge "
          f"{resolve(args.edge_threads)}, cloud {resolve(args.cloud_threads)} (cloud on {cloud.device}; "
          f"usable cores {describe()['usable_cores']})")
    print(f"{'method':<16}" + "".join(f"{k:>18}" for k in SHOWN))
    texts = {}
    with quiet_hf_internal_warnings():
        for name, fn in runs.items():
            fn(args.prompt, min(WARMUP_TOKENS, args.max_new_tokens))  # warm-up: first-call allocations; cloud_optimized compiles here
            g = fn(args.prompt, args.max_new_tokens)
            texts[name] = g.text
            cells = (g.metrics[k] for k in SHOWN)
            print(f"{name:<16}" + "".join(f"{'-' if v is None else (f'{v:.3f}' if isinstance(v, float) else v):>18}" for v in cells))
    print("\ncloud greedy text:", repr(texts["cloud"]))
    same = texts["speculative"] == texts["cloud"]
    print("speculative text identical to the cloud's greedy text:", same)
    return 0 if same else 1
