"""One model's forward calls on a KV cache: :func:`forward`, the per-run :class:`Steps` (dynamic or
static cache, eager or compiled), and cutting a cache back after a rejection.

Sliding-window layers (Mistral, Gemma 2/3, Phi-3, Qwen2 with ``use_sliding_window``, ...): the caches
Hugging Face builds from a config drop, per sliding layer, what slid out of the window, so a rollback past
the window cannot restore it (``DynamicSlidingWindowLayer.crop`` raises; ``StaticSlidingWindowLayer`` has
overwritten it). A cache here that must roll back, and every static cache, keeps every position in every
layer instead (:func:`keep_every_position`); the attention mask, which ``transformers.masking_utils`` builds
from the config's ``sliding_window`` and the absolute positions, still limits each sliding layer to its
window, so the output is the model's. The price, past the window only: memory and attention over every
position rather than the window's.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, StaticLayer, StaticSlidingWindowLayer

# Model: a loaded model (specnb.models.LoadedModel: .model, .device, ...), not imported here:
# models builds the roles (drafting, verifying) that use this module.
Model = Any


def forward(m: Model, ids: torch.Tensor, cache, keep: int, vocab: int, call: Callable | None = None) -> torch.Tensor:
    """Run ``ids`` (shape [1, S]) through ``m`` on top of ``cache``; logits of the last ``keep`` positions.

    Returns [keep, vocab] (``keep = 0``: every position): logits past ``vocab`` (padding of the output
    layer) are cut off.
    ``call`` replaces ``m.model`` (e.g. its compiled forward, see :class:`Steps`).
    """
    out = (call or m.model)(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=keep)
    return out.logits[0, -keep:, :vocab]


def as_ids(tokens: list[int], device: torch.device) -> torch.Tensor:
    """Token ids as the [1, S] input of a forward call."""
    return torch.tensor([tokens], dtype=torch.long, device=device)


# torch.compile of decode steps, per device type: on CPU a compiled step decodes faster than eager
# for a one-off compile cost (figures: docs/numbers.md, "The optimized set-up"); on CUDA it removes the
# per-kernel launch overhead that dominates batch-1 decoding.
COMPILE_BY_DEVICE = {"cuda": True, "cpu": True}
CACHE_BUCKET = 256  # static caches are sized in multiples of this, so compiled graphs are reused


def cache_size(tokens: int) -> int:
    """The static cache length that holds ``tokens``: the next multiple of :data:`CACHE_BUCKET`."""
    return -(-tokens // CACHE_BUCKET) * CACHE_BUCKET


class Steps:
    """One model's forward calls in one run: its KV cache and the function that runs a step.

    Plain (``optimized=False``): a :class:`~transformers.DynamicCache` and eager :func:`forward`.
    Optimized: a preallocated :class:`~transformers.StaticCache` (fixed shapes, no per-step
    allocation) and, where :data:`COMPILE_BY_DEVICE` says it pays (``compile`` overrides), a
    ``torch.compile``d forward for the step shapes the caller declares. Prefill always runs eager
    (its length varies). Compiling and warming each new shape up happens here, on a throwaway
    cache, before any timed work; its time is ``compile_s``, reported apart, never hidden.

    ``rollback``: the run cuts the cache back (speculative decoding), so sliding-window layers keep
    every position (:func:`keep_every_position`), and a model whose cache cannot be cut back is refused
    (:func:`check_rollback`). Without it (autoregressive) a plain cache is Hugging Face's own, windowed,
    as ``generate`` builds it; a static cache keeps every position either way (:func:`static_cache`).
    """

    def __init__(self, model: Model, max_len: int, optimized: bool, compile: bool | None = None,
                 shapes: tuple[tuple[int, int], ...] = ((1, 1),), rollback: bool = True):
        t0 = time.perf_counter()
        self.model = model
        self.rollback = rollback
        self.compiled = None
        size = cache_size(max_len)
        self.cache = static_cache(model, size) if optimized else dynamic_cache(model, rollback)
        if rollback:
            check_rollback(self.cache, model)  # before compiling: a refusal costs nothing
        if optimized and (COMPILE_BY_DEVICE.get(model.device.type, False) if compile is None else compile):
            self.compiled = _compiled_forward(model, size, shapes)
        if model.device.type == "cuda":  # warm-up kernels still queued belong to compile_s, not to the timed run
            torch.cuda.synchronize(model.device)
        self.compile_s = time.perf_counter() - t0

    def step(self, ids: torch.Tensor, keep: int, vocab: int) -> torch.Tensor:
        """:func:`forward` on this run's cache, compiled when set up so."""
        return forward(self.model, ids, self.cache, keep, vocab, self.compiled)

    def reset(self) -> None:
        """An empty cache for a new generation (the compiled graphs stay)."""
        if isinstance(self.cache, StaticCache):
            self.cache.reset()
        else:
            self.cache = dynamic_cache(self.model, self.rollback)

    def prefill(self, ids: list[int], vocab: int, keep: int = 1) -> torch.Tensor:
        return forward(self.model, as_ids(ids, self.model.device), self.cache, keep, vocab)


@contextlib.contextmanager
def no_compiling(*steps: Steps):
    """Around a timed loop: compiled steps run only graphs warmed up before the clock.

    An input that would need a new graph raises instead of silently timing a compilation (or,
    past torch's recompile limit, silently running eager). Set once per loop, not per call:
    entering the stance costs time on every compiled call, a visible share of a small model's step
    (measured: docs/numbers.md).
    """
    if all(s.compiled is None for s in steps):
        yield
        return
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            yield
    except RuntimeError as err:
        if "recompile" not in str(err).lower():
            raise
        raise RuntimeError(
            "a compiled step got an input shape it was not warmed up for; this is a specnb bug, please "
            "report it with the traceback. Workaround: compile=False (static caches, eager steps)."
        ) from err


def dynamic_cache(model: Model, rollback: bool) -> DynamicCache:
    """Hugging Face's :class:`~transformers.DynamicCache` for the model's config; with ``rollback``, its
    sliding-window layers keep every position (:func:`keep_every_position`)."""
    cache = DynamicCache(config=model.model.config)
    return keep_every_position(cache) if rollback else cache


def static_cache(model: Model, size: int) -> StaticCache:
    """A :class:`~transformers.StaticCache` of ``size`` positions, allocated now (not on first use).

    Early allocation keeps one cache state (initialized) for every compiled call, so the
    compiled forward needs one graph per input shape instead of two. Every layer keeps every
    position (:func:`keep_every_position`), rollback or not: a static sliding layer also keeps its
    length as a Python int, which a compiled graph guards on (a warmed-up step recompiled at the next
    length on tiny Mistral, transformers 5.24).
    """
    config = model.model.config.get_text_config(decoder=True)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache = keep_every_position(StaticCache(config=config, max_cache_len=size), size)
    cache.early_initialization(1, heads, head_dim, model.model.dtype, model.device)
    return cache


# The layer that keeps every position, for each sliding-window layer Hugging Face builds (exact types:
# subclasses that also carry a recurrent state are left as they are, and refused by the roll-back check).
_KEEPING = {
    DynamicSlidingWindowLayer: lambda layer, size: DynamicLayer(),
    StaticSlidingWindowLayer: lambda layer, size: StaticLayer(max_cache_len=size),
}


def keep_every_position(cache, size: int = 0):
    """``cache`` with each sliding-window layer replaced by a full one, so that :func:`crop` can always
    roll it back; the attention mask still applies the window (module docstring). ``size``: the length of
    a static cache's layers."""
    cache.layers = [_KEEPING.get(type(layer), lambda kept, _: kept)(layer, size) for layer in cache.layers]
    return cache


# The cache layers :func:`crop` is known to put back exactly: attention layers that only keep keys and
# values per position (sliding ones are replaced by full ones above). Anything else is refused by name,
# whatever the layer says of itself: transformers 5.25 began to report linear-attention layers as
# croppable although cropping one cannot take a rejected draft out of its recurrent state (a tiny
# Qwen3-Next pair then failed mid-run inside transformers), so trusting ``is_croppable`` turned a clear
# refusal into a crash, and could as well have turned it into wrong tokens.
ROLLBACK_LAYERS = (DynamicLayer, StaticLayer, DynamicSlidingWindowLayer, StaticSlidingWindowLayer)


def check_rollback(cache, model: Model) -> None:
    """Refuse, before any work, a cache that :func:`crop` cannot put back as it was: layers that carry a
    recurrent state (linear attention, state-space or convolution layers), quantized or indexed layers
    (never tested here) cannot forget a rejected draft exactly. An allow-list of exact types, so that a new
    layer kind in a transformers release is refused until it is tested, never silently trusted."""
    kinds = sorted({type(layer).__name__ for layer in cache.layers if type(layer) not in ROLLBACK_LAYERS})
    if not kinds:
        return
    raise ValueError(
        f"{model.model.config.model_type}: its cache layers ({', '.join(kinds)}) cannot be cut back after a "
        "rejected draft, so specnb cannot run it in speculative decoding; decode it with autoregressive(), "
        "or pick a family whose layers are all attention layers"
    )


# Graphs a compiled forward may hold. Dynamo keeps the graphs of one Python function together and
# falls back to eager, silently, past ``recompile_limit`` (8 by default); edge and cloud share
# LlamaForCausalLM.forward, and the benchmark needs one graph per (model, cache size, input
# shape): 2 edge shapes + 1 cloud shape per gamma, per cache bucket.
GRAPH_LIMIT = 64


def room_for_graphs():
    """Context in which torch.compile may hold :data:`GRAPH_LIMIT` graphs per function (or the
    configured limit, if higher), and fails loudly past it rather than falling back to eager."""
    limit = max(GRAPH_LIMIT, torch._dynamo.config.recompile_limit)
    return torch._dynamo.config.patch(recompile_limit=limit, accumulated_recompile_limit=max(limit * 4, 256),
                                      fail_on_recompile_limit_hit=True)


def _compiled_forward(model: Model, cache_len: int, shapes: tuple[tuple[int, int], ...]) -> Callable:
    """The model's compiled forward (one per model), warmed up on every (input length, logits kept) shape."""
    compiled = getattr(model, "_compiled_forward", None)
    if compiled is None:
        compiled = model._compiled_forward = torch.compile(model.model.forward, dynamic=False)
        model._warm_shapes = set()
    with room_for_graphs():  # never warm up (and later time) an eager fallback
        for length, keep in shapes:
            if (cache_len, length, keep) in model._warm_shapes:
                continue
            warm = static_cache(model, cache_len)
            ids = torch.zeros((1, length), dtype=torch.long, device=model.device)
            for _ in range(2):  # compile, then one run to settle autotuning / CUDA graphs
                compiled(input_ids=ids, cache=warm, use_cache=True, logits_to_keep=keep)
            model._warm_shapes.add((cache_len, length, keep))
    return compiled


def start_generation(role: Any, prompt_ids: list[int], settings: Any, keep_logits: Callable[[Any], int],
                     around: Callable[[], Any] = contextlib.nullcontext) -> None:
    """The start-up both in-process roles share (the edge drafter, the cloud verifier).

    Built for other settings: the role sets itself up for ``settings`` (``role.set_up``: a new cache, its
    levers); else a used cache is reset. Then every prompt token but the last goes into the cache in one
    call (the last is the first round's input), inside ``around()`` (the edge's thread cap), keeping the
    logits ``keep_logits(role)`` says (read after a set-up: its levers), and ``role.length`` counts the
    cached tokens.
    """
    if settings != role.settings:
        role.set_up(settings)
    elif role.length:
        role.steps.reset()
        role.calls = 0
    if len(prompt_ids) > 1:
        with torch.inference_mode(), around():
            role.steps.prefill(prompt_ids[:-1], role.vocab, keep_logits(role))
        role.calls += 1
    role.length = len(prompt_ids) - 1


def cut_for(levers_off: Any) -> Callable[[Any, int, int], None]:
    """How a role shortens its cache: :func:`crop` in place, or :func:`rebuild` with the ``crop`` lever off."""
    return rebuild if "crop" in levers_off else crop


def crop(cache, length: int, keep: int) -> None:
    """Cut a cache holding ``length`` positions back to its first ``keep``, in place."""
    if length > keep:
        cache.crop(keep - length)  # negative: positions to drop


def rebuild(cache: DynamicCache, length: int, keep: int) -> None:
    """The ``crop`` lever switched off: keep the first ``keep`` positions by copying them into new tensors."""
    for layer in cache.layers:
        layer.keys = layer.keys[..., :keep, :].clone()
        layer.values = layer.values[..., :keep, :].clone()
