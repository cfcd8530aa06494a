"""``specnb summarize RUN_DIR``: re-run the analysis notebooks (precision analysis, summary) on a run
folder, e.g. after more cells finished or after the analysis code changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .analysis import print_headline, run_analysis


def add_arguments(parser: Any) -> None:
    parser.add_argument("run_dir", help="a run folder written by `specnb grid`")


def run(args: Any) -> int:
    run_dir = Path(args.run_dir).resolve()
    if not (run_dir / "cells").is_dir():
        print(f"error: {run_dir} has no cells/ folder; pass a folder written by `specnb grid`")
        return 2
    for name, html in run_analysis(run_dir).items():
        print(f"{name}: {html}")
    print_headline(run_dir)
    return 0
