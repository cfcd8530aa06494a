"""Quality figures of a built pair: greedy acceptance, step cost ratio, samples, speed-up.

Greedy acceptance is computed exactly, without running the speculative loop: greedy
verification's output is the cloud's greedy continuation ``y``, and in each round the edge's
drafts are accepted while the edge's argmax, given the same prefix, equals ``y``'s next token.
So one teacher-forced edge pass over ``prompt + y`` gives the per-position matches
``m_t``, and the rounds replay on them: a round starting at ``t`` accepts the ``k`` leading
matches of ``m_t .. m_{t+gamma-1}``, then the cloud adds one token (its correction or the
bonus), so the next round starts at ``t + k + 1``.
"""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache, PreTrainedModel


@torch.no_grad()
def greedy_continuation(model: PreTrainedModel, ids: list[int], n: int) -> list[int]:
    """The model's greedy continuation of ``ids``: ``n`` tokens, EOS not special."""
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=model.config.pad_token_id)
    return out[0, len(ids):].tolist()


@torch.no_grad()
def edge_matches(edge: PreTrainedModel, ids: list[int], continuation: list[int]) -> list[bool]:
    """For each continuation token, whether the edge's argmax given the prefix predicts it."""
    seq = torch.tensor([ids + continuation])
    pred = edge(input_ids=seq[:, :-1]).logits[0, len(ids) - 1:].argmax(-1).tolist()
    return [p == t for p, t in zip(pred, continuation)]


def replay_rounds(matches: list[bool], gamma: int) -> tuple[int, int, int]:
    """(drafted, accepted, rounds) of greedy speculation over ``matches`` (see module doc)."""
    t = drafted = accepted = rounds = 0
    while t < len(matches):
        g = min(gamma, len(matches) - t - 1)
        k = 0
        while k < g and matches[t + k]:
            k += 1
        drafted += g
        accepted += k
        rounds += 1
        t += k + 1
    return drafted, accepted, rounds


@torch.no_grad()
def step_ms(model: PreTrainedModel, ids: list[int], steps: int = 40) -> float:
    """Median milliseconds of one cached single-token forward step after ``ids``."""
    cache = DynamicCache(config=model.config)
    out = model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
    tok = out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = model(input_ids=tok, cache=cache, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def pair_quality(edge: PreTrainedModel, cloud: PreTrainedModel, tokenizer, prompts: list[str],
                 new_tokens: int, gammas: tuple[int, ...] = (2, 3, 4, 5, 6)) -> dict:
    """Acceptance per gamma, cost ratio c, repetition and samples on ``prompts``."""
    per_gamma = {g: [0, 0, 0] for g in gammas}
    match_total = match_n = 0
    samples, repeats = [], []
    for i, text in enumerate(prompts):
        ids = tokenizer(text)["input_ids"]
        cont = greedy_continuation(cloud, ids, new_tokens)
        matches = edge_matches(edge, ids, cont)
        match_total += sum(matches)
        match_n += len(matches)
        for g in gammas:
            d, a, r = replay_rounds(matches, g)
            per_gamma[g][0] += d
            per_gamma[g][1] += a
            per_gamma[g][2] += r
        repeats.append(repeated_fraction(cont))
        if i < 3:
            edge_cont = greedy_continuation(edge, ids, new_tokens)
            samples.append({"prompt": text, "cloud": tokenizer.decode(cont),
                            "edge": tokenizer.decode(edge_cont)})
    ids = tokenizer(prompts[0])["input_ids"]
    edge_ms, cloud_ms = step_ms(edge, ids), step_ms(cloud, ids)
    return {
        "prompts": len(prompts), "new_tokens": new_tokens,
        "top1_agreement": round(match_total / match_n, 4),
        "acceptance": {str(g): round(v[1] / max(1, v[0]), 4) for g, v in per_gamma.items()},
        "tokens_per_round": {str(g): round(match_n / v[2], 3) for g, v in per_gamma.items()},
        "edge_step_ms": round(edge_ms, 3), "cloud_step_ms": round(cloud_ms, 3),
        "cost_ratio_c": round(edge_ms / cloud_ms, 4),
        "cloud_repeated_4gram_fraction": round(sum(repeats) / len(repeats), 4),
        "samples": samples,
    }


def repeated_fraction(tokens: list[int], n: int = 4) -> float:
    """Share of the n-grams of ``tokens`` that already occurred earlier in it (0 = none)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    seen: set[tuple[int, ...]] = set()
    repeated = 0
    for gram in grams:
        repeated += gram in seen
        seen.add(gram)
    return repeated / max(1, len(grams))


def speed_ratio(edge_dir: str, cloud_dir: str, prompts: list[str], new_tokens: int,
                gammas: tuple[int, ...] = (2, 3, 4, 5, 6), threads: int = 1) -> dict:
    """Greedy ``speculative`` vs ``autoregressive(optimized=True)`` tokens/s, float32.

    Measured side by side in one process: for each prompt the baseline and every gamma run
    back to back, so a machine that slows down slows all of them alike. Ratios are of total
    tokens over total wall time; the first prompt is run once beforehand as a warm-up.
    """
    from ..decode.loops import autoregressive, speculative
    from ..models import ModelSpec, load

    edge = load(ModelSpec(edge_dir, dtype="float32", device="cpu", threads=threads))
    cloud = load(ModelSpec(cloud_dir, dtype="float32", device="cpu", threads=threads))
    runs = {"autoregressive": lambda p: autoregressive(cloud, p, new_tokens, optimized=True)}
    for g in gammas:
        runs[f"gamma={g}"] = lambda p, g=g: speculative(edge, cloud, p, new_tokens, gamma=g)
    totals = {name: [0, 0.0, 0, 0] for name in runs}  # tokens, seconds, drafted, accepted
    for name, fn in runs.items():
        fn(prompts[0])
    for p in prompts:
        for name, fn in runs.items():
            m = fn(p).metrics
            t = totals[name]
            t[0] += m["new_tokens"]
            t[1] += m["wall_s"]
            t[2] += m.get("drafted") or 0
            t[3] += m.get("accepted") or 0
    tps = {name: t[0] / t[1] for name, t in totals.items()}
    base = tps.pop("autoregressive")
    best = max(tps, key=tps.get)
    return {
        "threads": threads, "prompts": len(prompts), "new_tokens": new_tokens,
        "autoregressive_optimized_tokens_per_s": round(base, 1),
        "speculative_tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "speculative_acceptance": {k: round(totals[k][3] / max(1, totals[k][2]), 4)
                                   for k in tps},
        "best": best, "speedup_best": round(tps[best] / base, 3),
    }
