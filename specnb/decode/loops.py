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

from dataclasses import dataclass
from typing import Any

import torch

from ..measure.metrics import Generation, Stopwatch, peak_memory_bytes, reset_peak_memory, summarize
from ..models import LoadedModel, thread_cap
from . import ahead as ahead_mod
from .adaptive import SESSION_CAP, STOPPING, Controller
from .pair import Roles, pair, translates
from .roles import Drafter, RoundSettings, Verifier
from .sampling import make_generator, pick
from .schedule import Schedule
from .steps import Steps, no_compiling

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

    Returns (new tokens: the accepted drafts + the cloud's own token, cut after an EOS
    (:meth:`~specnb.decode.roles.Verdict.emitted`), drafted, accepted).
    """
    with draft_clock:
        draft, q = drafter.draft(seq, g)  # q: [len(draft), V] probabilities they were drawn from, or None
    with verify_clock:
        verdict = verifier.verify(seq[-1], draft, q)  # its cache now holds seq + draft[:accepted]
    drafter.rollback(len(seq) + verdict.accepted)
    emitted = verdict.emitted(draft, verifier.eos_ids)
    if len(emitted) > 2 and hasattr(drafter, "catch_up"):  # the cloud's extra tokens (lead): fed in one call
        with draft_clock:
            drafter.catch_up(seq + emitted)
    return emitted, len(draft), verdict.accepted


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
            and isinstance(edge, LoadedModel) and not translates(edge, cloud)):
        return "adaptive", min(SESSION_CAP, getattr(getattr(cloud, "limits", None), "max_draft", SESSION_CAP))
    return schedule or "constant", 4 if gamma is None else gamma


def _check_lead(lead: bool, cloud: Any, verify: str, ahead: bool | int) -> None:
    """``lead`` runs where the cloud waits for rounds: a ``connect()`` session's, or one verifying on a worker
    thread (``ahead``); greedy only."""
    if not isinstance(lead, bool):
        raise ValueError(f"lead must be True or False, got {lead!r}")
    if lead and not hasattr(cloud, "controller_for") and not ahead:
        raise ValueError("lead makes the cloud decode its own tokens while it waits for the next round: across a link "
                         "(a connect() session as cloud), or in this process with ahead=True (the cloud then verifies "
                         "on a worker thread that waits for rounds); or use lead=False")
    if lead and verify != "greedy":
        raise ValueError(f"lead commits the cloud's own greedy tokens: it runs with verify='greedy' only, not "
                         f"{verify!r}; use lead=False with it")


def _depth(ahead: bool | int, schedule: str) -> int:
    """Rounds the edge may draft ahead (0: none); refused with a schedule that stops a draft early."""
    depth = ahead_mod.depth_of(ahead)
    if depth and schedule in STOPPING:
        raise ValueError(f"ahead does not combine with schedule={schedule!r} yet (its stop rule reads the confidences "
                         "of one draft at a time); use schedule='constant', 'heuristic' or 'cost' with ahead")
    return depth


@dataclass
class Clocks:
    """A speculative run's clocks: the whole run (``wall``), the edge drafting, the cloud verifying; peak
    memory counts from their start."""

    edge_devices: tuple[torch.device, ...]
    cloud_devices: tuple[torch.device, ...]

    def __post_init__(self) -> None:
        devices = self.edge_devices + self.cloud_devices
        self.wall, self.draft, self.verify = Stopwatch(*devices), Stopwatch(*self.edge_devices), Stopwatch(*self.cloud_devices)
        reset_peak_memory(*devices)

    def peak_memory(self) -> int:
        return peak_memory_bytes(*self.edge_devices, *self.cloud_devices)


@dataclass
class Rounds:
    """What each round of one generation did, in order (rounds a drafting-ahead loop dropped are not rounds)."""

    accepted: list[int]  # drafts the cloud kept, per round
    drafted: list[int]  # drafts proposed, per round


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
    lead: bool = False,
) -> Generation:
    """Speculative decoding of ``prompt`` (batch size 1): ``edge`` drafts, ``cloud`` verifies.

    ``edge``: a loaded model (of the cloud's tokenizer, or of another: it drafts through a translation,
    docs/tokenizers.md), :class:`specnb.PromptLookup` or any :class:`~specnb.decode.roles.Drafter`;
    ``cloud``: a loaded model, a ``connect()`` session or any :class:`~specnb.decode.roles.Verifier`
    (:mod:`specnb.decode.pair`). The prompt is tokenized by the cloud, or by the edge when the cloud is
    not loaded here. Only token ids (and, to sample, the edge's draft probabilities) move between the
    sides, so they may sit on different devices; the edge's calls keep its thread cap.

    - ``verify``: ``greedy`` (output token-identical to the cloud's greedy decoding), ``sample``
      (distributed exactly as the cloud's sampling at ``temperature`` / ``top_k`` / ``top_p``, ``seed``)
      or ``rank`` (a draft within the cloud's top-``rank_k`` is kept; lossy).
    - ``schedule``: the draft length per round (:mod:`specnb.decode.schedule`): ``constant`` = ``gamma``;
      ``heuristic`` starts at ``gamma``; ``cost`` chooses up to ``gamma``; ``confidence`` and ``adaptive``
      stop a draft of up to ``gamma`` after an unsure token (:mod:`specnb.decode.adaptive`; ``controller``
      is the ``adaptive`` schedule's learnt state, passed again to carry it over generations; a
      ``connect()`` session keeps one per edge, ``cloud.controller_for(edge)``). Default ``constant``,
      gamma 4; over a ``connect()`` session with neither given and no sampling, ``adaptive`` up to 32
      (:func:`_defaults`).
    - ``optimized``: ``True`` gives both models the ``cloud_optimized`` baseline's set-up (static caches,
      compiled steps where they pay, :class:`Steps`; the cloud's input padded to a few fixed widths,
      :meth:`~specnb.decode.schedule.Schedule.widths`), ``"edge"`` or ``"cloud"`` one model only;
      ``compile`` overrides the per-device choice. ``levers_off``: levers of the plain loop switched off
      for ablations (:data:`LEVERS`).
    - ``ahead``: the edge keeps drafting while the cloud verifies, on the premise that the round in
      flight is accepted whole; a round whose premise fails is answered void and dropped
      (:mod:`specnb.decode.ahead`). ``True``: as many rounds ahead as the verdicts allow; an int: at most
      that many. In this process the cloud then verifies on a worker thread; across a link the rounds
      ahead are in flight together. Not with ``confidence`` / ``adaptive``. Adds ``ahead``,
      ``ahead_rounds`` / ``ahead_void``, ``ahead_kept`` / ``ahead_dropped``, ``edge_wait_s``.
    - ``hedge``: with ``ahead``, up to that many branches per round in flight, each premised on a rejection
      at a position of its draft with the edge's runner-up there as the cloud's token (greedy and rank
      rules). Adds ``hedge``, ``ahead_hedged`` / ``hedge_hits`` (branches submitted / verified),
      ``hedge_drafted`` (drafts sent in them). ``hedge_len``: the most drafts a branch has (None: as many as
      the spine's round; reported as 0).
    - ``lead``: greedy, over a ``connect()`` session or with ``ahead``: while the cloud waits for the next round it
      decodes its own greedy tokens, and the next verdict commits those the draft did not reach
      (:mod:`specnb.decode.lead`; output unchanged). Adds ``lead``, and ``lead_tokens`` (tokens that came as the
      cloud's own, across a link) or ``lead_steps`` / ``lead_sent`` (in this process).

    Stops after an EOS token (kept in ``tokens``) or exactly ``max_new_tokens``. Metrics:
    :class:`specnb.measure.metrics.Generation`, and ``edge_idle_share`` = 1 - draft_s / wall_s.
    """
    _check_common(max_new_tokens, temperature, top_k, top_p)
    schedule, gamma = _defaults(edge, cloud, schedule, gamma, verify, ahead)
    _check_speculative(gamma, verify, rank_k, temperature)
    off = _check_levers(optimized, levers_off)
    depth = _depth(ahead, schedule)
    hedge = ahead_mod.check_hedge(hedge, depth, verify)
    hedge_len = ahead_mod.check_hedge_len(hedge_len, hedge)
    _check_lead(lead, cloud, verify, ahead)
    if controller is None and schedule == "adaptive" and hasattr(cloud, "controller_for"):
        controller = cloud.controller_for(edge)  # a connect() session's: it learns over the session's generations
    plan = Schedule(schedule, gamma, controller=controller)
    sides = pair(edge, cloud)  # who tokenizes, a shared vocabulary or a translation, the threads
    ids = sides.text.encode(prompt)
    settings = RoundSettings(rule=verify, rank_k=rank_k, temperature=temperature, top_k=top_k, top_p=top_p,
                             seed=seed, compile=compile, levers_off=off, vocab=sides.vocab,
                             max_len=len(ids) + max_new_tokens + plan.longest() + 1, lead=lead)
    with torch.inference_mode(), thread_cap(sides.run_threads):
        roles = sides.roles(settings, optimized, plan.widths())
        if depth:  # the cloud's rounds run on a worker thread (or pipelined across the link)
            roles.verifier = ahead_mod.pipelined(roles.verifier, sides.cloud_threads, sides.cloud_devices)
        plan.attach(roles.drafter)  # a per-token stop rule, for the schedules that have one
        try:
            clocks = Clocks(sides.edge_devices, sides.cloud_devices)
            out, rounds, ttft, stats = _run(roles, ids, max_new_tokens, plan, depth, clocks, hedge, hedge_len)
        finally:
            roles.verifier.close()
    metrics = _metrics(out, rounds, ttft, clocks, stats | ({"lead": True} if lead else {}))
    return Generation(tokens=out, text=sides.text.decode(out), metrics=metrics,
                      trace=rounds.accepted, drafted_trace=rounds.drafted)


def _run(roles: Roles, ids: list[int], max_new_tokens: int, plan: Schedule, depth: int,
         clocks: Clocks, hedge: int = 0,
         hedge_len: int | None = None) -> tuple[list[int], Rounds, float, dict[str, Any]]:
    """The timed part: both sides take the prompt, then the rounds. Returns (new tokens, the rounds, time to
    the first token, the roles' own metrics)."""
    drafter, verifier = roles.drafter, roles.verifier
    with clocks.wall:  # prefill: each side takes the prompt
        with clocks.draft:
            drafter.begin(ids, roles.drafter_settings)
        with clocks.verify:
            verifier.begin(ids, roles.verifier_settings)
    extra: dict[str, Any] = {}
    with no_compiling(*roles.steps()):
        if depth:
            out, trace, drafted_trace, ttft, done = ahead_mod.loop(
                drafter, verifier, ids, max_new_tokens, plan, depth, clocks.wall, clocks.draft, hedge, hedge_len)
            extra = {"ahead": depth, "hedge": hedge, "hedge_len": hedge_len or 0} | vars(done)
            verifier.stop()  # rounds still in flight are not waited for; the stats hold still
        else:
            out, trace, drafted_trace, ttft = _loop(drafter, verifier, ids, max_new_tokens, plan, clocks)
    stats = _merge_stats(drafter.stats(), verifier.stats())
    if depth:
        clocks.verify.total += stats.pop("verify_busy_s", 0.0)  # the cloud's time on its thread
    return out, Rounds(trace, drafted_trace), ttft, extra | stats


def _merge_stats(*parts: dict[str, Any]) -> dict[str, Any]:
    """The roles' own metrics in one dict; a figure both report (e.g. ``compile_s``) is summed."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            merged[key] = merged[key] + value if key in merged else value
    return merged


def _metrics(out: list[int], rounds: Rounds, ttft: float, clocks: Clocks, stats: dict[str, Any]) -> dict[str, Any]:
    """A speculative generation's metrics: :func:`summarize`'s, ``edge_idle_share``, then the roles' own."""
    wall, draft = clocks.wall.total, clocks.draft.total
    rejected = sum(n < g for n, g in zip(rounds.accepted, rounds.drafted))
    return summarize(
        new_tokens=len(out), wall_s=wall, ttft_s=ttft, rounds=len(rounds.accepted), drafted=sum(rounds.drafted),
        accepted=sum(rounds.accepted), rejected_rounds=rejected, cloud_calls=stats.pop("cloud_calls", 0),
        edge_calls=stats.pop("edge_calls", 0), draft_s=draft, verify_s=clocks.verify.total,
        peak_mem_bytes=clocks.peak_memory(), compile_s=stats.pop("compile_s", 0.0),
    ) | {"edge_idle_share": 1 - draft / wall if wall > 0 else None} | stats


def _loop(drafter: Drafter, verifier: Verifier, ids: list[int], max_new_tokens: int, plan: Schedule,
          clocks: Clocks) -> tuple[list[int], list[int], list[int], float]:
    """Rounds until EOS or ``max_new_tokens``: (new tokens, accepted per round, drafted per round, ttft)."""
    eos = verifier.eos_ids
    seq = list(ids)
    out: list[int] = []
    accepted_per_round: list[int] = []
    drafted_per_round: list[int] = []
    ttft = None
    draft_clock, verify_clock = clocks.draft, clocks.verify
    while len(out) < max_new_tokens and not (out and out[-1] in eos):
        with clocks.wall:
            g = min(plan.next(), max_new_tokens - len(out) - 1)  # never emit past max_new_tokens
            d0, v0 = draft_clock.total, verify_clock.total
            emitted, g, n = speculative_round(drafter, verifier, seq, g, draft_clock, verify_clock)
            seq.extend(emitted)
            out.extend(emitted)
            accepted_per_round.append(n)
            drafted_per_round.append(g)
            plan.update(g, n, draft_clock.total - d0, verify_clock.total - v0)
        if ttft is None:
            ttft = clocks.wall.total
    return out[:max_new_tokens], accepted_per_round, drafted_per_round, ttft or 0.0
