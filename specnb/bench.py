"""``specnb bench``: one pair, one dtype, one prompt set; every method side by side in ONE process.

Runs are interleaved (each repetition runs every method over all prompts, in a rotated order),
after a warm-up run of each method, and the median tokens/s over repetitions is reported, so
slow drifts of a shared machine hit every method alike. Printed ratios:

* R1 = fastest speculative variant / cloud_optimized tokens/s (and each adaptive schedule);
  ``spec+opt`` runs speculative with the baseline's own tricks (static caches, compiled steps;
  their share of time in the models is not shown: compiled calls bypass the timing hooks);
* R2 = fastest fixed-gamma speculative variant / Hugging Face assisted generation as users call
  it (``generate(assistant_model=...)``, constant gamma) at the same gamma; shown beside it, so
  the headline cannot hide a mismatch of set-ups: the plain loop against HF (both eager on
  dynamic caches) and ``spec+opt`` against ``hf+static`` (HF's own static cache + compiled
  verification; HF keeps its assistant eager by design);
* R3 = measured speed-up of the plain loop over the plain cloud loop / S(alpha, gamma, c), the expected speed-up
  of Leviathan et al. 2023 (Thm 3.8), with alpha (maximum-likelihood estimate under their i.i.d.
  model, :func:`specnb.schedule.estimate_alpha`; not accepted / drafted, which is lower and would
  flatter R3) and c = edge step / cloud step measured here. S prices a verification of gamma + 1
  tokens as one cloud step; where it costs more (compute-bound CPUs) the gap shows in R3, so the
  verification's measured cost v (in cloud steps) and S with it, gamma c + v in the denominator,
  are printed beside it;
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
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


import torch
from torch._dynamo.utils import counters

from . import runinfo
from .decoding import autoregressive, room_for_graphs, speculative
from .metrics import Generation, synchronize
from .models import LoadedModel, ModelSpec, load
from .peers import hf_assisted
from .prompts import load_prompts
from .schedule import estimate_alpha, expected_tokens, speedup_limit


@dataclass
class Method:
    label: str
    kind: str  # edge | cloud | cloud_optimized | speculative | hf_assisted
    run: Callable[[str], Generation]
    gamma: int | None = None
    schedule: str | None = None
    optimized: bool = False
    lever: str | None = None  # set on the lever-table variants
    warm_all: bool = False  # compiles on first use of each shape: warm up on every prompt
    tokens_per_s: list[float] = field(default_factory=list)
    accepted: int = 0
    drafted: int = 0
    rejected_rounds: int = 0
    rounds: int = 0
    verify_s: float = 0.0
    model_share: float | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edge", default="zoo:tiny-edge")
    parser.add_argument("--cloud", default="zoo:tiny-cloud")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--edge-device", default="cpu")
    parser.add_argument("--cloud-device", default="auto")
    parser.add_argument("--edge-threads", type=int, default=None)
    parser.add_argument("--prompts", default="builtin:code")
    parser.add_argument("--limit", type=int, default=8, help="prompts used from the set")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gammas", default="1,2,3,4,6,8", help="comma-separated fixed draft lengths")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--lever-gamma", type=int, default=None,
                        help="gamma of the lever table (default: 4 if in --gammas, else the middle one)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the record here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 prompts, 16 tokens, gammas 2,4, 1 rep")


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


def methods(edge: LoadedModel, cloud: LoadedModel, n: int, gammas: list[int], lever_gamma: int | None = None) -> list[Method]:
    """Every method the benchmark compares, as closures over one prompt."""
    out = [
        Method("cloud", "cloud", lambda p: autoregressive(cloud, p, n)),
        Method("cloud_optimized", "cloud_optimized", lambda p: autoregressive(cloud, p, n, optimized=True)),
        Method("edge", "edge", lambda p: autoregressive(edge, p, n)),
    ]
    for g in gammas:
        out.append(Method(f"speculative g={g}", "speculative", lambda p, g=g: speculative(edge, cloud, p, n, gamma=g), g, "constant"))
        out.append(Method(f"spec+opt g={g}", "speculative", lambda p, g=g: speculative(edge, cloud, p, n, gamma=g, optimized=True), g, "constant", optimized=True))
        out.append(Method(f"hf_assisted g={g}", "hf_assisted", lambda p, g=g: hf_assisted(edge, cloud, p, n, gamma=g), g))
        out.append(Method(f"hf+static g={g}", "hf_assisted", lambda p, g=g: hf_assisted(edge, cloud, p, n, gamma=g, optimized=True),
                          g, optimized=True, warm_all=True))
    top = max(gammas)
    for rule in ("heuristic", "cost"):
        start = 4 if rule == "heuristic" else max(top, 8)
        run = lambda p, r=rule, s=start: speculative(edge, cloud, p, n, gamma=s, schedule=r)  # noqa: E731
        out.append(Method(f"speculative {rule}", "speculative", run, start, rule))
    if lever_gamma is not None:
        g = lever_gamma
        if g not in gammas:
            out.append(Method(f"speculative g={g}", "speculative", lambda p: speculative(edge, cloud, p, n, gamma=g), g, "constant"))
        for name, kw in LEVER_VARIANTS.items():
            out.append(Method(f"speculative g={g} {name}", "speculative", lambda p, kw=kw: speculative(edge, cloud, p, n, gamma=g, **kw),
                              g, "constant", optimized="optimized" in kw, lever=name))
    return out


def _timed_pass(m: Method, prompts: list[str]) -> None:
    tokens = seconds = 0.0
    for p in prompts:
        g = m.run(p)
        tokens += g.metrics["new_tokens"]
        seconds += g.metrics["wall_s"]
        m.accepted += g.metrics["accepted"]
        m.drafted += g.metrics["drafted"]
        m.rejected_rounds += g.metrics["rejected_rounds"] or 0
        m.rounds += g.metrics["rounds"]
        m.verify_s += g.metrics["verify_s"]
    m.tokens_per_s.append(tokens / seconds)


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


def _model_share(m: Method, models: list[LoadedModel], prompts: list[str]) -> float:
    timer = ForwardTimer(models)
    wall = 0.0
    try:
        for p in prompts:
            wall += m.run(p).metrics["wall_s"]
    finally:
        timer.close()
    return timer.total / wall if wall else float("nan")


def measure(edge: LoadedModel, cloud: LoadedModel, prompts: list[str], n: int, gammas: list[int], reps: int,
            lever_gamma: int | None = None) -> tuple[list[Method], int]:
    """Warm up, then ``reps`` interleaved timed repetitions, then one instrumented repetition.

    Returns the methods and the number of graphs torch compiled during the timed repetitions (0
    unless some method compiled on the clock).
    """
    ms = methods(edge, cloud, n, gammas, lever_gamma)
    with room_for_graphs():  # HF's compiled peer compiles in its warm-up, inside generate
        for m in ms:  # warm-up: first-call allocations, compile, caches
            for p in prompts if m.warm_all else prompts[:1]:
                m.run(p)
        graphs = counters["stats"]["unique_graphs"]
        for rep in range(reps):
            shift = rep % len(ms)
            for m in ms[shift:] + ms[:shift]:
                _timed_pass(m, prompts)
        graphs = counters["stats"]["unique_graphs"] - graphs
    for m in ms:
        # compiled steps call the model's forward directly, past the module hooks that time it,
        # so the share is only measured where every call goes through the module
        if not m.optimized and m.kind != "cloud_optimized":
            m.model_share = _model_share(m, [edge, cloud], prompts)
    return ms, graphs


def _fixed(ms: list[Method], optimized: bool) -> list[Method]:
    """The fixed-gamma speculative methods (not the lever variants), plain or ``spec+opt``."""
    return [m for m in ms if m.kind == "speculative" and m.lever is None and m.schedule == "constant"
            and m.optimized == optimized]


def _fastest(ms: list[Method]) -> Method:
    return max(ms, key=lambda m: statistics.median(m.tokens_per_s))


def ratios(ms: list[Method], edge_step_s: float, cloud_step_s: float) -> dict[str, Any]:
    """R1, R2, R3 and the loop overhead from measured methods."""
    med = {m.label: statistics.median(m.tokens_per_s) for m in ms}
    by = {m.label: m for m in ms}
    spec = [m for m in ms if m.kind == "speculative" and m.lever is None]
    plain, opt = _fixed(ms, False), _fixed(ms, True)
    fixed = plain + opt
    best = _fastest(plain)  # plain loop: same stack as HF assisted and the cloud loop
    fastest, top, best_opt = _fastest(spec), _fastest(fixed), _fastest(opt)
    alpha = estimate_alpha(best.accepted, best.rejected_rounds)
    c = edge_step_s / cloud_step_s
    limit = speedup_limit(alpha, best.gamma, c)
    measured = med[best.label] / med["cloud"]
    verify_cost = best.verify_s / best.rounds / cloud_step_s if best.rounds else float("nan")
    limit_v = expected_tokens(alpha, best.gamma) / (best.gamma * c + verify_cost)
    gammas = sorted({m.gamma for m in fixed})
    ours_at = {g: max(med[m.label] for m in fixed if m.gamma == g) for g in gammas}
    return {
        "best_gamma": best.gamma,
        "R1": med[fastest.label] / med["cloud_optimized"],
        "R1_method": fastest.label,
        "R1_plain": med[best.label] / med["cloud_optimized"],
        "R1_heuristic": med["speculative heuristic"] / med["cloud_optimized"],
        "R1_cost": med["speculative cost"] / med["cloud_optimized"],
        "R2": med[top.label] / med[f"hf_assisted g={top.gamma}"],
        "R2_method": top.label,
        "R2_by_gamma": {g: ours_at[g] / med[f"hf_assisted g={g}"] for g in gammas},
        "R2_same_stack": med[best.label] / med[f"hf_assisted g={best.gamma}"],
        "R2_same_stack_by_gamma": {m.gamma: med[m.label] / med[f"hf_assisted g={m.gamma}"] for m in plain},
        "R2_static": med[best_opt.label] / med[f"hf+static g={best_opt.gamma}"],
        "R2_static_by_gamma": {m.gamma: med[m.label] / med[f"hf+static g={m.gamma}"] for m in opt},
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
    }


def lever_table(ms: list[Method]) -> list[dict[str, Any]]:
    """What each lever buys, measured alone: tokens/s with it over tokens/s without it, same run.

    ``gain`` is the median over repetitions of the ratio within each repetition (both ran in it,
    minutes apart at most, so slow drifts of the machine cancel); ``gain_min`` / ``gain_max`` show
    how much it moved between repetitions: a lever whose range straddles 1.0 bought nothing
    measurable here. Compiled steps are switched on over the plain loop; the plain loop's own
    levers are switched off one at a time; the adaptive schedules are set against the best fixed
    gamma of the plain loop.
    """
    by = {m.label: m for m in ms}
    med = {m.label: statistics.median(m.tokens_per_s) for m in ms}

    def row(lever: str, with_: str, without: str, gamma: int) -> dict[str, Any]:
        paired = [a / b for a, b in zip(by[with_].tokens_per_s, by[without].tokens_per_s)]
        return {"lever": lever, "gamma": gamma, "with": med[with_], "without": med[without],
                "gain": statistics.median(paired), "gain_min": min(paired), "gain_max": max(paired)}

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
    for rule in ("heuristic", "cost"):
        rows.append(row(f"{rule} schedule vs best fixed gamma", f"speculative {rule}", best.label, best.gamma))
    return rows


def _step_seconds(m: Method) -> float:
    return 1.0 / statistics.median(m.tokens_per_s)


def _lever_gamma(args: argparse.Namespace, gammas: list[int]) -> int:
    if args.lever_gamma is not None:
        if args.lever_gamma < 1:
            raise SystemExit("specnb bench: --lever-gamma must be a positive integer")
        return args.lever_gamma
    return 4 if 4 in gammas else gammas[len(gammas) // 2]


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.limit, args.max_new_tokens, args.gammas, args.reps = 2, 16, "2,4", 1
    gammas = _gammas(args.gammas)
    if args.reps < 1:
        raise SystemExit("specnb bench: --reps must be at least 1")
    lever_gamma = _lever_gamma(args, gammas)
    edge = load(ModelSpec(args.edge, dtype=args.dtype, device=args.edge_device, threads=args.edge_threads))
    cloud = load(ModelSpec(args.cloud, dtype=args.dtype, device=args.cloud_device))
    prompts = [p.text for p in load_prompts(args.prompts, limit=args.limit)]
    ms, graphs = measure(edge, cloud, prompts, args.max_new_tokens, gammas, args.reps, lever_gamma)
    by = {m.label: m for m in ms}
    r = ratios(ms, _step_seconds(by["edge"]), _step_seconds(by["cloud"]))
    levers = lever_table(ms)
    print(f"specnb bench: {args.edge} -> {args.cloud}, {args.dtype}, edge {edge.device} (threads {args.edge_threads}), "
          f"cloud {cloud.device}; {len(prompts)} prompts x {args.max_new_tokens} tokens, {args.reps} reps (median), "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'method':<36}{'tokens/s':>10}{'acceptance':>12}{'in models':>11}")
    for m in ms:
        acc = f"{m.accepted / m.drafted:.3f}" if m.drafted else "-"
        share = "-" if m.model_share is None else f"{m.model_share:.0%}"
        print(f"{m.label:<36}{statistics.median(m.tokens_per_s):>10.1f}{acc:>12}{share:>11}")
    by_g = lambda d: ", ".join(f"g={g}: {v:.2f}" for g, v in d.items())  # noqa: E731
    print(f"\nbest fixed gamma of the plain loop {r['best_gamma']}: alpha {r['alpha']:.3f} (MLE; accepted/drafted "
          f"{r['acceptance_rate']:.3f}), c {r['c']:.3f}, S(alpha,gamma,c) {r['S']:.2f}")
    print(f"R1 speculative / cloud_optimized      {r['R1']:.2f}  ({r['R1_method']}; plain g={r['best_gamma']} {r['R1_plain']:.2f}, "
          f"heuristic {r['R1_heuristic']:.2f}, cost {r['R1_cost']:.2f})")
    print(f"R2 speculative / hf_assisted same g   {r['R2']:.2f}  ({r['R2_method']}; {by_g(r['R2_by_gamma'])})")
    print(f"   plain loop / hf_assisted (eager)   {r['R2_same_stack']:.2f}  ({by_g(r['R2_same_stack_by_gamma'])})")
    print(f"   spec+opt / hf+static (compiled)    {r['R2_static']:.2f}  ({by_g(r['R2_static_by_gamma'])})")
    print(f"R3 speed-up vs cloud / S              {r['R3']:.2f}  (measured {r['speedup_vs_cloud']:.2f}x)")
    print(f"   with the verification's cost       {r['R3_with_verify_cost']:.2f}  (a verification costs "
          f"{r['verify_cost']:.2f} cloud steps here; S with it {r['S_with_verify_cost']:.2f})")
    print(f"loop overhead (outside forward calls) {r['loop_overhead']:.1%}  (hf_assisted {r['loop_overhead_hf']:.1%})")
    print(f"\n{'lever (measured alone)':<44}{'with':>9}{'without':>9}{'gain':>8}  range over reps")
    for row in levers:
        print(f"{row['lever'] + ' (g=' + str(row['gamma']) + ')':<44}{row['with']:>9.1f}{row['without']:>9.1f}"
              f"{row['gain']:>7.2f}x  {row['gain_min']:.2f}-{row['gain_max']:.2f}")
    if graphs:
        print(f"\nWARNING: torch compiled {graphs} graph(s) during the timed repetitions: some timings include compilation.")
    if args.json_path:
        record = {
            "kind": "bench",
            "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")} | {"lever_gamma": lever_gamma},
            "devices": {"edge": str(edge.device), "cloud": str(cloud.device)},
            "torch_threads": torch.get_num_threads(),
            "methods": [
                {"label": m.label, "method": m.kind, "gamma": m.gamma, "schedule": m.schedule, "optimized": m.optimized,
                 "lever": m.lever, "tokens_per_s": statistics.median(m.tokens_per_s), "tokens_per_s_reps": m.tokens_per_s,
                 "acceptance_rate": m.accepted / m.drafted if m.drafted else None, "model_share": m.model_share}
                for m in ms
            ],
            "ratios": r,
            "levers": levers,
            "graphs_compiled_while_timing": graphs,
            "versions": runinfo.versions(),
            "machine": runinfo.machine(),
            "git": runinfo.git_state(),
            "created": runinfo.now(),
        }
        runinfo.write_json_atomic(args.json_path, record)
        print(f"record written to {args.json_path}")
    return 0
