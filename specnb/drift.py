"""Numeric drift of one model in float16 / bfloat16 against float32, on given prompts.

For each prompt, the float32 model decodes greedily; the sequence prompt + that continuation is
then scored by every dtype in one forward pass (teacher forcing on the float32 path), so the
next-token distributions are compared position by position:

* top-1 agreement = share of positions where argmax p32 == argmax p_low;
* mean KL = mean over positions of KL(p32 || p_low) = sum p32 (log p32 - log p_low), in float64;
* first divergence = index of the first new token where the low-precision model's *own* greedy
  output differs from float32's (None when identical for the whole length).
"""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd
import torch

REFERENCE = "float32"


def _score(m: Any, ids: list[int], start: int) -> torch.Tensor:
    """Log-probabilities (float64, CPU) of the next token at positions ``start - 1 .. len(ids) - 2``."""
    from .models import thread_cap

    with torch.inference_mode(), thread_cap(m.spec.threads):
        logits = m.model(input_ids=torch.tensor([ids], device=m.device)).logits[0, start - 1:-1, : m.vocab_size]
    return torch.log_softmax(logits.to("cpu", torch.float64), dim=-1)


def compare(ref_logp: torch.Tensor, low_logp: torch.Tensor) -> dict[str, float]:
    """Top-1 agreement and mean / max KL(ref || low) of two [positions, vocab] log-prob tensors."""
    kl = (ref_logp.exp() * (ref_logp - low_logp)).sum(-1)
    top1 = (ref_logp.argmax(-1) == low_logp.argmax(-1)).double().mean()
    return {"top1_agreement": float(top1), "mean_kl": float(kl.mean()), "max_kl": float(kl.max())}


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """First index where two token lists differ (a length difference counts), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def measure(model: str, prompts: Iterable[Any], max_new_tokens: int, *, device: str = "cpu",
            dtypes: Iterable[str] = ("float16", "bfloat16"), threads: int | None = None) -> pd.DataFrame:
    """One row per (dtype, prompt): positions compared, top-1 agreement, mean/max KL, first divergence."""
    from .decoding import autoregressive
    from .dtypes import parse_dtype
    from .models import ModelSpec, load

    prompts = list(prompts)
    ref = load(ModelSpec(model, REFERENCE, device, threads))
    paths = []
    for p in prompts:
        ids = ref.encode(p.text)
        out = autoregressive(ref, ids, max_new_tokens).tokens
        paths.append((p, ids, out, _score(ref, ids + out, len(ids))))
    del ref
    rows = []
    for dtype in map(parse_dtype, dtypes):
        low = load(ModelSpec(model, dtype, device, threads))
        for p, ids, out, ref_logp in paths:
            own = autoregressive(low, ids, max_new_tokens).tokens
            rows.append({"dtype": dtype, "prompt": p.id, "positions": len(out),
                         **compare(ref_logp, _score(low, ids + out, len(ids))),
                         "first_divergence": first_divergence(out, own)})
        _free(low)
    return pd.DataFrame(rows)


def _free(m: Any) -> None:
    """Drop a model before loading the next dtype (a 7B model in float32 and float16 may not both fit)."""
    import gc

    device = m.device
    del m
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def for_run(records: list[dict[str, Any]], *, device: str | None = None, max_prompts: int | None = 3,
            dtypes: Iterable[str] = ("float16", "bfloat16")) -> tuple[pd.DataFrame, str]:
    """Drift of the run's cloud model on the run's prompts; returns (rows, a note on what ran or why not).

    The model, prompts, max new tokens, device and threads come from the first ok record that
    used a cloud model. ``device`` overrides the run's (e.g. ``cpu`` where float32 does not fit
    the GPU); a CUDA run analysed on a machine without CUDA falls back to the CPU. Errors (out of
    memory, a missing model) are reported in the note instead of stopping the analysis.
    """
    from .prompts import load_prompts

    rec = next((r for r in records if r.get("status") == "ok" and r.get("cloud")), None)
    if rec is None:
        return pd.DataFrame(), "no ok run used a cloud model: drift not measured"
    s, cloud = rec["settings"], rec["cloud"]
    dev = device or cloud["device"]
    note = ""
    if dev.startswith("cuda") and not torch.cuda.is_available():
        dev, note = "cpu", f" (the run used {cloud['device']}; this machine has no CUDA GPU, so on the CPU)"
    limits = [x for x in (max_prompts, s.get("num_prompts")) if x]
    limit = min(limits) if limits else None
    try:
        prompts = load_prompts(s["prompts"], limit)
        rows = measure(cloud["model"], prompts, s["max_new_tokens"], device=dev, dtypes=dtypes,
                       threads=cloud.get("threads"))
    except Exception as err:  # noqa: BLE001 - the rest of the analysis still stands
        return pd.DataFrame(), f"drift not measured: {type(err).__name__}: {err}"
    return rows, f"{cloud['model']} on {dev}{note}, {len(prompts)} prompt(s), {s['max_new_tokens']} new tokens"


def summary(drift: pd.DataFrame) -> pd.DataFrame:
    """Per dtype: mean top-1 agreement, mean KL, prompts whose greedy output diverged, earliest divergence."""
    if drift.empty:
        return drift
    g = drift.groupby("dtype", sort=False)
    return pd.DataFrame({
        "top1_agreement": g["top1_agreement"].mean(),
        "mean_kl": g["mean_kl"].mean(),
        "prompts": g.size(),
        "diverged": g["first_divergence"].apply(lambda s: int(s.notna().sum())),
        "earliest_divergence": g["first_divergence"].min(),
    })
