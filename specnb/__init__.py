"""specnb: edge-cloud speculative decoding, measured fairly.

Public contract::

    from specnb import ModelSpec, load, autoregressive, speculative
"""

from .decoding import autoregressive, speculative
from .dtypes import parse_dtype
from .lookup import PromptLookup
from .metrics import Generation
from .models import LoadedModel, ModelSpec, check_pair, load

__all__ = [
    "ModelSpec", "LoadedModel", "load", "check_pair", "autoregressive", "speculative",
    "Generation", "parse_dtype", "PromptLookup", "connect", "Link",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``connect`` and ``Link`` (:mod:`specnb.link`) load gRPC only when first used."""
    if name in ("connect", "Link"):
        from . import link
        return getattr(link, name)
    raise AttributeError(f"module 'specnb' has no attribute {name!r}")
