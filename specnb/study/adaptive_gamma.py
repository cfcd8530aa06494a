"""The adaptive-gamma table (docs/adaptive-gamma.md): fixed gammas beside the draft-length schedules, per link, as a ratio to the best fixed.

:func:`gamma_table` runs, interleaved (per repetition and prompt: the links in a shuffled order, on each
the variants in a shuffled order), edge-cloud speculation at every fixed gamma and every schedule of
``schedules`` over each link, and checks every output against the cloud's own greedy decoding of the
prompt. The ``adaptive`` schedule gets one :class:`~specnb.decode.adaptive.Controller` per link, carried
over the prompts and repetitions of the run (as a deployment would keep one per edge-cloud connection);
it starts fresh, so its learning is inside the measurement. :func:`summary` gives each variant's speed
over the best fixed gamma of that link (chosen after the fact) with the paired bootstrap interval
(:func:`specnb.study.rtt.against_best_fixed`), and :func:`markdown` the table of docs/adaptive-gamma.md.

:func:`changing_link` is the link whose RTT changes during a generation: 5 ms, then 50 ms, then 20 ms
(the example of docs/adaptive-gamma.md), with stage starts placed so that each stage carries about a third of a 64-token
generation at the best fixed gamma (measured: ~200 tokens/s at 5 ms, ~75 at 50 ms). :func:`handover_link`
changes from 1 ms to 300 ms: stages whose best fixed gammas differ (12 and 24).
"""

from __future__ import annotations

import random
from typing import Any, Callable

import pandas as pd

from ..decode.adaptive import Controller
from ..decode.loops import autoregressive, speculative
from ..link.client import RemoteCloud
from ..link.emulate import Link
from ..link.profile import LinkProfile
from .rtt import _row, against_best_fixed

# (schedule, gamma: its cap, or the heuristic's start): cost, heuristic and confidence as in docs/adaptive-gamma.md's table;
# adaptive may draft up to 32 on easy text (the controller sets the length below the cap), so the fixed
# gammas include 24 to show that a fixed long draft does not pay
SCHEDULES = (("cost", 16), ("heuristic", 4), ("confidence", 16), ("adaptive", 32))
GAMMAS = (4, 8, 12, 16, 24)


def changing_link(bandwidth_mbps: float | None = 100) -> LinkProfile:
    """5 ms for the first 0.1 s of a generation, 50 ms until 0.45 s, then 20 ms (restarting per generation)."""
    return LinkProfile.steps([(0, Link(5, bandwidth_mbps)), (0.1, Link(50, bandwidth_mbps)), (0.45, Link(20, bandwidth_mbps))],
                             by="s", label="5->50->20 ms at 0.1/0.45 s")


def handover_link(bandwidth_mbps: float | None = 100) -> LinkProfile:
    """1 ms for the first 0.15 s of a generation (an edge next to its cloud), then 300 ms (a far or congested
    path), restarting per generation: a link whose stages' best gammas lie far apart.

    Measured on the embedded pair (2026-12-05, 4 prompts x 96 tokens, fixed links): the best fixed gamma is
    12 at 1 ms, where 24 runs at 0.78x of it, and 24 at 300 ms, where 12 runs at 0.88x; g16 is 0.89-0.90x at
    both. On the 5->50->20 ms link (:func:`changing_link`), by contrast, one gamma (12) is within 1% of the best at every
    stage, so no schedule can gain much there. 0.15 s at 1 ms carries about half of a 64-token generation."""
    return LinkProfile.steps([(0, Link(1, bandwidth_mbps)), (0.15, Link(300, bandwidth_mbps))],
                             by="s", label="1->300 ms at 0.15 s")


def gamma_table(edge: Any, cloud: RemoteCloud, prompts: list, *, links: tuple = (5, 20, 50), gammas=GAMMAS,
                schedules: tuple[tuple[str, int], ...] = SCHEDULES, max_new_tokens: int = 64,
                bandwidth_mbps: float | None = 100, reps: int = 2, seed: int = 0,
                progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """One row per generation (greedy), as :func:`specnb.study.rtt.link_grid`'s rows (method ``edge_cloud`` at a
    fixed gamma, ``edge_cloud:<schedule>`` for a schedule), plus ``identical``: the tokens equal the cloud's
    greedy decoding. ``links``: RTTs in ms or :class:`LinkProfile` s. ``prompts``: texts or token ids."""
    order = random.Random(seed)
    reference = [autoregressive(cloud.with_link(Link()), p, max_new_tokens).tokens for p in prompts]
    controllers: dict[str, Controller] = {}
    rows: list[dict] = []
    for rep in range(reps):
        for pi, prompt in enumerate(prompts):
            for link in order.sample(list(links), len(links)):
                changing = isinstance(link, LinkProfile)
                name = link.label if changing else link
                remote = cloud.with_link(link.with_seed(seed + rep) if changing else Link(link, bandwidth_mbps, seed=seed + rep))
                if str(name) not in controllers:
                    controllers[str(name)] = Controller()
                ctl = controllers[str(name)]
                runs = [("edge_cloud", g, "constant") for g in gammas] + [(f"edge_cloud:{s}", g, s) for s, g in schedules]
                for method, g, schedule in order.sample(runs, len(runs)):
                    out = speculative(edge, remote, prompt, max_new_tokens, gamma=g, schedule=schedule,
                                      controller=ctl if schedule == "adaptive" else None)
                    rows.append(_row(out, method, g, name, rep, pi) | {"identical": list(out.tokens) == list(reference[pi])})
            if progress:
                progress(f"rep {rep + 1}/{reps}, prompt {pi + 1}/{len(prompts)} done")
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per link and variant: tokens/s, ratio to the best fixed gamma with its 95% interval, drafted lengths,
    and whether every output was identical to the cloud's greedy one."""
    s = against_best_fixed(df)
    same = df.groupby([df.rtt_ms.astype(str), "method", "gamma"]).identical.all()
    s["identical"] = [bool(same[(str(r.link), r.method, r.gamma)]) for r in s.itertuples()]
    return s


def _label(method: str, gamma: int) -> str:
    return f"g{gamma}" if method == "edge_cloud" else method.split(":", 1)[1]


def markdown(s: pd.DataFrame) -> str:
    """The table of docs/adaptive-gamma.md: per link, tokens/s of the best fixed gamma, then each variant's ratio to it [95% interval],
    and the adaptive schedule's drafted length per round (mean, p10-p90)."""
    cols = list(dict.fromkeys(_label(m, g) for m, g in zip(s.method, s.gamma)))
    fixed = sorted((c for c in cols if c.startswith("g")), key=lambda c: int(c[1:]))
    cols = fixed + [c for c in cols if not c.startswith("g")]
    lines = ["| link | best fixed (tok/s) | " + " | ".join(cols) + " | adaptive drafted / round (mean, p10-p90) |",
             "|---" * (len(cols) + 3) + "|"]
    for link, part in s.groupby(s.link.astype(str), sort=False):
        by = {_label(r.method, r.gamma): r for r in part.itertuples()}
        best = by[f"g{part.best_fixed_gamma.iloc[0]}"]
        cells = [f"{by[c].vs_best_fixed:.2f} [{by[c].low:.2f}, {by[c].high:.2f}]" if c in by else "" for c in cols]
        ad = by.get("adaptive")
        drafted = f"{ad.drafted_mean:.1f}, {ad.drafted_p10:g}-{ad.drafted_p90:g}" if ad is not None else ""
        name = f"{link} ms" if not isinstance(link, str) or link.replace(".", "").isdigit() else link
        lines.append(f"| {name} | g{best.gamma} ({best.tokens_per_s:.0f}) | " + " | ".join(cells) + f" | {drafted} |")
    return "\n".join(lines)


def stage_shares(df: pd.DataFrame, link: str) -> dict[int, float]:
    """Share of the rounds over the changing link ``link`` (its label) by the delay each round met, in ms
    (rounded; a round that straddles a change shows a value between two stages)."""
    delays = [round(s * 1e3) for v in df[df.rtt_ms.astype(str) == link].round_emulated_s for s in (v or ())]
    return {d: round(delays.count(d) / len(delays), 3) for d in sorted(set(delays))} if delays else {}
