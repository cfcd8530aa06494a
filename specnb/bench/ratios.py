"""``specnb bench``: one pair, one dtype, one prompt set; every method side by side in ONE process.

Runs are interleaved (each repetition runs every method over all prompts, in a rotated order),
after a warm-up run of each method. Each method keeps a [reps, prompts, 2] table of (new tokens,
seconds); its speed is all tokens over all seconds of the table (as the grid aggregates). Every
speed-up carries a 95% interval (:func:`specnb.measure.stats.ratio_interval`: percentile bootstrap over
prompts, paired, x repetitions, paired too: repetition k of two methods ran minutes apart at most
and shared the machine's state); an interval that holds 1.0 is printed "no measurable difference".
The timed repetitions run inside :func:`specnb.measure.timing.timed_section` (the machine-wide timing lock:
a grid cell and a bench never time at the same moment) with a clock probe before, between the
repetitions and after; a probe more than :data:`specnb.measure.clock.THRESHOLD` from their median flags
the run "TIMING DISTURBED". Printed ratios:

* R1 = fastest speculative variant / cloud_optimized tokens/s (and each adaptive schedule);
  ``spec+opt`` runs speculative with the baseline's own tricks (static caches, compiled steps;
  their share of time in the models is not shown: compiled calls bypass the timing hooks);
* R2 = fastest fixed-gamma speculative variant / Hugging Face assisted generation as users call
  it (``generate(assistant_model=...)``, constant gamma) at the same gamma; shown beside it, so
  the headline cannot hide a mismatch of set-ups: the plain loop against HF (both eager on
  dynamic caches) and ``spec+opt`` against ``hf+static`` (HF's own static cache + compiled
  verification; HF keeps its assistant eager by design);
* PL = fastest prompt lookup (``speculative(PromptLookup(max_ngram=3), cloud, ...)``: no edge model,
  drafts copied from the prompt and the output so far) / Hugging Face's prompt lookup
  (``generate(prompt_lookup_num_tokens=gamma, max_matching_ngram_size=3)``) at the same gamma, both
  plain (eager, dynamic cache), and by gamma; beside it, prompt lookup over the plain cloud;
* R3 = measured speed-up of the plain loop over the plain cloud loop / S(alpha, gamma, c), the expected speed-up
  of Leviathan et al. 2023 (Thm 3.8), with alpha (maximum-likelihood estimate under their i.i.d.
  model, :func:`specnb.decode.schedule.estimate_alpha`; not accepted / drafted, which is lower and would
  flatter R3) and c = edge step / cloud step measured here. S prices a verification of gamma + 1
  tokens as one cloud step; where it costs more (compute-bound CPUs) the gap shows in R3, so the
  verification's measured cost v (in cloud steps) and S with it, gamma c + v in the denominator,
  are printed beside it; the interval is the measured speed-up's (S is taken as given);
* loop overhead = share of wall time spent outside both models' forward calls (measured in one
  extra, instrumented repetition, so the hooks never touch the timed ones);
* levers: at one gamma, the plain loop against itself with one lever changed (compiled edge
  steps only, compiled cloud verification only, both; ``logits_to_keep``, one host sync per
  round and cropped caches each switched off), and the adaptive schedules against the best
  fixed gamma: what each lever buys, measured alone, in the same interleaved run.

Graphs compiled during the timed repetitions are counted and reported: a non-zero count means
some timing includes compilation.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch._dynamo.utils import counters

from ..measure import provenance as runinfo
from .. import threads
from ..measure.clock import probe_summary
from ..decode.loops import autoregressive, speculative
from ..decode.steps import room_for_graphs
from ..study.demo import quiet_hf_internal_warnings
from ..measure.metrics import Generation, synchronize
from ..models import LoadedModel, ModelSpec, load
from ..decode.lookup import MAX_NGRAM, PromptLookup
from ..decode.hf_reference import hf_assisted, hf_prompt_lookup
from ..chat import MODES, Prompting
from ..prompts import load_prompts
from ..decode.schedule import expected_tokens, speedup_limit

ADAPTIVE = ("heuristic", "cost", "adaptive")  # the schedules bench times beside the fixed gammas
from ..measure.metrics import estimate_alpha
from ..measure.stats import ratio_interval
from ..measure.timing import Section, rotated_reps, setup_section, timed_section
from ..study.methods import METHODS

PEERS = {"hf_prompt_lookup": "prompt_lookup"}  # Hugging Face's own loop for a registry method -> that method


@dataclass
class Variant:
    """One timed variant of a registry method (:data:`specnb.study.methods.METHODS`: a gamma, a schedule,
    a set-up, a lever off), or of a Hugging Face peer of one (:data:`PEERS`)."""

    label: str
    method: str  # a registry method's name, or a key of PEERS
    run: Callable[[str], Generation]
    gamma: int | None = None
    schedule: str | None = None
    optimized: bool = False
    lever: str | None = None  # set on the lever-table variants
    warm_all: bool = False  # compiles on first use of each shape: warm up on every prompt
    table: list[list[tuple[int, float]]] = field(default_factory=list)  # [reps][prompts] = (new tokens, seconds)
    accepted: int = 0
    drafted: int = 0
    rejected_rounds: int = 0
    rounds: int = 0
    verify_s: float = 0.0
    model_share: float | None = None

    def __post_init__(self):
        if self.method not in METHODS and self.method not in PEERS:
            raise ValueError(f"bench variant {self.label!r}: {self.method!r} is neither a registry method "
                             f"({', '.join(METHODS)}) nor a peer ({', '.join(PEERS)})")

    @property
    def tokens_per_s(self) -> float:
        """All new tokens over all seconds of the timed repetitions."""
        t = np.asarray(self.table, dtype=float)
        return float(t[..., 0].sum() / t[..., 1].sum())

    @property
    def rep_tokens_per_s(self) -> list[float]:
        """Tokens/s of each repetition (all its prompts)."""
        return [sum(n for n, _ in rep) / sum(s for _, s in rep) for rep in self.table]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edge", metavar="MODEL", default="zoo:tiny-edge", help="edge (draft) model: folder, hub id or zoo:NAME (default: %(default)s)")
    parser.add_argument("--cloud", metavar="MODEL", default="zoo:tiny-cloud", help="cloud (verifying) model, same forms (default: %(default)s)")
    parser.add_argument("--dtype", metavar="DTYPE", default="float32", help="dtype of both models: float32, float16, bfloat16 (default: %(default)s)")
    parser.add_argument("--edge-device", metavar="DEVICE", default="cpu", help="device of the edge model (default: %(default)s)")
    parser.add_argument("--cloud-device", metavar="DEVICE", default="auto",
                        help="device of the cloud model; auto = the accelerator when there is one, else cpu (default: %(default)s)")
    threads.add_arguments(parser)
    parser.add_argument("--prompts", metavar="SET", default="builtin:code", help="prompt set: builtin:NAME or a Spec-Bench style JSONL (default: %(default)s)")
    parser.add_argument("--limit", metavar="N", type=int, default=8, help="prompts used from the set, spread over its categories (default: %(default)s)")
    parser.add_argument("--chat-template", metavar="MODE", choices=MODES, default="auto",
                        help="auto: render each prompt's first turn with the cloud tokenizer's chat template when it has "
                             "one (as the grid does); none: raw text (default: %(default)s)")
    parser.add_argument("--max-new-tokens", metavar="N", type=int, default=64, help="new tokens per prompt (default: %(default)s)")
    parser.add_argument("--gammas", metavar="LIST", default="1,2,3,4,6,8", help="comma-separated fixed draft lengths (default: %(default)s)")
    parser.add_argument("--reps", metavar="N", type=int, default=3,
                        help="timed repetitions, interleaved across methods; the intervals pair them (default: %(default)s)")
    parser.add_argument("--lever-gamma", metavar="G", type=int, default=None,
                        help="gamma of the lever table (default: %(default)s = 4 if in --gammas, else the middle one)")
    parser.add_argument("--json", metavar="PATH", dest="json_path", default=None,
                        help="also write the record (ratios, intervals, per-rep per-prompt tables, clock probes) here "
                             "(default: %(default)s = not written)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 prompts, 16 tokens, gammas 2,4, 1 rep; checks the pipeline, not figures to quote "
                             "(default: off)")


def _gammas(text: str) -> list[int]:
    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise SystemExit(f"specnb bench: --gammas must be positive integers separated by commas, got {text!r}")
    return out


# lever-table variants of the plain loop: label suffix -> speculative() keyword arguments
LEVER_VARIANTS = {
    "edge compiled": {"optimized": "edge"},
    "cloud compiled": {"optimized": "cloud"},
    "-logits_to_keep": {"levers_off": ("logits_to_keep",)},
    "-one_sync": {"levers_off": ("one_sync",)},
    "-crop": {"levers_off": ("crop",)},
}




def variants(edge: LoadedModel, cloud: LoadedModel, n: int, gammas: list[int], lever_gamma: int | None = None) -> list[Variant]:
    """Every variant the benchmark compares, as closures over one prompt; each names its registry method."""
    out = [
        Variant("cloud", "cloud", lambda p: autoregressive(cloud, p, n)),
        Variant("cloud_optimized", "cloud_optimized", lambda p: autoregressive(cloud, p, n, optimized=True)),
        Variant("edge", "edge", lambda p: autoregressive(edge, p, n)),
    ]
    for g in gammas:
        out.append(Variant(f"speculative g={g}", "speculative", lambda p, g=g: speculative(edge, cloud, p, n, gamma=g), g, "constant"))
        out.append(Variant(f"spec+opt g={g}", "speculative", lambda p, g=g: speculative(edge, cloud, p, n, gamma=g, optimized=True), g, "constant", optimized=True))
        out.append(Variant(f"hf_assisted g={g}", "hf_assisted", lambda p, g=g: hf_assisted(edge, cloud, p, n, gamma=g), g))
        out.append(Variant(f"hf+static g={g}", "hf_assisted", lambda p, g=g: hf_assisted(edge, cloud, p, n, gamma=g, optimized=True),
                          g, optimized=True, warm_all=True))
        # no edge model: prompt lookup drafts from the prompt and the output so far; both plain (eager, dynamic cache)
        out.append(Variant(f"prompt_lookup g={g}", "prompt_lookup",
                          lambda p, g=g: speculative(PromptLookup(max_ngram=MAX_NGRAM), cloud, p, n, gamma=g), g, "constant"))
        out.append(Variant(f"hf_prompt_lookup g={g}", "hf_prompt_lookup",
                          lambda p, g=g: hf_prompt_lookup(cloud, p, n, gamma=g, max_ngram=MAX_NGRAM), g))
    top = max(gammas)
    for rule in ADAPTIVE:
        start = 4 if rule == "heuristic" else max(top, 8)
        run = lambda p, r=rule, s=start: speculative(edge, cloud, p, n, gamma=s, schedule=r)  # noqa: E731
        out.append(Variant(f"speculative {rule}", "speculative", run, start, rule))
    if lever_gamma is not None:
        g = lever_gamma
        if g not in gammas:
            out.append(Variant(f"speculative g={g}", "speculative", lambda p: speculative(edge, cloud, p, n, gamma=g), g, "constant"))
        for name, kw in LEVER_VARIANTS.items():
            out.append(Variant(f"speculative g={g} {name}", "speculative", lambda p, kw=kw: speculative(edge, cloud, p, n, gamma=g, **kw),
                              g, "constant", optimized="optimized" in kw, lever=name))
    return out


def _timed_pass(m: Variant, prompts: list[list[int]]) -> None:
    """One repetition of ``m`` over every prompt, in order: one row of its table."""
    row = []
    for p in prompts:
        g = m.run(p)
        row.append((g.metrics["new_tokens"], g.metrics["wall_s"]))
        m.accepted += g.metrics.get("accepted") or 0
        m.drafted += g.metrics.get("drafted") or 0
        m.rejected_rounds += g.metrics.get("rejected_rounds") or 0
        m.rounds += g.metrics.get("rounds") or 0
        m.verify_s += g.metrics.get("verify_s") or 0.0
    m.table.append(row)


class ForwardTimer:
    """Wall time inside the forward calls of some models (hooks; synchronizes CUDA at both ends)."""

    def __init__(self, models: list[LoadedModel]):
        self.total = 0.0
        self._t0 = 0.0
        self._depth = 0
        self._handles = []
        self._devices = [m.device for m in models]
        for m in models:
            self._handles.append(m.model.register_forward_pre_hook(self._pre))
            self._handles.append(m.model.register_forward_hook(self._post))

    def _pre(self, *_: Any) -> None:
        if self._depth == 0:
            synchronize(*self._devices)
            self._t0 = time.perf_counter()
        self._depth += 1

    def _post(self, *_: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            synchronize(*self._devices)
            self.total += time.perf_counter() - self._t0

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _model_share(m: Variant, models: list[LoadedModel], prompts: list[list[int]]) -> float:
    timer = ForwardTimer(models)
    wall = 0.0
    try:
        for p in prompts:
            wall += m.run(p).metrics["wall_s"]
    finally:
        timer.close()
    return timer.total / wall if wall else float("nan")


def timed_reps(ms: list[Variant], prompts: list[list[int]], reps: int, section: Section) -> None:
    """``reps`` interleaved repetitions (method order rotated each time), a clock probe between them."""
    for _, order in rotated_reps(section, reps, ms):
        for m in order:
            _timed_pass(m, prompts)


def measure(edge: LoadedModel, cloud: LoadedModel, prompts: list[list[int]], n: int, gammas: list[int], reps: int,
            lever_gamma: int | None = None, extra: list[Variant] | None = None) -> tuple[list[Variant], int, dict[str, Any]]:
    """Warm up, then ``reps`` interleaved timed repetitions and one instrumented repetition, all in
    one timed section (the machine-wide lock, clock probes).

    Returns the methods, the number of graphs torch compiled during the timed repetitions (0
    unless some method compiled on the clock) and the timed section's record.
    """
    ms = variants(edge, cloud, n, gammas, lever_gamma) + list(extra or [])
    with room_for_graphs(), quiet_hf_internal_warnings():  # HF's compiled peer compiles in its warm-up
        with setup_section():  # warm-up (first-call allocations, compile, caches): never while another run is timed
            for m in ms:
                for p in prompts if m.warm_all else prompts[:1]:
                    m.run(p)
        with timed_section() as section:
            graphs = counters["stats"]["unique_graphs"]
            timed_reps(ms, prompts, reps, section)
            graphs = counters["stats"]["unique_graphs"] - graphs
            section.probe("instrumented")
            for m in ms:
                # compiled steps call the model's forward directly, past the module hooks that time it,
                # so the share is only measured where every call goes through the module
                if not m.optimized and m.method != "cloud_optimized":
                    m.model_share = _model_share(m, [edge, cloud], prompts)
    return ms, graphs, section.info


# ---------------------------------------------------------------------------- ratios and intervals

def interval(a: Variant, b: Variant) -> dict[str, Any]:
    """Speed of ``a`` over speed of ``b`` with its 95% interval, repetitions paired (same process,
    interleaved); ``measurable`` is False when the interval holds 1.0."""
    iv = ratio_interval(np.asarray(a.table, dtype=float), np.asarray(b.table, dtype=float), paired_reps=True)
    return {"value": iv.value, "low": iv.low, "high": iv.high, "measurable": not iv.holds_one,
            "numerator": a.label, "denominator": b.label}


def ci_text(iv: dict[str, Any], digits: int = 2) -> str:
    """``2.16 (95% CI 2.05-2.28)``, with ``no measurable difference`` when the interval holds 1.0."""
    text = f"{iv['value']:.{digits}f} (95% CI {iv['low']:.{digits}f}-{iv['high']:.{digits}f})"
    return text if iv["measurable"] else text + ", no measurable difference"


def _fixed(ms: list[Variant], optimized: bool) -> list[Variant]:
    """The fixed-gamma speculative methods (not the lever variants), plain or ``spec+opt``."""
    return [m for m in ms if m.method == "speculative" and m.lever is None and m.schedule == "constant"
            and m.optimized == optimized]


def _fastest(ms: list[Variant]) -> Variant:
    return max(ms, key=lambda m: m.tokens_per_s)


def ratios(ms: list[Variant], edge_step_s: float, cloud_step_s: float) -> dict[str, Any]:
    """R1, R2, R3 and the loop overhead from measured methods; ``intervals`` holds each speed-up's
    95% interval under the key of its value (``R2_by_gamma g=4`` for the entries of a by-gamma dict)."""
    by = {m.label: m for m in ms}
    ivs: dict[str, dict[str, Any]] = {}

    def ratio(key: str, num: str, den: str) -> float:
        ivs[key] = interval(by[num], by[den])
        return ivs[key]["value"]

    spec = [m for m in ms if m.method == "speculative" and m.lever is None]
    plain, opt = _fixed(ms, False), _fixed(ms, True)
    fixed = plain + opt
    best = _fastest(plain)  # plain loop: same stack as HF assisted and the cloud loop
    fastest, top, best_opt = _fastest(spec), _fastest(fixed), _fastest(opt)
    alpha = estimate_alpha(best.accepted, best.rejected_rounds)
    c = edge_step_s / cloud_step_s
    limit = speedup_limit(alpha, best.gamma, c)
    measured = ratio("speedup_vs_cloud", best.label, "cloud")
    verify_cost = best.verify_s / best.rounds / cloud_step_s if best.rounds else float("nan")
    limit_v = expected_tokens(alpha, best.gamma) / (best.gamma * c + verify_cost)
    lookup = [m for m in ms if m.method == "prompt_lookup"]
    best_pl = _fastest(lookup) if lookup else None
    gammas = sorted({m.gamma for m in fixed})
    ours_at = {g: _fastest([m for m in fixed if m.gamma == g]).label for g in gammas}
    return {
        "best_gamma": best.gamma,
        "R1": ratio("R1", fastest.label, "cloud_optimized"),
        "R1_method": fastest.label,
        "R1_plain": ratio("R1_plain", best.label, "cloud_optimized"),
        "R1_heuristic": ratio("R1_heuristic", "speculative heuristic", "cloud_optimized"),
        "R1_cost": ratio("R1_cost", "speculative cost", "cloud_optimized"),
        "R2": ratio("R2", top.label, f"hf_assisted g={top.gamma}"),
        "R2_method": top.label,
        "R2_by_gamma": {g: ratio(f"R2_by_gamma g={g}", ours_at[g], f"hf_assisted g={g}") for g in gammas},
        "R2_same_stack": ratio("R2_same_stack", best.label, f"hf_assisted g={best.gamma}"),
        "R2_same_stack_by_gamma": {m.gamma: ratio(f"R2_same_stack_by_gamma g={m.gamma}", m.label, f"hf_assisted g={m.gamma}")
                                   for m in plain},
        "R2_static": ratio("R2_static", best_opt.label, f"hf+static g={best_opt.gamma}"),
        "R2_static_by_gamma": {m.gamma: ratio(f"R2_static_by_gamma g={m.gamma}", m.label, f"hf+static g={m.gamma}")
                               for m in opt},
        **({
            "PL": ratio("PL", best_pl.label, f"hf_prompt_lookup g={best_pl.gamma}"),
            "PL_method": best_pl.label,
            "PL_by_gamma": {m.gamma: ratio(f"PL_by_gamma g={m.gamma}", m.label, f"hf_prompt_lookup g={m.gamma}") for m in lookup},
            "PL_vs_cloud": ratio("PL_vs_cloud", best_pl.label, "cloud"),
        } if best_pl else {}),
        "alpha": alpha,
        "acceptance_rate": best.accepted / best.drafted if best.drafted else None,
        "c": c,
        "S": limit,
        "speedup_vs_cloud": measured,
        "R3": measured / limit,
        "verify_cost": verify_cost,
        "S_with_verify_cost": limit_v,
        "R3_with_verify_cost": measured / limit_v,
        "loop_overhead": 1.0 - by[best.label].model_share,
        "loop_overhead_hf": 1.0 - by[f"hf_assisted g={best.gamma}"].model_share,
        "intervals": ivs,
    }


def lever_table(ms: list[Variant]) -> list[dict[str, Any]]:
    """What each lever buys, measured alone: tokens/s with it over tokens/s without it, same run.

    ``gain`` is the ratio of the two speeds with its 95% interval (``gain_low`` / ``gain_high``,
    repetitions paired: both ran in each, minutes apart at most, so slow drifts of the machine
    cancel); a lever whose interval holds 1.0 bought nothing measurable here (``measurable``).
    ``gain_min`` / ``gain_max`` are the range of the per-repetition ratios. Compiled steps are
    switched on over the plain loop; the plain loop's own levers are switched off one at a time;
    the adaptive schedules are set against the best fixed gamma of the plain loop.
    """
    by = {m.label: m for m in ms}

    def row(lever: str, with_: str, without: str, gamma: int) -> dict[str, Any]:
        a, b = by[with_], by[without]
        iv = interval(a, b)
        paired = [x / y for x, y in zip(a.rep_tokens_per_s, b.rep_tokens_per_s)]
        return {"lever": lever, "gamma": gamma, "with": a.tokens_per_s, "without": b.tokens_per_s,
                "gain": iv["value"], "gain_low": iv["low"], "gain_high": iv["high"], "measurable": iv["measurable"],
                "gain_min": min(paired), "gain_max": max(paired)}

    variants = [m for m in ms if m.lever is not None]
    rows = []
    if variants:
        g = variants[0].gamma
        base = f"speculative g={g}"
        for m in variants:
            if m.lever.startswith("-"):  # lever switched off: the plain loop is the "with"
                rows.append(row(m.lever[1:], base, m.label, g))
            else:
                rows.append(row(m.lever, m.label, base, g))
        if f"spec+opt g={g}" in by:
            rows.append(row("edge + cloud compiled (spec+opt)", f"spec+opt g={g}", base, g))
    best = _fastest(_fixed(ms, False))
    for rule in (r for r in ADAPTIVE if f"speculative {r}" in by):  # records from before a schedule existed lack it
        rows.append(row(f"{rule} schedule vs best fixed gamma", f"speculative {rule}", best.label, best.gamma))
    return rows




def _step_seconds(m: Variant) -> float:
    return 1.0 / m.tokens_per_s


def _lever_gamma(args: argparse.Namespace, gammas: list[int]) -> int:
    if args.lever_gamma is not None:
        if args.lever_gamma < 1:
            raise SystemExit("specnb bench: --lever-gamma must be a positive integer")
        return args.lever_gamma
    return 4 if 4 in gammas else gammas[len(gammas) // 2]


def _by_gamma(r: dict[str, Any], key: str) -> str:
    ivs = r["intervals"]
    return "; ".join(f"g={g}: {ci_text(ivs[f'{key} g={g}'])}" for g in r[key])


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.limit, args.max_new_tokens, args.gammas, args.reps = 2, 16, "2,4", 1
    gammas = _gammas(args.gammas)
    if args.reps < 1:
        raise SystemExit("specnb bench: --reps must be at least 1")
    for flag in ("edge_threads", "cloud_threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise SystemExit(f"specnb bench: --{flag.replace('_', '-')} must be a positive integer")
    lever_gamma = _lever_gamma(args, gammas)
    edge = load(ModelSpec(args.edge, dtype=args.dtype, device=args.edge_device, threads=args.edge_threads))
    cloud = load(ModelSpec(args.cloud, dtype=args.dtype, device=args.cloud_device, threads=args.cloud_threads))
    questions = load_prompts(args.prompts, limit=args.limit)
    prompting = Prompting(cloud.tokenizer, args.chat_template, "cloud")
    prompts = [prompting.render(q) for q in questions]  # token ids of each first turn: one turn per prompt here
    ms, graphs, timing = measure(edge, cloud, prompts, args.max_new_tokens, gammas, args.reps, lever_gamma)
    by = {m.label: m for m in ms}
    r = ratios(ms, _step_seconds(by["edge"]), _step_seconds(by["cloud"]))
    ivs = r["intervals"]
    levers = lever_table(ms)
    clock = probe_summary(timing["probes"])
    thr = threads.describe()
    e_thr, c_thr = threads.resolve(args.edge_threads), threads.resolve(args.cloud_threads)
    print(f"specnb bench: {args.edge} -> {args.cloud}, {args.dtype}, edge {edge.device}, cloud {cloud.device}; "
          f"{len(prompts)} prompts x {args.max_new_tokens} tokens, {args.reps} reps interleaved; "
          f"{'chat template' if prompting.templated else 'raw text'}")
    print(f"threads: edge {e_thr}, cloud {c_thr} (default {thr['default_threads']}: OMP_NUM_THREADS "
          f"{thr['OMP_NUM_THREADS'] or 'unset'}, {thr['usable_cores']} usable cores); torch threads outside the runs "
          f"{thr['torch_threads']}")
    print(f"{'method':<36}{'tokens/s':>10}{'acceptance':>12}{'in models':>11}  tokens/s per rep")
    for m in ms:
        acc = f"{m.accepted / m.drafted:.3f}" if m.drafted else "-"
        share = "-" if m.model_share is None else f"{m.model_share:.0%}"
        per_rep = " ".join(f"{v:.1f}" for v in m.rep_tokens_per_s)
        print(f"{m.label:<36}{m.tokens_per_s:>10.1f}{acc:>12}{share:>11}  {per_rep}")
    print(f"\nclock: {clock['probes']} probes min {clock['min_ms']:.1f} / median {clock['median_ms']:.1f} / "
          f"max {clock['max_ms']:.1f} ms; {clock['verdict']}")
    if clock["disturbed"]:
        print(f"       {clock['verdict_zh']}")
    print("\nspeed-ups: ratio of tokens/s (all tokens / all time) with a 95% bootstrap interval over prompts x reps "
          "(both paired)" + ("; one repetition: the intervals cover the prompts only, not the clock's noise"
                             if args.reps == 1 else ""))
    print(f"best fixed gamma of the plain loop {r['best_gamma']}: alpha {r['alpha']:.3f} (MLE; accepted/drafted "
          f"{r['acceptance_rate']:.3f}), c {r['c']:.3f}, S(alpha,gamma,c) {r['S']:.2f}")
    line = lambda label, text: print(f"{label:<38}{text}")  # noqa: E731
    line("R1 speculative / cloud_optimized", f"{ci_text(ivs['R1'])}  ({r['R1_method']})")
    line(f"   plain loop g={r['best_gamma']}", ci_text(ivs["R1_plain"]))
    line("   heuristic schedule", ci_text(ivs["R1_heuristic"]))
    line("   cost schedule", ci_text(ivs["R1_cost"]))
    line("R2 speculative / hf_assisted same g", f"{ci_text(ivs['R2'])}  ({r['R2_method']})")
    line("   by gamma (faster of ours)", _by_gamma(r, "R2_by_gamma"))
    line("   plain loop / hf_assisted (eager)", ci_text(ivs["R2_same_stack"]))
    line("   by gamma", _by_gamma(r, "R2_same_stack_by_gamma"))
    line("   spec+opt / hf+static (compiled)", ci_text(ivs["R2_static"]))
    line("   by gamma", _by_gamma(r, "R2_static_by_gamma"))
    if "PL" in r:
        line("prompt lookup / HF prompt lookup", f"{ci_text(ivs['PL'])}  ({r['PL_method']}; both plain, max n-gram {MAX_NGRAM})")
        line("   by gamma", _by_gamma(r, "PL_by_gamma"))
        line("   prompt lookup / cloud (plain)", ci_text(ivs["PL_vs_cloud"]))
    line("R3 speed-up vs cloud / S", f"{r['R3']:.2f}  (measured speed-up vs cloud {ci_text(ivs['speedup_vs_cloud'])})")
    line("   with the verification's cost", f"{r['R3_with_verify_cost']:.2f}  (a verification costs "
         f"{r['verify_cost']:.2f} cloud steps here; S with it {r['S_with_verify_cost']:.2f})")
    line("loop overhead (outside forward calls)", f"{r['loop_overhead']:.1%}  (hf_assisted {r['loop_overhead_hf']:.1%})")
    print(f"\n{'lever (measured alone)':<44}{'with':>9}{'without':>9}{'gain':>7}   95% CI      range over reps")
    for row in levers:
        print(f"{row['lever'] + ' (g=' + str(row['gamma']) + ')':<44}{row['with']:>9.1f}{row['without']:>9.1f}{row['gain']:>7.2f}"
              f"   {row['gain_low']:.2f}-{row['gain_high']:.2f}   {row['gain_min']:.2f}-{row['gain_max']:.2f}"
              + ("" if row["measurable"] else "     no measurable difference"))
    if clock["disturbed"]:
        print(f"\n{clock['verdict']}\n{clock['verdict_zh']}")
    if graphs:
        print(f"\nWARNING: torch compiled {graphs} graph(s) during the timed repetitions: some timings include compilation.")
    if args.json_path:
        record = {
            "kind": "bench",
            "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")} | {"lever_gamma": lever_gamma},
            "devices": {"edge": str(edge.device), "cloud": str(cloud.device)},
            "torch_threads": thr["torch_threads"],
            "threads": thr | {"edge": e_thr, "cloud": c_thr},
            "prompts": [q.text for q in questions],
            "prompting": prompting.describe(),
            "methods": [
                {"label": m.label, "method": m.method, "gamma": m.gamma, "schedule": m.schedule, "optimized": m.optimized,
                 "lever": m.lever, "tokens_per_s": m.tokens_per_s, "tokens_per_s_reps": m.rep_tokens_per_s,
                 "table": [[list(e) for e in rep] for rep in m.table],
                 "acceptance_rate": m.accepted / m.drafted if m.drafted else None, "model_share": m.model_share}
                for m in ms
            ],
            "ratios": r,
            "levers": levers,
            "timing": timing,
            "clock": clock,
            "graphs_compiled_while_timing": graphs,
            "versions": runinfo.versions(),
            "machine": runinfo.machine(),
            "git": runinfo.git_state(),
            "created": runinfo.now(),
        }
        runinfo.write_json_atomic(args.json_path, record)
        print(f"record written to {args.json_path}")
    return 0
