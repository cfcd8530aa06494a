"""After the cells: the analysis notebooks (precision analysis, summary) executed on a run folder and
exported to HTML, and the run's headline printed in the terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from ..report.fairness import speedups
from ..report.frame import load_results, results_frame
from ..report.headline import COLUMNS, headline
from .cells import NOTEBOOK_DIR, kernel_can_import_specnb, kernel_options

ANALYSIS_NOTEBOOKS = ("precision_analysis", "summary")


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Redirect file descriptors 1 and 2 (ours and the kernel's) to ``path`` for the block."""
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in saved + [fd]:
            os.close(f)


def run_analysis(run_dir: Path, notebook_dir: Path = NOTEBOOK_DIR, drift: dict[str, Any] | None = None) -> dict[str, Path]:
    """Execute the precision-analysis and summary notebooks on ``run_dir``; export both to HTML.

    ``drift`` holds the precision notebook's ``drift_device`` / ``drift_prompts`` (runner options).
    """
    import papermill as pm
    from nbconvert import HTMLExporter

    kernel_can_import_specnb()
    out = {}
    for name in ANALYSIS_NOTEBOOKS:
        executed = run_dir / f"{name}.ipynb"
        params = {"run_dir": str(run_dir)} | ((drift or {}) if name == "precision_analysis" else {})
        started = time.monotonic()
        print(f"analysis: {name}.ipynb ...", end="", flush=True)  # the kernel's own output goes to analysis.log
        try:
            with _output_to(run_dir / "analysis.log"):
                pm.execute_notebook(str(notebook_dir / f"{name}.ipynb"), str(executed),
                                    parameters=params, cwd=str(run_dir), **kernel_options())
        except Exception as err:  # noqa: BLE001 - keep the executed notebook, report, go on
            last = (str(err).strip().splitlines() or [""])[-1]
            print(f"{name}.ipynb failed: {type(err).__name__}: {last} (see {executed})", file=sys.stderr)
        print(f" {time.monotonic() - started:.0f} s", flush=True)
        if executed.is_file():
            # for readers: outputs and prose only (no code cells, no NBVAL markers); the .ipynb keeps the code
            body, _ = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                                   exclude_output_prompt=True).from_filename(str(executed))
            html = run_dir / f"{name}.html"
            html.write_text(body, encoding="utf-8")
            out[name] = html
    return out


def print_headline(run_dir: Path) -> None:
    """The run's fair speed-ups with their intervals and verdicts, printed in the terminal (the
    summary notebook opens with the same table). The cells are done by then: a record the table
    cannot read is said in one line, and the run's exit code stays the cells'."""
    try:
        print(headline_text(run_dir))
    except Exception as err:  # noqa: BLE001 - the results are on disk; say why there is no table
        print(f"no headline table: {type(err).__name__}: {err} (the records are in {run_dir / 'cells'})", file=sys.stderr)


def headline_text(run_dir: str | Path) -> str:
    """The headline of the run folder ``run_dir`` as plain text for a terminal."""
    records = load_results(run_dir)
    if not records:
        return f"no results in {run_dir}: no headline"
    table = headline(speedups(results_frame(records)))
    if table.empty:
        return "no fair speed-up to quote (see audit.csv for why)"
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        widths = {c: int(table[c].str.len().max()) for c in COLUMNS}
        text = table.to_string(index=False, justify="left",
                               formatters={c: (lambda v, w=w: f"{v:<{w}}") for c, w in widths.items()})
        return "fair speed-ups (95% intervals):\n" + "\n".join(line.rstrip() for line in text.splitlines())
