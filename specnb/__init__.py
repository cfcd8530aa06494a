"""specnb: edge-cloud speculative decoding, measured fairly.

Public contract::

    from specnb import ModelSpec, load, autoregressive, speculative
"""

import os as _os
import sys as _sys

# OpenMP threads that wait for work sleep instead of spinning (an OpenMP default lets them spin):
# on a small CPU shared with anything else a spinning thread takes the core another needs. Only
# effective before torch loads OpenMP, hence here; an explicit OMP_WAIT_POLICY wins (figures:
# docs/numbers.md, "Earlier default-grid runs").
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _WAIT_POLICY_AT_TORCH_LOAD = _os.environ["OMP_WAIT_POLICY"]
else:
    _WAIT_POLICY_AT_TORCH_LOAD = "unknown: torch was loaded before specnb"

from .decode.loops import autoregressive, speculative  # noqa: E402
from .dtypes import parse_dtype  # noqa: E402
from .decode.lookup import PromptLookup  # noqa: E402
from .measure.metrics import Generation  # noqa: E402
from .models import LoadedModel, ModelSpec, check_pair, load  # noqa: E402

__all__ = [
    "ModelSpec", "LoadedModel", "load", "check_pair", "autoregressive", "speculative",
    "Generation", "parse_dtype", "PromptLookup", "connect", "Link",
]
from ._version import __version__  # noqa: E402


# the modules the notebooks import by their short names (``from specnb import experiment, plots``)
_NOTEBOOK_MODULES = {"experiment": ".study.experiment", "clock": ".measure.clock", "plots": ".report.plots",
                     "findings": ".report.findings", "drift": ".report.drift"}


def __getattr__(name: str):
    """``connect`` and ``Link`` (:mod:`specnb.link`) load gRPC only when first used; the notebooks'
    modules load pandas and matplotlib only when a notebook asks for them."""
    if name in ("connect", "Link"):
        from . import link
        return getattr(link, name)
    if name in _NOTEBOOK_MODULES:
        import importlib
        return importlib.import_module(_NOTEBOOK_MODULES[name], __name__)
    raise AttributeError(f"module 'specnb' has no attribute {name!r}")
