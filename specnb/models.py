"""Model specs, loading (local folder, Hugging Face id, ``zoo:`` name, ``.gguf`` file or ``registry:`` name) and the pair check."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import gguf, registry, zoo
from .zoo import trimmed
from .dtypes import check_supported, parse_dtype, resolve_device, torch_dtype
from .threads import thread_count


@dataclass(frozen=True)
class ModelSpec:
    """What to load: ``name_or_path`` is a local folder, a Hugging Face id, ``zoo:NAME``, a ``.gguf``
    file or ``registry:NAME`` (a GGUF fetched by ``specnb models fetch NAME``, :mod:`specnb.registry`).

    ``dtype`` is a name or alias (see :mod:`specnb.dtypes`); ``device`` is ``auto`` (CUDA
    when present), ``cpu``, ``cuda`` or ``cuda:N``; ``threads`` caps the CPU threads this
    model's forward passes may use (the CPU-limited edge), None = torch's default.
    """

    name_or_path: str
    dtype: str = "float32"
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", parse_dtype(self.dtype))
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {self.threads!r}")


class TextIds:
    """Text <-> token ids through ``self.tokenizer``: a loaded model's and a remote cloud's, the same way."""

    def encode(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt given as text or as ids."""
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


@dataclass
class LoadedModel(TextIds):
    """A causal LM ready to decode: eval mode, on its device, in its dtype."""

    model: torch.nn.Module
    tokenizer: object
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype
    source: dict[str, Any] | None = None  # a GGUF file's provenance (:func:`specnb.gguf.describe`)

    @property
    def vocab_size(self) -> int:
        """Ids the model may emit: logits beyond the tokenizer's size are padding and are cut."""
        return min(int(self.model.config.vocab_size), len(self.tokenizer))

    @property
    def eos_ids(self) -> frozenset[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return frozenset()
        return frozenset([eos] if isinstance(eos, int) else eos)




def locate(name_or_path: str) -> str:
    """Where ``from_pretrained`` should look: a zoo folder, a local folder, a GGUF file, or the hub id as is."""
    if name_or_path.startswith(zoo.PREFIX):
        return str(zoo.resolve(name_or_path))
    if name_or_path.startswith(registry.PREFIX):
        return str(registry.resolve(name_or_path))
    path = Path(name_or_path).expanduser()
    if gguf.is_gguf(name_or_path):
        if not path.is_file():
            raise ValueError(f"GGUF file {name_or_path!r} does not exist; check the path")
        return str(path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{name_or_path!r} is a folder without config.json; pass a Hugging Face model folder")
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").split("/", 1)[-1]:
        raise ValueError(f"model folder {name_or_path!r} does not exist; check the path")
    return name_or_path


def load(spec: ModelSpec) -> LoadedModel:
    """Load the tokenizer and the model of ``spec`` (see :class:`ModelSpec`)."""
    device = resolve_device(spec.device)
    check_supported(spec.dtype, device)
    where = locate(spec.name_or_path)
    source = None
    if gguf.is_gguf(where):  # read once into a dense copy in the cache, loaded from there as a folder
        folder, source = gguf.prepare(where, registry.models_home())
        where = str(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        with thread_cap(spec.threads), _no_loading_bar():
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype(spec.dtype))
        kept = trimmed.read_kept(where)  # a distilled edge drafts from its frequent tokens only
        if kept is not None:
            trimmed.apply(model, kept)
    except OSError as err:
        raise OSError(
            f"could not load model {spec.name_or_path!r} ({err.__class__.__name__}: {str(err).splitlines()[0]}). "
            "Without access to the Hugging Face hub, download the model elsewhere and pass its local "
            "folder instead, e.g. ModelSpec('/models/Qwen2.5-7B-Instruct'), or use the embedded pair "
            "'zoo:tiny-edge' / 'zoo:tiny-cloud'."
        ) from err
    model.to(device).eval()
    if device.type == "cuda":
        steady_attention_kernels()
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, device=device, dtype=torch_dtype(spec.dtype),
                       source=source)


def steady_attention_kernels() -> None:
    """Keep PyTorch's scaled-dot-product attention off its cuDNN backend, process-wide (CUDA only).

    In float16 / bfloat16 cuDNN's attention builds an execution plan for every new shape, and decoding
    meets a new key length at every step: a timed run would measure plan building, and a plain baseline
    would look slower than it is, inflating every speed-up over it. Without cuDNN the flash /
    memory-efficient kernels serve every length alike. The measurement: docs/gpu-check.md ("Why plain half
    precision was ~3x slower"); the choice is recorded (``machine.sdpa_backends``,
    :func:`specnb.measure.provenance.sdpa_backends`).
    """
    torch.backends.cuda.enable_cudnn_sdp(False)


@contextlib.contextmanager
def _no_loading_bar() -> Iterator[None]:
    """Hide transformers' own bars ("Loading weights") for the block; the hub's download bars stay."""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)  # absent from older transformers: bars stay
    if set_hook is None:
        yield
        return
    previous = set_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
    try:
        yield
    finally:
        set_hook(previous)


# Run a block with at most ``threads`` intra-op CPU threads (process-wide; restored after); None
# means specnb's default (:func:`specnb.threads.default_threads`), not torch's own.
thread_cap = thread_count


def same_tokenizer(edge: Any, cloud: Any) -> bool:
    """Whether two models (or remote clouds) share one token -> id map."""
    return edge.tokenizer.get_vocab() == cloud.tokenizer.get_vocab()


def check_pair(edge: LoadedModel, cloud: LoadedModel, *, show: int = 5) -> int:
    """Check that the two models share a tokenizer; return the shared vocabulary size.

    The check compares the token -> id maps, not the models' embedding sizes: families pad
    their output layers differently (Qwen2.5 7B emits 151,936 logits, 14B 152,064, with one
    tokenizer), so decoding cuts logits to the shared vocabulary returned here.
    """
    if not same_tokenizer(edge, cloud):
        ev, cv = edge.tokenizer.get_vocab(), cloud.tokenizer.get_vocab()
        diff = sorted(
            (tok for tok in set(ev) | set(cv) if ev.get(tok) != cv.get(tok)),
            key=lambda t: (min(ev.get(t, 1 << 30), cv.get(t, 1 << 30)), t),
        )
        shown = ", ".join(f"{tok!r}: edge {ev.get(tok)} / cloud {cv.get(tok)}" for tok in diff[:show])
        raise ValueError(
            f"the edge and cloud tokenizers differ in {len(diff)} tokens (e.g. {shown}); this needs one "
            "tokenizer (a shared vocabulary, or both models on the server): pick an edge model of the cloud "
            "model's family; in-process or over the link speculative() translates such an edge's drafts "
            "(docs/tokenizers.md)"
        )
    return min(edge.vocab_size, cloud.vocab_size)
