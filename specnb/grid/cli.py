"""``specnb grid PARAMS.yaml``: validate, expand, run (resumably), then analyse and export to HTML."""

from __future__ import annotations

import argparse
import fnmatch
import sys
import time
from pathlib import Path
from typing import Any

from .analysis import print_headline, run_analysis
from .cells import NOTEBOOK_DIR, Cell, cell_is_ok, expand
from ..study.params import GridParams, ParamsError, load_grid_params
from ..measure.provenance import git_state, machine, now, read_json, versions, write_json_atomic

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``specnb grid`` (local and Slurm executors)."""
    parser.add_argument("params", help="params YAML, e.g. params/default.yaml")
    parser.add_argument("--out", help="run folder (default outputs/<params name>-<UTC time>); "
                        "re-running into an existing folder resumes it")
    parser.add_argument("--jobs", type=int, help="cells run at once by the local executor (default: runner.jobs)")
    parser.add_argument("--resume", action="store_true",
                        help="without --out: continue the newest run of this params file; ok cells are skipped")
    parser.add_argument("--only", action="append", metavar="GLOB", help="run only cells whose id matches (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and stop")
    parser.add_argument("--notebook-dir", default=str(NOTEBOOK_DIR), help="where the method notebooks are (default: %(default)s)")
    parser.add_argument("--no-analysis", action="store_true", help="skip the precision-analysis and summary notebooks")
    parser.add_argument("--executor", choices=("local", "slurm"), help="default: runner.executor (local)")
    slurm = parser.add_argument_group("slurm executor (defaults: runner.slurm in the params file)")
    slurm.add_argument("--partition")
    slurm.add_argument("--gpus-per-cell", type=int)
    slurm.add_argument("--time-min", type=int)
    slurm.add_argument("--mem-gb", type=int)
    slurm.add_argument("--max-parallel", type=int)
    slurm.add_argument("--slurm-opt", action="append", default=[], metavar="KEY=VALUE",
                       help="extra sbatch option, e.g. --slurm-opt account=myproj (repeatable)")


def _run_dir(args: argparse.Namespace, params: Path) -> Path:
    """``--out``; or with ``--resume`` the newest ``outputs/<stem>-*``; else a new timestamped folder."""
    if args.out:
        return Path(args.out).resolve()
    base = Path("outputs").resolve()
    if args.resume:
        runs = sorted(p for p in base.glob(f"{params.stem}-*") if (p / "manifest.json").is_file())
        if not runs:
            raise ParamsError(f"--resume: no earlier run of {params.stem} under {base}; drop --resume or pass --out")
        return runs[-1]
    return base / f"{params.stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def _slurm_options(args: argparse.Namespace, gp: GridParams) -> dict[str, Any]:
    opts = gp.runner.slurm.model_dump()
    for key in ("partition", "gpus_per_cell", "time_min", "mem_gb", "max_parallel"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    for item in args.slurm_opt:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"--slurm-opt {item!r}: expected KEY=VALUE, e.g. account=myproj")
        opts["opts"][key] = value
    opts["slurm_opts"] = opts.pop("opts")
    return opts


def make_executor(args: argparse.Namespace, gp: GridParams, run_dir: Path) -> Any:
    """The local process pool, or (lazily imported) the Slurm job-array executor."""
    kind = args.executor or gp.runner.executor
    if kind == "slurm":
        from .slurm import SlurmExecutor

        return SlurmExecutor(run_dir, **_slurm_options(args, gp))
    from .local import LocalExecutor

    return LocalExecutor(jobs=args.jobs or gp.runner.jobs)


def write_manifest(run_dir: Path, params: Path, gp: GridParams, cells: list[Cell], invocation: dict) -> None:
    """``manifest.json``: params file (path, text, parsed), cells, versions, machine, git, invocations."""
    path = run_dir / "manifest.json"
    old = read_json(path) or {}
    runs = [r for r in old.get("invocations", []) if r.get("started_at") != invocation["started_at"]]
    write_json_atomic(path, {
        "created_at": old.get("created_at", invocation["started_at"]),
        "params_file": str(params.resolve()),
        "params_text": params.read_text(encoding="utf-8"),
        "params": gp.model_dump(),
        "cells": [c.model_dump() for c in cells],
        "versions": versions(),
        "machine": machine(),
        "git": git_state(),
        "invocations": runs + [invocation],
    })


def run(args: argparse.Namespace) -> int:
    """Run the grid; exit code 0 when every cell is ok, 1 when some failed, 2 on bad input, 130 on Ctrl-C."""
    params = Path(args.params)
    try:
        gp = load_grid_params(params)
        run_dir = _run_dir(args, params)
        cells = expand(gp, run_dir, args.notebook_dir)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.only:
        cells = [c for c in cells if any(fnmatch.fnmatch(c.cell_id, g) for g in args.only)]
    if args.dry_run:
        for c in cells:
            print(f"{c.cell_id:40s} {Path(c.notebook).name}")
        print(f"{len(cells)} cells -> {run_dir}")
        return 0
    return _execute(args, gp, params, run_dir, cells)


class GridProgress:
    """A tqdm bar of finished cells (ok / failed in its postfix) with tqdm's time-left estimate."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self.ok = self.failed = 0
        self.bar = tqdm(total=total, unit="cell", desc="grid", dynamic_ncols=True)
        self.bar.set_postfix(ok=0, failed=0)

    def done(self, cell: Cell, result: dict) -> None:
        if (result or {}).get("status") == "ok":
            self.ok += 1
        else:
            self.failed += 1
            self.bar.write(f"failed: {cell.cell_id}: {(result or {}).get('error', '?')}")
        self.bar.set_postfix(ok=self.ok, failed=self.failed, refresh=False)
        self.bar.update(1)

    def counts(self) -> dict[str, int]:
        return {"ok": self.ok, "failed": self.failed}

    def close(self) -> None:
        self.bar.close()


def _execute(args: argparse.Namespace, gp: GridParams, params: Path, run_dir: Path, cells: list[Cell]) -> int:
    todo = [c for c in cells if not cell_is_ok(c)]
    inv = {"started_at": now(), "argv": sys.argv, "cells_to_run": [c.cell_id for c in todo],
           "cells_skipped_ok": [c.cell_id for c in cells if c not in todo]}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(run_dir, params, gp, cells, inv)
    print(f"run folder: {run_dir}\n{len(cells)} cells: {len(todo)} to run, {len(cells) - len(todo)} already ok")
    progress = GridProgress(len(todo))
    t0 = time.monotonic()
    try:
        if todo:
            make_executor(args, gp, run_dir).run(todo, progress.done)
    except KeyboardInterrupt:
        progress.close()
        inv.update(finished_at=now(), interrupted=True, **progress.counts())
        write_manifest(run_dir, params, gp, cells, inv)
        print(f"interrupted; finished cells are kept. Continue with: specnb grid {params} --out {run_dir}",
              file=sys.stderr)
        return 130
    except RuntimeError as err:  # the executor could not start (e.g. sbatch missing or refusing the array)
        from .slurm import SlurmSubmitError

        if not isinstance(err, SlurmSubmitError):
            raise
        progress.close()
        print(f"specnb grid: error: {err}", file=sys.stderr)
        return 2
    progress.close()
    inv.update(finished_at=now(), interrupted=False, **progress.counts())
    write_manifest(run_dir, params, gp, cells, inv)
    print(f"cells done in {time.monotonic() - t0:.0f} s")
    failed = [c.cell_id for c in cells if not cell_is_ok(c)]
    if failed:
        print(f"{len(failed)} failed cell(s): {', '.join(failed)} (see cells/<id>/log.txt and executed.ipynb)")
    if gp.runner.analysis and not args.no_analysis:
        t1 = time.monotonic()
        drift = {"drift_device": gp.runner.drift_device, "drift_prompts": gp.runner.drift_prompts}
        htmls = run_analysis(run_dir, Path(args.notebook_dir), drift)
        print(f"analysis done in {time.monotonic() - t1:.0f} s")
        for name, html in htmls.items():
            print(f"{name}: {html}")
    print_headline(run_dir)
    return 1 if failed else 0

