"""What a method notebook calls: validate its parameters, load the models, warm up, time ``reps``
repetitions over the prompts inside one timed section, and write the result record to ``result_path``.

The record::

    {"schema", "status": "ok" | "failed", "error", "method", "settings": {every parameter, dtypes
     resolved, chat_template_applied}, "edge": {model, dtype, device, device_class, device_name,
     threads} | None, "cloud": {...} | None, "pair": {tokenizers: same | different, vocab_overlap,
     edge_vocab, cloud_vocab} (two-model methods), "prompting": {chat_template, applied, tokenizer},
     "prompts": [per-prompt row: id, turn, category, metrics (time metrics: the mean over
     repetitions), tokens, text, trace, drafted_trace], "timing": {reps, entries: [(rep, prompt, tokens,
     seconds)], probes, start, end, host, lock, waited_s}, "threads", "warmup", "aggregate":
     {metrics over all prompts, tokens/s per repetition, their spread}, "versions", "machine",
     "git", times}

Prompts are rendered to token ids once, outside the decoders (:mod:`specnb.chat`: with the
cloud's chat template when ``chat_template`` is ``auto`` and it has one, else raw text). A
multi-turn question becomes one row per turn, run in order within each repetition: turn 2's
prompt holds the method's own answer to turn 1. Its first turn keeps the question's id, turn k
is ``<id>/<k>``; rows and timing entries come in the same order for every method on the same
prompts, so speed-ups pair them.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping

from ..chat import Prompting, converse, prompting_for
from ..measure.metrics import Generation, summarize
from .params import METHODS, MethodParams, ParamsError, relevant_fields, validate_method_params
from . import methods
from .methods import WARMUP_TOKENS
from .. import threads
from ..measure.provenance import REPO_ROOT, git_state, machine, now, versions, write_json_atomic

SCHEMA = "specnb.result/1"
TIME_KEYS = ("wall_s", "ttft_s", "draft_s", "verify_s")  # averaged over repetitions per prompt
SUM_KEYS = ("new_tokens", "wall_s", "rounds", "drafted", "accepted", "cloud_calls", "edge_calls",
            "draft_s", "verify_s")


def quiet() -> None:
    """Keep loading progress bars and library chatter out of notebook outputs; show table cells whole
    (pandas cuts text at 50 characters by default: an audit verdict ended in "(e...")."""
    import warnings

    import pandas as pd
    from transformers.utils import logging as hf_logging

    pd.set_option("display.max_colwidth", None)

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def uses(method: str, role: str) -> bool:
    """Whether ``method`` loads the ``role`` ("edge" / "cloud") model (the registry says)."""
    return role in methods.get(method).roles


def validate(method: str, namespace: Mapping[str, Any]) -> MethodParams:
    """The notebook's parameters (taken by name from ``namespace``, e.g. ``globals()``), validated.

    Also checks, before any model loads, that the devices exist and support the dtypes, so a
    bad value stops the notebook with one clear error.
    """
    from ..dtypes import check_supported, resolve_device

    if method not in METHODS:
        raise ParamsError(f"method {method!r} unknown; methods: {', '.join(METHODS)}")
    unknown = injected_unknowns(namespace)
    if unknown:
        raise ParamsError("; ".join(unknown))
    p = validate_method_params({k: namespace[k] for k in MethodParams.model_fields if k in namespace})
    problems = methods.get(method).problems(p.model_dump())
    if problems:
        raise ParamsError("; ".join(problems))
    for role in ("edge", "cloud"):
        if uses(method, role):
            try:
                check_supported(_dtype(p, role), resolve_device(getattr(p, f"{role}_device")))
            except ValueError as err:
                raise ParamsError(f"{role}_device / {role}_dtype: {err}") from None
    return p


def injected_unknowns(namespace: Mapping[str, Any]) -> list[str]:
    """Parameters papermill injected (``-p NAME VALUE``) that the notebooks do not have, each with
    the closest valid name. Papermill only warns about them ("Passed unknown parameter") and runs
    with the default; the injected cell is found in IPython's input history (``In``)."""
    import ast
    import difflib

    cells = [src for src in namespace.get("In", []) or [] if isinstance(src, str) and src.startswith("# Parameters\n")]
    names: list[str] = []
    for src in cells[-1:]:
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        names += [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)]
    known = tuple(MethodParams.model_fields)
    out = []
    for name in names:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            out.append(f"unknown parameter {name!r}" + (f" (did you mean {near[0]!r}?)" if near else
                                                        f"; parameters: {', '.join(known)}"))
    return out


def _dtype(p: MethodParams, role: str) -> str:
    return p.resolved_edge_dtype if role == "edge" else p.resolved_cloud_dtype


def dtype_label(method: str, p: MethodParams) -> str:
    """``float32`` when the roles agree, ``edge-float32_cloud-float16`` when they do not."""
    e, c = p.resolved_edge_dtype, p.resolved_cloud_dtype
    if method == "edge" or e == c:
        return e
    return c if not uses(method, "edge") else f"edge-{e}_cloud-{c}"


def default_result_path(method: str, p: MethodParams) -> Path:
    """``outputs/adhoc/<method>-<dtype>-<settings hash>.json``: one file per distinct setting (the
    hash covers every parameter that changes what the method runs), so a run with another gamma
    never replaces this one. The folder is ``$SPECNB_ADHOC_DIR``, else ``outputs/adhoc`` under the
    checkout (else under the current folder)."""
    import hashlib
    import json
    import os

    if os.environ.get("SPECNB_ADHOC_DIR"):
        folder = Path(os.environ["SPECNB_ADHOC_DIR"])
    else:
        folder = (REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()) / "outputs" / "adhoc"
    used = {k: v for k, v in p.model_dump().items() if k in relevant_fields(method)}
    digest = hashlib.sha1(json.dumps(used, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return folder / f"{method}-{dtype_label(method, p)}-{digest}.json"


def keep_good_result(path: Path) -> Path:
    """Where a failed run writes its record: ``path`` itself, unless ``path`` holds an ok result,
    which a failure never replaces: then ``<name>.failed.json`` beside it."""
    from ..measure.provenance import read_json

    old = read_json(path)
    if isinstance(old, dict) and old.get("status") == "ok":
        return path.with_name(path.stem + ".failed.json")
    return path


def settings_dict(method: str, p: MethodParams) -> dict[str, Any]:
    """Every parameter, with the dtype each role actually used."""
    return p.model_dump() | {"method": method, "edge_dtype": p.resolved_edge_dtype,
                              "cloud_dtype": p.resolved_cloud_dtype}


def load_models(method: str, p: MethodParams) -> dict[str, Any]:
    """The LoadedModel of each role the method needs (the pair checked: one tokenizer, or two that
    :mod:`specnb.decode.translate` can read)."""
    from ..decode.translate import pair_info
    from ..models import ModelSpec, load

    out = {}
    for role in ("edge", "cloud"):
        if uses(method, role):
            spec = ModelSpec(getattr(p, f"{role}_model"), dtype=_dtype(p, role),
                             device=getattr(p, f"{role}_device"), threads=getattr(p, f"{role}_threads"))
            out[role] = load(spec)
    if len(out) == 2:  # one tokenizer, or two the edge can draft through (specnb.decode.translate)
        pair_info(out["edge"], out["cloud"])  # refuses, by name, a second tokenizer the translation cannot read
    return out


def model_info(m: Any) -> dict[str, Any]:
    """What the record says about one loaded model."""
    from ..dtypes import device_class, device_name, parse_dtype

    return {"model": m.spec.name_or_path, "dtype": parse_dtype(m.dtype), "device": str(m.device),
            "device_class": device_class(m.device), "device_name": device_name(m.device),
            "threads": threads.resolve(m.spec.threads), "threads_set": m.spec.threads, "parameters": sum(t.numel() for t in m.model.parameters()),
            **({"gguf": m.source} if getattr(m, "source", None) else {})}


def decoder(method: str, models: dict[str, Any], p: MethodParams) -> Callable[[str | list[int], int], Generation]:
    """``fn(prompt, max_new_tokens) -> Generation`` for the method (built by its registry entry)."""
    return methods.get(method).build(models, p)


def warm_up(fn: Callable[[str | list[int], int], Generation], prompt: str | list[int], p: MethodParams) -> dict[str, Any]:
    """``p.warmup`` short generations before timing; their time and compile time are recorded,
    not hidden (an optimized run compiles here, so its measured prompts report ~0 ``compile_s``)."""
    t0, compile_s = time.perf_counter(), 0.0
    for _ in range(p.warmup):
        compile_s += fn(prompt, min(WARMUP_TOKENS, p.max_new_tokens)).metrics.get("compile_s") or 0.0
    return {"generations": p.warmup, "wall_s": time.perf_counter() - t0, "compile_s": compile_s}


def turn_id(prompt: Any, turn: int) -> str:
    """A row's id: the question's own for its first turn, ``<id>/<turn>`` for a later one (unique
    per row, and a single-turn question keeps the id it always had)."""
    return prompt.id if turn == 1 else f"{prompt.id}/{turn}"


def prompt_row(prompt: Any, g: Generation, turn: int = 1) -> dict[str, Any]:
    """One prompt's (one turn's) row: id, turn, category, all metrics, and the output: tokens, text, and per
    round the accepted drafts (``trace``) and the drafted length (``drafted_trace``; ``drafted`` is the
    metric, their sum), which a schedule other than ``constant`` varies."""
    return {"id": turn_id(prompt, turn), "turn": turn, "category": prompt.category, **g.metrics,
            "text": g.text, "tokens": list(g.tokens), "trace": list(g.trace), "drafted_trace": list(g.drafted_trace)}


def turn_units(prompts: list[Any], prompting: Prompting) -> list[tuple[int, int]]:
    """(question index, turn) of every row, in row order: a question's turns one after another."""
    return [(q, turn) for q, prompt in enumerate(prompts) for turn in range(1, len(prompting.turns(prompt)) + 1)]


def timed_reps(fn: Callable[[str | list[int], int], Generation], prompts: list[Any], p: MethodParams,
               log: Callable[[str], None] | None = None, *,
               prompting: Prompting) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``p.reps`` timed passes over the prompts inside one :func:`specnb.measure.timing.timed_section`.

    Each repetition starts one question later than the previous one (rotated order, so no prompt
    always runs first after a probe); a multi-turn question runs its turns in order
    (:func:`specnb.chat.converse`: a turn's prompt needs this repetition's answers to the earlier
    ones). Returns one row per turn (the first repetition's output and counts; time metrics
    averaged over the repetitions) and the timing record: every (repetition, row) entry, the
    probes before / between / after, the section's start and end.
    """
    from ..measure.timing import rotated_reps, timed_section

    units = turn_units(prompts, prompting)
    row_of = {unit: i for i, unit in enumerate(units)}
    runs: dict[int, list[Generation]] = {i: [] for i in range(len(units))}
    entries = []
    with timed_section() as section:
        for rep, order in rotated_reps(section, p.reps, list(range(len(prompts)))):
            for q in order:
                for turn, g in enumerate(converse(fn, prompts[q], prompting, p.max_new_tokens), 1):
                    i = row_of[q, turn]
                    runs[i].append(g)
                    entries.append({"rep": rep, "prompt": i, "new_tokens": g.metrics["new_tokens"],
                                    "wall_s": g.metrics["wall_s"]})
            if log:
                log(f"repetition {rep + 1}/{p.reps}: {sum(e['new_tokens'] for e in entries if e['rep'] == rep)} tokens")
    rows = []
    for i, (q, turn) in enumerate(units):
        first = runs[i][0]
        row = prompt_row(prompts[q], first, turn)
        for key in TIME_KEYS:
            values = [g.metrics.get(key) for g in runs[i]]
            row[key] = None if any(v is None for v in values) else sum(values) / len(values)
        row["tokens_per_s"] = row["new_tokens"] / row["wall_s"] if row["wall_s"] else None
        row["same_output_every_rep"] = all(g.tokens == first.tokens for g in runs[i])
        rows.append(row)
    timing = section.info | {"reps": p.reps, "entries": entries}
    return rows, timing


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics over all prompts: counts and times summed, ratios of the sums (not means of
    ratios: tokens/s = all tokens / all time), mean TTFT, peak memory the maximum."""
    sums = {k: None if any(r.get(k) is None for r in rows) and k in ("draft_s", "verify_s")
            else sum(r.get(k) or 0 for r in rows) for k in SUM_KEYS}
    # unknown in any row (Hugging Face does not expose its rounds): unknown in the sum
    sums["rejected_rounds"] = None if any(r.get("rejected_rounds") is None for r in rows) else sum(r["rejected_rounds"] for r in rows)
    ttfts = [r["ttft_s"] for r in rows if r.get("ttft_s") is not None]
    agg = summarize(**sums, ttft_s=sum(ttfts) / len(ttfts) if ttfts else None,
                    peak_mem_bytes=max((r.get("peak_mem_bytes") or 0 for r in rows), default=0),
                    compile_s=max((r.get("compile_s") or 0 for r in rows), default=0.0))
    from ..decode.translate import translation_totals
    return agg | {"prompts": len(rows)} | translation_totals(rows)


def rep_figures(timing: dict[str, Any]) -> dict[str, Any]:
    """Per-repetition tokens/s and their spread ((max - min) / median), from the timing record."""
    from ..measure.stats import as_table, speed, spread

    table = as_table(timing["entries"])
    per_rep = [speed(table[rep:rep + 1]) for rep in range(timing["reps"])]
    return {"reps": timing["reps"], "tokens_per_s_reps": per_rep, "rep_spread": spread(per_rep)}


def new_record(method: str, p: MethodParams) -> dict[str, Any]:
    """The record's frame before anything runs (written as is if loading fails)."""
    return {"schema": SCHEMA, "status": "running", "error": None, "method": method,
            "settings": settings_dict(method, p), "edge": None, "cloud": None, "prompting": None, "prompts": [],
            "aggregate": {}, "versions": versions(), "machine": machine(), "git": git_state(),
            "threads": threads.describe(), "started_at": now()}


def run(method: str, p: MethodParams, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``method`` with parameters ``p``; write and return its result record.

    ``warmup`` short generations on the first prompt come first (kernels, allocator, caches),
    then every prompt once, measured. On any error the record is written with
    ``status: failed`` and the traceback's last line, and the error is raised again.
    """
    import torch

    from ..prompts import load_prompts
    from ..measure.timing import setup_section

    path = Path(p.result_path) if p.result_path else default_result_path(method, p)
    record = new_record(method, p)
    record["settings"]["result_path"] = str(path)
    record["settings"]["chat_template_applied"] = None  # known once the tokenizer is loaded
    t0 = time.perf_counter()
    try:
        prompts = load_prompts(p.prompts, p.num_prompts)
        with setup_section() as waited:  # never while another run is timed (a shared hold of the timing lock)
            models = load_models(method, p)
            record.update({role: model_info(m) for role, m in models.items()})
            if len(models) == 2:
                from ..decode.translate import pair_info
                record["pair"] = pair_info(models["edge"], models["cloud"])
            prompting = prompting_for(models, p.chat_template)
            record["prompting"] = prompting.describe()
            record["settings"]["chat_template_applied"] = prompting.templated
            fn = decoder(method, models, p)
            torch.manual_seed(p.seed)
            record["warmup"] = warm_up(fn, prompting.render(prompts[0]), p) | {"lock_waited_s": round(waited, 3)}
            if methods.get(method).warm_all_prompts(p):  # it compiles per shape it meets: meet them all
                for prompt in prompts:                      # before the clock (every turn)
                    converse(fn, prompt, prompting, p.max_new_tokens)
        record["prompts"], record["timing"] = timed_reps(fn, prompts, p, log, prompting=prompting)
        record.update(status="ok", aggregate=aggregate(record["prompts"]) | rep_figures(record["timing"]) | {
            "warmup_s": record["warmup"]["wall_s"], "warmup_compile_s": record["warmup"]["compile_s"]})
        controller = getattr(fn, "controller", None)  # the adaptive schedule's, as the run left it: reload it with
        if controller is not None:                   # specnb.decode.adaptive.Controller.load
            record["controller_path"] = str(controller.save(path.with_name(path.stem + ".controller.json"),
                                                            method=method, edge=p.edge_model, cloud=p.cloud_model))
    except Exception as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc(limit=8))
        raise
    finally:
        record.update(finished_at=now(), elapsed_s=round(time.perf_counter() - t0, 3))
        write_json_atomic(path if record["status"] == "ok" else keep_good_result(path), record)
    return record
