"""Hugging Face assisted generation (``generate(assistant_model=...)``) and prompt lookup
(``generate(prompt_lookup_num_tokens=...)``): the peer references."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from transformers import CompileConfig
from transformers.cache_utils import get_layer_types_and_kwargs

from ..measure.metrics import Generation, Stopwatch, peak_memory_bytes, reset_peak_memory, summarize
from ..models import LoadedModel, same_tokenizer, thread_cap
from .pair import thread_plan
from .lookup import MAX_NGRAM
from .steps import cache_size


def _count_calls(module: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    box = [0]

    def hook(*_):
        box[0] += 1

    return box, module.register_forward_pre_hook(hook)


def _static_setup(model: LoadedModel, tokens: int) -> dict:
    """``generate`` keywords of HF's fast set-up: static cache (our buckets), compiled calls (on CPU too).

    A sliding-window model caps the cache at its window: Hugging Face's static sliding layers can roll a
    rejected draft back only while they are no longer than the window, and assisted generation refuses
    the cache otherwise ("requires a cache that can be cropped"). Past the window it cannot run at all:
    refused here, with the set-up that can.
    """
    compile_config = CompileConfig()
    compile_config._compile_all_devices = True  # generate only compiles on accelerators otherwise
    size = cache_size(tokens)
    window = sliding_window(model)
    if window is not None and size > window:
        if tokens > window:
            raise ValueError(
                f"{model.model.config.model_type}: prompt + max_new_tokens + gamma ({tokens} positions) pass its "
                f"sliding window ({window}); Hugging Face's static cache cannot roll a rejected draft back past the "
                "window, so its assisted generation refuses it. Use optimized=False (HF's dynamic cache rolls back "
                "past the window), or a shorter prompt or max_new_tokens"
            )
        size = window
    return {"cache_implementation": "static", "max_cache_len": size, "compile_config": compile_config}


def sliding_window(model: LoadedModel) -> int | None:
    """The smallest sliding window among the model's layers (None: no sliding layer), as HF's caches read it."""
    _, per_layer = get_layer_types_and_kwargs(model.model.config.get_text_config(decoder=True))
    windows = [kwargs["sliding_window"] for kwargs in per_layer if kwargs.get("sliding_window")]
    return min(windows, default=None)


def hf_assisted(
    edge: LoadedModel,
    cloud: LoadedModel,
    prompt: str | list[int],
    max_new_tokens: int,
    *,
    gamma: int = 4,
    temperature: float = 0.0,
    seed: int | None = None,
    optimized: bool = False,
) -> Generation:
    """``cloud.model.generate(assistant_model=edge.model)`` with a constant draft length ``gamma``.

    The assistant's generation config gets ``num_assistant_tokens=gamma``,
    ``num_assistant_tokens_schedule="constant"`` and ``assistant_confidence_threshold=0``
    (HF's default threshold would end drafts early, so "the same gamma" would not hold).
    Hugging Face returns no acceptance statistics, so they are derived from forward-call
    counts: each cloud call verifies one round (``rounds = cloud_calls``), each edge call
    drafts one token (``drafted = edge_calls``), and every round emits its accepted drafts plus
    one cloud token (``accepted = new_tokens - rounds``). HF interleaves both models in one
    loop, so thread caps follow the run-level half of :func:`specnb.decode.pair.thread_plan`: the
    edge's cap when the cloud is on an accelerator, the cloud's when both share the CPU. Batch size 1; ``ttft_s`` is None
    (``generate`` does not expose it).

    ``optimized=True`` is Hugging Face's own fast set-up for the cloud: ``cache_implementation="static"``
    (sized in the same buckets as :class:`specnb.decode.steps.Steps`) and ``generate``'s automatic
    ``torch.compile`` of the verification calls with its default :class:`~transformers.CompileConfig`
    (enabled on CPU too). Hugging Face keeps the assistant eager on a dynamic cache by design.
    It compiles on first use, inside ``generate``: warm it up on the prompts before timing it. On a
    sliding-window cloud the static cache is at most the window long, and a run past the window is
    refused (Hugging Face cannot roll its static sliding layers back; the plain set-up can).

    An edge with another tokenizer than the cloud's is passed as Hugging Face asks (``tokenizer=``,
    ``assistant_tokenizer=``): its universal assisted generation, the peer of :mod:`specnb.decode.translate`.
    Its counts are read off the calls as above (its assistant may take several tokens in its first
    call of a round: still one call, so ``drafted`` counts calls, not tokens).
    """
    if not isinstance(gamma, int) or gamma < 1:
        raise ValueError(f"gamma (draft length) must be a positive integer, got {gamma!r}")
    universal = _tokenizers(edge, cloud)
    ids = torch.tensor([cloud.encode(prompt)], device=cloud.device)
    cfg = edge.model.generation_config
    cfg.num_assistant_tokens = gamma
    cfg.num_assistant_tokens_schedule = "constant"
    cfg.assistant_confidence_threshold = 0.0
    sampling = {"do_sample": True, "temperature": temperature, "top_k": None, "top_p": None} if temperature > 0 else {"do_sample": False}
    if seed is not None:
        torch.manual_seed(seed)
    eos = sorted(cloud.eos_ids) or None
    cloud_box, c_hook = _count_calls(cloud.model)
    edge_box, e_hook = _count_calls(edge.model)
    clock = Stopwatch(edge.device, cloud.device)
    fast = _static_setup(cloud, ids.shape[1] + max_new_tokens + gamma + 1) if optimized else {}
    try:
        reset_peak_memory(edge.device, cloud.device)
        with torch.inference_mode(), thread_cap(thread_plan(edge, cloud)[0]), _edge_kept(edge, cloud, universal), clock:
            out = cloud.model.generate(
                ids, attention_mask=torch.ones_like(ids), assistant_model=edge.model,
                max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=eos,
                pad_token_id=eos[0] if eos else None, **sampling, **fast, **universal,
            )
    finally:
        c_hook.remove()
        e_hook.remove()
    new = out[0, ids.shape[1]:].tolist()
    rounds = cloud_box[0]
    metrics = summarize(
        new_tokens=len(new), wall_s=clock.total, ttft_s=None, rounds=rounds, drafted=edge_box[0],
        accepted=max(0, len(new) - rounds), rejected_rounds=None, cloud_calls=rounds, edge_calls=edge_box[0],
        peak_mem_bytes=peak_memory_bytes(edge.device, cloud.device),
    )
    return Generation(tokens=new, text=cloud.decode(new), metrics=metrics)


@contextlib.contextmanager
def _edge_kept(edge: LoadedModel, cloud: LoadedModel, universal: dict) -> Iterator[None]:
    """Undo what Hugging Face's universal assisted *sampling* does to the edge model in place: it swaps the
    assistant's output layer for one pruned to the shared tokens and its input embedding for a remapping
    one (``_PruneReindexingLMHead``, ``_MapInputEmbedding``; transformers 5.25), clears its repetition
    penalty, and caches that translator per tokenizer pair. Left so, the edge is another model for every
    later run (specnb's drafts crashed on its 285-row output layer). Restored after each call, and the
    cached translator dropped so that the next call prunes afresh."""
    if not universal:
        yield
        return
    model = edge.model
    inp, out, penalty = model.get_input_embeddings(), model.get_output_embeddings(), model.generation_config.repetition_penalty
    try:
        yield
    finally:
        model.set_input_embeddings(inp)
        model.set_output_embeddings(out)
        model.generation_config.repetition_penalty = penalty
        from transformers.generation.candidate_generator import AssistantVocabTranslatorCache

        AssistantVocabTranslatorCache._cache.pop(cloud.tokenizer, None)


def _tokenizers(edge: LoadedModel, cloud: LoadedModel) -> dict:
    """``generate`` keywords for the pair: none for one tokenizer; for
    two, both tokenizers, which switches Hugging Face to its universal assisted generation (text-level
    re-tokenization when greedy, the token-level intersection when sampling), as its docs ask."""
    if same_tokenizer(edge, cloud):
        return {}
    return {"tokenizer": cloud.tokenizer, "assistant_tokenizer": edge.tokenizer}


def hf_prompt_lookup(
    cloud: LoadedModel,
    prompt: str | list[int],
    max_new_tokens: int,
    *,
    gamma: int = 4,
    max_ngram: int = MAX_NGRAM,
    optimized: bool = False,
) -> Generation:
    """``cloud.model.generate(prompt_lookup_num_tokens=gamma, max_matching_ngram_size=max_ngram)``, greedy:
    Hugging Face's prompt lookup decoding, the peer of ``speculative(PromptLookup(max_ngram), cloud, ...)``.

    Each cloud call verifies one round (``rounds = cloud_calls``; HF has no separate prefill: the
    first call takes the prompt with the first draft). The draft of a round is read off the
    length of the call's input: the prompt (first call) or the last token, plus the draft, so
    ``drafted`` is exact; ``accepted = new_tokens - rounds``. Under the cloud's thread cap;
    ``ttft_s`` is None. ``optimized``: as in :func:`hf_assisted` (static cache, compiled calls;
    warm it up before timing).
    """
    if not isinstance(gamma, int) or gamma < 1:
        raise ValueError(f"gamma (draft length) must be a positive integer, got {gamma!r}")
    if not isinstance(max_ngram, int) or max_ngram < 1:
        raise ValueError(f"max_ngram must be a positive integer, got {max_ngram!r}")
    ids = torch.tensor([cloud.encode(prompt)], device=cloud.device)
    eos = sorted(cloud.eos_ids) or None
    inputs: list[int] = []  # input length of each cloud call
    hook = cloud.model.register_forward_pre_hook(lambda _m, _a, kw: inputs.append(kw["input_ids"].shape[1]),
                                                 with_kwargs=True)
    clock = Stopwatch(cloud.device)
    fast = _static_setup(cloud, ids.shape[1] + max_new_tokens + gamma + 1) if optimized else {}
    try:
        reset_peak_memory(cloud.device)
        with torch.inference_mode(), thread_cap(cloud.spec.threads), clock:
            out = cloud.model.generate(
                ids, attention_mask=torch.ones_like(ids), prompt_lookup_num_tokens=gamma,
                max_matching_ngram_size=max_ngram, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=0,
                eos_token_id=eos, pad_token_id=eos[0] if eos else None, **fast,
            )
    finally:
        hook.remove()
    new = out[0, ids.shape[1]:].tolist()
    rounds = len(inputs)
    drafted = sum(inputs) - ids.shape[1] - (rounds - 1)  # the first call's prompt, one fed token per later call
    metrics = summarize(
        new_tokens=len(new), wall_s=clock.total, ttft_s=None, rounds=rounds, drafted=drafted,
        accepted=max(0, len(new) - rounds), rejected_rounds=None, cloud_calls=rounds,
        peak_mem_bytes=peak_memory_bytes(cloud.device),
    )
    return Generation(tokens=new, text=cloud.decode(new), metrics=metrics)
