"""The embedded model zoo: small models that ship inside the package and load offline.

``zoo:NAME`` in a :class:`specnb.ModelSpec` resolves to ``specnb/zoo/models/NAME/``, a plain
Hugging Face model folder (config, safetensors weights, tokenizer). How the pair is built
lives in :mod:`specnb.zoo.build` (``specnb zoo build``).
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "zoo:"
ZOO_ROOT = Path(__file__).resolve().parent / "models"


def available() -> list[str]:
    """Names of the models present in the embedded zoo."""
    if not ZOO_ROOT.is_dir():
        return []
    return sorted(p.name for p in ZOO_ROOT.iterdir() if (p / "config.json").is_file())


def resolve(name: str) -> Path:
    """Folder of zoo model ``name`` (with or without the ``zoo:`` prefix)."""
    bare = name[len(PREFIX):] if name.startswith(PREFIX) else name
    folder = ZOO_ROOT / bare
    if not (folder / "config.json").is_file():
        names = ", ".join(PREFIX + n for n in available()) or "none are built yet"
        raise ValueError(
            f"unknown zoo model '{PREFIX}{bare}'; the embedded zoo has: {names}. "
            f"Rebuild it with `specnb zoo build`, or pass a local model folder instead."
        )
    return folder
