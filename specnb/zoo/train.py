"""Training loops of the zoo build: language modelling and distillation, resumable.

Both loops draw batch ``i`` from a generator seeded with ``(seed, i)``, so a run resumed
from a checkpoint at step ``i`` sees exactly the batches an uninterrupted run would have.
A checkpoint (model, optimizer, step, the planned number of steps) is written every
``checkpoint_s`` seconds and at the end, atomically (write then rename).

Distillation (DistillSpec, Zhou et al. 2024) trains the edge (student ``q``) to match the
cloud (teacher ``p``): loss = KL(p || q) summed over the vocabulary, averaged over positions,
plus ``ce_weight`` x the cross-entropy on the batch's own next tokens. On sequences the
cloud generated greedily those next tokens are the cloud's argmax, exactly what greedy
verification accepts.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM


PLAN_FROM, PLAN_AT = 5, 20  # a time budget is turned into steps at the pace of these steps


@dataclass(frozen=True)
class Shape:
    """A Llama model's shape; ``params`` is what the build budget is spent on."""

    width: int
    layers: int
    heads: int
    ffn: int
    context: int = 512

    def config(self, vocab_size: int, eos_id: int) -> LlamaConfig:
        """A tied-embedding ``LlamaConfig`` of this shape (eos doubles as bos and pad)."""
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=self.width, intermediate_size=self.ffn,
            num_hidden_layers=self.layers, num_attention_heads=self.heads,
            num_key_value_heads=self.heads, max_position_embeddings=self.context,
            tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id,
            pad_token_id=eos_id, rope_theta=10000.0,
        )


@dataclass(frozen=True)
class TrainSettings:
    """One training phase; ``steps`` may be 0 to be planned from ``minutes`` at the start."""

    steps: int
    batch: int
    seq: int
    lr: float
    seed: int
    minutes: float = 0.0
    warmup: int = 50
    weight_decay: float = 0.1
    checkpoint_s: float = 180.0
    ce_weight: float = 1.0  # distillation only: weight of the hard-label term
    bf16_autocast: bool = True  # matmuls in bfloat16 (faster on CPUs with native bfloat16 instructions)


def new_model(shape: Shape, vocab_size: int, eos_id: int, seed: int) -> LlamaForCausalLM:
    """A freshly initialised model, the same for the same seed."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(shape.config(vocab_size, eos_id))
    return model.float()


def batch_at(stream: torch.Tensor, step: int, batch: int, seq: int, seed: int) -> torch.Tensor:
    """Batch ``step``: ``batch`` random windows of ``seq + 1`` tokens from a 1-D ``stream``,
    or ``batch`` random rows of a 2-D ``stream`` (one sequence per row; ``seq`` unused)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if stream.dim() == 2:
        return stream[torch.randint(0, len(stream), (batch,), generator=gen)]
    starts = torch.randint(0, len(stream) - seq - 1, (batch,), generator=gen)
    return torch.stack([stream[s:s + seq + 1] for s in starts.tolist()])


def lr_at(step: int, total: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    frac = (step - settings.warmup) / max(1, total - settings.warmup)
    return settings.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, frac))))


def lm_loss(model: LlamaForCausalLM, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``tokens`` [B, S+1]."""
    logits = model(input_ids=tokens[:, :-1]).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())


def distill_loss(student: LlamaForCausalLM, teacher: LlamaForCausalLM, tokens: torch.Tensor,
                 ce_weight: float) -> torch.Tensor:
    """KL(teacher || student) per position plus ``ce_weight`` x next-token cross-entropy."""
    inputs = tokens[:, :-1]
    with torch.no_grad():
        p_log = F.log_softmax(teacher(input_ids=inputs).logits.float(), dim=-1)
    q_log = F.log_softmax(student(input_ids=inputs).logits.float(), dim=-1)
    kl = F.kl_div(q_log.flatten(0, 1), p_log.flatten(0, 1), log_target=True,
                  reduction="batchmean")
    ce = F.nll_loss(q_log.flatten(0, 1), tokens[:, 1:].flatten())
    return kl + ce_weight * ce


@torch.no_grad()
def eval_loss(model: LlamaForCausalLM, stream: torch.Tensor, seq: int, batch: int = 8,
              max_windows: int = 64) -> float:
    """Mean cross-entropy over consecutive, non-overlapping windows of ``stream``."""
    model.eval()
    n = min(max_windows, (len(stream) - 1) // seq)
    windows = torch.stack([stream[i * seq:i * seq + seq + 1] for i in range(n)])
    losses = [lm_loss(model, windows[i:i + batch]).item() * len(windows[i:i + batch])
              for i in range(0, n, batch)]
    model.train()
    return sum(losses) / n


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(model: LlamaForCausalLM, stream: torch.Tensor, settings: TrainSettings,
          checkpoint: Path, desc: str, teacher: LlamaForCausalLM | None = None) -> dict:
    """Train ``model`` on windows of ``stream`` (distilling from ``teacher`` if given).

    Resumes from ``checkpoint`` when it exists. With ``settings.steps == 0`` the number of
    steps is planned from ``settings.minutes`` after timing the first steps, and stored in
    the checkpoint so a resumed run keeps the same schedule. Returns a summary (steps, final
    training loss, seconds spent) for the manifest.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95),
                            weight_decay=settings.weight_decay)
    state = {"step": 0, "total": settings.steps, "seconds": 0.0, "loss": float("nan")}
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state = saved["state"]
    if teacher is not None:
        teacher.eval()
    model.train()
    total = state["total"] or 10**9
    bar = tqdm(total=state["total"] or None, initial=state["step"], desc=desc,
               dynamic_ncols=True, mininterval=5.0)
    started = time.perf_counter() - state["seconds"]
    plan_mark = 0.0
    last_save = time.perf_counter()
    ema = state["loss"]
    while state["step"] < total:
        step = state["step"]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, settings)
        tokens = batch_at(stream, step, settings.batch, settings.seq, settings.seed)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16_autocast):
            if teacher is None:
                loss = lm_loss(model, tokens)
            else:
                loss = distill_loss(model, teacher, tokens, settings.ce_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if math.isnan(ema) else 0.98 * ema + 0.02 * loss.item()
        state.update(step=step + 1, loss=ema, seconds=time.perf_counter() - started)
        if step + 1 == PLAN_FROM:
            plan_mark = state["seconds"]
        if not state["total"] and step + 1 == PLAN_AT:
            state["total"] = _plan_steps(settings, state["seconds"], state["seconds"] - plan_mark)
            total = state["total"]
            bar.reset(total=total)
            bar.update(step + 1)
        else:
            bar.update(1)
        bar.set_postfix(loss=f"{ema:.3f}", refresh=False)
        if time.perf_counter() - last_save > settings.checkpoint_s or state["step"] == total:
            if not settings.steps and state["step"] < total:
                total = state["total"] = _replan(settings, state, bar)
            _save(checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "state": state, "settings": asdict(settings)})
            last_save = time.perf_counter()
    bar.close()
    model.eval()
    return {"steps": state["step"], "train_loss": round(state["loss"], 4),
            "seconds": round(state["seconds"], 1), "replanned": state.get("replanned", [])}


def _replan(settings: TrainSettings, state: dict, bar: tqdm) -> int:
    """Re-fit the planned steps to the time budget when the pace changed by more than 5 %.

    A budget is a deadline on a shared machine whose speed varies: the remaining steps are
    set from the average pace so far, and the cosine schedule follows the new end.
    """
    pace = state["seconds"] / state["step"]
    remaining = settings.minutes * 60 - state["seconds"]
    total = max(state["step"] + 1, state["step"] + int(remaining / pace))
    if abs(total - state["total"]) <= 0.05 * state["total"]:
        return state["total"]
    state.setdefault("replanned", []).append([state["step"], total])
    bar.reset(total=total)
    bar.update(state["step"])
    return total


def _plan_steps(settings: TrainSettings, seconds: float, window_s: float) -> int:
    """Steps that fit in ``settings.minutes``, at the pace of steps PLAN_FROM..PLAN_AT
    (the first steps are slow: kernels are compiled and memory is allocated)."""
    per_step = window_s / (PLAN_AT - PLAN_FROM)
    return max(PLAN_AT + 1, PLAN_AT + int((settings.minutes * 60 - seconds) / per_step))
