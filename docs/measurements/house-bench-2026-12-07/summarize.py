"""Summarize the interleaved A/B `specnb bench` runs: per-run tokens/s of each variant, B/A with a
paired bootstrap interval (specnb.measure.stats.ratio_interval over every run's repetitions, paired by
run and repetition, prompts resampled), and what else used the CPU during each timed section."""
import json, sys
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root
from specnb.measure.stats import ratio_interval

src = Path(sys.argv[1])
A, B = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else ("A", "B")
runs = sorted({p.stem.split("-")[0] for p in src.glob(f"run*-{A}.json")} & {p.stem.split("-")[0] for p in src.glob(f"run*-{B}.json")},
              key=lambda r: int(r[3:]))
rec = {(r, c): json.loads((src / f"{r}-{c}.json").read_text()) for r in runs for c in (A, B)}
labels = [m["label"] for m in rec[(runs[0], A)]["methods"]]
rows, out = [], {"runs": runs, "variants": {}}
for label in labels:
    tabs = {c: [] for c in (A, B)}
    per_run = {c: [] for c in (A, B)}
    for r in runs:
        for c in (A, B):
            m = next(m for m in rec[(r, c)]["methods"] if m["label"] == label)
            tabs[c].extend(m["table"])
            per_run[c].append(m["tokens_per_s"])
    iv = ratio_interval(np.asarray(tabs[B], float), np.asarray(tabs[A], float), paired_reps=True)
    ratio, lo, hi = iv.value, iv.low, iv.high
    out["variants"][label] = {"before": A, "after": B, "before_tokens_per_s": per_run[A], "after_tokens_per_s": per_run[B], "after_over_before": ratio,
                              "interval_95": [lo, hi]}
    verdict = "no measurable difference" if lo <= 1.0 <= hi else ("after faster" if lo > 1 else "after slower")
    rows.append(f"| {label} | {' / '.join(f'{x:.1f}' for x in per_run[A])} | {' / '.join(f'{x:.1f}' for x in per_run[B])} "
                f"| {ratio:.3f} [{lo:.3f}, {hi:.3f}] | {verdict} |")
neigh = []
for r in runs:
    for c in (A, B):
        t = rec[(r, c)]["timing"]
        n = t["neighbours"]
        neigh.append({"run": r, "commit": c, "git": rec[(r, c)]["git"], "others_cores": n["others_cores"],
                      "others_cores_reps": [x["others_cores"] for x in t.get("neighbours_reps", [])],
                      "clock_disturbed": rec[(r, c)]["clock"]["disturbed"], "timed_s": n["wall_s"]})
out["neighbours"] = neigh
(src / "summary.json").write_text(json.dumps(out, indent=1))
print(f"| variant | before ({A}) tok/s, per run | after ({B}) tok/s, per run | after / before [95% CI] | |\n|---|---|---|---|---|")
print("\n".join(rows))
print()
for n in neigh:
    print(f"{n['run']} {n['commit']} {n['git'].get('commit', '')[:7]} dirty={n['git'].get('dirty')} others_cores {n['others_cores']:.2f} reps {n['others_cores_reps']} disturbed={n['clock_disturbed']} timed {n['timed_s']:.1f} s")
