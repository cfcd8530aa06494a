"""Results -> one DataFrame: the run folder's records read, one row per cell with its method,
roles, dtypes, device classes, set-up class and workload; the registry's labels and references.

What may be compared with what is :mod:`specnb.report.fairness`'s job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..study import methods as _methods
from ..measure.provenance import read_json

REFERENCE = "cloud_optimized"  # the strongest baseline
REFERENCES = _methods.references()  # set-up class -> its baseline (plain: cloud, optimized: cloud_optimized)
DTYPE_ORDER = ("float32", "bfloat16", "float16")
METHOD_NAMES = {name: m.label for name, m in _methods.METHODS.items()}
METRICS = ("new_tokens", "wall_s", "tokens_per_s", "ttft_s", "rounds", "drafted", "accepted", "acceptance_rate", "alpha",
           "rejected_rounds",
           "mean_accepted_len", "tokens_per_round", "cloud_calls", "edge_calls", "draft_s", "verify_s",
           "peak_mem_bytes", "compile_s", "warmup_s", "warmup_compile_s", "rep_spread")
WORKLOAD = ("prompts", "num_prompts", "max_new_tokens", "temperature", "prompt_format")
ROLE_USE = {name: m.roles for name, m in _methods.METHODS.items()}
NA = "\u2013"  # an en dash: how a table shows a value that does not apply (or was not measured)


# ---------------------------------------------------------------------------- loading

def load_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every result record of a run folder (``cells/*/result.json``) or of a folder of JSON files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} not found; pass the folder `specnb grid` printed")
    files = sorted(run_dir.glob("cells/*/result.json")) or sorted(run_dir.glob("*.json"))
    records = []
    for f in files:
        rec = read_json(f)
        if isinstance(rec, dict) and "status" in rec:
            rec.setdefault("cell", {}).setdefault("cell_id", f.parent.name if f.name == "result.json" else f.stem)
            records.append(rec)
    return records


def resolve_run(run_dir: str | Path | None) -> Path:
    """The run folder to analyse; None means the example run shipped beside the notebooks."""
    from ..measure.provenance import REPO_ROOT

    path = REPO_ROOT / "notebooks" / "example_run" if run_dir is None else Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {str(path)!r} not found; set run_dir to the folder `specnb grid` printed")
    return path


def _device_class(device: str | None) -> str | None:
    """:func:`specnb.dtypes.device_class` of a recorded device; None when not known (none, or
    ``auto`` in the settings of a cell that failed before loading its model)."""
    if device is None or str(device) == "auto":
        return None
    from ..dtypes import device_class  # imports torch: only for records without the loaded role's class

    return device_class(device)


def _role(rec: dict[str, Any], role: str) -> dict[str, Any]:
    """One role's model/dtype/device/class/threads, from the loaded-model info or the settings."""
    if role not in ROLE_USE.get(rec.get("method", ""), ()):
        return dict.fromkeys(("model", "dtype", "device", "class", "threads"))
    info, s = rec.get(role) or {}, rec.get("settings") or {}
    device = info.get("device", s.get(f"{role}_device"))
    return {"model": info.get("model", s.get(f"{role}_model")),
            "dtype": info.get("dtype", s.get(f"{role}_dtype") or s.get("dtype")),
            "device": device, "class": info.get("device_class", _device_class(device)),
            "threads": info.get("threads", s.get(f"{role}_threads"))}


def prompt_format(settings: dict[str, Any]) -> str:
    """What the models were fed: "chat template" or "raw text" (records made before ``chat_template``
    existed, ``none``, and ``auto`` with a tokenizer that has no template all fed raw text). Part of the
    workload: a templated run is compared with a raw-text one only under a loud flag."""
    return "chat template" if settings.get("chat_template_applied") else "raw text"


def record_row(rec: dict[str, Any]) -> dict[str, Any]:
    """The flat row of one record: identity, both roles, decoding settings, aggregate metrics."""
    s, agg = rec.get("settings") or {}, rec.get("aggregate") or {}
    row: dict[str, Any] = {"cell_id": rec["cell"]["cell_id"], "method": rec.get("method"), "status": rec.get("status"),
                           "error": rec.get("error")}
    for role in ("edge", "cloud"):
        row.update({f"{role}_{k}": v for k, v in _role(rec, role).items()})
    row.update({k: s.get(k) for k in ("gamma", "verify", "seed", "optimized", "reps") + WORKLOAD})
    row["prompt_format"] = prompt_format(s)
    row["setup"] = setup_class(rec.get("method", ""), s)
    known = _methods.METHODS.get(rec.get("method", ""))
    row["same_output"] = bool(known and known.reproduces_cloud(s))
    row.update({k: agg.get(k) for k in METRICS})
    row["num_prompts"] = agg.get("prompts", s.get("num_prompts"))
    pair = rec.get("pair") or {}  # a pair with two tokenizers drafts through a translation (specnb.decode.translate)
    row["tokenizers"], row["vocab_overlap"] = pair.get("tokenizers"), pair.get("vocab_overlap")
    row["mismatches_per_round"] = agg.get("mismatches_per_round")
    row["timing"] = rec.get("timing")  # per-repetition entries and probes: intervals and the clock audit
    return row


def setup_class(method: str, settings: dict[str, Any]) -> str:
    """``plain`` or ``optimized`` (static caches, compiled steps), as the fairness rule compares them."""
    known = _methods.METHODS.get(method)
    return known.setup(settings) if known else "unknown"


def results_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per cell (failed cells included, with their error), sorted by method and dtype."""
    df = pd.DataFrame([record_row(r) for r in records])
    if df.empty:
        return df
    mixed = df["edge_dtype"].notna() & df["cloud_dtype"].notna() & (df["edge_dtype"] != df["cloud_dtype"])
    df["dtype"] = df["cloud_dtype"].fillna(df["edge_dtype"]).where(
        ~mixed, "edge-" + df["edge_dtype"].astype(str) + "_cloud-" + df["cloud_dtype"].astype(str))
    df["variant"] = [variant(m, s) for m, s in zip(df["method"], df["setup"])]
    df["peak_mem_mib"] = df["peak_mem_bytes"] / 2**20
    order = {m: i for i, m in enumerate(list(METHOD_NAMES) + list(DTYPE_ORDER))}
    return df.sort_values(["method", "dtype", "cell_id"], ignore_index=True,
                          key=lambda c: c.map(lambda v: (order.get(v, len(order)), str(v))) if c.name != "cell_id" else c)


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    df.to_csv(path, index=False)
    return path

def variant(method: str, setup: str) -> str:
    """A method with its set-up class when the method has both: ``speculative (optimized)``."""
    known = _methods.METHODS.get(method)
    fixed = known is not None and known.fixed_setup is not None  # one set-up only: its name says it
    return method if fixed or setup == "plain" else f"{method} ({setup})"

def speedup_text(speedup: float, low: float, high: float) -> str:
    """``1.52x (1.40-1.63)``; without the interval where there is none (one prompt timed once); "–" when not quoted."""
    if pd.isna(speedup):
        return NA
    return f"{speedup:.2f}x" + ("" if pd.isna(low) else f" ({low:.2f}-{high:.2f})")
