"""Each speed-up of a grid run beside its bound S(alpha, gamma, c, v), from step costs measured on the same machine.

    PYTHONPATH=$PWD python tools/bound_table.py docs/measurements/qwen-coder-<date>/run \
        docs/measurements/qwen-coder-<date>/step_costs.json [--threads 1] [--markdown]

For each drafting cell of the run (speculative, HF assisted, prompt lookup) it reads the speed-up the
audit quotes and its interval (``speedups.csv``), the cell's alpha (maximum-likelihood estimate) and
gamma (``results.csv``), and takes from ``tools/step_costs.py``'s record, at the cell's dtype and thread
count: c = edge step / cloud step (0 for prompt lookup: no model drafts) and v = the cloud's forward of
gamma + 1 positions / its single step. Printed: S(alpha, gamma, c, 1) (Leviathan et al.: verification
as cheap as a step), S(alpha, gamma, c, v) (its measured cost) and measured / S(..., v): how much of what
the bound allows the loop delivers (the rest: the loop, the edge's catch-up step, rounds cut short at
the end of a generation).
"""

from __future__ import annotations

import argparse
import json
import math

import pandas as pd

from specnb.decode.schedule import speedup_bound

DRAFTING = ("speculative", "hf_assisted", "prompt_lookup")


def costs(record: dict, dtype: str, threads: int) -> tuple[float, list[float], float]:
    """(c, v(k) for k = 1..K, the cloud's step in seconds) at ``dtype`` and ``threads`` from a step_costs
    record (edge first, cloud second)."""
    rows = [r for r in record["rows"] if r["dtype"] == dtype and r["threads"] == threads]
    if len(rows) != 2:
        raise SystemExit(f"the step-cost record has no edge and cloud rows at {dtype}, {threads} thread(s)")
    edge, cloud = rows
    return edge["seconds"][0] / cloud["seconds"][0], cloud["v"], cloud["seconds"][0]


def table(run: str, record: dict, threads: int) -> pd.DataFrame:
    sp = pd.read_csv(f"{run}/speedups.csv")
    res = pd.read_csv(f"{run}/results.csv").set_index("cell_id")
    out = []
    for _, row in sp[sp["method"].isin(DRAFTING)].iterrows():
        cell = res.loc[row["cell_id"]]
        alpha, gamma = float(cell["alpha"]), int(cell["gamma"])
        e_dtype = cell["edge_dtype"] if isinstance(cell["edge_dtype"], str) else cell["dtype"]
        c_dtype = cell["cloud_dtype"] if isinstance(cell["cloud_dtype"], str) else cell["dtype"]
        c = costs(record, e_dtype, threads)[0] * costs(record, e_dtype, threads)[2] / costs(record, c_dtype, threads)[2]
        v = costs(record, c_dtype, threads)[1]
        c = 0.0 if row["method"] == "prompt_lookup" else c
        vk = v[gamma] if gamma < len(v) else math.nan
        s1, sv = speedup_bound(alpha, gamma, c, 1.0), speedup_bound(alpha, gamma, c, vk)
        out.append({"cell": row["cell_id"], "vs": row["reference"], "speed-up": row["speedup"],
                    "low": row["speedup_low"], "high": row["speedup_high"], "alpha": alpha, "gamma": gamma,
                    "c": c, "v": vk, "S(v=1)": s1, "S(v)": sv, "measured / S(v)": row["speedup"] / sv,
                    "verdict": "disturbed" if row["timing_disturbed"] else ("fair" if row["fair"] else "not fair")})
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a grid run folder (or a committed record of one): speedups.csv, results.csv")
    ap.add_argument("step_costs", help="tools/step_costs.py's JSON record, taken on the same machine")
    ap.add_argument("--threads", type=int, default=1, help="the cells' thread count (default 1)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    with open(args.step_costs, encoding="utf-8") as fh:
        record = json.load(fh)
    df = table(args.run, record, args.threads)
    if args.markdown:
        cols = list(df.columns)
        print("| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols))
        for r in df.itertuples(index=False):
            print("| " + " | ".join(f"{x:.3f}" if isinstance(x, float) else str(x) for x in r) + " |")
    else:
        print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
