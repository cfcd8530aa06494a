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

from typing import Any

import numpy as np

from ..decode.schedule import speedup_bound
from ..measure.metrics import estimate_alpha
from ..measure.stats import ratio_interval
from .variants import ADAPTIVE, Variant


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
    limit = speedup_bound(alpha, best.gamma, c)
    measured = ratio("speedup_vs_cloud", best.label, "cloud")
    verify_cost = best.verify_s / best.rounds / cloud_step_s if best.rounds else float("nan")
    limit_v = speedup_bound(alpha, best.gamma, c, v=verify_cost)
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
