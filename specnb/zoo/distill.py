"""A distilled edge for a real cloud: ``specnb models distill smollm2-135m-instruct``.

The edge shares the cloud's tokenizer, so it is an ordinary drafter for specnb and for Hugging Face
assisted generation. Its design, and why:

* **Initialized from the cloud**: its embedding (tied to the output layer, as in SmolLM2), its final
  norm, and ``layers`` of its decoder layers: the first ``layers - 1`` and the last. The first
  layers build the token and position features the rest of the network reads; the last one maps a
  hidden state into the space the output layer decodes (the cloud's head on the hidden state of
  layers 2..20 agrees with its own greedy token 0-10% of the time, docs/real-models.md), so the
  edge starts from a stack whose output the head can read.
* **The decoder layers, the final norm and the kept rows of the output layer train**; the input
  embedding stays the cloud's. The head starts as the cloud's tied rows and is untied so that it can
  adapt to a shallow stack's hidden states (``Plan.train_head``; frozen, the head gave about the same
  acceptance at a higher loss: docs/distilled-edge.md).
* **A trimmed output layer** (:mod:`specnb.zoo.trimmed`): logits for the ``keep`` most frequent
  tokens only, scattered into a -inf vocabulary-sized tensor. Frequency is measured on the
  cloud's own answers (each position counts the cloud's top-32 probabilities, soft counts) and on
  the prompts' tokens (copied text); the special tokens are always kept; where the data has seen
  fewer than ``keep`` distinct tokens the rest are filled in id order (byte-level BPE assigns ids
  in merge order, which follows the frequency in its training corpus).
* **Data: the cloud's own greedy answers** to Spec-Bench questions *not* in the preset's
  evaluation set (its ``num_prompts: 12`` spread, and every limit up to :data:`HELD_OUT`: the
  first :data:`HELD_OUT` of :func:`specnb.prompts.spread`, which all presets draw from), rendered
  through the chat template, generated in batches (prefill speed: far faster than one stream).
  Greedy answers are what greedy verification accepts; the teacher's logits for every answer
  position come out of the same ``generate`` call (its top 32 log-probabilities are kept).
* **Loss** (DistillSpec, Zhou et al. 2024): forward KL from the cloud's distribution (its top 32,
  renormalized over the kept set) to the edge's over the kept set, on answer positions, teacher
  forced over prompt + answer, so the edge learns to draft in the cloud's context (copying from the
  prompt included).

The edge is written to ``<cache>/<cloud>-edge/`` (a plain Hugging Face folder + ``trimmed_head.json``)
and named ``registry:<cloud>-edge``. The build prints its training time, its acceptance per
Spec-Bench task on the held-out preset prompts (gamma 4, greedy) and its step cost against the cloud's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import registry
from ..chat import Prompting
from ..models import LoadedModel, ModelSpec, load
from ..prompts import load_prompts, spread, task
from ..threads import thread_count
from . import trimmed

SPEC_BENCH = Path(__file__).resolve().parents[2] / "params" / "data" / "spec_bench" / "question.jsonl"
HELD_OUT = 48  # the first 48 of the spread (the largest num_prompts of any preset) are never trained on
TOP = 32  # teacher log-probabilities kept per answer position


@dataclass(frozen=True)
class Plan:
    """What one build does; the defaults are the shipped edge's, :data:`QUICK` a seconds-long one for tests."""

    layers: int = 4  # decoder layers: the cloud's first layers - 1 and its last
    keep: int = 8192  # rows of the trimmed output layer
    prompts: int = 160  # training questions, spread over Spec-Bench's tasks (held-out ones excluded)
    max_prompt_tokens: int = 1024  # questions whose rendered prompt is longer are skipped
    new_tokens: int = 96  # the cloud's answer length per question
    answer_prompt_tokens: int = 512  # longer prompts get no answer, only the cloud's targets over the prompt
    prompt_weight: float = 0.3  # a prompt position's weight in the loss (an answer position's: 1)
    train_head: bool = True  # the kept rows of the output layer train (untied from the input embedding)
    gen_batch: int = 16  # questions per batched generate call
    batch_tokens: int = 2048  # padded tokens per training step
    epochs: int = 8
    lr: float = 1e-3
    train_minutes: float = 10.0  # training stops here even when epochs remain
    evaluate: int = 12  # held-out preset questions the build measures acceptance on (0: none)
    eval_tokens: int = 24
    seed: int = 0


QUICK = Plan(layers=1, keep=1024, prompts=4, max_prompt_tokens=160, new_tokens=8, answer_prompt_tokens=160,
             gen_batch=4, batch_tokens=1024, epochs=1, train_minutes=1.0, evaluate=0)


def edge_layers(total: int, layers: int) -> list[int]:
    """Which of the cloud's ``total`` layers the edge starts from: the first ``layers - 1`` and the last."""
    if not 1 <= layers <= total:
        raise ValueError(f"--layers must be in 1..{total} (the cloud's layers), got {layers}")
    return [*range(layers - 1), total - 1]


def check_plan(plan: Plan, cloud: LoadedModel) -> None:
    """One ValueError naming the option when a plan cannot build an edge for ``cloud`` (before any work)."""
    edge_layers(cloud.model.config.num_hidden_layers, plan.layers)
    if not 0 < plan.keep <= cloud.vocab_size:
        raise ValueError(f"--keep must be in 1..{cloud.vocab_size} (the cloud's vocabulary), got {plan.keep}")
    if plan.prompts < 1 or plan.train_minutes <= 0:
        raise ValueError(f"--prompts and --train-minutes must be positive, got {plan.prompts} and {plan.train_minutes}")


def training_prompts(prompts: list[Any], n: int, held_out: int = HELD_OUT) -> list[Any]:
    """``n`` prompts spread over the tasks, none of the first ``held_out`` of the spread (the presets' prompts)."""
    evaluated = {p.id for p in spread(prompts, held_out)}
    rest = [p for p in prompts if p.id not in evaluated]
    return spread(rest, min(n, len(rest)))


def kept_tokens(scores: torch.Tensor, keep: int, always: list[int]) -> torch.Tensor:
    """The ``keep`` ids to draft over: ``always`` first, then by score (ties and unseen ids in id order); sorted."""
    vocab = scores.numel()
    if not 0 < keep <= vocab:
        raise ValueError(f"keep must be in 1..{vocab}, got {keep}")
    rank = scores.double().clone()
    rank[torch.tensor(always, dtype=torch.long)] = math.inf
    # stable sort by -score keeps id order among equal scores (unseen tokens: score 0)
    order = torch.sort(-rank, stable=True).indices
    return torch.sort(order[:keep]).values


@dataclass
class Sample:
    """One training sequence: prompt + the cloud's answer, and the cloud's top log-probabilities for every
    next token (row ``i`` predicts token ``i + 1`` of ``prompt + answer``)."""

    id: str
    task: str
    prompt: list[int]
    answer: list[int]
    top_ids: torch.Tensor  # [len(prompt) + len(answer) - 1, TOP]
    top_logp: torch.Tensor  # [len(prompt) + len(answer) - 1, TOP]


def teacher_answers(cloud: LoadedModel, rendered: list[tuple[Any, list[int]]], plan: Plan,
                    log=print) -> list[list[int]]:
    """The cloud's greedy answers to the prompts no longer than ``plan.answer_prompt_tokens`` (longer ones
    get none: their prefill would cost more than their answer teaches), generated in batches of similar
    length (left-padded); in the order of ``rendered``."""
    eos = sorted(cloud.eos_ids)
    pad = cloud.tokenizer.pad_token_id if cloud.tokenizer.pad_token_id is not None else eos[0]
    todo = sorted((i for i, (_, ids) in enumerate(rendered) if len(ids) <= plan.answer_prompt_tokens),
                  key=lambda i: len(rendered[i][1]))
    answers: list[list[int]] = [[] for _ in rendered]
    t0 = time.perf_counter()
    for start in range(0, len(todo), plan.gen_batch):
        chunk = todo[start:start + plan.gen_batch]
        width = max(len(rendered[i][1]) for i in chunk)
        ids = torch.tensor([[pad] * (width - len(rendered[i][1])) + rendered[i][1] for i in chunk])
        mask = torch.tensor([[0] * (width - len(rendered[i][1])) + [1] * len(rendered[i][1]) for i in chunk])
        with torch.inference_mode():
            out = cloud.model.generate(ids, attention_mask=mask, max_new_tokens=plan.new_tokens, do_sample=False,
                                       pad_token_id=pad, eos_token_id=eos)
        for row, i in enumerate(chunk):
            gen = out[row, width:].tolist()
            n = next((k + 1 for k, t in enumerate(gen) if t in cloud.eos_ids), len(gen))
            answers[i] = gen[:n]
        log(f"  teacher answers: {start + len(chunk)}/{len(todo)} prompts, {time.perf_counter() - t0:.0f} s")
    return answers


def teacher_targets(cloud: LoadedModel, seqs: list[list[int]], chunk: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The cloud's top-:data:`TOP` next-token log-probabilities at every position of each sequence (teacher
    forcing: one forward per sequence, its output layer applied ``chunk`` positions at a time)."""
    head = cloud.model.get_output_embeddings()
    out = []
    with torch.inference_mode():
        for seq in seqs:
            hidden = cloud.model.model(input_ids=torch.tensor([seq[:-1]])).last_hidden_state[0]
            ids, logp = [], []
            for k in range(0, hidden.shape[0], chunk):
                lp = torch.log_softmax(head(hidden[k:k + chunk]).float()[:, : cloud.vocab_size], -1)
                top = torch.topk(lp, TOP, dim=-1)
                ids.append(top.indices)
                logp.append(top.values)
            out.append((torch.cat(ids), torch.cat(logp)))
    return out


def teacher_samples(cloud: LoadedModel, rendered: list[tuple[Any, list[int]]], plan: Plan, log=print) -> list[Sample]:
    """Answers (:func:`teacher_answers`), then the cloud's targets over prompt + answer (:func:`teacher_targets`)."""
    answers = teacher_answers(cloud, rendered, plan, log)
    t0 = time.perf_counter()
    samples = []
    for (prompt, ids), answer in zip(rendered, answers):
        (top_ids, top_logp), = teacher_targets(cloud, [ids + answer])
        samples.append(Sample(prompt.id, task(prompt.category), ids, answer, top_ids, top_logp))
        if len(samples) % 20 == 0 or len(samples) == len(rendered):
            log(f"  teacher targets: {len(samples)}/{len(rendered)} sequences, {time.perf_counter() - t0:.0f} s")
    return samples


def cached_samples(cloud: LoadedModel, rendered: list[tuple[Any, list[int]]], plan: Plan, home: Path,
                   log=print) -> list[Sample]:
    """:func:`teacher_samples`, kept in ``home/.distill-teacher-<key>.pt``: they depend only on the cloud's
    weights, the prompts and the answer settings, so a rebuild with other training settings skips the
    teacher (most of a build's time)."""
    import hashlib

    key = hashlib.sha256(json.dumps([(cloud.source or {}).get("sha256") or cloud.spec.name_or_path,
                                     cloud.spec.dtype, [ids for _, ids in rendered], plan.new_tokens,
                                     plan.answer_prompt_tokens, TOP]).encode()).hexdigest()[:16]
    path = home / f".distill-teacher-{key}.pt"
    if path.is_file():
        log(f"distill: the cloud's answers and targets from {path.name}")
        return [Sample(**d) for d in torch.load(path)]
    samples = teacher_samples(cloud, rendered, plan, log)
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save([asdict(s) for s in samples], tmp)
    os.replace(tmp, path)
    return samples


def token_scores(samples: list[Sample], vocab: int) -> torch.Tensor:
    """Soft counts: the cloud's top probabilities at every answer position, plus one per prompt token."""
    scores = torch.zeros(vocab, dtype=torch.float64)
    for s in samples:
        first = len(s.prompt) - 1  # rows from here on predict the answer
        scores.index_add_(0, s.top_ids[first:].reshape(-1), s.top_logp[first:].exp().reshape(-1).double())
        scores.index_add_(0, torch.tensor(s.prompt), torch.ones(len(s.prompt), dtype=torch.float64))
    return scores


def student_from(cloud: LoadedModel, layers: int) -> tuple[torch.nn.Module, list[int]]:
    """A float32 copy of the cloud with only ``layers`` decoder layers (:func:`edge_layers`), tied embedding."""
    config = cloud.model.config.__class__.from_dict(cloud.model.config.to_dict())
    source = edge_layers(config.num_hidden_layers, layers)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in source]
    student = cloud.model.__class__(config).float()
    teacher = cloud.model.model
    student.model.embed_tokens.load_state_dict(teacher.embed_tokens.state_dict())
    student.model.norm.load_state_dict(teacher.norm.state_dict())
    for mine, theirs in zip(student.model.layers, source):
        mine.load_state_dict(teacher.layers[theirs].state_dict())
    student.tie_weights()
    student.generation_config = cloud.model.generation_config
    return student, source


def batches(samples: list[Sample], budget: int) -> list[list[Sample]]:
    """Samples of similar length grouped so that each batch's padded size stays within ``budget`` tokens."""
    order = sorted(samples, key=lambda s: len(s.prompt) + len(s.answer))
    out: list[list[Sample]] = []
    for s in order:
        size = len(s.prompt) + len(s.answer)
        if out and (len(out[-1]) + 1) * size <= budget:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def distill_loss(student: torch.nn.Module, batch: list[Sample], rows: torch.Tensor, where: torch.Tensor,
                 pad: int, prompt_weight: float) -> torch.Tensor:
    """KL(cloud || edge) over the kept set (cross-entropy form: the teacher's entropy is a constant),
    a weighted mean over positions: answer positions weigh 1, prompt positions ``prompt_weight``.
    ``where[id]`` is the id's place in the kept set or -1."""
    width = max(len(s.prompt) + len(s.answer) for s in batch) - 1
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, s in enumerate(batch):
        seq = (s.prompt + s.answer)[:-1]
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
    hidden = student.model(input_ids=ids, attention_mask=mask).last_hidden_state
    h = hidden[mask.bool()]  # [N, d], row-major: the samples' positions in order
    logq = torch.log_softmax(F.linear(h, rows), -1)  # [N, K]
    top_ids = torch.cat([s.top_ids for s in batch])
    top_logp = torch.cat([s.top_logp for s in batch])
    weight = torch.cat([torch.tensor([prompt_weight] * (len(s.prompt) - 1) + [1.0] * len(s.answer)) for s in batch])
    slot = where[top_ids]  # [N, TOP]
    known = slot >= 0
    p = torch.softmax(top_logp.masked_fill(~known, -math.inf), -1)  # renormalized over the kept set
    p = torch.nan_to_num(p, nan=0.0)  # a position none of whose top tokens is kept teaches nothing
    ce = -(p * logq.gather(1, slot.clamp(min=0))).sum(-1)
    return (weight * ce).sum() / weight.sum()


def train(student: torch.nn.Module, samples: list[Sample], kept: torch.Tensor, plan: Plan, pad: int,
          log=print) -> dict[str, Any]:
    """Distil into the student's decoder layers, final norm and (``plan.train_head``) the kept rows of its
    output layer; stop after ``epochs`` or ``train_minutes``."""
    for p in student.parameters():
        p.requires_grad_(False)
    params = [p for layer in student.model.layers for p in layer.parameters()] + list(student.model.norm.parameters())
    for p in params:
        p.requires_grad_(True)
    rows = student.model.embed_tokens.weight.detach()[kept].clone()
    if plan.train_head:  # the kept rows of the output layer train too, apart from the (frozen) input embedding
        rows = torch.nn.Parameter(rows)
        params.append(rows)
    where = torch.full((student.config.vocab_size,), -1, dtype=torch.long)
    where[kept] = torch.arange(kept.numel())
    groups = batches(samples, plan.batch_tokens)
    total = plan.epochs * len(groups)
    opt = torch.optim.AdamW(params, lr=plan.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 10) * 0.5 * (1 + math.cos(math.pi * i / total)))
    gen = torch.Generator().manual_seed(plan.seed)
    student.train()
    t0, step, losses = time.perf_counter(), 0, []
    for epoch in range(plan.epochs):
        for b in torch.randperm(len(groups), generator=gen).tolist():
            if time.perf_counter() - t0 > plan.train_minutes * 60:
                break
            loss = distill_loss(student, groups[b], rows, where, pad, plan.prompt_weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            if step % 10 == 0 or step == total:
                log(f"  train: step {step}/{total} (epoch {epoch + 1}), loss {sum(losses[-10:]) / len(losses[-10:]):.3f}, "
                    f"{time.perf_counter() - t0:.0f} s")
    student.eval()
    if plan.train_head:
        untie_head(student, kept, rows.detach())
    return {"steps": step, "planned_steps": total, "first_loss": losses[0] if losses else None,
            "last_loss": sum(losses[-10:]) / max(1, len(losses[-10:])), "seconds": time.perf_counter() - t0}


def untie_head(student: torch.nn.Module, kept: torch.Tensor, rows: torch.Tensor) -> None:
    """Give the student its own output layer: the embedding's rows, the trained ``rows`` at ``kept``. The
    folder then holds a full untied head (anyone's ``from_pretrained`` drafts with it over the whole
    vocabulary; specnb's load keeps only the kept rows, the trained ones)."""
    full = student.model.embed_tokens.weight.detach().clone()
    full[kept] = rows
    student.config.tie_word_embeddings = False
    student.lm_head = torch.nn.Linear(full.shape[1], full.shape[0], bias=False)
    student.lm_head.weight = torch.nn.Parameter(full)


def save(student: torch.nn.Module, cloud: LoadedModel, kept: torch.Tensor, record: dict[str, Any], folder: Path) -> Path:
    """Write the edge (plain model folder + :data:`trimmed.HEAD_FILE`) atomically into ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        student.save_pretrained(tmp)
        cloud.tokenizer.save_pretrained(tmp)
        head = {"kept": kept.tolist(), "vocab_size": int(student.config.vocab_size), **record}
        (tmp / trimmed.HEAD_FILE).write_text(json.dumps(head), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def acceptance(edge: LoadedModel, cloud: LoadedModel, prompts: list[Any], tokens: int, gamma: int = 4) -> dict[str, Any]:
    """Greedy speculative decoding of the first turn of each prompt: accepted / drafted per task (and all)."""
    from ..decode.loops import speculative

    prompting = Prompting(cloud.tokenizer, "auto")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for p in prompts:
        g = speculative(edge, cloud, prompting.render(p), tokens, gamma=gamma)
        for key in (task(p.category), "all"):
            counts[key][0] += g.metrics["accepted"]
            counts[key][1] += g.metrics["drafted"]
    return {k: round(a / d, 3) if d else None for k, (a, d) in counts.items()}


def step_cost(model: LoadedModel, ids: list[int], tokens: int = 32) -> float:
    """Seconds per decoded token (greedy, one stream), after the prefill: a spot measurement."""
    from ..decode.loops import autoregressive

    autoregressive(model, ids, 4)  # warm-up
    g = autoregressive(model, ids, tokens)
    return (g.metrics["wall_s"] - (g.metrics.get("ttft_s") or 0.0)) / max(1, len(g.tokens) - 1)


def build(cloud: LoadedModel, folder: Path, plan: Plan = Plan(), *, prompts_file: Path = SPEC_BENCH,
          log=print) -> dict[str, Any]:
    """Distil an edge from ``cloud`` into ``folder``; return the build's record (also in the folder)."""
    t0 = time.process_time()
    wall0 = time.perf_counter()
    torch.manual_seed(plan.seed)
    prompting = Prompting(cloud.tokenizer, "auto")
    every = load_prompts(str(prompts_file))
    rendered = [(p, prompting.render(p)) for p in training_prompts(every, 10 * plan.prompts)]
    rendered = [pr for pr in rendered if len(pr[1]) <= plan.max_prompt_tokens]
    chosen = {p.id for p in spread([p for p, _ in rendered], plan.prompts)}
    rendered = [pr for pr in rendered if pr[0].id in chosen]
    log(f"distill: {len(rendered)} training prompts, the cloud's answers of up to {plan.new_tokens} tokens")
    samples = cached_samples(cloud, rendered, plan, folder.parent, log)
    gen_s = time.perf_counter() - wall0
    special = sorted(set(cloud.tokenizer.all_special_ids) | set(cloud.eos_ids))
    kept = kept_tokens(token_scores(samples, cloud.vocab_size), plan.keep, special)
    answers = torch.tensor([t for s in samples for t in s.answer])
    coverage = float(torch.isin(answers, kept).double().mean()) if answers.numel() else None
    student, source = student_from(cloud, plan.layers)
    pad = cloud.tokenizer.pad_token_id if cloud.tokenizer.pad_token_id is not None else special[0]
    log(f"distill: edge of {plan.layers} layers (cloud's {source}), head {plan.keep} of {cloud.vocab_size} tokens "
        f"(covers {coverage:.1%} of the training answers' tokens)")
    fit = train(student, samples, kept, plan, pad, log)
    record = {
        "cloud": cloud.spec.name_or_path, "cloud_source": (cloud.source or {}).get("sha256"),
        "plan": asdict(plan), "cloud_layers": source, "kept_coverage_train": coverage,
        "training_prompts": sorted(s.id for s in samples), "held_out": f"the first {HELD_OUT} of specnb.prompts.spread",
        "answer_tokens": int(answers.numel()), "prompt_tokens": sum(len(s.prompt) for s in samples),
        "teacher_s": round(gen_s, 1), "fit": fit, "cpu_minutes": round((time.process_time() - t0) / 60, 2),
        "wall_minutes": round((time.perf_counter() - wall0) / 60, 2), "threads": torch.get_num_threads(),
    }
    save(student, cloud, kept, record, folder)
    if plan.evaluate:
        edge = load(ModelSpec(str(folder), dtype=cloud.spec.dtype, device="cpu", threads=cloud.spec.threads))
        held = spread(every, plan.evaluate)
        record["acceptance_gamma4"] = acceptance(edge, cloud, held, plan.eval_tokens)
        ids = prompting.render(held[0])
        record["step_s"] = {"edge": step_cost(edge, ids), "cloud": step_cost(cloud, ids)}
        head = json.loads((folder / trimmed.HEAD_FILE).read_text(encoding="utf-8"))
        (folder / trimmed.HEAD_FILE).write_text(json.dumps({**head, **record}), encoding="utf-8")
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="CLOUD", help=f"the cloud, a fetched catalogue model: {', '.join(registry.CATALOGUE)}")
    parser.add_argument("--layers", type=int, default=Plan.layers, help="decoder layers (the cloud's first ones and its last)")
    parser.add_argument("--keep", type=int, default=Plan.keep, help="tokens in the trimmed output layer")
    parser.add_argument("--prompts", type=int, default=Plan.prompts, help="training questions (never the presets')")
    parser.add_argument("--train-minutes", type=float, default=Plan.train_minutes, help="bound on the training loop")
    parser.add_argument("--quick", action="store_true", help="a seconds-long, useless edge (for tests)")


def run(args: argparse.Namespace) -> int:
    try:
        base = registry.entry(args.name).name
        cloud_name = registry.PREFIX + base
        registry.resolve(cloud_name)  # fetched? (one error naming the fetch command)
    except ValueError as err:
        print(f"specnb models distill: {err}", file=sys.stderr)
        return 1
    plan = QUICK if args.quick else replace(Plan(), layers=args.layers, keep=args.keep, prompts=args.prompts,
                                            train_minutes=args.train_minutes)
    with thread_count(1):
        cloud = load(ModelSpec(cloud_name, dtype="float32", device="cpu", threads=1))
        try:
            check_plan(plan, cloud)
        except ValueError as err:
            print(f"specnb models distill: {err}", file=sys.stderr)
            return 1
        folder = registry.edge_folder(base)
        record = build(cloud, folder, plan, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps({k: record[k] for k in ("cpu_minutes", "wall_minutes", "kept_coverage_train", "acceptance_gamma4",
                                             "step_s") if k in record}))
    print(f"{registry.PREFIX}{base}{registry.EDGE_SUFFIX}: {folder}")
    return 0
