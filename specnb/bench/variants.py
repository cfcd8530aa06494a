"""What ``specnb bench`` times: each variant names the registry method (or Hugging Face peer) it is
a variant of, with its gamma, schedule, set-up or lever, and keeps its timed table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..decode.adaptive import Controller
from ..decode.loops import speculative
from ..measure.metrics import Generation
from ..models import LoadedModel
from ..decode.lookup import MAX_NGRAM
from ..decode.hf_reference import hf_prompt_lookup
from ..study.methods import METHODS
from ..study.params import MethodParams

ADAPTIVE = ("heuristic", "cost", "adaptive")  # the schedules bench times beside the fixed gammas


PEERS = {"hf_prompt_lookup": "prompt_lookup"}  # Hugging Face's own loop for a registry method -> that method


@dataclass
class Variant:
    """One timed variant of a registry method (:data:`specnb.study.methods.METHODS`: a gamma, a schedule,
    a set-up, a lever off), or of a Hugging Face peer of one (:data:`PEERS`)."""

    label: str
    method: str  # a registry method's name, or a key of PEERS
    run: Callable[[str], Generation]
    gamma: int | None = None
    schedule: str | None = None
    optimized: bool = False
    lever: str | None = None  # set on the lever-table variants
    warm_all: bool = False  # compiles on first use of each shape: warm up on every prompt
    table: list[list[tuple[int, float]]] = field(default_factory=list)  # [reps][prompts] = (new tokens, seconds)
    accepted: int = 0
    drafted: int = 0
    rejected_rounds: int = 0
    rounds: int = 0
    verify_s: float = 0.0
    model_share: float | None = None

    def __post_init__(self):
        if self.method not in METHODS and self.method not in PEERS:
            raise ValueError(f"bench variant {self.label!r}: {self.method!r} is neither a registry method "
                             f"({', '.join(METHODS)}) nor a peer ({', '.join(PEERS)})")

    @property
    def tokens_per_s(self) -> float:
        """All new tokens over all seconds of the timed repetitions."""
        t = np.asarray(self.table, dtype=float)
        return float(t[..., 0].sum() / t[..., 1].sum())

    @property
    def rep_tokens_per_s(self) -> list[float]:
        """Tokens/s of each repetition (all its prompts)."""
        return [sum(n for n, _ in rep) / sum(s for _, s in rep) for rep in self.table]


# lever-table variants of the plain loop: label suffix -> speculative() keyword arguments
LEVER_VARIANTS = {
    "edge compiled": {"optimized": "edge"},
    "cloud compiled": {"optimized": "cloud"},
    "-logits_to_keep": {"levers_off": ("logits_to_keep",)},
    "-one_sync": {"levers_off": ("one_sync",)},
    "-crop": {"levers_off": ("crop",)},
    "ahead": {"ahead": True},  # drafting ahead while the cloud verifies on a second thread (specnb.decode.ahead)
}


def _registry(method: str, edge: LoadedModel, cloud: LoadedModel, n: int, **params) -> Callable[[str], Generation]:
    """What a grid cell of the registry ``method`` runs (:data:`specnb.study.methods.METHODS`), greedy, for
    ``n`` new tokens; ``params``: its :class:`~specnb.study.params.MethodParams` (gamma, schedule, optimized)."""
    decode = METHODS[method].build({"edge": edge, "cloud": cloud}, MethodParams(**params))
    return lambda p: decode(p, n)


def variants(edge: LoadedModel, cloud: LoadedModel, n: int, gammas: list[int], lever_gamma: int | None = None) -> list[Variant]:
    """Every variant the benchmark compares, as closures over one prompt; each names its registry method and,
    where a grid cell can run it, runs what the registry builds. By hand: Hugging Face's prompt lookup (a
    peer, no registry method), the adaptive schedule (a cell primes its controller with the pair's record,
    the bench's learns from nothing over its runs) and the lever variants (settings no cell takes)."""
    def cell(method: str, **params) -> Callable[[str], Generation]:
        return _registry(method, edge, cloud, n, **params)

    out = [
        Variant("cloud", "cloud", cell("cloud")),
        Variant("cloud_optimized", "cloud_optimized", cell("cloud_optimized")),
        Variant("edge", "edge", cell("edge")),
    ]
    for g in gammas:
        out.append(Variant(f"speculative g={g}", "speculative", cell("speculative", gamma=g), g, "constant"))
        out.append(Variant(f"spec+opt g={g}", "speculative", cell("speculative", gamma=g, optimized=True), g, "constant", optimized=True))
        out.append(Variant(f"hf_assisted g={g}", "hf_assisted", cell("hf_assisted", gamma=g), g))
        out.append(Variant(f"hf+static g={g}", "hf_assisted", cell("hf_assisted", gamma=g, optimized=True),
                          g, optimized=True, warm_all=True))
        # no edge model: prompt lookup drafts from the prompt and the output so far; both plain (eager, dynamic cache)
        out.append(Variant(f"prompt_lookup g={g}", "prompt_lookup", cell("prompt_lookup", gamma=g), g, "constant"))
        out.append(Variant(f"hf_prompt_lookup g={g}", "hf_prompt_lookup",
                          lambda p, g=g: hf_prompt_lookup(cloud, p, n, gamma=g, max_ngram=MAX_NGRAM), g))
    top = max(gammas)
    for rule in ADAPTIVE:
        start = 4 if rule == "heuristic" else max(top, 8)
        if rule == "adaptive":
            ctl = Controller()  # one for the variant's runs: it learns across them
            run = lambda p, s=start, c=ctl: speculative(edge, cloud, p, n, gamma=s, schedule="adaptive", controller=c)  # noqa: E731
        else:
            run = cell("speculative", gamma=start, schedule=rule)
        out.append(Variant(f"speculative {rule}", "speculative", run, start, rule))
    if lever_gamma is not None:
        g = lever_gamma
        if g not in gammas:
            out.append(Variant(f"speculative g={g}", "speculative", cell("speculative", gamma=g), g, "constant"))
        for name, kw in LEVER_VARIANTS.items():
            out.append(Variant(f"speculative g={g} {name}", "speculative", lambda p, kw=kw: speculative(edge, cloud, p, n, gamma=g, **kw),
                              g, "constant", optimized="optimized" in kw, lever=name))
    return out
