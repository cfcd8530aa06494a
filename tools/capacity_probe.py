"""A first, small capacity probe: N replayed edges (edge-cloud speculation) and N cloud-only streams
against ``specnb serve --batch none`` and ``--batch dynamic``.

Not the capacity study (notebooks/capacity.ipynb): one prompt, greedy, no link emulation, a few N. Each edge
replays the same real edge run (recorded once, drafting times included), so the edges cost the machine
sleeps only and the server's model calls are the load. Prints one line per (policy, N): goodput (new
tokens per second, all edges), the slowest and the mean per-edge rate, and the server's batch sizes.

    PYTHONPATH=$PWD python tools/capacity_probe.py --n 1 2 4 8 --tokens 48
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import threading
import time

from specnb import ModelSpec, connect, load, speculative
from specnb.study.replay import RecordingDrafter, ReplayedEdge


def serve(policy: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "specnb.cli", "serve", "--model", "zoo:tiny-cloud", "--device", "cpu",
           "--threads", "1", "--port", "0", "--max-sessions", "40", "--batch", policy, "--max-batch", str(max_batch)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    match = re.fullmatch(r"listening on (\S+)\n", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"specnb serve did not start: {line!r}")
    return proc, match.group(1)


def one_n(address: str, recording, prompt: str, tokens: int, gamma: int, n: int, method: str) -> dict:
    rates: list[float] = [0.0] * n
    news: list[int] = [0] * n

    def edge(i: int) -> None:
        if method == "cloud-only":  # streamed from the server, no edge
            g = connect(address).autoregressive(prompt, tokens)
        else:
            g = speculative(ReplayedEdge(recording), connect(address), prompt, tokens, gamma=gamma)
        news[i], rates[i] = len(g.tokens), len(g.tokens) / g.metrics["wall_s"]

    t0 = time.perf_counter()
    threads = [threading.Thread(target=edge, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    return {"goodput": sum(news) / wall, "slowest": min(rates), "mean": sum(rates) / n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--gamma", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per (N, policy), interleaved; medians printed")
    ap.add_argument("--prompt", default="def parse(text):")
    ap.add_argument("--methods", nargs="+", default=["edge-cloud", "cloud-only"], choices=["edge-cloud", "cloud-only"])
    args = ap.parse_args()
    edge = load(ModelSpec("zoo:tiny-edge", dtype="float32", device="cpu", threads=1))
    procs, addresses = {}, {}
    try:
        for policy in ("none", "dynamic"):  # both up at once, runs interleaved: the shared machine's load hits both
            procs[policy], addresses[policy] = serve(policy, max(args.n))
        recorder = RecordingDrafter(edge)
        speculative(recorder, connect(addresses["none"]), args.prompt, args.tokens, gamma=args.gamma)  # the real edge
        for n in args.n:
            cases = [(m, p) for m in args.methods for p in addresses]
            runs: dict[tuple[str, str], list[dict]] = {c: [] for c in cases}
            sizes: dict[tuple[str, str], dict[str, int]] = {}
            for _ in range(args.reps):
                for method, policy in cases:
                    address = addresses[policy]
                    before = dict(connect(address).status()["batches"])
                    runs[method, policy].append(one_n(address, recorder.recording, args.prompt, args.tokens,
                                                      args.gamma, n, method))
                    after = connect(address).status()["batches"]
                    for k, v in after.items():
                        got = sizes.setdefault((method, policy), {})
                        got[k] = got.get(k, 0) + v - before.get(k, 0)
            for (method, policy), rs in runs.items():
                med = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                kept = {k: v for k, v in sizes.get((method, policy), {}).items() if v}
                print(f"{method:11s} {policy:8s} N={n:2d} goodput {med['goodput']:7.1f} tok/s  per edge: slowest {med['slowest']:6.1f}, "
                      f"mean {med['mean']:6.1f} tok/s  (medians of {args.reps})  batches {kept}", flush=True)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
