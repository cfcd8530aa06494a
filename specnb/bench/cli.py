"""``specnb bench``: the command (arguments, the run, the printed table and the JSON record).

What it measures and the ratios it prints: :mod:`specnb.bench.ratios`."""

from __future__ import annotations

import argparse
from typing import Any


from ..measure import provenance
from .. import threads
from ..measure.clock import probe_summary
from ..models import ModelSpec, load
from ..decode.lookup import MAX_NGRAM
from ..chat import MODES, Prompting
from ..prompts import load_prompts
from .passes import measure
from .ratios import _step_seconds, ci_text, lever_table, ratios


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edge", metavar="MODEL", default="zoo:tiny-edge", help="edge (draft) model: folder, hub id or zoo:NAME (default: %(default)s)")
    parser.add_argument("--cloud", metavar="MODEL", default="zoo:tiny-cloud", help="cloud (verifying) model, same forms (default: %(default)s)")
    parser.add_argument("--dtype", metavar="DTYPE", default="float32", help="dtype of both models: float32, float16, bfloat16 (default: %(default)s)")
    parser.add_argument("--edge-dtype", metavar="DTYPE", default=None,
                        help="the edge's dtype when it differs from the cloud's (the baselines and the output are the "
                             "cloud's, in --dtype; default: %(default)s = --dtype)")
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
    parser.add_argument("--peer", choices=("llama.cpp",), default=None,
                        help="instead of the variants: llama.cpp's speculative decoding over its own single-model decoding, "
                             "beside specnb's over its cloud, on the same GGUF files and prompts, at one gamma "
                             "(--lever-gamma, else the middle of --gammas); needs --llama-cpp (default: off)")
    parser.add_argument("--llama-cpp", metavar="DIR", default=None,
                        help="folder holding llama.cpp's llama-completion and llama-speculative-simple (default: $SPECNB_LLAMA_CPP)")
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


def _lever_gamma(args: argparse.Namespace, gammas: list[int]) -> int:
    if args.lever_gamma is not None:
        if args.lever_gamma < 1:
            raise SystemExit("specnb bench: --lever-gamma must be a positive integer")
        return args.lever_gamma
    return 4 if 4 in gammas else gammas[len(gammas) // 2]


def _edge_note(args: argparse.Namespace) -> str:
    return f" (edge {args.edge_dtype})" if args.edge_dtype and args.edge_dtype != args.dtype else ""


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
    edge = load(ModelSpec(args.edge, dtype=args.edge_dtype or args.dtype, device=args.edge_device, threads=args.edge_threads))
    cloud = load(ModelSpec(args.cloud, dtype=args.dtype, device=args.cloud_device, threads=args.cloud_threads))
    questions = load_prompts(args.prompts, limit=args.limit)
    prompting = Prompting(cloud.tokenizer, args.chat_template, "cloud")
    prompts = [prompting.render(q) for q in questions]  # token ids of each first turn: one turn per prompt here
    if args.peer:
        return _peer(args, edge, cloud, questions, prompts, prompting, lever_gamma)
    ms, graphs, timing = measure(edge, cloud, prompts, args.max_new_tokens, gammas, args.reps, lever_gamma)
    by = {m.label: m for m in ms}
    r = ratios(ms, _step_seconds(by["edge"]), _step_seconds(by["cloud"]))
    ivs = r["intervals"]
    levers = lever_table(ms)
    clock = probe_summary(timing["probes"])
    thr = threads.describe()
    e_thr, c_thr = threads.resolve(args.edge_threads), threads.resolve(args.cloud_threads)
    print(f"specnb bench: {args.edge} -> {args.cloud}, {args.dtype}{_edge_note(args)}, edge {edge.device}, cloud {cloud.device}; "
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
            "versions": provenance.versions(),
            "machine": provenance.machine(),
            "git": provenance.git_state(),
            "created": provenance.now(),
        }
        provenance.write_json_atomic(args.json_path, record)
        print(f"record written to {args.json_path}")
    return 0


def _peer(args: argparse.Namespace, edge, cloud, questions, prompts, prompting, gamma: int) -> int:
    """``--peer llama.cpp``: :func:`specnb.bench.llamacpp.compare`, printed and recorded."""
    from . import llamacpp

    try:
        files = llamacpp.gguf_file(args.edge), llamacpp.gguf_file(args.cloud)
        llamacpp.programs(args.llama_cpp)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"specnb bench --peer llama.cpp: {err}")
    print(f"specnb bench --peer llama.cpp: {args.edge} -> {args.cloud}; specnb at {args.dtype}{_edge_note(args)} (dense), llama.cpp on the "
          f"GGUF files; {len(prompts)} prompts x {args.max_new_tokens} tokens, gamma {gamma}, {args.reps} reps; "
          f"{'chat template' if prompting.templated else 'raw text'}", flush=True)
    out = llamacpp.compare(edge, cloud, *files, prompts, args.max_new_tokens, gamma, args.reps, args.llama_cpp)
    print(f"\n{'side':<40}{'single tok/s':>13}{'spec tok/s':>12}{'acceptance':>12}  speed-up (95% CI)   output")
    for s in out["sides"]:
        acc = "-" if s["acceptance"] is None else f"{s['acceptance']:.3f}"
        print(f"{s['side']:<40}{s['single_tokens_per_s']:>13.2f}{s['speculative_tokens_per_s']:>12.2f}{acc:>12}  "
              f"{ci_text({'value': s['speedup'], 'low': s['low'], 'high': s['high'], 'measurable': not s['low'] <= 1.0 <= s['high']})}"
              f"   {s['output_matches']}")
    print("absolute tokens/s differ by design (quantized kernels vs dense torch); the speed-ups compare the methods.")
    if args.json_path:
        thr = threads.describe()
        record = {"kind": "bench-peer-llama.cpp",
                  "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")} | {"gamma": gamma},
                  "prompts": [q.text for q in questions], "prompting": prompting.describe(), "threads": thr,
                  **out, "versions": provenance.versions(), "machine": provenance.machine(), "git": provenance.git_state(),
                  "created": provenance.now()}
        provenance.write_json_atomic(args.json_path, record)
        print(f"record written to {args.json_path}")
    return 0
