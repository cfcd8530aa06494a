"""The one registry of methods: each method declared once, everything else derives from it.

A :class:`Method` says which notebook runs it, which models (roles) it loads, which parameters
change what it runs (beyond the workload and its roles' model settings), its labels in English
and 中文, its set-up class (``plain`` / ``optimized``, the fairness rule compares like with
like), whether its output is the cloud's, what drafts for it and which verification rules it
allows (a combination it does not allow fails at validation, before a model loads), and how it
decodes one prompt. Parameter validation
and grid de-duplication (:mod:`specnb.study.params`), dispatch (:mod:`specnb.study.experiment`), the
report's labels and references (:mod:`specnb.report.frame`), its audit (:mod:`specnb.report.fairness`), plots and findings read it.

Adding a method = one :data:`METHODS` entry + one notebook (copy the nearest one, change
``METHOD``). Adding a parameter a method uses = one field of :class:`specnb.study.params.MethodParams`,
its name in the method's ``fields`` here, and its line in the method notebooks' parameters cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..decode.adaptive import STOPPING
from ..decode.loops import VERIFY_RULES

COMMON_FIELDS = frozenset({"dtype", "prompts", "num_prompts", "chat_template", "max_new_tokens", "temperature", "seed",
                           "warmup", "reps"})
ROLE_FIELDS = {role: frozenset({f"{role}_model", f"{role}_device", f"{role}_threads", f"{role}_dtype"})
               for role in ("edge", "cloud")}

Decode = Callable[[str | list[int], int], Any]  # (prompt: text or token ids, max_new_tokens) -> Generation
WARMUP_TOKENS = 8  # new tokens of the untimed warm-up generation before a method is timed (compiles, first-call allocations)


@dataclass(frozen=True)
class Method:
    """One method of the study (see the module doc)."""

    name: str
    notebook: str
    roles: tuple[str, ...]  # models it loads
    fields: frozenset[str]  # parameters that change what it runs, beyond COMMON_FIELDS and its roles'
    label: str
    label_zh: str
    build: Callable[[dict[str, Any], Any], Decode]  # (loaded models by role, MethodParams) -> decode
    reference_of: str | None = None  # the set-up class it is the baseline of, if any
    fixed_setup: str | None = None  # its set-up class when no parameter chooses it
    same_output: bool = True  # reproduces the cloud's output (greedy: token for token)
    warm_all_prompts: Callable[[Any], bool] = lambda p: False  # compiles per prompt shape: warm them all up
    drafter: str | None = None  # what proposes the tokens the cloud verifies ("edge model", "prompt lookup")
    verify_rules: tuple[str, ...] = ()  # the verification rules it allows (when ``verify`` is one of its fields)
    rules_why: str = ""  # why some rules are not allowed, for the error

    @property
    def relevant_fields(self) -> frozenset[str]:
        """Every parameter that changes what this method runs (grid cells differing elsewhere are one run)."""
        return COMMON_FIELDS | self.fields | frozenset().union(*(ROLE_FIELDS[r] for r in self.roles))

    def setup(self, settings: dict[str, Any]) -> str:
        """``plain`` (eager, dynamic caches) or ``optimized`` (static caches, compiled steps)."""
        if self.fixed_setup is not None:
            return self.fixed_setup
        opt = settings.get("optimized") or False
        if opt is False:
            return "plain"
        if opt is not True:
            return f"{opt} optimized only"
        return "optimized" if settings.get("compile_steps") is not False else "optimized, not compiled"

    def problems(self, settings: dict[str, Any]) -> list[str]:
        """What in ``settings`` this method cannot run (empty: nothing), each naming the fix."""
        rule = settings.get("verify")
        if "verify" in self.fields and rule is not None and rule not in self.verify_rules:
            return [f"verify: {rule!r} is not a rule of {self.name} ({self.rules_why}); "
                    f"use verify = {' or '.join(self.verify_rules)}"]
        if "ahead" in self.fields and settings.get("ahead") and settings.get("schedule") in STOPPING:
            return [f"ahead: drafting ahead does not combine with schedule {settings['schedule']!r} yet; "
                    "use schedule = constant, heuristic or cost with ahead, or ahead = 0"]
        return []

    def reproduces_cloud(self, settings: dict[str, Any]) -> bool:
        """Whether its output is the cloud's (False for another model, or a lossy rule)."""
        return self.same_output and not ("verify" in self.fields and settings.get("verify") == "rank")


# ---------------------------------------------------------------------------- how each method decodes

def _common(p: Any) -> dict[str, Any]:
    return {"temperature": p.temperature, "seed": p.seed}


def _edge(m: dict[str, Any], p: Any) -> Decode:
    from ..decode.loops import autoregressive

    def run(prompt: str | list[int], n: int):
        g = autoregressive(m["edge"], prompt, n, **_common(p))
        g.metrics["edge_calls"], g.metrics["cloud_calls"] = g.metrics["cloud_calls"], 0  # the edge's calls
        return g
    return run


def _cloud(optimized: bool) -> Callable[[dict[str, Any], Any], Decode]:
    def build(m: dict[str, Any], p: Any) -> Decode:
        from ..decode.loops import autoregressive

        extra = {"optimized": True, "compile": p.compile_steps} if optimized else {}
        return lambda prompt, n: autoregressive(m["cloud"], prompt, n, **extra, **_common(p))
    return build


def _speculative(m: dict[str, Any], p: Any) -> Decode:
    from ..decode.adaptive import Controller, recorded_prior
    from ..decode.loops import speculative

    # one per cell: it learns over the cell's prompts, from the pair's record when there is one; the run saves it
    # beside its result (experiment.run)
    ctl = Controller(prior=recorded_prior(_name(m["edge"]), _name(m["cloud"]))) if p.schedule == "adaptive" else None

    def run(prompt: str | list[int], n: int):
        return speculative(m["edge"], m["cloud"], prompt, n, gamma=p.gamma, verify=p.verify, rank_k=p.rank_k,
                           schedule=p.schedule, optimized=p.optimized, compile=p.compile_steps, controller=ctl,
                           ahead=p.ahead, **_common(p))
    run.controller = ctl
    return run


def _name(model: Any) -> str:
    return str(getattr(getattr(model, "spec", None), "name_or_path", ""))


def _unmeasured(g: Any, *keys: str) -> Any:
    """Metrics a method cannot measure (Hugging Face's loop hides its draft / verify split): None, not 0."""
    for key in keys:
        g.metrics[key] = None
    return g


def _hf_assisted(m: dict[str, Any], p: Any) -> Decode:
    from ..decode.hf_reference import hf_assisted

    return lambda prompt, n: _unmeasured(hf_assisted(m["edge"], m["cloud"], prompt, n, gamma=p.gamma,
                                                     optimized=p.optimized, **_common(p)), "draft_s", "verify_s")


def _prompt_lookup(m: dict[str, Any], p: Any) -> Decode:
    from ..decode.loops import speculative
    from ..decode.lookup import PromptLookup

    return lambda prompt, n: speculative(PromptLookup(), m["cloud"], prompt, n,
                                         gamma=p.gamma, verify=p.verify, rank_k=p.rank_k, schedule=p.schedule,
                                         optimized=p.optimized, compile=p.compile_steps, ahead=p.ahead, **_common(p))


PAIR = frozenset({"gamma", "verify", "rank_k", "schedule", "ahead", "optimized", "compile_steps"})

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("edge", "edge_baseline.ipynb", ("edge",), frozenset(), "Edge baseline", "边缘基线", _edge,
           fixed_setup="plain", same_output=False),
    Method("cloud", "cloud_baseline.ipynb", ("cloud",), frozenset(), "Cloud baseline", "云端基线", _cloud(False),
           reference_of="plain", fixed_setup="plain"),
    Method("cloud_optimized", "cloud_optimized_baseline.ipynb", ("cloud",), frozenset({"compile_steps"}),
           "Cloud optimized", "云端优化基线", _cloud(True), reference_of="optimized", fixed_setup="optimized"),
    Method("speculative", "speculative.ipynb", ("edge", "cloud"), PAIR, "Speculative", "推测解码", _speculative,
           drafter="edge model", verify_rules=VERIFY_RULES),
    Method("hf_assisted", "hf_assisted.ipynb", ("edge", "cloud"), frozenset({"gamma", "optimized"}),
           "HF assisted", "HF 辅助生成", _hf_assisted, warm_all_prompts=lambda p: bool(p.optimized),
           drafter="edge model"),
    Method("prompt_lookup", "prompt_lookup.ipynb", ("cloud",), PAIR, "Prompt lookup",
           "提示词查找解码", _prompt_lookup, drafter="prompt lookup", verify_rules=("greedy", "rank"),
           rules_why="its n-gram drafts carry no probabilities to sample against"),
)}


@dataclass(frozen=True)
class LinkMethod:
    """One way to answer a prompt when the edge and the cloud are apart: the methods of the studies across
    the link (:mod:`specnb.study.rtt`, :mod:`specnb.study.adaptive_gamma`, :mod:`specnb.study.capacity`)."""

    name: str
    label: str
    label_zh: str
    round_trips: str  # how often it pays the link's round trip: "none", "once" (per generation), "every round"


LINK_METHODS: dict[str, LinkMethod] = {m.name: m for m in (
    LinkMethod("edge", "edge alone", "仅边缘", "none"),
    LinkMethod("cloud", "cloud-only streaming", "仅云端流式生成", "once"),
    LinkMethod("server_speculative", "server-side speculation", "服务器端推测解码", "once"),
    LinkMethod("edge_cloud", "edge-cloud speculation", "边缘–云端推测解码", "every round"),
)}


def get(name: str) -> Method:
    """The method called ``name``; one clear error naming the methods otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; methods: {', '.join(METHODS)}") from None


def drafting() -> tuple[str, ...]:
    """The methods with a drafter: those with an acceptance rate and accepted lengths to show."""
    return tuple(name for name, m in METHODS.items() if m.drafter)


def references() -> dict[str, str]:
    """Set-up class -> the baseline method speed-ups of that class are quoted against."""
    return {m.reference_of: m.name for m in METHODS.values() if m.reference_of}
