"""nbval hooks for the notebooks pytest collects (`pytest --nbval-lax notebooks`, `make test`).

Kept at the repository root so that notebooks/ holds only what a user browses. For each notebook
collected: its kernel imports this checkout's specnb (PYTHONPATH), has progress bars off
(TQDM_DISABLE) and one intra-op thread (OMP_NUM_THREADS=1: the embedded pair is tiny, one thread
is fastest, and it keeps a busy second core from stalling every OpenMP region), unless the caller
set those; and stderr (progress bars, warnings) never takes part in output comparisons. The
environment is set only while a notebook's kernel starts, so the unit tests run as they would alone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parent)
# Results of runs without a result_path (the method notebooks' defaults) go to a temporary
# folder, never into the checkout's outputs/.
os.environ.setdefault("SPECNB_ADHOC_DIR", tempfile.mkdtemp(prefix="specnb-adhoc-"))


def notebook_env() -> dict[str, str]:
    """The environment a notebook kernel starts with under pytest."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}
    for name, value in (("TQDM_DISABLE", "1"), ("OMP_NUM_THREADS", "1")):
        env[name] = os.environ.get(name, value)
    return env


def _is_notebook(node) -> bool:
    path = getattr(node, "path", None)
    return path is not None and Path(path).suffix == ".ipynb"


def pytest_collectstart(collector):
    """Add stderr to what nbval skips when comparing a notebook's outputs."""
    if _is_notebook(collector) and hasattr(collector, "skip_compare"):
        collector.skip_compare = tuple(collector.skip_compare) + ("stderr",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """nbval starts a notebook's kernel while setting up its first cell: give that kernel notebook_env()."""
    if not _is_notebook(item):
        yield
        return
    saved = {k: os.environ.get(k) for k in notebook_env()}
    os.environ.update(notebook_env())
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
