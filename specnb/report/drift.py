"""Numeric drift of one model in float16 / bfloat16 against float32, on given prompts, with float32's own noise floor.

For each prompt, float32 decodes greedily with a KV cache, as the runs do (``P``, float32's text).
Every dtype then reads ``P`` two ways, and the next-token distributions are compared position by
position with float32's on the same way:

* **one prefill** (teacher forcing in a single forward pass over prompt + ``P``):
  ``top1_agreement`` = share of positions where argmax p32 == argmax p_dtype; ``mean_kl`` /
  ``max_kl`` = KL(p32 || p_dtype) = sum p32 (log p32 - log p_dtype), in float64;
* **KV-cache decoding** (one token per forward call, fed ``P``): ``decode_top1_agreement``,
  ``decode_mean_kl``; ``first_divergence`` = the first new token where the dtype picks another
  token than ``P``: exactly where its *own* free-running greedy output departs from float32's
  (up to there both read the same text), None when identical for the whole length;
  ``margin`` = float32's log-probability gap between its two best tokens there (small: a near-tie).

The **noise floor** (row ``float32 (noise floor)``, asked for with ``"float32"`` in ``dtypes``) is
float32 against itself across the two ways: one prefill vs KV-cache decoding, the same weights
and tokens, only the order of the floating-point operations differs. Its columns compare float32's
prefill distributions with its decoding ones (KL(decoding || prefill)); its ``first_divergence``
is the first new token where float32 scored in one prefill would pick another token than float32
decoding did. A dtype's divergence at or after the floor's own on that prompt, or with a decoding
KL within the floor's, is not evidence of low-precision damage (:func:`summary`'s ``beyond_floor``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd
import torch

from ..chat import Prompting
from ..measure.metrics import first_divergence

REFERENCE = "float32"
FLOOR = "float32 (noise floor)"


@dataclass
class _Path:
    """float32's greedy text on one prompt and its log-probs along it, both ways ([positions, vocab], float64)."""

    prompt: str
    ids: list[int]
    tokens: list[int]
    decoded: torch.Tensor
    prefilled: torch.Tensor


def _score(m: Any, ids: list[int], start: int) -> torch.Tensor:
    """Log-probabilities (float64, CPU) of the next token at positions ``start - 1 .. len(ids) - 2``, in one prefill."""
    from ..models import thread_cap

    with torch.inference_mode(), thread_cap(m.spec.threads):
        logits = m.model(input_ids=torch.tensor([ids], device=m.device)).logits[0, start - 1:-1, : m.vocab_size]
    return torch.log_softmax(logits.to("cpu", torch.float64), dim=-1)


def _decode(m: Any, ids: list[int], max_new_tokens: int, feed: list[int] | None = None
            ) -> tuple[list[int], list[int], torch.Tensor]:
    """Greedy decoding with a KV cache, one token per forward call (the plain set-up of the runs).

    Returns (tokens fed, the model's own argmax at each position, log-probs [positions, vocab]
    float64 CPU). Without ``feed`` the model feeds its own picks (free-running, stops after EOS);
    with ``feed`` it is fed those tokens instead, which is the same computation as its free-running
    decoding up to the first position where its own pick differs.
    """
    from ..decode.steps import Steps
    from ..models import thread_cap

    n = len(feed) if feed is not None else max_new_tokens
    vocab, eos = m.vocab_size, m.eos_ids
    with torch.inference_mode(), thread_cap(m.spec.threads):
        steps = Steps(m, len(ids) + n, False)
        logits = [steps.prefill(ids, vocab)[-1]]
        tokens: list[int] = []
        while True:
            tokens.append(feed[len(tokens)] if feed is not None else int(logits[-1].argmax()))
            if len(tokens) == n or (feed is None and tokens[-1] in eos):
                break
            logits.append(steps.step(torch.tensor([[tokens[-1]]], device=m.device), 1, vocab)[-1])
        stacked = torch.stack(logits)
        own = stacked.argmax(-1).tolist()
    return tokens, own, torch.log_softmax(stacked.to("cpu", torch.float64), dim=-1)


def compare(ref_logp: torch.Tensor, low_logp: torch.Tensor) -> dict[str, float]:
    """Top-1 agreement and mean / max KL(ref || low) of two [positions, vocab] log-prob tensors."""
    kl = (ref_logp.exp() * (ref_logp - low_logp)).sum(-1)
    top1 = (ref_logp.argmax(-1) == low_logp.argmax(-1)).double().mean()
    return {"top1_agreement": float(top1), "mean_kl": float(kl.mean()), "max_kl": float(kl.max())}


def _margin(logp: torch.Tensor, at: int | None) -> float:
    """Gap between the two best log-probabilities at position ``at`` (NaN when None)."""
    if at is None or at >= len(logp):
        return float("nan")
    top = logp[at].topk(2).values
    return float(top[0] - top[1])


def _row(dtype: str, path: _Path, prefill: dict[str, float], decode: dict[str, float], diverged: int | None
         ) -> dict[str, Any]:
    return {"dtype": dtype, "prompt": path.prompt, "positions": len(path.tokens), **prefill,
            "decode_top1_agreement": decode["top1_agreement"], "decode_mean_kl": decode["mean_kl"],
            "first_divergence": diverged, "margin": _margin(path.decoded, diverged)}


def _floor_row(path: _Path) -> dict[str, Any]:
    """float32 against itself: its prefill distributions vs its decoding ones along its own text."""
    both = compare(path.decoded, path.prefilled)
    return _row(FLOOR, path, both, both, first_divergence(path.tokens, path.prefilled.argmax(-1).tolist()))


_CACHE: dict[tuple, pd.DataFrame] = {}


def measure(model: str, prompts: Iterable[Any], max_new_tokens: int, *, device: str = "cpu",
            dtypes: Iterable[str] = ("float16", "bfloat16"), threads: int | None = None,
            progress: bool = True, chat_template: str = "none") -> pd.DataFrame:
    """One row per (dtype, prompt), in the order of ``dtypes``; ``float32`` there is the noise floor (row ``FLOOR``).

    Each prompt's first turn is rendered as a run with ``chat_template`` renders it (:mod:`specnb.chat`),
    so the drift is measured on the tokens the run decoded.

    Each dtype is loaded once; float32's paths are decoded once and reused by every dtype; a
    repeated call with the same arguments (a notebook cell run again) returns the frame it measured.
    ``progress`` draws one tqdm bar on stderr (one step per model and prompt; ``TQDM_DISABLE=1`` hides it).
    """
    from tqdm import tqdm

    from ..dtypes import parse_dtype
    from ..models import ModelSpec, load

    prompts = list(prompts)
    dtypes = [parse_dtype(d) for d in dtypes]
    key = (model, tuple((p.id, p.text) for p in prompts), max_new_tokens, device, tuple(dtypes), threads, chat_template)
    if key in _CACHE:
        return _CACHE[key].copy()
    low = [d for d in dtypes if d != REFERENCE]
    bar = tqdm(total=len(prompts) * (1 + len(low)), desc="drift", unit="prompt", file=sys.stderr,
               mininterval=0, dynamic_ncols=True, **({} if progress else {"disable": True}))
    try:
        bar.set_postfix_str(f"loading {REFERENCE}")
        ref = load(ModelSpec(model, REFERENCE, device, threads))
        prompting = Prompting(ref.tokenizer, chat_template)
        paths = []
        for p in prompts:
            bar.set_postfix_str(f"{REFERENCE} {p.id}")
            ids = prompting.render(p)  # the first turn, as the run decoded it
            tokens, _, decoded = _decode(ref, ids, max_new_tokens)
            paths.append(_Path(p.id, ids, tokens, decoded, _score(ref, ids + tokens, len(ids))))
            bar.update()
        footprint = _footprint(ref)
        del ref
        _release(*footprint)
        rows: dict[str, list[dict[str, Any]]] = {REFERENCE: [_floor_row(path) for path in paths]}
        for dtype in low:
            bar.set_postfix_str(f"loading {dtype}")
            m = load(ModelSpec(model, dtype, device, threads))
            rows[dtype] = []
            for path in paths:
                bar.set_postfix_str(f"{dtype} {path.prompt}")
                _, own, decoded = _decode(m, path.ids, max_new_tokens, feed=path.tokens)
                prefilled = _score(m, path.ids + path.tokens, len(path.ids))
                rows[dtype].append(_row(dtype, path, compare(path.prefilled, prefilled),
                                        compare(path.decoded, decoded), first_divergence(path.tokens, own)))
                bar.update()
            footprint = _footprint(m)
            del m
            _release(*footprint)
    finally:
        bar.close()
    frame = pd.DataFrame([r for d in dtypes for r in rows[d]])
    _CACHE[key] = frame.copy()
    return frame


def _footprint(m: Any) -> tuple[str, bool]:
    """(device type, whether the model's weights take 1 GiB or more)."""
    return m.device.type, sum(p.numel() * p.element_size() for p in m.model.parameters()) >= 1 << 30


def _release(device_type: str, big: bool) -> None:
    """After the caller dropped a model, before loading the next dtype (a 7B model in float32 and float16 may
    not both fit): a full garbage collection (about a second with torch and transformers loaded) runs only
    where it frees something worth it, on an accelerator or for a model of 1 GiB or more; a small CPU model
    is freed by reference counting."""
    import gc

    if big or device_type != "cpu":
        gc.collect()
    if device_type == "cuda":
        torch.cuda.empty_cache()


def for_run(records: list[dict[str, Any]], *, device: str | None = None, max_prompts: int | None = 3,
            dtypes: Iterable[str] = (REFERENCE, "float16", "bfloat16"), progress: bool = True
            ) -> tuple[pd.DataFrame, str]:
    """Drift of the run's cloud model on the run's prompts; returns (rows, a note on what ran or why not).

    The model, prompts, max new tokens, device and threads come from the first ok record that
    used a cloud model. ``device`` overrides the run's (e.g. ``cpu`` where float32 does not fit
    the GPU); a CUDA run analysed on a machine without CUDA falls back to the CPU. Errors (out of
    memory, a missing model) are reported in the note instead of stopping the analysis.
    ``float32`` in ``dtypes`` (the default) measures the noise floor.
    """
    from ..prompts import load_prompts

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
                       threads=cloud.get("threads"), progress=progress,
                       chat_template=s.get("chat_template", "none"))  # runs before templates: raw text
    except Exception as err:  # noqa: BLE001 - the rest of the analysis still stands
        return pd.DataFrame(), f"drift not measured: {type(err).__name__}: {err}"
    return rows, f"{cloud['model']} on {dev}{note}, {len(prompts)} prompt(s), {s['max_new_tokens']} new tokens"


def _beyond_floor(drift: pd.DataFrame) -> pd.Series:
    """Per row: True where the dtype diverged and float32's own noise does not explain it.

    Explained (False) when float32's two paths already diverge on that prompt at or before that
    token, or when the dtype's decoding KL is within the floor's KL on that prompt. NaN without a
    floor row for the prompt (or for the floor row itself); False where nothing diverged.
    """
    floor = drift[drift["dtype"] == FLOOR].set_index("prompt")
    out = pd.Series(float("nan"), index=drift.index, dtype=object)
    for i, row in drift.iterrows():
        if row["dtype"] == FLOOR or row["prompt"] not in floor.index:
            continue
        at, f = row["first_divergence"], floor.loc[row["prompt"]]
        if pd.isna(at):
            out[i] = False
            continue
        explained = (pd.notna(f["first_divergence"]) and f["first_divergence"] <= at) or \
            row["decode_mean_kl"] <= f["mean_kl"]
        out[i] = not explained
    return out


def summary(drift: pd.DataFrame) -> pd.DataFrame:
    """Per dtype (the noise floor first when measured): mean top-1 agreement and KL both ways, prompts,
    prompts whose greedy output diverged, earliest divergence, and how many of those divergences
    float32's own noise does not explain (``beyond_floor``; NaN without a floor)."""
    if drift.empty:
        return drift
    drift = drift.copy()
    for col in ("decode_top1_agreement", "decode_mean_kl"):  # frames measured before these columns existed
        if col not in drift:
            drift[col] = float("nan")
    drift["beyond_floor"] = _beyond_floor(drift)
    g = drift.groupby("dtype", sort=False)
    beyond = drift[drift["beyond_floor"].eq(True)].groupby("dtype", sort=False)["first_divergence"]
    out = pd.DataFrame({
        "top1_agreement": g["top1_agreement"].mean(),
        "decode_top1_agreement": g["decode_top1_agreement"].mean(),
        "mean_kl": g["mean_kl"].mean(),
        "decode_mean_kl": g["decode_mean_kl"].mean(),
        "prompts": g.size(),
        "diverged": g["first_divergence"].apply(lambda s: int(s.notna().sum())),
        "earliest_divergence": g["first_divergence"].min(),
        "beyond_floor": g["beyond_floor"].apply(lambda s: float("nan") if s.isna().all() else int(s.eq(True).sum())),
        "earliest_beyond_floor": beyond.min(),
    })
    order = list(drift["dtype"].unique())  # as measured, not the sorted union of the columns' indexes
    return out.reindex(sorted(order, key=lambda d: d != FLOOR))
