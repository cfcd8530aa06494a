"""nbval hooks for `pytest --nbval-lax notebooks/`: kernels import this checkout's specnb, and
stderr (progress bars, warnings) never takes part in output comparisons."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
os.environ.setdefault("TQDM_DISABLE", "1")
# The embedded pair is tiny: one intra-op thread is fastest, and it keeps a busy second core
# from stalling every OpenMP region of the kernels.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collectstart(collector):
    """Add stderr to what nbval skips when comparing a notebook's outputs."""
    if collector.fspath and collector.fspath.ext == ".ipynb" and hasattr(collector, "skip_compare"):
        collector.skip_compare = tuple(collector.skip_compare) + ("stderr",)
