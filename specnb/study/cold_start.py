"""The cold-start table: the adaptive schedule from a cold start, a user's first generations in a fresh process.

:func:`cold_start` runs in a process that has just loaded the edge and connected: one warm-up generation at a
fixed gamma (the process's first-call costs, shared by every variant; it teaches no controller), then
generations 1..N on ``prompts`` (one each, in the order given), on each the fixed gammas and the adaptive
variants in a shuffled order, every output checked against the cloud's own greedy decoding. The adaptive
variants (:data:`VARIANTS`):

* ``default``: ``speculative(edge, cloud, ..., schedule="adaptive")`` with no ``controller=``, what a user
  writes: whatever controller the library gives that call;
* ``carried``: one ``Controller()`` (no prior) passed to every generation of the process, the way the
  adaptive-gamma study carries one.

The tool (``tools/adaptive_table.py --cold``) runs one fresh process per link and repetition, each with
its own rotation of the prompts (so no prompt is always generation 1); :func:`cold_summary` pools them: each
variant's speed over the best fixed gamma of the link (chosen after the fact over all generations) with the
paired bootstrap interval over prompts and processes, for generations 1..N and for windows of them.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import pandas as pd

from ..decode.adaptive import Controller
from ..decode.loops import autoregressive, speculative
from ..link.client import RemoteCloud
from ..link.emulate import Link
from ..measure.stats import ratio_interval
from .rtt import _entries, _row

VARIANTS = ("default", "carried")
GAMMAS = (8, 12, 16, 24)  # g4 was never the best fixed gamma on these links (docs/adaptive-gamma.md)
CAP = 32


def cold_start(edge: Any, cloud: RemoteCloud, prompts: list, link: Any, *, name: str, proc: int,
               prompt_ids: list[int] | None = None, gammas=GAMMAS, variants: tuple[str, ...] = VARIANTS,
               cap: int = CAP, max_new_tokens: int = 64, seed: int = 0, warmup: str | list[int] | None = None,
               progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """One row per generation: ``prompts[i]`` is generation ``i + 1`` of this process (``prompt_ids[i]``: its
    index in the prompt set, for the rows); ``link`` a :class:`Link` or a ``LinkProfile`` (``name``: its label in
    the rows); ``proc``: this process's index (the rows' ``rep``). Rows as :func:`specnb.study.rtt.link_grid`'s
    (method ``edge_cloud`` at a fixed gamma, ``edge_cloud:<variant>`` for an adaptive variant, ``gamma`` its cap),
    plus ``generation`` (1..N) and ``identical`` (the tokens equal the cloud's greedy decoding)."""
    order = random.Random(seed * 1000 + proc)
    plain = cloud.with_link(Link())
    reference = [autoregressive(plain, p, max_new_tokens).tokens for p in prompts]
    remote = cloud.with_link(link)
    if warmup is not None:  # the process's first generation: allocations, the server's first session
        speculative(edge, remote, warmup, 16, gamma=4)
    carried = Controller()
    ids = list(prompt_ids) if prompt_ids is not None else list(range(len(prompts)))
    runs = [("edge_cloud", g, None) for g in gammas] + [(f"edge_cloud:{v}", cap, v) for v in variants]
    rows = []
    for i, prompt in enumerate(prompts):
        for method, g, variant in order.sample(runs, len(runs)):
            kw = {} if variant is None else {"schedule": "adaptive"}
            if variant == "carried":
                kw["controller"] = carried
            out = speculative(edge, remote, prompt, max_new_tokens, gamma=g, **kw)
            rows.append(_row(out, method, g, name, proc, ids[i]) | {"generation": i + 1,
                                                                "identical": list(out.tokens) == list(reference[i])})
        if progress:
            progress(f"{name}, process {proc}: generation {i + 1}/{len(prompts)} done")
    df = pd.DataFrame(rows)
    # what the process's controllers ended with: the carried one, and those a connect() session kept, if any
    df.attrs["controllers"] = {"carried": carried} | {f"session-{k}": c for k, c in getattr(remote, "controllers", {}).items()}
    return df


def cold_summary(df: pd.DataFrame, windows: tuple[tuple[int, int], ...] | None = None) -> pd.DataFrame:
    """Per link, adaptive variant and window of generations (first, last; 1-based; default 1-3, 4-N and 1-N):
    speed over the best fixed gamma of the link (the fastest over all generations, chosen after the fact) with
    the paired bootstrap 95% interval over processes and generations; the best fixed gamma's speed; drafted
    length per round (mean); whether every output of both was the cloud's greedy one."""
    n = int(df.generation.max())
    windows = windows or tuple(w for w in ((1, min(3, n)), (4, n), (1, n)) if w[0] <= w[1])
    out = []
    links = df.rtt_ms.astype(str)
    for link in sorted(links.unique(), key=lambda x: (0, float(x), "") if x.replace(".", "").isdigit() else (1, 0.0, x)):
        here = df[links == link]
        fixed = here[here.method == "edge_cloud"]
        speeds = fixed.groupby("gamma").apply(lambda x: x.new_tokens.sum() / x.wall_s.sum(), include_groups=False)
        best_g = int(speeds.idxmax())
        for first, last in windows:
            win = here[(here.generation >= first) & (here.generation <= last)]
            best = win[(win.method == "edge_cloud") & (win.gamma == best_g)]
            for method, part in win[win.method != "edge_cloud"].groupby("method", sort=False):
                iv = ratio_interval(_table(part), _table(best), paired_reps=True)
                lengths = [n for t in part.drafted for n in t]
                out.append({"link": link, "variant": method.split(":", 1)[1], "generations": f"{first}-{last}",
                            "vs_best_fixed": iv.value, "low": iv.low, "high": iv.high, "best_fixed_gamma": best_g,
                            "best_fixed_tokens_per_s": best.new_tokens.sum() / best.wall_s.sum(),
                            "tokens_per_s": part.new_tokens.sum() / part.wall_s.sum(),
                            "drafted_mean": sum(lengths) / len(lengths) if lengths else float("nan"),
                            "identical": bool(part.identical.all() and best.identical.all())})
    return pd.DataFrame(out)


def _table(part: pd.DataFrame) -> list[dict]:
    """Entries of :func:`specnb.measure.stats.ratio_interval` as [process, generation of the window]: each process
    ran every generation of the window once (on prompts that differ by process: the prompts rotate), and a
    variant is paired with the best fixed gamma on the same process and generation."""
    return _entries(part.assign(prompt=part.generation - part.generation.min()))


def cold_markdown(s: pd.DataFrame) -> str:
    """The table of docs/adaptive-gamma.md: per link and variant, the ratio [95% interval] per window."""
    windows = list(dict.fromkeys(s.generations))
    lines = ["| link | best fixed (tok/s) | adaptive | " + " | ".join(f"generations {w}" for w in windows)
             + " | drafted / round |", "|---" * (len(windows) + 4) + "|"]
    for (link, variant), part in s.groupby(["link", "variant"], sort=False):
        by = {r.generations: r for r in part.itertuples()}
        whole = by[windows[-1]]
        name = f"{link} ms" if link.replace(".", "").isdigit() else link
        cells = [f"{by[w].vs_best_fixed:.2f} [{by[w].low:.2f}, {by[w].high:.2f}]" for w in windows]
        lines.append(f"| {name} | g{whole.best_fixed_gamma} ({whole.best_fixed_tokens_per_s:.0f}) | {variant} | "
                     + " | ".join(cells) + f" | {whole.drafted_mean:.1f} |")
    return "\n".join(lines)
