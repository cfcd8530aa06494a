"""How ``specnb bench`` times its variants: warm-ups under the shared lock, interleaved repetitions
in one timed section with clock probes, and one instrumented pass for the share of time in the models."""

from __future__ import annotations

import time
from typing import Any

from torch._dynamo.utils import counters

from ..decode.steps import room_for_graphs
from ..study.demo import quiet_hf_internal_warnings
from ..measure.metrics import synchronize
from ..models import LoadedModel
from ..measure.timing import Section, rotated_reps, setup_section, timed_section
from .variants import Variant, variants


def _timed_pass(m: Variant, prompts: list[list[int]]) -> None:
    """One repetition of ``m`` over every prompt, in order: one row of its table."""
    row = []
    for p in prompts:
        g = m.run(p)
        row.append((g.metrics["new_tokens"], g.metrics["wall_s"]))
        m.accepted += g.metrics.get("accepted") or 0
        m.drafted += g.metrics.get("drafted") or 0
        m.rejected_rounds += g.metrics.get("rejected_rounds") or 0
        m.rounds += g.metrics.get("rounds") or 0
        m.verify_s += g.metrics.get("verify_s") or 0.0
    m.table.append(row)


class ForwardTimer:
    """Wall time inside the forward calls of some models (hooks; synchronizes CUDA at both ends)."""

    def __init__(self, models: list[LoadedModel]):
        self.total = 0.0
        self._t0 = 0.0
        self._depth = 0
        self._handles = []
        self._devices = [m.device for m in models]
        for m in models:
            self._handles.append(m.model.register_forward_pre_hook(self._pre))
            self._handles.append(m.model.register_forward_hook(self._post))

    def _pre(self, *_: Any) -> None:
        if self._depth == 0:
            synchronize(*self._devices)
            self._t0 = time.perf_counter()
        self._depth += 1

    def _post(self, *_: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            synchronize(*self._devices)
            self.total += time.perf_counter() - self._t0

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _model_share(m: Variant, models: list[LoadedModel], prompts: list[list[int]]) -> float:
    timer = ForwardTimer(models)
    wall = 0.0
    try:
        for p in prompts:
            wall += m.run(p).metrics["wall_s"]
    finally:
        timer.close()
    return timer.total / wall if wall else float("nan")


def timed_reps(ms: list[Variant], prompts: list[list[int]], reps: int, section: Section) -> None:
    """``reps`` interleaved repetitions (method order rotated each time), a clock probe between them."""
    for _, order in rotated_reps(section, reps, ms):
        for m in order:
            _timed_pass(m, prompts)


def measure(edge: LoadedModel, cloud: LoadedModel, prompts: list[list[int]], n: int, gammas: list[int], reps: int,
            lever_gamma: int | None = None, extra: list[Variant] | None = None) -> tuple[list[Variant], int, dict[str, Any]]:
    """Warm up, then ``reps`` interleaved timed repetitions and one instrumented repetition, all in
    one timed section (the machine-wide lock, clock probes).

    Returns the methods, the number of graphs torch compiled during the timed repetitions (0
    unless some method compiled on the clock) and the timed section's record.
    """
    ms = variants(edge, cloud, n, gammas, lever_gamma) + list(extra or [])
    with room_for_graphs(), quiet_hf_internal_warnings():  # HF's compiled peer compiles in its warm-up
        with setup_section():  # warm-up (first-call allocations, compile, caches): never while another run is timed
            for m in ms:
                for p in prompts if m.warm_all else prompts[:1]:
                    m.run(p)
        with timed_section() as section:
            graphs = counters["stats"]["unique_graphs"]
            timed_reps(ms, prompts, reps, section)
            graphs = counters["stats"]["unique_graphs"] - graphs
            section.probe("instrumented")
            for m in ms:
                # compiled steps call the model's forward directly, past the module hooks that time it,
                # so the share is only measured where every call goes through the module
                if not m.optimized and m.method != "cloud_optimized":
                    m.model_share = _model_share(m, [edge, cloud], prompts)
    return ms, graphs, section.info
