"""The edge and the cloud of one speculative run: checked, and turned into the two roles, here only.

Before a round runs, the pair decides which side reads the prompt (the cloud's tokenizer, or the edge's
when the cloud is not loaded here), whether the two share one tokenizer (then both emit the smaller of
their two vocabularies, :func:`specnb.models.check_pair`) or the edge drafts through a translation
(:mod:`specnb.decode.translate`), how many CPU threads the run and the edge's calls get
(:func:`thread_plan`), and the drafter and verifier the round drives (:func:`as_drafter`,
:func:`as_verifier`: an object that already is a role is used as is, a loaded model becomes the
in-process role, an object with a ``drafter(settings)`` / ``verifier(settings)`` factory, a remote
cloud, builds one for this generation).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from ..models import LoadedModel, check_pair, same_tokenizer
from .drafting import EdgeDrafter
from .roles import Drafter, RoundSettings, Verifier
from .steps import Steps
from .translate import translating
from .verifying import CloudVerifier


def has_tokenizer(side: Any) -> bool:
    """A loaded model or a remote cloud: a tokenizer and the number of ids it may emit."""
    return hasattr(side, "tokenizer") and hasattr(side, "vocab_size")


def translates(edge: Any, cloud: Any) -> bool:
    """The edge is a model with another tokenizer than the cloud's: it drafts through a translation. A
    drafter passed as is (already a :class:`Drafter`) is never wrapped."""
    return isinstance(edge, LoadedModel) and has_tokenizer(cloud) and not same_tokenizer(edge, cloud)


def thread_plan(edge: Any, cloud: Any) -> tuple[int | None, int | None]:
    """CPU thread caps for a two-model run: (for the whole run, for the edge's calls inside it).

    torch's thread count is process-wide and changing it rebuilds the thread pools (milliseconds
    on a small CPU, more than a small model's step: docs/numbers.md, "Threads"). So
    when the cloud runs on an accelerator (or elsewhere) the edge's cap holds for the whole run
    and nothing switches per round; only when both models share the CPU with different caps does
    the count switch around each draft phase (:class:`~specnb.decode.drafting.EdgeDrafter` caps its own
    calls), and that cost lands in ``draft_s`` where it belongs. A drafter without a model
    (:class:`~specnb.decode.lookup.PromptLookup`) has no cap.
    """
    e_threads = edge.spec.threads if isinstance(edge, LoadedModel) else None
    if not (isinstance(cloud, LoadedModel) and cloud.device.type == "cpu"):
        return e_threads, None
    return cloud.spec.threads, e_threads


def _devices(side: Any) -> tuple[torch.device, ...]:
    device = getattr(side, "device", None)
    return (device,) if isinstance(device, torch.device) else ()


@dataclass
class Roles:
    """The drafter and the verifier of one generation, each with the settings it was built for."""

    drafter: Drafter
    verifier: Verifier
    drafter_settings: RoundSettings
    verifier_settings: RoundSettings

    def steps(self) -> list[Steps]:
        """The in-process roles' model steps (a timed loop must not compile new graphs for them)."""
        found = (getattr(self.drafter, "steps", None), getattr(self.verifier, "steps", None))
        return [s for s in found if isinstance(s, Steps)]


@dataclass(frozen=True)
class Pair:
    """An edge and a cloud, checked for one speculative run (:func:`pair`)."""

    edge: Any
    cloud: Any
    text: Any  # the side whose tokenizer reads the prompt and writes the output
    translate: bool  # the edge drafts through a translation into the cloud's ids
    vocab: int  # the ids both sides may emit (0: each side's own)
    run_threads: int | None  # the CPU thread cap of the whole run (thread_plan)
    cloud_threads: int | None  # the cap of a worker thread verifying in this process (None: not on this CPU)
    edge_devices: tuple[torch.device, ...]
    cloud_devices: tuple[torch.device, ...]

    def roles(self, settings: RoundSettings, optimized: bool | str, widths: tuple[int, ...]) -> Roles:
        """The drafter and verifier for ``settings``; ``optimized`` (True, ``"edge"``, ``"cloud"``) gives a
        side the optimized set-up, and an optimized cloud pads its verification input to ``widths``."""
        c_opt = optimized in (True, "cloud")
        e_settings = replace(settings, optimized=optimized in (True, "edge"))
        c_settings = replace(settings, optimized=c_opt, widths=widths if c_opt else ())
        drafter = (translating(self.edge, self.cloud, e_settings) if self.translate
                   else as_drafter(self.edge, e_settings))
        return Roles(drafter, as_verifier(self.cloud, c_settings), e_settings, c_settings)


def pair(edge: Any, cloud: Any) -> Pair:
    """Check ``edge`` and ``cloud`` for one run: one side must tokenize; two sides that do share a tokenizer
    (:func:`~specnb.models.check_pair` names the tokens that differ) unless the edge translates."""
    text = next((s for s in (cloud, edge) if hasattr(s, "encode") and hasattr(s, "decode")), None)
    if text is None:
        raise TypeError("speculative needs a tokenizer on one side: pass a loaded model (specnb.load) as edge or cloud")
    translate = translates(edge, cloud)
    vocab = check_pair(edge, cloud) if has_tokenizer(edge) and has_tokenizer(cloud) and not translate else 0
    run_threads = thread_plan(edge, cloud)[0]
    in_process_cpu = isinstance(cloud, LoadedModel) and cloud.device.type == "cpu"
    return Pair(edge, cloud, text, translate, vocab, run_threads, run_threads if in_process_cpu else None,
                _devices(edge), _devices(cloud))


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
