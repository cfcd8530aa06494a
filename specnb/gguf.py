"""GGUF files as a model source: what a result records about one, and its dense copy in a cache.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=...)``, needs the ``gguf``
package) and dequantizes every tensor: about 10-25 s for a 135M-parameter model on this project's
2-core machines. specnb does that once per file: the dense weights are saved in float32 as
safetensors, with the tokenizer and its chat template, in ``<cache>/dense/<sha256[:16]>/``, and
every load reads that folder in the spec's dtype (about half a second). float32 is the precision
GGUF's own dequantization computes in (e.g. Q4_1: w = d * q + m, d and m float16, q in 0..15), so
casting the copy to bfloat16 or float16 at load gives the tensors transformers gives when asked for
that dtype straight from the file (a test checks it).

A model read from GGUF the plain way carries transformers' quantizer (``hf_quantizer``,
``is_quantized`` and a ``quantization_config`` in its config) even where its weights are dense, and
``save_pretrained`` refuses it; :func:`dequantize` asks for dense weights explicitly, which transformers
5.25 loads without the quantizer, and :func:`_drop_quantizer` drops the flags before saving anyway
(versions that attach them; a test checks that dropping them unblocks the save).

The copy is keyed by the file's sha256, computed at every load (about 0.3 s for 98 MB): a file
replaced under the same name gets a copy of its own, and the record names the exact bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

EXTENSION = ".gguf"
EXTRA = "pip install 'specnb[gguf]'  (or: pip install gguf)"
DENSE = "dense"
SOURCE_FILE = "gguf-source.json"  # written last in a dense copy: a folder without it is incomplete


def is_gguf(name_or_path: str | os.PathLike) -> bool:
    """Whether a model is named by a GGUF file (by its extension, as transformers decides too)."""
    return str(name_or_path).lower().endswith(EXTENSION)


def require() -> Any:
    """The ``gguf`` module, or one ImportError naming the extra to install."""
    try:
        import gguf
    except ImportError as err:
        raise ImportError(f"loading a GGUF model needs the 'gguf' package, which is not installed: {EXTRA}") from err
    return gguf


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def quantization(file_type: int | None, tensor_types: dict[str, int]) -> str:
    """The file's quantization as llama.cpp names it (``Q4_1``, ``Q4_K_M``, ``F16``).

    From ``general.file_type`` when the file has it (llama.cpp's enum, ``MOSTLY_Q4_1`` -> ``Q4_1``);
    otherwise the commonest tensor type other than F32 (norms and biases stay F32 in every file).
    """
    if file_type is not None:
        gguf = require()
        try:
            return gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    quantized = {k: v for k, v in tensor_types.items() if k != "F32"} or tensor_types
    return max(quantized, key=quantized.get) if quantized else "unknown"


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def describe(path: str | os.PathLike, digest: str | None = None) -> dict[str, Any]:
    """What a result records about a GGUF file: path, size, sha256, quantization, tensor types, architecture.

    Parsing the header takes about 2 s for 272 tensors here: :func:`prepare` keeps this record in
    the dense copy and reads it from there on later loads.
    """
    gguf = require()
    path = Path(path).expanduser().resolve()
    reader = gguf.GGUFReader(str(path))
    tensor_types = dict(Counter(t.tensor_type.name for t in reader.tensors).most_common())
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "sha256": digest or sha256(path),
        "quantization": quantization(_field(reader, "general.file_type"), tensor_types),
        "tensor_types": tensor_types,
        "architecture": _field(reader, "general.architecture"),
        "name": _field(reader, "general.name"),
    }


def prepare(path: str | os.PathLike, cache: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(folder of the file's dense copy, the file's record): the copy is made on the first load only."""
    from .measure.provenance import read_json

    require()
    path = Path(path).expanduser().resolve()
    digest = sha256(path)
    kept = read_json(dense_folder(digest, cache) / SOURCE_FILE)
    if kept and kept.get("sha256") == digest:
        return dense_folder(digest, cache), {**kept, "file": str(path)}  # the same bytes, maybe moved
    source = describe(path, digest)
    return dense_copy(source, cache), source


def dense_folder(digest: str, cache: str | os.PathLike) -> Path:
    """Where the dense copy of the file with sha256 ``digest`` lives (complete or not)."""
    return Path(cache) / DENSE / digest[:16]


def is_complete(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file()


def dense_copy(source: dict[str, Any], cache: str | os.PathLike) -> Path:
    """The folder of the file's dense float32 copy, made now when missing (see the module's docstring).

    Made in a temporary folder beside the target and renamed into place, so a crash leaves no half
    copy and two processes making it at once both end with one complete folder.
    """
    from .measure.provenance import write_json_atomic

    folder = dense_folder(source["sha256"], cache)
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model, tokenizer = dequantize(source["file"])
        _drop_quantizer(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / SOURCE_FILE, source)
        if folder.exists():  # an incomplete leftover, or another process's finished copy
            if is_complete(folder):
                return folder
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError:
        if not is_complete(folder):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def dequantize(path: str | os.PathLike) -> tuple[Any, Any]:
    """(model, tokenizer) read from the GGUF file by transformers, every weight dense in float32.

    ``GgufConfig(dequantize=True)`` asks for dense weights explicitly: where transformers has GGUF
    matmul kernels for an architecture it would otherwise keep the blocks packed and compute in
    float32 whatever dtype was asked for.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    require()
    path = Path(path)
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    return model, tokenizer


def _drop_quantizer(model: Any) -> None:
    """Forget that the model came from GGUF (its weights are dense), so ``save_pretrained`` accepts it."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
