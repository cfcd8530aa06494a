"""Refresh what the committed notebooks show: their stored outputs and the example run beside them.

The notebooks under notebooks/ are their own source: edit them in JupyterLab (or any editor)
and save. This script never writes a cell's source; it only re-executes the notebooks in place
and refreshes notebooks/example_run, the grid run the analysis notebooks show by default.

    python tools/refresh_notebooks.py --refresh            # all of it: default grid -> example_run -> execute (~7 min)
    python tools/refresh_notebooks.py --execute            # re-execute the notebooks in place (stores outputs)
    python tools/refresh_notebooks.py --execute --only precision_analysis   # just that one (repeatable)
    python tools/refresh_notebooks.py --example RUN_DIR    # copy a grid run's results to notebooks/example_run
    python tools/refresh_notebooks.py --bench FILE         # a `specnb bench --json` record -> example_run/bench.json

Refresh when the embedded pair, the library's output or a notebook changes, then commit notebooks/.
Cells whose output is deterministic carry ``# NBVAL_CHECK_OUTPUT`` (checked by ``pytest --nbval-lax``);
timing/memory cells carry ``# NBVAL_IGNORE_OUTPUT``. Stored outputs keep no stderr and no path of
this machine (tests/test_notebooks.py checks both, and that each method notebook's parameters cell
names the fields of specnb.study.params.MethodParams with their types).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"


def notebooks() -> list[Path]:
    """Every committed notebook (method notebooks first, then the analysis notebooks that read their results)."""
    analysis = {"precision_analysis.ipynb", "summary.ipynb"}
    found = sorted(NB_DIR.glob("*.ipynb"))
    return [p for p in found if p.name not in analysis] + [p for p in found if p.name in analysis]


def _relative(value: Any, bases: list[str]) -> Any:
    """Strings that are paths under one of the absolute folders ``bases`` (first match wins), made relative to it."""
    if isinstance(value, dict):
        return {k: _relative(v, bases) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, bases) for v in value]
    if isinstance(value, str):
        for base in bases:
            if value == base or value.startswith(base + os.sep):
                return os.path.relpath(value, base)
    return value


def copy_example(run_dir: Path) -> None:
    """notebooks/example_run/cells/<id>/result.json (+ manifest.json) from a finished grid run.

    Paths of this machine become relative: to the run folder (``cells/<id>/...``) or to the
    checkout (``notebooks/...``, ``params/...``). A bench record already there (``bench.json``)
    is kept: it comes from ``specnb bench``, not the grid.
    """
    dest = NB_DIR / "example_run"
    run_dir = run_dir.resolve()
    bases = [str(run_dir), str(ROOT)]
    bench = (dest / "bench.json").read_bytes() if (dest / "bench.json").is_file() else None
    shutil.rmtree(dest, ignore_errors=True)
    for res in sorted(run_dir.glob("cells/*/result.json")):
        target = dest / "cells" / res.parent.name / "result.json"
        target.parent.mkdir(parents=True)
        record = _relative(json.loads(res.read_text()), bases)
        target.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    manifest = _relative(json.loads((run_dir / "manifest.json").read_text()), bases)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    if bench is not None:
        (dest / "bench.json").write_bytes(bench)


def execute_all(only: list[str] | None = None, timeout: int = 600) -> None:
    """Run each notebook (or those named in ``only``) in place with its defaults (cwd = notebooks/),
    keeping the outputs, minus stderr."""
    from nbclient import NotebookClient

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as under nbval (the repository's conftest.py)
    os.environ.setdefault("TQDM_DISABLE", "1")
    paths = notebooks()
    if only:
        wanted = {Path(n).stem for n in only}
        unknown = wanted - {p.stem for p in paths}
        if unknown:
            sys.exit(f"no such notebook: {', '.join(sorted(unknown))}; notebooks: {', '.join(p.stem for p in paths)}")
        paths = [p for p in paths if p.stem in wanted]
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}).execute()
        for cell in nb.cells:  # stderr (progress bars, warnings) never belongs in the stored outputs
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
        nbformat.write(nb, path)
        print("executed", path.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", type=Path, help="grid run folder to copy into notebooks/example_run")
    parser.add_argument("--execute", action="store_true", help="execute the notebooks in place (stores outputs)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="with --execute: only this notebook (e.g. precision_analysis); repeatable")
    parser.add_argument("--bench", type=Path, help="a `specnb bench --json` record to show in the example summary")
    parser.add_argument("--refresh", action="store_true",
                        help="run params/default.yaml into outputs/example-refresh, copy it, execute")
    args = parser.parse_args()
    if not (args.example or args.execute or args.bench or args.refresh):
        parser.error("nothing to do: give --refresh, --execute, --example RUN_DIR or --bench FILE")
    if args.bench:
        shutil.copy(args.bench, NB_DIR / "example_run" / "bench.json")
    if args.refresh:
        out = ROOT / "outputs" / "example-refresh"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "specnb.cli", "grid", str(ROOT / "params" / "default.yaml"), "--out", str(out),
               "--no-analysis"]
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            sys.exit("the default grid had failed cells; not refreshing the example run")
        args.example, args.execute = out, True
    if args.example:
        copy_example(args.example)
    if args.execute:
        execute_all(args.only)


if __name__ == "__main__":
    main()
