"""specnb's translating drafter beside Hugging Face's universal assisted generation, on tiny pairs with
different tokenizers (the figures of docs/tokenizers.md).

    PYTHONPATH=. python tools/tokenizer_pairs.py [--out /tmp/tokpairs] [--reps 5] [--tokens 48] [--gamma 4]

Builds (in --out) a cloud and three edges trained briefly on the same text (tests/tiny_tokenizers.py):
one with the cloud's tokenizer (the reference), one with another byte-level BPE, one SentencePiece-style;
then, per edge, times the cloud alone, ``speculative`` and ``hf_assisted`` (greedy), interleaved over
``--reps`` repetitions on one thread each, and prints tokens/s over the cloud's with 95% intervals,
acceptance, tokens per round, mismatches per round and vocabulary overlap; sampling acceptance (T=1) too,
and whether sampling is exact (first-token total variation from the cloud's distribution, both methods).
Writes ``tokenizer_pairs.json`` in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

PROMPTS = [
    "def parse(text):", "The quick brown", "class Stack:\n    def push(self, item):",
    "Unicode: café, naïve", "for i in range(10):\n", "while True:\n",
]


# exactness of sampling: the first new token over TV_DRAWS seeds against the cloud's own distribution (T = 1),
# on a prompt where the edge's likeliest next token is not one cloud token (for the pairs with two tokenizers)
TV_PROMPTS = {"same": "class Stack:\n    def push(self, item):\n        self.items.",
              "bytelevel": "class Stack:\n    def push(self, item):\n        self.items.",
              "sentencepiece": "The quick brown fox"}
TV_DRAWS = 400


def first_token_tv(edge, cloud, text: str, draws: int) -> dict:
    """Total variation between the cloud's next-token distribution and the first token that speculative
    sampling (specnb, then Hugging Face) emits, over ``draws`` seeds: the 8 likeliest tokens + the rest."""
    import torch

    from specnb import speculative
    from specnb.decode.hf_reference import hf_assisted

    prompt = cloud.encode(text)
    with torch.inference_mode():
        p = torch.softmax(cloud.model(torch.tensor([prompt])).logits[0, -1, : cloud.vocab_size].float(), -1)
    top = torch.topk(p, 8).indices
    ref = torch.cat([p[top], (1 - p[top].sum()).view(1)])
    out = {"prompt": text, "draws": draws}
    for key, run in (("speculative", lambda s: speculative(edge, cloud, prompt, 2, gamma=1, verify="sample", temperature=1.0, seed=s)),
                     ("hf_assisted", lambda s: hf_assisted(edge, cloud, prompt, 2, gamma=1, temperature=1.0, seed=s))):
        counts = torch.zeros_like(p)
        for s in range(draws):
            counts[run(s).tokens[0]] += 1
        emp = torch.cat([counts[top] / draws, (draws - counts[top].sum()).view(1) / draws])
        out[key] = 0.5 * (emp - ref).abs().sum().item()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/tokpairs")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--gamma", type=int, default=4)
    args = ap.parse_args()

    import torch

    from specnb import ModelSpec, autoregressive, load, speculative
    from specnb.decode.hf_reference import hf_assisted
    from specnb.measure.stats import ratio_interval
    from specnb.decode.translate import pair_info
    from tiny_models import build_tokenizer
    from tiny_tokenizers import build_other_bytelevel, build_sentencepiece, build_trained

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    c_tok = build_tokenizer()
    toks = {"same": c_tok, "bytelevel": build_other_bytelevel(), "sentencepiece": build_sentencepiece()}
    if not (out / "cloud" / "config.json").exists():
        build_trained(out / "cloud", c_tok, seed=0, hidden=96, steps=150)
        for i, (name, tok) in enumerate(toks.items(), 1):
            build_trained(out / name, tok, seed=i, steps=150)
    spec = lambda name: ModelSpec(str(out / name), device="cpu", threads=1)  # noqa: E731
    cloud = load(spec("cloud"))
    prompts = [cloud.encode(p) for p in PROMPTS]
    n, g = args.tokens, args.gamma
    record = {"settings": vars(args) | {"prompts": PROMPTS, "threads": 1}, "pairs": {}}
    for name in toks:
        edge = load(spec(name))
        runs = {
            "cloud": lambda p: autoregressive(cloud, p, n),
            "speculative": lambda p: speculative(edge, cloud, p, n, gamma=g),
            "hf_assisted": lambda p: hf_assisted(edge, cloud, p, n, gamma=g),
        }
        failed = {}  # warm-up over every prompt; Hugging Face's universal assisted generation may crash on some
        for i, p in enumerate(prompts):
            for key, fn in runs.items():
                try:
                    fn(p)
                except RuntimeError as err:
                    if key != "hf_assisted":
                        raise
                    failed[i] = f"{type(err).__name__}: {str(err)[:100]}"
        keep = [i for i in range(len(prompts)) if i not in failed]  # every method is timed on the same prompts
        tables = {k: [] for k in runs}
        gens = {}
        for rep in range(args.reps):  # interleaved: each repetition runs every method on every prompt
            for key, fn in runs.items():
                row = []
                for i in keep:
                    gen = fn(prompts[i])
                    row.append((gen.metrics["new_tokens"], gen.metrics["wall_s"]))
                    gens.setdefault(key, {})[i] = gen
                tables[key].append(row)
        want = {i: gens["cloud"][i].tokens for i in keep}
        pair = {"pair": pair_info(edge, cloud), "hf_failed": {PROMPTS[i]: e for i, e in failed.items()}}
        for key in ("speculative", "hf_assisted"):
            gs = list(gens[key].values())
            tot = lambda k: sum(x.metrics.get(k) or 0 for x in gs)  # noqa: E731
            iv = ratio_interval(tables[key], tables["cloud"])
            pair[key] = {
                "speedup": iv.value, "low": iv.low, "high": iv.high, "same_as_cloud": all(gens[key][i].tokens == want[i] for i in want),
                "acceptance": tot("accepted") / tot("drafted") if tot("drafted") else None,
                "tokens_per_round": tot("new_tokens") / tot("rounds"), "edge_calls": tot("edge_calls"), "rounds": tot("rounds"),
            }
            if key == "speculative" and name != "same":
                rounds = tot("translated_rounds")
                pair[key] |= {k: tot(k) for k in ("boundary_mismatches", "retokenized", "held_rounds", "healed_rounds", "heal_misses")}
                pair[key]["mismatches_per_round"] = (tot("boundary_mismatches") + tot("retokenized")) / rounds
        # sampling (T = 1): acceptance only, over 3 seeds per prompt
        samp = [speculative(edge, cloud, p, n, gamma=g, verify="sample", temperature=1.0, seed=s) for p in prompts for s in range(3)]
        hf_s = []
        for p in prompts:
            for s in range(3):
                try:
                    hf_s.append(hf_assisted(edge, cloud, p, n, gamma=g, temperature=1.0, seed=s))
                except RuntimeError as err:
                    pair.setdefault("hf_sampling_failed", []).append(f"{p!r} seed {s}: {str(err)[:60]}")
        acc = lambda gs: sum(x.metrics["accepted"] for x in gs) / max(1, sum(x.metrics["drafted"] for x in gs))  # noqa: E731
        pair["sampling"] = {"speculative_acceptance": acc(samp), "hf_acceptance": acc(hf_s),
                            "speculative_tokens_per_round": sum(x.metrics["new_tokens"] for x in samp) / sum(x.metrics["rounds"] for x in samp),
                            "hf_tokens_per_round": sum(x.metrics["new_tokens"] for x in hf_s) / sum(x.metrics["rounds"] for x in hf_s)}
        pair["first_token_tv"] = first_token_tv(edge, cloud, TV_PROMPTS[name], TV_DRAWS)
        record["pairs"][name] = pair
        print(name, json.dumps(pair, indent=1, default=float), flush=True)
    record["torch_threads"] = torch.get_num_threads()
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    (out / "tokenizer_pairs.json").write_text(json.dumps(record, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
