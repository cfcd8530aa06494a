"""What one forward call costs on this machine, by the number of new tokens it scores: the c and v of the bound.

The speed-up bound S(alpha, gamma, c, v) = (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + v)) prices a
round as gamma edge steps (c cloud steps each) plus one verification of gamma + 1 positions (v cloud
steps). v = 1 holds where a step is bound by reading the weights (a GPU, or a CPU at one token); where
the multi-token forward is bound by arithmetic, v grows with the positions scored. This tool measures,
for each model x dtype x thread count: the median seconds of a forward of k = 1..K new tokens on a KV
cache holding a context of L tokens (the cache cropped back after each call, as a rejected draft is),
and prints the ratio of each to k = 1: v(k) in that model's own steps, and c between the two models.

    PYTHONPATH=$PWD python tools/step_costs.py --model registry:qwen2.5-coder-0.5b-instruct \
        --model registry:qwen2.5-coder-1.5b-instruct --dtypes float32 bfloat16 float16 --threads 1 2 \
        --json docs/measurements/qwen-coder-<date>/step_costs.json

Run it alone on the machine: it is a timing (it takes the timing lock while it times).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache

from specnb import ModelSpec, load
from specnb.measure.provenance import git_state, machine, now, versions, write_json_atomic
from specnb.measure.timing import timed_section


def costs(loaded, context: int, most: int, reps: int) -> list[float]:
    """Median seconds of one forward of k = 1..most new tokens after ``context`` cached tokens."""
    model = loaded.model
    gen = torch.Generator().manual_seed(0)
    vocab = loaded.vocab_size
    ids = torch.randint(0, vocab, (1, context + most), generator=gen)
    out = []
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :context], cache=cache, use_cache=True, logits_to_keep=1)
        for k in range(1, most + 1):
            seen = []
            for _ in range(reps + 1):  # the first call of each width is a warm-up
                t = time.perf_counter()
                model(input_ids=ids[:, context:context + k], cache=cache, use_cache=True, logits_to_keep=k)
                seen.append(time.perf_counter() - t)
                cache.crop(-k)  # transformers 5: a negative count of positions to drop
            out.append(statistics.median(seen[1:]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="repeat: the edge first, then the cloud")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--context", type=int, default=160, help="tokens already in the cache (default 160)")
    ap.add_argument("--most", type=int, default=9, help="largest k, new tokens in one call (default 9)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", help="write the record here")
    args = ap.parse_args()
    rows = []
    for dtype in args.dtypes:
        for name in args.model:
            loaded = load(ModelSpec(name, dtype=dtype, device="cpu", threads=max(args.threads)))
            for threads in args.threads:
                torch.set_num_threads(threads)
                with timed_section():
                    secs = costs(loaded, args.context, args.most, args.reps)
                rows.append({"model": name, "dtype": dtype, "threads": threads, "context": args.context,
                             "seconds": secs, "v": [s / secs[0] for s in secs]})
                print(f"{name:40} {dtype:9} t{threads}  step {secs[0] * 1e3:7.1f} ms   v(k) k=1..{args.most}: "
                      + " ".join(f"{v:.2f}" for v in rows[-1]["v"]), flush=True)
            del loaded
    for dtype in args.dtypes:
        for threads in args.threads:
            pick = [r for r in rows if r["dtype"] == dtype and r["threads"] == threads]
            if len(pick) == 2:
                print(f"c = edge step / cloud step  {dtype:9} t{threads}: {pick[0]['seconds'][0] / pick[1]['seconds'][0]:.3f}")
    if args.json:
        write_json_atomic(args.json, {"tool": "tools/step_costs.py", "args": vars(args), "rows": rows,
                                      "machine": machine(), "git": git_state(), "versions": versions(), "time": now()})
        print(f"record: {args.json}")


if __name__ == "__main__":
    main()
