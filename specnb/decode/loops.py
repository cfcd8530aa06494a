"""Autoregressive and speculative decoding, batch size 1.

Both loops are built from the same pieces: :func:`~specnb.decode.steps.forward` (one model call on a KV
cache, used for prefill, a decode step, a draft step and a verification alike; :class:`Steps` holds
one model's cache and compiled step), :func:`~specnb.decode.sampling.pick` (greedy or sampled choice of a
token) and :func:`~specnb.decode.sampling.warp` (temperature / top-k / top-p).

Speculative decoding (Leviathan et al. 2023; Chen et al. 2023), one round
(:func:`speculative_round`; the roles are :mod:`specnb.decode.roles`):

1. a drafter proposes up to ``g`` tokens: the edge model one by one from its own KV cache
   (:class:`~specnb.decode.drafting.EdgeDrafter`), or an n-gram match (:class:`~specnb.decode.lookup.PromptLookup`);
2. the verifier scores the last accepted token plus the draft in ONE forward call of the cloud,
   giving ``g + 1`` next-token distributions (:class:`~specnb.decode.verifying.CloudVerifier`);
3. its rule keeps a prefix of the draft and adds one token of the cloud's own (a correction at the
   first rejection, or a bonus token after a fully accepted draft);
4. both sides cut their state back to the tokens that survived; the edge catches up on the
   cloud's token (and on the last draft, which it never fed itself) in its next round.

Both caches always hold ``seq[:-1]`` or less, where ``seq`` is prompt + emitted tokens: the
last token of ``seq`` is the first input of the next round.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..measure.metrics import Generation, Stopwatch, peak_memory_bytes, reset_peak_memory, summarize
from ..models import LoadedModel, check_pair, same_tokenizer, thread_cap, thread_plan
from . import ahead as ahead_mod
from .drafting import EdgeDrafter
from .roles import Drafter, RoundSettings, Verifier
from .sampling import make_generator, pick
from .adaptive import SESSION_CAP, STOPPING, Controller
from .schedule import Schedule
from .steps import Steps, no_compiling
from .translate import translating
from .verifying import CloudVerifier

VERIFY_RULES = ("greedy", "sample", "rank")
OPTIMIZED = (False, True, "edge", "cloud")  # which models of a speculative run get the optimized set-up
# Levers of the plain speculative loop that ``levers_off`` can switch off one at a time (ablations):
# logits_to_keep: compute the logits of every input position, not only the ones used;
# one_sync: copy each drafted token to the host as it is drafted, not the whole draft once per round;
# crop: rebuild the caches (copy the surviving keys and values) instead of cropping them in place.
LEVERS = ("logits_to_keep", "one_sync", "crop")


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


# ---------------------------------------------------------------------------- autoregressive

def autoregressive(
    model: LoadedModel | Any,
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
    Stops after an EOS token (kept in ``tokens``) or exactly ``max_new_tokens``. A ``model`` that is
    not loaded here but has its own ``autoregressive(prompt, max_new_tokens, **settings)`` (a cloud
    across a link) decodes with that.
    """
    _check_common(max_new_tokens, temperature, top_k, top_p)
    if not isinstance(model, LoadedModel) and hasattr(model, "autoregressive"):  # e.g. a cloud across a link
        return model.autoregressive(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                    seed=seed, optimized=optimized, compile=compile)
    ids = model.encode(prompt)
    vocab = model.vocab_size
    dev = model.device
    gen = make_generator(seed, dev)
    eos = model.eos_ids
    with thread_cap(model.spec.threads), torch.inference_mode():
        steps = Steps(model, len(ids) + max_new_tokens, optimized, compile, rollback=False)
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


# ---------------------------------------------------------------------------- speculative


def speculative_round(drafter: Drafter, verifier: Verifier, seq: list[int], g: int,
                      draft_clock: Stopwatch, verify_clock: Stopwatch) -> tuple[list[int], int, int]:
    """One round after ``seq`` (prompt + output so far): up to ``g`` drafts, verified in one cloud call.

    Returns (new tokens: the accepted drafts + the cloud's own token, drafted, accepted).
    """
    with draft_clock:
        draft, q = drafter.draft(seq, g)  # q: [len(draft), V] probabilities they were drawn from, or None
    with verify_clock:
        verdict = verifier.verify(seq[-1], draft, q)  # its cache now holds seq + draft[:accepted]
    drafter.rollback(len(seq) + verdict.accepted)
    return draft[: verdict.accepted] + [verdict.token], len(draft), verdict.accepted


def _has_tokenizer(side: Any) -> bool:
    return hasattr(side, "tokenizer") and hasattr(side, "vocab_size")


def _translates(edge: Any, cloud: Any) -> bool:
    """The edge is a model with another tokenizer than the cloud's: it drafts through a translation
    (:mod:`specnb.decode.translate`); a drafter passed as is (already a :class:`Drafter`) is never wrapped."""
    return isinstance(edge, LoadedModel) and _has_tokenizer(cloud) and not same_tokenizer(edge, cloud)


def _devices(*sides: Any) -> list[torch.device]:
    return [d for d in (getattr(s, "device", None) for s in sides) if isinstance(d, torch.device)]


def _merge_stats(*parts: dict[str, Any]) -> dict[str, Any]:
    """The roles' own metrics in one dict; a figure both report (e.g. ``compile_s``) is summed."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            merged[key] = merged[key] + value if key in merged else value
    return merged


def _defaults(edge: Any, cloud: Any, schedule: str | None, gamma: int | None, verify: str,
              ahead: bool | int = False) -> tuple[str, int]:
    """``schedule`` and ``gamma`` of :func:`speculative` when not given: over a ``connect()`` session (a cloud with
    ``controller_for``), with neither given, an edge model of the cloud's tokenizer and a greedy or rank rule,
    ``adaptive`` up to :data:`~specnb.decode.adaptive.SESSION_CAP` (or the server's ``max_draft``; from a fresh
    process's first generations within the best fixed gamma's interval: docs/adaptive-gamma.md); else ``constant``, gamma 4. Sampling
    keeps ``constant``: adaptive lengths follow measured times, and a seeded sample would not repeat. Drafting
    ahead keeps it too (the adaptive stop rule reads one draft at a time)."""
    if (schedule is None and gamma is None and verify != "sample" and not ahead
            and hasattr(cloud, "controller_for")
            and isinstance(edge, LoadedModel) and not _translates(edge, cloud)):
        return "adaptive", min(SESSION_CAP, getattr(getattr(cloud, "limits", None), "max_draft", SESSION_CAP))
    return schedule or "constant", 4 if gamma is None else gamma


def speculative(
    edge: LoadedModel | Drafter,
    cloud: LoadedModel | Verifier,
    prompt: str | list[int],
    max_new_tokens: int,
    *,
    gamma: int | None = None,
    verify: str = "greedy",
    rank_k: int = 5,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    schedule: str | None = None,
    optimized: bool | str = False,
    compile: bool | None = None,
    levers_off: tuple[str, ...] = (),
    controller: Controller | None = None,
    ahead: bool | int = False,
    hedge: int = 0,
    hedge_len: int | None = None,
) -> Generation:
    """Speculative decoding of ``prompt`` (batch size 1): ``edge`` drafts, ``cloud`` verifies.

    ``verify``: ``greedy`` (output token-identical to the cloud's greedy decoding),
    ``sample`` (output distributed exactly as the cloud's sampling at ``temperature`` /
    ``top_k`` / ``top_p``) or ``rank`` (accept a draft within the cloud's top-``rank_k``;
    lossy). The two models may sit on different devices: only token ids, and for ``sample``
    the edge's draft probabilities, move between them. The edge's forward calls run under its
    thread cap (see :func:`thread_plan`). ``schedule`` sets the draft length per round
    (:mod:`specnb.decode.schedule`: ``constant`` = ``gamma``; ``heuristic`` starts at ``gamma``;
    ``cost`` chooses up to ``gamma``; ``confidence`` and ``adaptive`` stop a draft of up to ``gamma``
    after an unsure token, :mod:`specnb.decode.adaptive`; ``controller``: the ``adaptive`` schedule's learnt
    state, passed again to carry it over generations of the same edge and cloud; a ``connect()`` session keeps
    one per edge itself, ``cloud.controller_for(edge)``). Defaults: ``constant`` with gamma 4; over a
    ``connect()`` session, with neither ``gamma`` nor ``schedule`` given and greedy verification,
    ``adaptive`` up to 32 (:func:`_defaults`). ``optimized=True`` gives both models the set-up of the
    ``cloud_optimized`` baseline (:class:`Steps`: static caches, compiled steps where they pay);
    the cloud's verification input is then padded to one of a few fixed widths
    (:meth:`~specnb.decode.schedule.Schedule.widths`) so that a few compiled graphs serve every round
    (the padded positions are cropped with the rejected ones); ``"edge"`` or ``"cloud"`` gives
    that set-up to one model only. ``levers_off`` switches levers of the plain loop off for
    ablation studies (:data:`LEVERS`). Stops after an EOS token (kept in ``tokens``) or exactly
    ``max_new_tokens``. Metric definitions: :class:`specnb.measure.metrics.Generation`.

    ``ahead``: the edge drafts ahead while the cloud verifies (:mod:`specnb.decode.ahead`): it keeps
    drafting the continuation that assumes the round in flight is accepted whole, and submits it as the
    next round before the verdict; a round whose premise fails is answered void and dropped. ``True``:
    as many rounds ahead as the verdicts allow; an int: at most that many. In this process the cloud then
    verifies on a worker thread (give each model one thread, and the two run on two cores); across a link
    the rounds ahead are in flight together. Not with the ``confidence`` / ``adaptive`` schedules.
    ``hedge``: with ``ahead``, up to that many branches per round in flight, each premised on a rejection at a
    position of its draft with the edge's runner-up there as the cloud's token (greedy and rank rules; adds
    ``ahead_hedged`` / ``hedge_hits``: branches submitted / verified, ``hedge_drafted``: drafts sent in them).
    ``hedge_len``: with ``hedge``, the most drafts a branch has (None: as many as the spine's round; reported as 0).
    Adds ``ahead`` (rounds allowed ahead), ``ahead_rounds`` / ``ahead_void`` (rounds submitted ahead,
    verified / dropped), ``ahead_kept`` / ``ahead_dropped`` (tokens drafted ahead), ``edge_wait_s`` to the
    metrics; every speculative run reports ``edge_idle_share`` = 1 - draft_s / wall_s.

    ``edge`` may be any drafter (:class:`specnb.PromptLookup`, or an object with the methods of
    :class:`specnb.decode.roles.Drafter`) and ``cloud`` any verifier (:class:`specnb.decode.roles.Verifier`); a loaded
    model becomes one (:func:`specnb.decode.roles.as_drafter`, :func:`~specnb.decode.roles.as_verifier`). The
    prompt is tokenized by the cloud, or by the edge when the cloud is not loaded here.
    """
    _check_common(max_new_tokens, temperature, top_k, top_p)
    schedule, gamma = _defaults(edge, cloud, schedule, gamma, verify, ahead)
    _check_speculative(gamma, verify, rank_k, temperature)
    off = _check_levers(optimized, levers_off)
    depth = ahead_mod.depth_of(ahead)
    hedge = ahead_mod.check_hedge(hedge, depth, verify)
    hedge_len = ahead_mod.check_hedge_len(hedge_len, hedge)
    if depth and schedule in STOPPING:
        raise ValueError(f"ahead does not combine with schedule={schedule!r} yet (its stop rule reads the confidences "
                         "of one draft at a time); use schedule='constant', 'heuristic' or 'cost' with ahead")
    if controller is None and schedule == "adaptive" and hasattr(cloud, "controller_for"):
        controller = cloud.controller_for(edge)  # a connect() session's: it learns over the session's generations
    plan = Schedule(schedule, gamma, controller=controller)
    text = next((s for s in (cloud, edge) if hasattr(s, "encode") and hasattr(s, "decode")), None)  # the tokenizer
    if text is None:
        raise TypeError("speculative needs a tokenizer on one side: pass a loaded model (specnb.load) as edge or cloud")
    ids = text.encode(prompt)
    translate = _translates(edge, cloud)  # another tokenizer: the edge drafts through specnb.decode.translate
    c_opt = optimized in (True, "cloud")
    settings = RoundSettings(
        rule=verify, rank_k=rank_k, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, compile=compile,
        levers_off=off, max_len=len(ids) + max_new_tokens + plan.longest() + 1,
        # both sides hold a tokenizer (a loaded model, a remote cloud): share the vocabulary, or translate
        vocab=check_pair(edge, cloud) if _has_tokenizer(edge) and _has_tokenizer(cloud) and not translate else 0,
    )
    e_settings = replace(settings, optimized=optimized in (True, "edge"))
    c_settings = replace(settings, optimized=c_opt, widths=plan.widths() if c_opt else ())  # padded widths
    e_devs, c_devs = _devices(edge), _devices(cloud)

    run_threads = thread_plan(edge, cloud)[0]
    with torch.inference_mode(), thread_cap(run_threads):
        drafter = translating(edge, cloud, e_settings) if translate else as_drafter(edge, e_settings)
        verifier = as_verifier(cloud, c_settings)
        if depth:  # the cloud's rounds run on a worker thread (or pipelined across the link)
            verifier = ahead_mod.pipelined(verifier, run_threads if isinstance(cloud, LoadedModel) and
                                           cloud.device.type == "cpu" else None, tuple(c_devs))
        plan.attach(drafter)  # a per-token stop rule, for the schedules that have one
        try:
            reset_peak_memory(*e_devs, *c_devs)
            clock, draft_clock, verify_clock = Stopwatch(*e_devs, *c_devs), Stopwatch(*e_devs), Stopwatch(*c_devs)
            with clock:  # prefill: each side takes the prompt
                with draft_clock:
                    drafter.begin(ids, e_settings)
                with verify_clock:
                    verifier.begin(ids, c_settings)
            steps = [s for s in (getattr(drafter, "steps", None), getattr(verifier, "steps", None)) if isinstance(s, Steps)]
            extra: dict[str, Any] = {}
            with no_compiling(*steps):
                if depth:
                    out, trace, drafted_trace, ttft, done = ahead_mod.loop(
                        drafter, verifier, ids, max_new_tokens, plan, depth, clock, draft_clock, hedge, hedge_len)
                    extra = {"ahead": depth, "hedge": hedge, "hedge_len": hedge_len or 0} | vars(done)
                    verifier.stop()  # rounds still in flight are not waited for; the stats hold still
                else:
                    out, trace, drafted_trace, ttft = _loop(drafter, verifier, ids, max_new_tokens, plan,
                                                            clock, draft_clock, verify_clock)
            stats = _merge_stats(drafter.stats(), verifier.stats())
            if depth:
                verify_clock.total += stats.pop("verify_busy_s", 0.0)  # the cloud's time on its thread
        finally:
            verifier.close()

    accepted = sum(trace)
    rejected = sum(n < g for n, g in zip(trace, drafted_trace))
    metrics = summarize(
        new_tokens=len(out), wall_s=clock.total, ttft_s=ttft, rounds=len(trace), drafted=sum(drafted_trace),
        accepted=accepted, rejected_rounds=rejected, cloud_calls=stats.pop("cloud_calls", 0),
        edge_calls=stats.pop("edge_calls", 0), draft_s=draft_clock.total, verify_s=verify_clock.total,
        peak_mem_bytes=peak_memory_bytes(*e_devs, *c_devs), compile_s=stats.pop("compile_s", 0.0),
    ) | {"edge_idle_share": 1 - draft_clock.total / clock.total if clock.total > 0 else None} | extra | stats
    return Generation(tokens=out, text=text.decode(out), metrics=metrics, trace=trace, drafted_trace=drafted_trace)


def _loop(drafter: Drafter, verifier: Verifier, ids: list[int], max_new_tokens: int, plan: Schedule,
          clock: Stopwatch, draft_clock: Stopwatch, verify_clock: Stopwatch) -> tuple[list[int], list[int], list[int], float]:
    """Rounds until EOS or ``max_new_tokens``: (new tokens, accepted per round, drafted per round, ttft)."""
    eos = verifier.eos_ids
    seq = list(ids)
    out: list[int] = []
    trace: list[int] = []
    drafted_trace: list[int] = []
    ttft = None
    while len(out) < max_new_tokens and not (out and out[-1] in eos):
        with clock:
            g = min(plan.next(), max_new_tokens - len(out) - 1)  # never emit past max_new_tokens
            d0, v0 = draft_clock.total, verify_clock.total
            emitted, g, n = speculative_round(drafter, verifier, seq, g, draft_clock, verify_clock)
            # stop at EOS (drafts the cloud accepted past an EOS still count as accepted: the
            # acceptance rate measures agreement, not output length)
            for i, t in enumerate(emitted):
                if t in eos:
                    emitted = emitted[: i + 1]
                    break
            seq.extend(emitted)
            out.extend(emitted)
            trace.append(n)
            drafted_trace.append(g)
            plan.update(g, n, draft_clock.total - d0, verify_clock.total - v0)
        if ttft is None:
            ttft = clock.total
    return out, trace, drafted_trace, ttft or 0.0


def _as_role(obj: Any, settings: RoundSettings, role: type, in_process: Any, factory: str, verb: str, hint: str) -> Any:
    """``obj`` as a ``role``: itself if it is one, the in-process role for a loaded model, else built by
    its ``factory(settings)`` method (a remote cloud's)."""
    if isinstance(obj, role):
        return obj
    if isinstance(obj, LoadedModel):
        return in_process(obj, settings)
    build = getattr(obj, factory, None)
    if build is None:
        raise TypeError(f"cannot {verb} with {type(obj).__name__}: pass a loaded model (specnb.load), {hint}")
    return build(settings)


def as_drafter(edge: Any, settings: RoundSettings) -> Drafter:
    """``edge`` as a drafter (:class:`~specnb.decode.drafting.EdgeDrafter` for a loaded model)."""
    return _as_role(edge, settings, Drafter, EdgeDrafter, "drafter", "draft",
                    "specnb.PromptLookup(...) or another Drafter")


def as_verifier(cloud: Any, settings: RoundSettings) -> Verifier:
    """``cloud`` as a verifier (:class:`~specnb.decode.verifying.CloudVerifier` for a loaded model, a
    remote cloud's own, :func:`specnb.connect`)."""
    return _as_role(cloud, settings, Verifier, CloudVerifier, "verifier", "verify",
                    "a remote cloud (specnb.connect) or another Verifier")
