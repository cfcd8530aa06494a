"""The papermill grid: params YAML -> cells -> one executed notebook + result.json per cell.

The unit of work is :func:`run_cell`, a plain function, so the local process pool
(:class:`specnb.grid.local.LocalExecutor`) and the Slurm array (:mod:`specnb.grid.slurm`) run the same
cells. Imports go one way: the executors and the command line (:mod:`specnb.grid.cli`, what
``specnb grid`` runs) import this module, never the reverse.

A run folder holds ``manifest.json``, ``cells/<cell-id>/`` (``executed.ipynb``, ``result.json``,
``log.txt``, ``cell.json``), and after the cells the executed ``precision_analysis`` and
``summary`` notebooks with their HTML exports.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..study import methods
from ..study.params import NOTEBOOKS, GridParams, MethodParams, ParamsError, relevant_fields
from ..measure.provenance import REPO_ROOT, log_tail, now, read_json, write_json_atomic

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
RESULT, EXECUTED, LOG, CELL = "result.json", "executed.ipynb", "log.txt", "cell.json"
_ABBREV = {"dtype": "", "edge_dtype": "edge_", "cloud_dtype": "cloud_", "gamma": "g", "max_new_tokens": "n",
           "temperature": "t", "verify": "", "num_prompts": "p", "seed": "seed", "optimized": "opt_",
           "schedule": "", "compile_steps": "compile_", "ahead": "ahead"}


class Cell(BaseModel):
    """One grid point; JSON- and pickle-serializable (submitit pickles it)."""

    cell_id: str
    method: str
    notebook: str
    parameters: dict[str, Any]
    cell_dir: str
    timeout_s: int | None = None

    @property
    def result_path(self) -> Path:
        return Path(self.cell_dir) / RESULT


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(value)).strip("_") or "x"


def _cell_id(method: str, axes: dict[str, Any]) -> str:
    """``speculative-float32-g4``: the method, then each varying axis value (short prefixes)."""
    parts = [method] + [f"{_ABBREV.get(k, k + '_')}{_slug(v)}" for k, v in axes.items()]
    return "-".join(parts)


def expand(gp: GridParams, run_dir: str | Path, notebook_dir: str | Path = NOTEBOOK_DIR) -> list[Cell]:
    """The cartesian product of the ``grid:`` axes (and of each ``extra:`` entry), one :class:`Cell`
    per distinct run.

    Axes a method ignores (the cloud dtype for ``edge``, ``gamma`` for the baselines) would only
    repeat a run, so such duplicates are dropped and left out of the cell id.
    """
    run_dir, notebook_dir = Path(run_dir).resolve(), Path(notebook_dir).resolve()
    base = gp.base_parameters()
    cells, seen, problems = [], set(), []
    for method, point in _points(gp):
        keep = relevant_fields(method)
        settings = MethodParams(**{**base, **point})
        problems += [f"{method} at {point}: {p}" for p in methods.get(method).problems(settings.model_dump())]
        used = {k: getattr(settings, k) for k in point if k in keep}
        key = (method, tuple(sorted((k, str(getattr(settings, k))) for k in keep)))
        if key in seen:
            continue
        seen.add(key)
        cells.append((method, used, settings))
    if problems:
        raise ParamsError("invalid combinations (give such a method its own extra: entry):\n  "
                          + "\n  ".join(dict.fromkeys(problems)))
    ids = [_cell_id(m, used) for m, used, _ in cells]
    out = []
    for (method, _, settings), cid in zip(cells, ids):
        if ids.count(cid) > 1:
            cid += "-" + hashlib.sha1(settings.model_dump_json().encode()).hexdigest()[:6]
        cell_dir = run_dir / "cells" / cid
        params = settings.model_dump() | {"result_path": str(cell_dir / RESULT)}
        out.append(Cell(cell_id=cid, method=method, notebook=str(notebook_dir / NOTEBOOKS[method]),
                        parameters=params, cell_dir=str(cell_dir), timeout_s=gp.runner.timeout_s))
    return out


def _points(gp: GridParams):
    """(method, axis values) of every grid point: the product of ``grid:``, then of each ``extra:`` entry."""
    for grid in [gp.grid] + gp.extra:
        grid = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
        axes = {k: v for k, v in grid.items() if k != "method"}
        for method in grid.get("method", list(NOTEBOOKS)):
            for combo in itertools.product(*axes.values()):
                yield method, dict(zip(axes, combo))


def read_result(cell: Cell) -> dict | None:
    """The cell's result.json, or None when there is none (not run, or killed mid-run)."""
    res = read_json(cell.result_path)
    return res if isinstance(res, dict) else None


def cell_is_ok(cell: Cell) -> bool:
    """True when the cell finished ok with exactly these parameters (so ``--resume`` may skip it)."""
    res = read_result(cell)
    if not res or res.get("status") != "ok":
        return False
    ran = (res.get("cell") or {}).get("parameters")
    return ran is None or ran == cell.parameters


def _cell_info(cell: Cell) -> dict[str, Any]:
    d = Path(cell.cell_dir)
    return {"cell_id": cell.cell_id, "parameters": cell.parameters, "notebook": cell.notebook,
            "executed_notebook": str(d / EXECUTED), "log": str(d / LOG)}


def write_failed_result(cell: Cell, error: str, **extra: Any) -> str:
    """Record a failed cell (keeping any partial record the notebook wrote); return its path.

    Used by :func:`run_cell` for notebook errors and by executors when the worker itself died
    (out of memory, killed, time limit, Slurm TIMEOUT/NODE_FAIL): ``extra`` adds e.g.
    ``slurm_state`` or ``log_tail``.
    """
    partial = read_result(cell) or {}
    record = {
        **partial,
        "status": "failed",
        "error": error,
        "method": partial.get("method", cell.method),
        "settings": partial.get("settings", cell.parameters),
        "cell": _cell_info(cell),
        "failed_at": now(),
        **extra,
    }
    if "log_tail" not in record:
        record["log_tail"] = log_tail(Path(cell.cell_dir) / LOG)
    return str(write_json_atomic(cell.result_path, record))


def _execution_error(err: BaseException) -> str:
    """One line for a notebook failure: the exception raised inside the notebook when there is one."""
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename:
        where = getattr(err, "exec_count", None)
        return f"{ename}: {evalue}" + (f" (notebook cell [{where}])" if where else "")
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def kernel_can_import_specnb() -> None:
    """Put this checkout on PYTHONPATH so kernels started from here import this specnb (even uninstalled)."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + parts)


def kernel_options() -> dict[str, Any]:
    """papermill's kernel settings for every notebook the grid runs: ``python3``, no progress bar,
    and CurveZMQ-encrypted kernel sockets where the kernel declares support (ipykernel does) and
    pyzmq has Curve. Without keys ipykernel warns in every log that its messages go over TCP in
    plain text; with them they do not, and the warning is gone for that reason."""
    import zmq
    from jupyter_client import KernelManager
    from traitlets.config import Config

    options: dict[str, Any] = {"kernel_name": "python3", "progress_bar": False}
    if zmq.has("curve") and KernelManager.class_traits().get("transport_encryption") is not None:
        options["config"] = Config({"KernelManager": {"transport_encryption": "auto"}})
    return options


def run_cell(cell: Cell) -> str:
    """Execute the cell's notebook with papermill in this process; return the result.json path.

    Writes ``executed.ipynb`` (kept on failure, with the traceback), ``log.txt`` (the kernel's
    stdout/stderr) and ``result.json``. Never raises for notebook errors: they become a result
    with ``status: failed`` and the error.
    """
    import papermill as pm

    cell_dir = Path(cell.cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cell_dir / CELL, cell.model_dump())
    kernel_can_import_specnb()
    cell.result_path.unlink(missing_ok=True)
    started = time.time()
    error = None
    try:
        with open(cell_dir / LOG, "a", encoding="utf-8") as log:
            pm.execute_notebook(
                cell.notebook, str(cell_dir / EXECUTED), parameters=cell.parameters, cwd=str(cell_dir),
                stdout_file=log, stderr_file=log, execution_timeout=cell.timeout_s,
                request_save_on_cell_execute=True, **kernel_options(),
            )
    except Exception as err:  # noqa: BLE001 - every failure becomes a failed result
        error = _execution_error(err)
    record = read_result(cell)
    if error is None and record is None:
        error = "the notebook finished without writing its result (result_path)"
    if error is not None:
        return write_failed_result(cell, error, elapsed_s=round(time.time() - started, 3))
    record["cell"] = _cell_info(cell)
    record["elapsed_s"] = round(time.time() - started, 3)
    return str(write_json_atomic(cell.result_path, record))
