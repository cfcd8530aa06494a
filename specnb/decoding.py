"""Autoregressive and speculative decoding, batch size 1.

Both loops are built from the same pieces: :func:`forward` (one model call on a KV cache,
used for prefill, a decode step, a draft step and a verification alike), :func:`pick`
(greedy or sampled choice of a token) and :func:`warp` (temperature / top-k / top-p).

Speculative decoding (Leviathan et al. 2023; Chen et al. 2023), one round:

1. the edge model drafts ``gamma`` tokens one by one from its own KV cache;
2. the cloud model scores the last accepted token plus the ``gamma`` drafts in ONE forward
   call, giving ``gamma + 1`` next-token distributions;
3. a verification rule keeps a prefix of the draft and adds one token of the cloud's own
   (a correction at the first rejection, or a bonus token after a fully accepted draft);
4. both KV caches are cropped back to the tokens that survived; the edge catches up on the
   cloud's token (and on the last draft, which it never fed itself) in its next round.

Both caches always hold ``seq[:-1]`` or less, where ``seq`` is prompt + emitted tokens: the
last token of ``seq`` is the first input of the next round.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch
from transformers import DynamicCache, StaticCache

from .metrics import Generation, Stopwatch, peak_memory_bytes, reset_peak_memory, summarize
from .models import LoadedModel, check_pair, thread_cap
from .schedule import Schedule

VERIFY_RULES = ("greedy", "sample", "rank")
OPTIMIZED = (False, True, "edge", "cloud")  # which models of a speculative run get the optimized set-up
# Levers of the plain speculative loop that ``levers_off`` can switch off one at a time (ablations):
# logits_to_keep: compute the logits of every input position, not only the ones used;
# one_sync: copy each drafted token to the host as it is drafted, not the whole draft once per round;
# crop: rebuild the caches (copy the surviving keys and values) instead of cropping them in place.
LEVERS = ("logits_to_keep", "one_sync", "crop")


# ---------------------------------------------------------------------------- shared pieces

def forward(m: LoadedModel, ids: torch.Tensor, cache, keep: int, vocab: int, call: Callable | None = None) -> torch.Tensor:
    """Run ``ids`` (shape [1, S]) through ``m`` on top of ``cache``; logits of the last ``keep`` positions.

    Returns [keep, vocab] (``keep = 0``: every position): logits past ``vocab`` (padding of the output
    layer) are cut off.
    ``call`` replaces ``m.model`` (e.g. its compiled forward, see :class:`Steps`).
    """
    out = (call or m.model)(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=keep)
    return out.logits[0, -keep:, :vocab]


def warp(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Probabilities (float32, last dim) after temperature, then top-k, then top-p (nucleus) filtering."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def pick(logits: torch.Tensor, temperature: float, top_k, top_p, generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Choose the next token from ``logits`` [V]: argmax when temperature is 0, else a sample.

    Returns the token as a 1-element tensor (left on the device: no host sync) and the
    probabilities it was drawn from (None for greedy).
    """
    if temperature == 0:
        return logits.argmax(-1, keepdim=True), None
    probs = warp(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator), probs


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def _ids(tokens: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([tokens], dtype=torch.long, device=device)


# ---------------------------------------------------------------------------- verification rules

def accept_greedy(draft: list[int], target: list[int]) -> tuple[int, int]:
    """Longest prefix of ``draft`` equal to the cloud's argmax ``target`` (len(draft)+1), then the cloud's token."""
    n = 0
    while n < len(draft) and draft[n] == target[n]:
        n += 1
    return n, target[n]


def accept_rank(draft: list[int], logits: torch.Tensor, k: int) -> tuple[int, int]:
    """Accept draft tokens while each is within the cloud's top-``k`` at its position (lossy on purpose);
    then add the cloud's argmax. ``k = 1`` is the greedy rule."""
    g = len(draft)
    if g:
        top = torch.topk(logits[:g], min(k, logits.shape[-1]), dim=-1).indices
        hits = (top == torch.tensor(draft, device=logits.device)[:, None]).any(-1).tolist()
    else:
        hits = []
    n = 0
    while n < g and hits[n]:
        n += 1
    return n, int(logits[n].argmax())


def accept_sample(draft: list[int], p: torch.Tensor, q: torch.Tensor, generator) -> tuple[int, int]:
    """Speculative sampling: exact in distribution to sampling from the cloud.

    p: cloud probabilities [g+1, V]; q: edge probabilities the drafts were drawn from [g, V].
    Accept draft x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection,
    sample from normalize(max(0, p_i - q_i)); after a full acceptance, sample the bonus
    token from p_g.
    """
    g = len(draft)
    n = 0
    if g:
        idx = torch.arange(g, device=p.device)
        x = torch.tensor(draft, device=p.device)
        ratio = p[idx, x] / q[idx, x]
        u = torch.rand(g, generator=generator, device=p.device)
        accepted = (u < ratio).tolist()  # u < ratio  <=>  accepted with probability min(1, ratio)
        while n < g and accepted[n]:
            n += 1
    if n < g:
        residual = (p[n] - q[n]).clamp_min(0.0)
        total = residual.sum()
        dist = residual / total if total > 0 else p[n]
    else:
        dist = p[g]
    return n, int(torch.multinomial(dist, 1, generator=generator))


# ---------------------------------------------------------------------------- argument checks

def _check_common(max_new_tokens: int, temperature: float, top_k, top_p) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def _check_speculative(gamma: int, verify: str, rank_k: int, temperature: float) -> None:
    if not isinstance(gamma, int) or gamma < 1:
        raise ValueError(f"gamma (draft length) must be a positive integer, got {gamma!r}")
    if verify not in VERIFY_RULES:
        raise ValueError(f"unknown verify rule {verify!r}; use one of {', '.join(VERIFY_RULES)}")
    if verify == "sample" and temperature == 0:
        raise ValueError("verify='sample' needs temperature > 0; for temperature 0 use verify='greedy'")
    if verify in ("greedy", "rank") and temperature != 0:
        raise ValueError(f"verify={verify!r} decodes greedily; set temperature=0, or use verify='sample' to sample")
    if verify == "rank" and (not isinstance(rank_k, int) or rank_k < 1):
        raise ValueError(f"rank_k must be a positive integer, got {rank_k!r}")


def _check_levers(optimized, levers_off) -> frozenset[str]:
    if optimized not in OPTIMIZED or not isinstance(optimized, (bool, str)):
        raise ValueError(f"optimized must be True, False, 'edge' or 'cloud', got {optimized!r}")
    if isinstance(levers_off, str):
        raise ValueError(f"levers_off takes a list of lever names, e.g. [{levers_off!r}]")
    off = frozenset(levers_off)
    unknown = sorted(off - set(LEVERS))
    if unknown:
        raise ValueError(f"unknown lever(s) {', '.join(map(repr, unknown))} in levers_off; use any of {', '.join(LEVERS)}")
    if off and optimized is not False:
        raise ValueError("levers_off ablates the plain loop; use it with optimized=False")
    return off


def _rebuild(cache: DynamicCache, length: int) -> None:
    """The ``crop`` lever switched off: keep the first ``length`` positions by copying them into new tensors."""
    for layer in cache.layers:
        layer.keys = layer.keys[..., :length, :].clone()
        layer.values = layer.values[..., :length, :].clone()


# ---------------------------------------------------------------------------- autoregressive

def autoregressive(
    model: LoadedModel,
    prompt: str | list[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    optimized: bool = False,
    compile: bool | None = None,
) -> Generation:
    """Decode one token per forward call (batch size 1); greedy when ``temperature`` is 0.

    ``optimized=False`` is the plain baseline: a :class:`~transformers.DynamicCache` that
    grows each step. ``optimized=True`` is the strongest honest set-up for the device (static
    cache, compiled step where it pays; see :class:`Steps`, ``compile`` overrides the per-device
    choice); its one-off set-up time is reported as ``compile_s``, apart from ``wall_s``.
    Stops after an EOS token (kept in ``tokens``) or exactly ``max_new_tokens``.
    """
    _check_common(max_new_tokens, temperature, top_k, top_p)
    ids = model.encode(prompt)
    vocab = model.vocab_size
    dev = model.device
    gen = make_generator(seed, dev)
    eos = model.eos_ids
    with thread_cap(model.spec.threads), torch.inference_mode():
        steps = Steps(model, len(ids) + max_new_tokens, optimized, compile)
        reset_peak_memory(dev)
        clock = Stopwatch(dev)
        with clock:
            logits = steps.prefill(ids, vocab)[-1]
            tok, _ = pick(logits, temperature, top_k, top_p, gen)
            out = [int(tok)]
        ttft = clock.total
        with clock, no_compiling(steps):
            while len(out) < max_new_tokens and out[-1] not in eos:
                logits = steps.step(tok.view(1, 1), 1, vocab)[-1]
                tok, _ = pick(logits, temperature, top_k, top_p, gen)
                out.append(int(tok))
    metrics = summarize(
        new_tokens=len(out), wall_s=clock.total, ttft_s=ttft, cloud_calls=len(out),
        peak_mem_bytes=peak_memory_bytes(dev), compile_s=steps.compile_s,
    )
    return Generation(tokens=out, text=model.decode(out), metrics=metrics)


# torch.compile of decode steps, per device type. Measured on the 2-core CPU machine (README,
# "What optimized means"): a compiled step decodes 1.4x (18-layer, width-192 model) to 2x
# (2-layer, width-128) faster than eager, at a one-off compile cost of 25-80 s; on CUDA it
# removes the per-kernel launch overhead that dominates batch-1 decoding.
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
    """

    def __init__(self, model: LoadedModel, max_len: int, optimized: bool, compile: bool | None = None,
                 shapes: tuple[tuple[int, int], ...] = ((1, 1),)):
        t0 = time.perf_counter()
        self.model = model
        config = model.model.config
        self.compiled = None
        if not optimized:
            self.cache = DynamicCache(config=config)
        else:
            size = cache_size(max_len)
            self.cache = static_cache(model, size)
            if COMPILE_BY_DEVICE.get(model.device.type, False) if compile is None else compile:
                self.compiled = _compiled_forward(model, size, shapes)
        self.compile_s = time.perf_counter() - t0

    def step(self, ids: torch.Tensor, keep: int, vocab: int) -> torch.Tensor:
        """:func:`forward` on this run's cache, compiled when set up so."""
        return forward(self.model, ids, self.cache, keep, vocab, self.compiled)

    def prefill(self, ids: list[int], vocab: int, keep: int = 1) -> torch.Tensor:
        return forward(self.model, _ids(ids, self.model.device), self.cache, keep, vocab)


@contextlib.contextmanager
def no_compiling(*steps: Steps):
    """Around a timed loop: compiled steps run only graphs warmed up before the clock.

    An input that would need a new graph raises instead of silently timing a compilation (or,
    past torch's recompile limit, silently running eager). Set once per loop, not per call:
    entering the stance costs ~20 µs per compiled call, 6% of the embedded edge's step.
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


def static_cache(model: LoadedModel, size: int) -> StaticCache:
    """A :class:`~transformers.StaticCache` of ``size`` positions, allocated now (not on first use).

    Early allocation keeps one cache state (initialized) for every compiled call, so the
    compiled forward needs one graph per input shape instead of two.
    """
    config = model.model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache = StaticCache(config=config, max_cache_len=size)
    cache.early_initialization(1, heads, head_dim, model.model.dtype, model.device)
    return cache


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


def _compiled_forward(model: LoadedModel, cache_len: int, shapes: tuple[tuple[int, int], ...]) -> Callable:
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


# ---------------------------------------------------------------------------- speculative

def thread_plan(edge: LoadedModel, cloud: LoadedModel) -> tuple[int | None, int | None]:
    """CPU thread caps for a two-model run: (for the whole run, for the edge's calls inside it).

    torch's thread count is process-wide and changing it rebuilds the thread pools (measured
    on the 2-core CI machine: ~7 ms per switch and back, more than a small model's step). So
    when the cloud runs on an accelerator the edge's cap holds for the whole run (the cloud's
    host thread count hardly matters there) and nothing switches per round; only when both
    models share the CPU with different caps does the count switch around each draft phase,
    and that cost lands in ``draft_s`` where it belongs.
    """
    if cloud.device.type != "cpu":
        return edge.spec.threads, None
    return cloud.spec.threads, edge.spec.threads


def speculative(
    edge: LoadedModel,
    cloud: LoadedModel,
    prompt: str | list[int],
    max_new_tokens: int,
    *,
    gamma: int = 4,
    verify: str = "greedy",
    rank_k: int = 5,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    schedule: str = "constant",
    optimized: bool | str = False,
    compile: bool | None = None,
    levers_off: tuple[str, ...] = (),
) -> Generation:
    """Speculative decoding of ``prompt`` (batch size 1): ``edge`` drafts, ``cloud`` verifies.

    ``verify``: ``greedy`` (output token-identical to the cloud's greedy decoding),
    ``sample`` (output distributed exactly as the cloud's sampling at ``temperature`` /
    ``top_k`` / ``top_p``) or ``rank`` (accept a draft within the cloud's top-``rank_k``;
    lossy). The two models may sit on different devices: only token ids, and for ``sample``
    the edge's draft probabilities, move between them. The edge's forward calls run under its
    thread cap (see :func:`thread_plan`). ``schedule`` sets the draft length per round
    (:mod:`specnb.schedule`: ``constant`` = ``gamma``; ``heuristic`` starts at ``gamma``;
    ``cost`` chooses up to ``gamma``). ``optimized=True`` gives both models the set-up of the
    ``cloud_optimized`` baseline (:class:`Steps`: static caches, compiled steps where they pay);
    the cloud's verification input is then padded to one of a few fixed widths
    (:meth:`~specnb.schedule.Schedule.widths`) so that a few compiled graphs serve every round
    (the padded positions are cropped with the rejected ones); ``"edge"`` or ``"cloud"`` gives
    that set-up to one model only. ``levers_off`` switches levers of the plain loop off for
    ablation studies (:data:`LEVERS`). Stops after an EOS token (kept in ``tokens``) or exactly
    ``max_new_tokens``. Metric definitions: :class:`specnb.metrics.Generation`.
    """
    _check_common(max_new_tokens, temperature, top_k, top_p)
    _check_speculative(gamma, verify, rank_k, temperature)
    off = _check_levers(optimized, levers_off)
    e_opt, c_opt = optimized in (True, "edge"), optimized in (True, "cloud")
    keep = (lambda n: 0) if "logits_to_keep" in off else (lambda n: n)  # 0: every position  # noqa: E731
    plan = Schedule(schedule, gamma)
    vocab = check_pair(edge, cloud)
    ids = cloud.encode(prompt)
    eos = cloud.eos_ids
    e_dev, c_dev = edge.device, cloud.device
    e_gen, c_gen = make_generator(seed, e_dev), make_generator(None if seed is None else seed + 1, c_dev)
    e_temp = temperature if verify == "sample" else 0.0

    outer, inner = thread_plan(edge, cloud)
    widths = plan.widths() if c_opt else ()  # padded verification widths (none: no padding)
    total = len(ids) + max_new_tokens + plan.longest() + 1
    seq = list(ids)
    out: list[int] = []
    trace: list[int] = []
    drafts_trace: list[int] = []
    edge_calls = cloud_calls = drafted = 0
    draft_clock, verify_clock, clock = Stopwatch(e_dev), Stopwatch(c_dev), Stopwatch(e_dev, c_dev)
    ttft = None

    with torch.inference_mode(), thread_cap(outer):
        with thread_cap(inner):
            e_steps = Steps(edge, total, e_opt, compile, shapes=((1, 1), (2, 1)))
        c_steps = Steps(cloud, total, c_opt, compile, shapes=tuple((w, w) for w in widths))
        e_cache, c_cache = e_steps.cache, c_steps.cache
        reset_peak_memory(e_dev, c_dev)
        with clock:
            if len(ids) > 1:  # prefill: both caches take all prompt tokens but the last
                with draft_clock, thread_cap(inner):
                    e_steps.prefill(ids[:-1], vocab, keep(1))
                with verify_clock:
                    c_steps.prefill(ids[:-1], vocab, keep(1))
                edge_calls += 1
                cloud_calls += 1
            e_len = len(ids) - 1  # tokens in the edge cache

        while len(out) < max_new_tokens and not (out and out[-1] in eos):
            with clock, no_compiling(e_steps, c_steps):
                g = min(plan.next(), max_new_tokens - len(out) - 1)  # never emit past max_new_tokens
                d0, v0 = draft_clock.total, verify_clock.total
                # 1. draft g tokens; the first call also feeds tokens the edge has not seen yet
                drafts, qs = [], []
                with draft_clock, thread_cap(inner):
                    inp = _ids(seq[e_len:], e_dev)
                    for _ in range(g):
                        logits = e_steps.step(inp, keep(1), vocab)[-1]
                        tok, q = pick(logits, e_temp, top_k, top_p, e_gen)
                        drafts.append(int(tok) if "one_sync" in off else tok)
                        qs.append(q)
                        inp = tok.view(1, 1)
                    if "one_sync" in off:
                        draft = drafts
                    else:
                        draft = torch.cat(drafts).tolist() if g else []
                edge_calls += g
                # 2. the cloud scores the last token + the draft in one call: g + 1 distributions
                with verify_clock:
                    pad = next((w for w in widths if w >= g + 1), g + 1) - g - 1
                    logits = c_steps.step(_ids(seq[-1:] + draft + [0] * pad, c_dev), keep(g + 1 + pad), vocab)[: g + 1]
                    if verify == "greedy":
                        n, nxt = accept_greedy(draft, logits.argmax(-1).tolist())
                    elif verify == "rank":
                        n, nxt = accept_rank(draft, logits, rank_k)
                    else:
                        p = warp(logits, temperature, top_k, top_p)
                        q = torch.stack(qs).to(c_dev) if g else p[:0]
                        n, nxt = accept_sample(draft, p, q, c_gen)
                cloud_calls += 1
                # 3. emit, stopping at EOS (drafts the cloud accepted past an EOS still count
                #    as accepted: the acceptance rate measures agreement, not output length)
                emitted = draft[:n] + [nxt]
                for i, t in enumerate(emitted):
                    if t in eos:
                        emitted = emitted[: i + 1]
                        break
                # 4. crop both caches back to the surviving tokens (negative n = tokens to drop)
                if "crop" in off:
                    _rebuild(c_cache, len(seq) + n)
                elif g + pad > n:
                    c_cache.crop(-(g + pad - n))
                if g:
                    kept = min(n, g - 1)  # the edge fed seq + draft[:g-1]
                    if "crop" in off:
                        _rebuild(e_cache, len(seq) + kept)
                    elif g - 1 > kept:
                        e_cache.crop(-(g - 1 - kept))
                    e_len = len(seq) + kept
                seq.extend(emitted)
                out.extend(emitted)
                drafted += g
                trace.append(n)
                drafts_trace.append(g)
                plan.update(g, n, draft_clock.total - d0, verify_clock.total - v0)
            if ttft is None:
                ttft = clock.total

    accepted = sum(trace)
    rejected = sum(n < g for n, g in zip(trace, drafts_trace))
    metrics = summarize(
        new_tokens=len(out), wall_s=clock.total, ttft_s=ttft or 0.0, rounds=len(trace),
        drafted=drafted, accepted=accepted, rejected_rounds=rejected, cloud_calls=cloud_calls, edge_calls=edge_calls,
        draft_s=draft_clock.total, verify_s=verify_clock.total,
        peak_mem_bytes=peak_memory_bytes(e_dev, c_dev), compile_s=e_steps.compile_s + c_steps.compile_s,
    )
    return Generation(tokens=out, text=cloud.decode(out), metrics=metrics, trace=trace, drafted_trace=drafts_trace)
