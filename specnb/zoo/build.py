"""``specnb zoo build``: rebuild the embedded edge/cloud pair, reproducibly and resumably.

Recipe (each phase's output is kept in the work folder, so a re-run after an interruption
skips finished phases and resumes a training phase from its last checkpoint):

1. corpus (:mod:`specnb.zoo.corpus`) and a byte-level BPE tokenizer trained on it;
2. the cloud: a deep, narrow Llama trained on the corpus (deep so that each decode step is
   costly on a CPU, where per-layer overhead dominates a tiny model's step);
3. distillation data: the cloud's own greedy continuations of corpus snippets;
4. the edge: a one-layer Llama distilled on those continuations (KL to the cloud's logits
   plus cross-entropy on the cloud's tokens), because greedy acceptance is the edge
   matching the cloud's argmax, not the edge being a good model of the corpus;
5. evaluation, then the two model folders (bfloat16 safetensors) and ``manifest.json``.

Seeds are fixed; with explicit step counts a build is repeatable. With a time budget the
step counts are planned from the measured pace (and re-planned if the machine slows down);
the manifest records the steps actually taken.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..measure import provenance
from . import ZOO_ROOT
from .corpus import Corpus, load_corpus
from .train import Shape, TrainSettings, eval_loss, new_model, train

EDGE, CLOUD = "tiny-edge", "tiny-cloud"


@dataclass(frozen=True)
class BuildSettings:
    """Everything that determines the built pair (recorded whole in the manifest)."""

    vocab_size: int
    corpus_chars: int | None  # None = the whole corpus
    cloud: Shape
    edge: Shape
    cloud_train: TrainSettings
    edge_train: TrainSettings
    distill_rows: int  # cloud continuations generated for distillation
    distill_prompt: int  # tokens of corpus snippet per row
    distill_new: int  # tokens the cloud continues each snippet with
    eval_new_tokens: int
    threads: int = 1  # on a shared machine a second thread mostly waits for a busy core
    seed: int = 1234
    gen_batch: int = 64

    def stage_keys(self) -> dict[str, str]:
        """Short hashes naming each phase's work files, from the settings that phase depends
        on: changing the edge's recipe reuses a trained cloud, changing the cloud's does not."""
        d = asdict(self)
        parts = {
            "tokenizer": ["vocab_size", "corpus_chars"],
            "cloud": ["cloud", "cloud_train", "threads", "seed"],
            "distill": ["distill_rows", "distill_prompt", "distill_new", "gen_batch"],
            "edge": ["edge", "edge_train"],
        }
        keys, chain = {}, ""
        for stage, names in parts.items():
            chain += json.dumps({n: d[n] for n in names}, sort_keys=True)
            keys[stage] = hashlib.sha256(chain.encode()).hexdigest()[:10]
        return keys


def quick_settings() -> BuildSettings:
    """A small pair in about a minute, for tests: same recipe, toy sizes."""
    return BuildSettings(
        vocab_size=384, corpus_chars=400_000,
        cloud=Shape(width=64, layers=2, heads=2, ffn=128, context=128),
        edge=Shape(width=32, layers=1, heads=2, ffn=64, context=128),
        cloud_train=TrainSettings(steps=40, batch=8, seq=64, lr=3e-3, seed=1, warmup=5),
        edge_train=TrainSettings(steps=30, batch=8, seq=0, lr=3e-3, seed=2, warmup=5),
        distill_rows=32, distill_prompt=16, distill_new=16, eval_new_tokens=16,
    )


def full_settings(minutes: float) -> BuildSettings:
    """The shipped pair: ``minutes`` of training, about 70 % cloud and 30 % edge."""
    return BuildSettings(
        vocab_size=1024, corpus_chars=None,
        cloud=Shape(width=192, layers=18, heads=4, ffn=512, context=512),
        edge=Shape(width=128, layers=2, heads=4, ffn=384, context=512),
        cloud_train=TrainSettings(steps=0, minutes=0.7 * minutes, batch=16, seq=256,
                                  lr=2e-3, seed=1, warmup=100),
        edge_train=TrainSettings(steps=0, minutes=0.3 * minutes, batch=32, seq=0,
                                 lr=3e-3, seed=2, warmup=50),
        distill_rows=4096, distill_prompt=64, distill_new=96, eval_new_tokens=96,
    )


# ---------------------------------------------------------------------------- phases

def build_tokenizer(corpus: Corpus, settings: BuildSettings, work: Path):
    """Train (or reload) the shared tokenizer."""
    from transformers import PreTrainedTokenizerFast

    from .tokenizer import train_tokenizer

    folder = work / f"tokenizer-{settings.stage_keys()['tokenizer']}"
    if not (folder / "tokenizer.json").is_file():
        tok = train_tokenizer((d.text for d in corpus.train), settings.vocab_size)
        tok.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """All documents' tokens in one stream, each document followed by EOS."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(texts)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def distill_data(cloud, stream: torch.Tensor, settings: BuildSettings, work: Path) -> torch.Tensor:
    """Rows of ``distill_prompt`` corpus tokens + the cloud's greedy continuation.

    Generated in batches with the KV cache (``generate``, bfloat16 matmuls like training:
    faster where the CPU has bfloat16 instructions, and a near-tie flipped now and then does not
    matter for training data);
    saved after each batch, so an interrupted run resumes where it stopped.
    """
    from tqdm.auto import tqdm

    path = work / f"distill-{settings.stage_keys()['distill']}.pt"
    rows = torch.load(path) if path.is_file() else torch.empty(0, dtype=torch.long)
    gen = torch.Generator().manual_seed(settings.seed)
    starts = torch.randint(0, len(stream) - settings.distill_prompt,
                           (settings.distill_rows,), generator=gen)
    bar = tqdm(total=settings.distill_rows, initial=len(rows), desc="distill data",
               dynamic_ncols=True, mininterval=5.0)
    while len(rows) < settings.distill_rows:
        chunk = starts[len(rows):len(rows) + settings.gen_batch]
        prompts = torch.stack([stream[s:s + settings.distill_prompt] for s in chunk.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16,
                            enabled=settings.cloud_train.bf16_autocast):
            out = cloud.generate(prompts, attention_mask=torch.ones_like(prompts),
                                 max_new_tokens=settings.distill_new,
                                 min_new_tokens=settings.distill_new, do_sample=False,
                                 pad_token_id=cloud.config.pad_token_id)
        rows = torch.cat([rows, out])
        torch.save(rows, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        bar.update(len(out))
    bar.close()
    return rows


def trained(name: str, shape: Shape, ts: TrainSettings, stream: torch.Tensor, tokenizer,
            work: Path, teacher=None) -> tuple[object, dict]:
    """Train (or reload) one model; its summary is kept next to its final weights."""
    from transformers import LlamaForCausalLM

    folder = work / name
    summary_path = folder / "train_summary.json"
    if summary_path.is_file():
        model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        return model, json.loads(summary_path.read_text())
    model = new_model(shape, len(tokenizer), tokenizer.eos_token_id, ts.seed)
    summary = train(model, stream, ts, work / f"{name}.ckpt", desc=name.split("-")[0],
                    teacher=teacher)
    summary["params"] = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    summary_path.write_text(json.dumps(summary))
    return model, summary


# ---------------------------------------------------------------------------- output

def save_model(model, tokenizer, folder: Path) -> None:
    """A plain Hugging Face folder: config, bfloat16 safetensors, tokenizer."""
    if folder.exists():
        shutil.rmtree(folder)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    model.float()
    tokenizer.save_pretrained(folder)


def file_hashes(models_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``models_dir``, keyed by its relative path."""
    return {p.relative_to(models_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(models_dir.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- driver

def build(settings: BuildSettings, out: Path, work: Path) -> dict:
    """Run every phase; write ``out/models/{tiny-edge,tiny-cloud}`` and ``out/manifest.json``."""
    from .evaluate import pair_quality, speed_ratio
    from ..prompts import load_prompts

    started = time.perf_counter()
    git = provenance.git_state()
    torch.set_num_threads(settings.threads)
    keys = settings.stage_keys()
    work.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(settings.corpus_chars)
    tokenizer = build_tokenizer(corpus, settings, work)
    train_stream = token_stream(tokenizer, [d.text for d in corpus.train])
    val_stream = token_stream(tokenizer, [d.text for d in corpus.val])

    cloud, cloud_summary = trained(f"cloud-{keys['cloud']}", settings.cloud,
                                   settings.cloud_train, train_stream, tokenizer, work)
    rows = distill_data(cloud, train_stream, settings, work)
    edge, edge_summary = trained(f"edge-{keys['edge']}", settings.edge, settings.edge_train,
                                 rows, tokenizer, work, teacher=cloud)

    seq = settings.cloud_train.seq
    losses = {"cloud_val_loss": round(eval_loss(cloud, val_stream, seq), 4),
              "edge_val_loss": round(eval_loss(edge, val_stream, seq), 4)}
    prompts = [p.text for p in load_prompts("builtin:code")]
    quality = pair_quality(edge, cloud, tokenizer, prompts, settings.eval_new_tokens)

    models_dir = out / "models"
    for name, model in ((EDGE, edge), (CLOUD, cloud)):
        save_model(model, tokenizer, models_dir / name)
    speed = speed_ratio(str(models_dir / EDGE), str(models_dir / CLOUD), prompts,
                        settings.eval_new_tokens, threads=settings.threads)
    manifest = {
        "models": {EDGE: edge_summary, CLOUD: cloud_summary},
        "settings": asdict(settings),
        "corpus": corpus.stats() | {"train_tokens": len(train_stream),
                                    "val_tokens": len(val_stream)},
        "distill_tokens": int(rows.numel()),
        "validation": losses,
        "quality_builtin_code": quality,
        "speed_builtin_code": speed,
        "build_seconds": round(time.perf_counter() - started, 1),
        "machine": provenance.machine() | {"torch_threads": settings.threads},
        "versions": provenance.versions(),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "files": file_hashes(models_dir),
    }
    provenance.write_json_atomic(out / "manifest.json", manifest)
    return manifest


def settings_from_args(args: argparse.Namespace) -> BuildSettings:
    """The preset the flags select, with any explicit step counts applied."""
    settings = quick_settings() if args.quick else full_settings(args.minutes)
    if args.cloud_steps:
        settings = replace(settings, cloud_train=replace(settings.cloud_train, steps=args.cloud_steps))
    if args.edge_steps:
        settings = replace(settings, edge_train=replace(settings.edge_train, steps=args.edge_steps))
    return settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``specnb zoo build``."""
    parser.add_argument("--out", type=Path, default=ZOO_ROOT.parent,
                        help="folder that receives models/ and manifest.json (default: the package's zoo)")
    parser.add_argument("--work", type=Path, default=Path(".zoo-build"),
                        help="checkpoints and intermediate files; a re-run resumes from them")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--minutes", type=float, default=77.0,
                      help="training budget of the full build in minutes (default 77)")
    size.add_argument("--quick", action="store_true", help="a toy pair in about a minute (tests)")
    parser.add_argument("--cloud-steps", type=int, default=0, help="exact cloud training steps (repeat a build)")
    parser.add_argument("--edge-steps", type=int, default=0, help="exact edge training steps (repeat a build)")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``specnb zoo build``."""
    manifest = build(settings_from_args(args), args.out, args.work)
    q = manifest["quality_builtin_code"]
    speed = manifest["speed_builtin_code"]
    print(json.dumps({"validation": manifest["validation"], "acceptance": q["acceptance"],
                      "cost_ratio_c": q["cost_ratio_c"], "speedup_best": speed["speedup_best"],
                      "best": speed["best"], "build_seconds": manifest["build_seconds"]},
                     indent=1))
    print(f"wrote {args.out / 'models'} and {args.out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    import sys

    _parser = argparse.ArgumentParser(prog="python -m specnb.zoo.build", description=__doc__)
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
