"""specnb: edge-cloud speculative decoding, measured fairly.

Public contract::

    from specnb import ModelSpec, load, autoregressive, speculative
"""

from .decoding import autoregressive, speculative
from .dtypes import parse_dtype
from .metrics import Generation
from .models import LoadedModel, ModelSpec, check_pair, load

__all__ = [
    "ModelSpec", "LoadedModel", "load", "check_pair", "autoregressive", "speculative",
    "Generation", "parse_dtype",
]
__version__ = "0.1.0"
