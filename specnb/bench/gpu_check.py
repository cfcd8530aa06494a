"""``specnb gpu-check``: every CUDA code path of specnb, exercised in one go, into one JSON record.

The CUDA paths never run on the project's CPU machines, so this is the script to run the first
time a GPU is at hand (``tools/gpu_check.sh``; under 10 minutes on one GPU). Each step is a named
check with a status (pass / fail / skipped), its figures and its error text; one failing check
never stops the others, and the record is rewritten after every check, so a run cut short still
leaves what it measured. The checks, in order:

1. ``environment``: torch / CUDA versions, device name, compute capability, memory;
2. ``dtypes``: :func:`specnb.dtypes.check_supported` agrees with what actually runs (a forward
   pass of the embedded cloud in each dtype, finite logits);
3. ``timer``: :class:`specnb.measure.metrics.Stopwatch` waits for queued CUDA work (a big matmul timed
   with and without it; the synchronized time must be long enough to be real);
4. ``peak_memory``: the recorded peak is > 0, holds the weights, excludes an allocation freed
   before the run (the reset works) and is plausible for the model's size;
5. ``autoregressive``: plain and optimized (static cache, compiled step) on the device in each
   dtype, greedy outputs against the CPU float32 reference (agreement recorded, float32 required);
6. ``speculative``: edge on the CPU (thread cap set), cloud on the device (the study's split),
   plain and optimized, lossless against the cloud's own greedy decoding there; speed-ups recorded;
   sampling and rank verification run once each (CPU drafts meet device probabilities);
7. ``grid``: ``specnb grid params/gpu_check.yaml`` with the cloud on the device: every cell ok,
   the cloud recorded there, the fairness audit written;
8. ``bench``: ``specnb bench`` at small settings, cloud on the device: record written, nothing
   compiled while timing;
9. ``real_model``: SmolLM2-135M-Instruct (``registry:smollm2-135m-instruct``, trained weights, a real
   chat template) on the device: load times, greedy decoding of Spec-Bench questions in each dtype
   against the CPU float32 reference, the optimized set-up, and prompt-lookup speculation lossless
   against the device's own greedy output. Skipped, saying how to fetch it, when the model is not
   in the cache (``specnb models fetch smollm2-135m-instruct``: the check itself never downloads).

``--device cpu`` is the dry run: the same checks with the cloud on the CPU, for CI and for
checking the plumbing on a machine without a GPU; its figures say nothing about CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..measure import provenance
from ..measure.provenance import REPO_ROOT
from ..threads import cpu_name
from ..decode.loops import autoregressive, speculative
from ..dtypes import check_supported, native_bf16, parse_dtype
from ..measure.metrics import Stopwatch, first_divergence, peak_memory_bytes, synchronize
from ..models import LoadedModel, ModelSpec, load
from ..prompts import load_prompts

EDGE, CLOUD = "zoo:tiny-edge", "zoo:tiny-cloud"
REAL = "registry:smollm2-135m-instruct"  # the real model (fetched beforehand: the check never downloads)
REAL_PROMPTS = REPO_ROOT / "params" / "data" / "spec_bench" / "question.jsonl"
DEADLINE_S = 690  # the whole check, on one GPU: under the 12 minutes it promises
MIN_START_S = 20  # a check is skipped, not started, with less time than this left
# seconds each check may take on one GPU (compiles included); the dry run uses the same limits
BUDGET_S = {"environment": 30, "dtypes": 45, "timer": 30, "peak_memory": 45, "autoregressive": 180,
            "speculative": 150, "grid": 210, "bench": 180, "real_model": 200}
# what the grid and the bench import beyond the decoding core (the CLI loads every subcommand's module)
REQUIRES = {"grid": ("papermill", "nbconvert", "nbformat", "ipykernel", "pydantic", "yaml", "pandas", "matplotlib",
                     "seaborn", "tqdm"),
            "bench": ("pydantic", "yaml", "pandas", "numpy")}
FP32_AGREEMENT = 0.9  # float32 on the device must decode at least this share of tokens as the reference


class CheckFailed(AssertionError):
    """A check's condition does not hold; the message says what was expected and what came."""


class CheckSkipped(Exception):
    """A check cannot run here for a reason that is not a fault (its input is absent); the message says how to get it."""


class StepTimeout(Exception):
    """A check ran past its wall-time budget."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def note(fig: dict[str, Any], text: str) -> None:
    """A finding that is recorded, not failed (e.g. float16 decoding differently from float32)."""
    fig.setdefault("notes", []).append(text)


@dataclass
class Context:
    """What every check needs: the device under test, the small workload, shared loaded models."""

    device: torch.device  # the cloud's device: cuda, or cpu in the dry run
    out_dir: Path
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16")
    spec_dtypes: tuple[str, ...] = ("float32", "bfloat16")  # the cloud's; the edge stays float32 on the CPU
    edge_threads: int = 4
    num_prompts: int = 4
    max_new_tokens: int = 32
    gamma: int = 4
    matmul_size: int = 8192
    compile: bool | None = None  # None: specnb's per-device choice (compiled on CUDA)
    grid_params: Path = REPO_ROOT / "params" / "gpu_check.yaml"
    bench_dtype: str = "float32"
    real_prompts: int = 4  # Spec-Bench questions (spread over tasks), first turn, through the chat template
    real_optimized_dtypes: tuple[str, ...] = ("bfloat16",)  # each compiles the 30-layer step anew: one dtype
    python: str = sys.executable
    models: dict[tuple, LoadedModel] = field(default_factory=dict)
    reference: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def prompts(self) -> list[str]:
        return [p.text for p in load_prompts("builtin:code", limit=self.num_prompts)]

    def model(self, name: str, dtype: str, device: str | torch.device, threads: int | None = None) -> LoadedModel:
        """Load once per (name, dtype, device, threads): later checks reuse the compiled graphs."""
        key = (name, parse_dtype(dtype), str(device), threads)
        if key not in self.models:
            self.models[key] = load(ModelSpec(name, dtype=dtype, device=str(device), threads=threads))
        return self.models[key]

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# ---------------------------------------------------------------------------- running checks

@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`StepTimeout` in the block after ``seconds`` (main thread only; elsewhere no limit).

    A CUDA call in flight finishes first: the signal lands at the next Python instruction.
    """
    if seconds <= 0 or not hasattr(signal, "SIGALRM") or threading_is_not_main():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise StepTimeout(f"ran past its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def threading_is_not_main() -> bool:
    import threading

    return threading.current_thread() is not threading.main_thread()


def run_check(name: str, fn: Callable[[Context, dict], None], ctx: Context, budget_s: float,
              inject: bool = False) -> dict[str, Any]:
    """Run one check under its budget; never raises. ``inject`` fails it on purpose (tests)."""
    fig: dict[str, Any] = {}
    started = time.monotonic()
    status, error, tb = "pass", None, None
    try:
        with time_limit(budget_s):
            if inject:
                raise CheckFailed("injected failure (--fail): the other checks must still run")
            fn(ctx, fig)
    except CheckFailed as err:
        status, error = "fail", str(err)
    except CheckSkipped as err:
        status, error = "skipped", str(err)
    except StepTimeout as err:
        status, error = "fail", f"{name} {err}; the figures so far are kept"
    except Exception as err:  # noqa: BLE001 - any error is this check's result, not the run's end
        status, error = "fail", f"{type(err).__name__}: {err}"
        tb = traceback.format_exc(limit=-8)
    finally:
        _free(ctx.device)
    return {"name": name, "status": status, "seconds": round(time.monotonic() - started, 3),
            "budget_s": budget_s, "error": error, "traceback": tb, "figures": fig}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def skipped(name: str, why: str, budget_s: float) -> dict[str, Any]:
    return {"name": name, "status": "skipped", "seconds": 0.0, "budget_s": budget_s, "error": why,
            "traceback": None, "figures": {}}


# ---------------------------------------------------------------------------- 1-4: the device itself

def check_environment(ctx: Context, fig: dict) -> None:
    """Versions and the device: the context every other figure needs."""
    fig["torch"] = torch.__version__
    fig["sdpa_backends_at_start"] = provenance.sdpa_backends()
    fig["torch_cuda"] = torch.version.cuda
    fig["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    fig["versions"] = provenance.versions()
    fig["cpu"] = cpu_name()
    fig["cpu_count"] = os.cpu_count()
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        fig.update(device_name=props.name, capability=list(torch.cuda.get_device_capability(ctx.device)),
                   total_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                   device_count=torch.cuda.device_count(), matmul_tf32=torch.backends.cuda.matmul.allow_tf32)
        fig["summary"] = f"{props.name}, capability {fig['capability']}, torch {fig['torch']}, CUDA {fig['torch_cuda']}"
    else:
        fig["summary"] = f"dry run on the CPU ({fig['cpu']}), torch {fig['torch']}"


def check_dtypes(ctx: Context, fig: dict) -> None:
    """What :func:`check_supported` claims per dtype against a real forward pass in that dtype."""
    rows = {}
    for name in ctx.dtypes:
        row: dict[str, Any] = {}
        try:
            check_supported(name, ctx.device)
            row["claimed"] = True
        except ValueError as err:
            row["claimed"], row["claim_error"] = False, str(err)
        try:
            m = ctx.model(CLOUD, name, ctx.device)
            with torch.inference_mode():
                logits = m.model(input_ids=torch.tensor([m.encode(ctx.prompts[0])], device=ctx.device)).logits
            row["runs"] = bool(torch.isfinite(logits.float()).all())
            row["logits_dtype"] = str(logits.dtype).replace("torch.", "")
        except Exception as err:  # noqa: BLE001 - not running is the finding here
            row["runs"], row["run_error"] = False, f"{type(err).__name__}: {err}"
        # bfloat16 where it is only emulated runs, but is refused on purpose (timings of an emulation)
        row["expected"] = row["runs"] and (name != "bfloat16" or native_bf16(ctx.device))
        row["agree"] = row["claimed"] == row["expected"]
        rows[name] = row
    fig["dtypes"] = rows
    fig["native_bf16"] = native_bf16(ctx.device)
    if rows.get("bfloat16", {}).get("runs") and not fig["native_bf16"]:
        note(fig, "bfloat16 runs here, emulated (capability < 8.0); check_supported refuses it on purpose")
    bad = [n for n, r in rows.items() if not r["agree"]]
    require(not bad, f"check_supported disagrees with what runs for {', '.join(bad)}: {rows}")
    fig["summary"] = ", ".join(f"{n} {'runs' if r['runs'] else 'refused'}" for n, r in rows.items())


def check_timer(ctx: Context, fig: dict) -> None:
    """The Stopwatch must wait for queued work: timed without it, CUDA matmuls only measure their launch."""
    n, reps = ctx.matmul_size, 10
    a = torch.randn(n, n, device=ctx.device)
    b = torch.randn(n, n, device=ctx.device)
    for _ in range(2):  # warm-up: cuBLAS handles, the allocator
        a @ b
    synchronize(ctx.device)
    t0 = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    launch_s = time.perf_counter() - t0  # no synchronization: on CUDA only the launches
    synchronize(ctx.device)
    sw = Stopwatch(ctx.device)
    with sw:
        for _ in range(reps):
            c = a @ b
    del c
    tflops = 2 * n**3 * reps / sw.total / 1e12
    fig.update(matmul_size=n, reps=reps, unsynchronized_s=launch_s, synchronized_s=sw.total,
               ratio=sw.total / launch_s if launch_s > 0 else None, implied_tflops=tflops)
    require(sw.total > 0, "the Stopwatch measured no time")
    if ctx.cuda:
        # an H200 does ~70 TFLOP/s fp32 (~500 with TF32); an unsynchronized reading implies far more
        require(tflops < 2000, f"the synchronized time implies {tflops:.0f} TFLOP/s: Stopwatch did not wait for the GPU")
        require(sw.total > 3 * launch_s, f"synchronized {sw.total * 1e3:.2f} ms is not well above the launch-only "
                f"{launch_s * 1e3:.2f} ms: Stopwatch did not wait for the GPU")
    else:
        note(fig, "CPU: nothing runs asynchronously, both timings measure the work")
    fig["summary"] = f"{reps} matmuls {n}x{n}: {sw.total * 1e3:.1f} ms synchronized vs {launch_s * 1e3:.2f} ms launch-only"


def _weight_bytes(m: LoadedModel) -> int:
    return sum(p.numel() * p.element_size() for p in m.model.parameters())


def check_peak_memory(ctx: Context, fig: dict) -> None:
    """``peak_mem_bytes`` of a run: > 0, holds the weights, excludes a tensor freed before the run."""
    m = ctx.model(CLOUD, "float32", ctx.device)
    weights = _weight_bytes(m)
    prompt = ctx.prompts[0]
    autoregressive(m, prompt, ctx.max_new_tokens)  # warm-up: first-call allocations
    resident = torch.cuda.memory_allocated(ctx.device) if ctx.cuda else 0
    blob_bytes = (1 << 30) if ctx.cuda else (64 << 20)
    blob = torch.empty(blob_bytes, dtype=torch.uint8, device=ctx.device)
    blob.fill_(1)
    del blob  # the peak so far holds it; the run's reset must drop it
    peak = autoregressive(m, prompt, ctx.max_new_tokens).metrics["peak_mem_bytes"]
    fig.update(peak_mem_bytes=peak, weight_bytes=weights, resident_before_bytes=resident, freed_blob_bytes=blob_bytes,
               direct_reading=peak_memory_bytes(ctx.device))
    require(peak > 0, "peak_mem_bytes is 0")
    require(peak >= weights, f"peak {peak} B is below the model's own weights {weights} B")
    if ctx.cuda:
        work = peak - resident
        fig["working_bytes"] = work
        require(work < blob_bytes // 2, f"peak {peak} B includes the {blob_bytes} B tensor freed before the run: "
                "reset_peak_memory did not reset the CUDA peak")
        require(work < 256 << 20, f"the run's own memory {work / 2**20:.0f} MiB is implausible for a "
                f"{weights / 2**20:.0f} MiB model decoding {ctx.max_new_tokens} tokens")
    else:
        note(fig, "CPU: the peak is the process's RSS high-water mark and cannot be reset")
    fig["summary"] = f"peak {peak / 2**20:.1f} MiB, weights {weights / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------- 5-6: decoding

def agreement(reference: list[list[int]], outputs: list[list[int]]) -> dict[str, Any]:
    """How far ``outputs`` decode as ``reference`` (per prompt): ``match_rate`` is the mean share of
    reference tokens before the first divergence (tokens after it are shifted, so not compared)."""
    firsts = [first_divergence(ref, out) for ref, out in zip(reference, outputs)]
    rates = [1.0 if f is None else f / max(len(r), 1) for f, r in zip(firsts, reference)]
    return {"match_rate": sum(rates) / len(rates), "exact": sum(f is None for f in firsts),
            "prompts": len(firsts), "first_divergence": firsts}


def _decode_all(run: Callable[[str], Any], prompts: list[str]) -> tuple[list[list[int]], dict[str, Any]]:
    """One warm-up call (compiles, first allocations), then every prompt once: tokens and speed."""
    run(prompts[0])
    gens = [run(p) for p in prompts]
    tokens = sum(g.metrics["new_tokens"] for g in gens)
    wall = sum(g.metrics["wall_s"] for g in gens)
    return [g.tokens for g in gens], {
        "tokens_per_s": tokens / wall if wall else None, "new_tokens": tokens,
        "compile_s": max(g.metrics["compile_s"] for g in gens),
        "peak_mem_bytes": max(g.metrics["peak_mem_bytes"] for g in gens),
        "acceptance_rate": _ratio(sum(g.metrics["accepted"] for g in gens), sum(g.metrics["drafted"] for g in gens)),
    }


def against_cloud(tokens: list[list[int]], stats: dict[str, Any], base_tokens: list[list[int]],
                  base: dict[str, Any]) -> dict[str, Any]:
    """A speculative run's figures beside the same set-up's cloud: lossless share and speed-up."""
    return stats | agreement(base_tokens, tokens) | {
        "cloud_tokens_per_s": base["tokens_per_s"], "speedup": _ratio(stats["tokens_per_s"], base["tokens_per_s"])}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def cpu_reference(ctx: Context) -> list[list[int]]:
    """The cloud's greedy tokens on the CPU in float32: what every device run is compared with."""
    if "cpu" not in ctx.reference:
        m = ctx.model(CLOUD, "float32", "cpu")
        ctx.reference["cpu"] = [autoregressive(m, p, ctx.max_new_tokens).tokens for p in ctx.prompts]
    return ctx.reference["cpu"]


def check_autoregressive(ctx: Context, fig: dict) -> None:
    """Plain and optimized decoding on the device in each dtype against the CPU float32 reference."""
    ref = cpu_reference(ctx)
    runs: dict[str, Any] = {}
    fig["runs"] = runs
    for dtype in ctx.dtypes:
        m = ctx.model(CLOUD, dtype, ctx.device)
        for optimized in (False, True):
            key = f"{dtype} {'optimized' if optimized else 'plain'}"
            tokens, stats = _decode_all(
                lambda p: autoregressive(m, p, ctx.max_new_tokens, optimized=optimized, compile=ctx.compile), ctx.prompts)
            runs[key] = stats | agreement(ref, tokens)
            if optimized:
                runs[key]["vs_plain"] = agreement(ctx.reference[f"{dtype} plain"], tokens)["match_rate"]
            ctx.reference[key] = tokens
            if runs[key]["match_rate"] < 1:
                note(fig, f"{key} decodes {runs[key]['match_rate']:.0%} of the CPU float32 reference before diverging")
    low = {k: r["match_rate"] for k, r in runs.items() if k.startswith("float32") and r["match_rate"] < FP32_AGREEMENT}
    require(not low, f"float32 on {ctx.device} departs from the CPU float32 reference: {low} "
            f"(want >= {FP32_AGREEMENT:.0%} of tokens before the first divergence)")
    fig["summary"] = "; ".join(f"{k} {r['match_rate']:.0%} ({r['tokens_per_s']:.0f} tok/s)" for k, r in runs.items())


def check_speculative(ctx: Context, fig: dict) -> None:
    """Edge on the CPU with its thread cap, cloud on the device: lossless against the cloud's own
    greedy decoding on the device (float32 required, lower precision recorded), speed-ups recorded."""
    edge = ctx.model(EDGE, "float32", "cpu", threads=ctx.edge_threads)
    runs: dict[str, Any] = {}
    fig.update(edge_device="cpu", edge_threads=ctx.edge_threads, gamma=ctx.gamma, runs=runs)
    for dtype in ctx.spec_dtypes:
        cloud = ctx.model(CLOUD, dtype, ctx.device)
        for optimized in (False, True):
            setup = "optimized" if optimized else "plain"
            base_tokens, base = _decode_all(
                lambda p: autoregressive(cloud, p, ctx.max_new_tokens, optimized=optimized, compile=ctx.compile), ctx.prompts)
            tokens, stats = _decode_all(
                lambda p: speculative(edge, cloud, p, ctx.max_new_tokens, gamma=ctx.gamma, optimized=optimized,
                                      compile=ctx.compile), ctx.prompts)
            key = f"cloud {dtype} {setup}"
            runs[key] = against_cloud(tokens, stats, base_tokens, base)
            if runs[key]["match_rate"] < 1:
                note(fig, f"{key}: speculative departs from the cloud's greedy output on the same device "
                     f"({runs[key]['match_rate']:.0%} before the first divergence; floating-point ties)")
    cloud = ctx.model(CLOUD, ctx.spec_dtypes[0], ctx.device)
    for rule, kw in (("sample", {"temperature": 0.8, "seed": 0}), ("rank", {"rank_k": 3})):
        g = speculative(edge, cloud, ctx.prompts[0], ctx.max_new_tokens, gamma=ctx.gamma, verify=rule, **kw)
        runs[f"verify={rule}"] = {"new_tokens": g.metrics["new_tokens"], "acceptance_rate": g.metrics["acceptance_rate"]}
        require(g.metrics["new_tokens"] > 0, f"verify={rule} emitted no tokens")
    lossy = {k: r["match_rate"] for k, r in runs.items()
             if k.startswith("cloud float32") and r["match_rate"] < FP32_AGREEMENT}
    require(not lossy, f"float32 speculative output departs from the cloud's greedy output: {lossy}")
    fig["summary"] = "; ".join(f"{k} x{r['speedup']:.2f} lossless {r['match_rate']:.0%}"
                               for k, r in runs.items() if "speedup" in r)


# ---------------------------------------------------------------------------- 7-8: the tools

def run_command(cmd: list[str], log: Path, timeout_s: float) -> int:
    """Run a specnb command with this checkout importable, output to ``log``; kill its whole process
    group past ``timeout_s`` (grid cells start kernels of their own)."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except BaseException:  # the timeout, or the check's own budget (StepTimeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise


def require_modules(step: str) -> None:
    """Fail at once, naming what to install, where the step's command could not even start."""
    import importlib.util

    missing = [m for m in REQUIRES[step] if importlib.util.find_spec(m) is None]
    require(not missing, f"{sys.executable} lacks {', '.join(missing)} (needed by specnb {step}): install specnb's "
            "dependencies into it (pip install -e . after the CUDA torch), or run with the .venv that make setup builds")


def grid_params_for(ctx: Context, folder: Path) -> Path:
    """The check's params YAML with the cloud put on the device under test (cpu in the dry run)."""
    import yaml

    params = yaml.safe_load(ctx.grid_params.read_text())
    params["models"]["cloud"]["device"] = ctx.device.type
    params["models"]["edge"]["threads"] = ctx.edge_threads
    if not ctx.cuda:
        params["parameters"]["num_prompts"] = 1
    path = folder / "gpu_check.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def check_grid(ctx: Context, fig: dict) -> None:
    """``specnb grid``: every cell ok with the cloud on the device, then the audit and summary written."""
    require_modules("grid")
    params = grid_params_for(ctx, ctx.out_dir)
    run_dir = ctx.out_dir / "grid"
    log = ctx.out_dir / "grid.log"
    fig.update(params=str(params), run_dir=str(run_dir), log=str(log))
    rc = run_command([ctx.python, "-m", "specnb.cli", "grid", str(params), "--out", str(run_dir)], log,
                     BUDGET_S["grid"] - 10)
    fig["returncode"] = rc
    cells = {}
    for result in sorted(run_dir.glob("cells/*/result.json")):
        r = provenance.read_json(result) or {}
        cloud = r.get("cloud") or {}
        cells[result.parent.name] = {"status": r.get("status"), "error": r.get("error"),
                                     "cloud_device": cloud.get("device"),
                                     "tokens_per_s": (r.get("aggregate") or {}).get("tokens_per_s"),
                                     "peak_mem_bytes": (r.get("aggregate") or {}).get("peak_mem_bytes")}
    fig["cells"] = cells
    require(cells, f"no cell wrote a result (exit code {rc}); log tail:\n{provenance.log_tail(log, lines=15)}")
    failed = {k: c["error"] for k, c in cells.items() if c["status"] != "ok"}
    require(not failed, f"{len(failed)} of {len(cells)} cells failed: {failed}")
    elsewhere = {k: c["cloud_device"] for k, c in cells.items() if not str(c["cloud_device"]).startswith(ctx.device.type)}
    require(not elsewhere, f"cells whose cloud did not run on {ctx.device.type}: {elsewhere}")
    audit = run_dir / "audit.csv"
    fig["audit_rows"] = max(len(audit.read_text().splitlines()) - 1, 0) if audit.is_file() else None
    fig["html"] = sorted(p.name for p in run_dir.glob("*.html"))
    require(audit.is_file(), f"the audit did not run: no {audit}; log tail:\n{provenance.log_tail(log, lines=15)}")
    require(rc == 0, f"specnb grid exited {rc}; log tail:\n{provenance.log_tail(log, lines=15)}")
    fig["summary"] = f"{len(cells)} cells ok, audit {fig['audit_rows']} rows, {', '.join(fig['html'])}"


def check_bench(ctx: Context, fig: dict) -> None:
    """``specnb bench`` at small settings with the cloud on the device: record written, no compiling while timed."""
    require_modules("bench")
    record_path = ctx.out_dir / "bench.json"
    log = ctx.out_dir / "bench.log"
    cmd = [ctx.python, "-m", "specnb.cli", "bench", "--edge-device", "cpu", "--cloud-device", ctx.device.type,
           "--edge-threads", str(ctx.edge_threads), "--dtype", ctx.bench_dtype, "--limit", "2",
           "--max-new-tokens", "16", "--gammas", str(ctx.gamma), "--reps", "1", "--lever-gamma", str(ctx.gamma),
           "--json", str(record_path)]
    fig.update(command=" ".join(cmd[2:]), log=str(log), record=str(record_path))
    rc = run_command(cmd, log, BUDGET_S["bench"] - 10)
    fig["returncode"] = rc
    require(rc == 0 and record_path.is_file(), f"specnb bench exited {rc} without its record; log tail:\n{provenance.log_tail(log, lines=15)}")
    rec = provenance.read_json(record_path)
    ratios = rec["ratios"]
    fig.update(devices=rec["devices"], graphs_compiled_while_timing=rec["graphs_compiled_while_timing"],
               clock=rec["clock"]["verdict"],
               ratios={k: ratios.get(k) for k in ("R1", "R1_method", "R2", "speedup_vs_cloud", "alpha", "c", "loop_overhead")},
               tokens_per_s={m["label"]: m["tokens_per_s"] for m in rec["methods"]})
    require(str(rec["devices"]["cloud"]).startswith(ctx.device.type), f"the bench's cloud ran on {rec['devices']['cloud']}")
    require(rec["graphs_compiled_while_timing"] == 0,
            f"torch compiled {rec['graphs_compiled_while_timing']} graph(s) while the bench timed: a compiled step "
            "met a shape it was not warmed up for")
    fig["summary"] = f"R1 {ratios['R1']:.2f} ({ratios['R1_method']}), speed-up vs cloud {ratios['speedup_vs_cloud']:.2f}"


# ---------------------------------------------------------------------------- 9: a real model

def real_prompt_ids(model: LoadedModel, n: int) -> list[list[int]]:
    """``n`` Spec-Bench questions spread over its tasks, first turn, rendered with the model's chat template."""
    from ..chat import Prompting

    prompting = Prompting(model.tokenizer, "auto", "cloud")
    return [prompting.render(p) for p in load_prompts(str(REAL_PROMPTS), limit=n)]


def check_real_model(ctx: Context, fig: dict) -> None:
    """SmolLM2-135M-Instruct on the device: load times; plain greedy decoding in every dtype (and the
    optimized set-up in ``real_optimized_dtypes``) against the CPU float32 reference; prompt lookup
    lossless against the device's own greedy output, with its speed-up over that set-up's cloud."""
    from .. import registry
    from ..decode.lookup import PromptLookup

    gguf_path = registry.path(REAL)
    if not gguf_path.is_file():
        raise CheckSkipped(f"{REAL} is not in the model cache ({gguf_path.parent.parent}); fetch it first "
                           f"(specnb models fetch {registry.short_name(REAL)}, 98 MB) and run the check again")
    loads: dict[str, float] = {}

    def model(dtype: str, device: Any) -> LoadedModel:
        key = (REAL, parse_dtype(dtype), str(device), None)
        if key not in ctx.models:
            t0 = time.perf_counter()
            ctx.model(REAL, dtype, device)
            loads[f"{dtype} {torch.device(device).type}"] = round(time.perf_counter() - t0, 2)
        return ctx.models[key]

    ref_model = model("float32", "cpu")  # the first load reads the GGUF (dequantized copy cached after)
    prompts = real_prompt_ids(ref_model, ctx.real_prompts)
    ref = [autoregressive(ref_model, ids, ctx.max_new_tokens).tokens for ids in prompts]
    runs: dict[str, Any] = {}
    fig.update(model=REAL, gguf=gguf_path.name, prompts=len(prompts), prompt_tokens=[len(p) for p in prompts],
               max_new_tokens=ctx.max_new_tokens, gamma=ctx.gamma, load_s=loads, runs=runs)
    for dtype in ctx.dtypes:
        m = model(dtype, ctx.device)
        for optimized in (False, True) if dtype in ctx.real_optimized_dtypes else (False,):
            setup = "optimized" if optimized else "plain"
            base_tokens, base = _decode_all(
                lambda p: autoregressive(m, p, ctx.max_new_tokens, optimized=optimized, compile=ctx.compile), prompts)
            runs[f"cloud {dtype} {setup}"] = base | agreement(ref, base_tokens)
            if optimized:  # its verify widths compile anew (past the budget on an H200): the plain set-up only
                continue
            tokens, stats = _decode_all(
                lambda p: speculative(PromptLookup(), m, p, ctx.max_new_tokens, gamma=ctx.gamma), prompts)
            key = f"prompt_lookup {dtype} {setup}"
            runs[key] = against_cloud(tokens, stats, base_tokens, base)
            if runs[key]["match_rate"] < 1:
                note(fig, f"{key}: departs from the cloud's greedy output on the same device "
                     f"({runs[key]['match_rate']:.0%} before the first divergence)")
            if runs[f"cloud {dtype} {setup}"]["match_rate"] < 1:
                note(fig, f"cloud {dtype} {setup} decodes {runs[f'cloud {dtype} {setup}']['match_rate']:.0%} of the "
                     "CPU float32 reference before diverging")
    low = {k: r["match_rate"] for k, r in runs.items() if k == "cloud float32 plain" and r["match_rate"] < FP32_AGREEMENT}
    require(not low, f"float32 on {ctx.device} departs from the CPU float32 reference on the real model: {low}")
    lossy = {k: r["match_rate"] for k, r in runs.items() if k.startswith("prompt_lookup float32") and r["match_rate"] < 1}
    require(not lossy, f"float32 prompt lookup departs from the cloud's greedy output on the real model: {lossy}")
    fig["summary"] = "; ".join(f"{k} {r['tokens_per_s']:.0f} tok/s" + (f" x{r['speedup']:.2f}" if "speedup" in r else "")
                               for k, r in runs.items())


CHECKS: dict[str, Callable[[Context, dict], None]] = {
    "environment": check_environment, "dtypes": check_dtypes, "timer": check_timer, "peak_memory": check_peak_memory,
    "autoregressive": check_autoregressive, "speculative": check_speculative, "grid": check_grid, "bench": check_bench,
    "real_model": check_real_model,
}


# ---------------------------------------------------------------------------- the record

def run_all(ctx: Context, skip: tuple[str, ...] = (), fail: tuple[str, ...] = (),
            deadline_s: float = DEADLINE_S, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every check in order, the record rewritten after each; returns the record."""
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.out_dir / "gpu_check.json"
    started, t0 = provenance.now(), time.monotonic()
    record: dict[str, Any] = {
        "kind": "gpu_check", "schema": 1, "dry_run": not ctx.cuda, "device": str(ctx.device),
        "settings": settings or {}, "started_at": started, "status": "running", "checks": [],
        "versions": provenance.versions(), "machine": provenance.machine(), "git": provenance.git_state(),
    }
    for name, fn in CHECKS.items():
        left = deadline_s - (time.monotonic() - t0)
        if name in skip:
            result = skipped(name, "skipped on request (--skip)", BUDGET_S[name])
        elif left < MIN_START_S:
            result = skipped(name, f"not started: {left:.0f} s of the {deadline_s:.0f} s deadline left", BUDGET_S[name])
        else:
            print(f"gpu-check: {name} ...", flush=True)
            result = run_check(name, fn, ctx, min(BUDGET_S[name], left), inject=name in fail)
        record["checks"].append(result)
        record["counts"] = _counts(record["checks"])
        provenance.write_json_atomic(path, record)
    record.update(status="fail" if record["counts"]["fail"] else "pass", finished_at=provenance.now(),
                  wall_s=round(time.monotonic() - t0, 1), record=str(path))
    provenance.write_json_atomic(path, record)
    return record


def _counts(checks: list[dict[str, Any]]) -> dict[str, int]:
    return {s: sum(c["status"] == s for c in checks) for s in ("pass", "fail", "skipped")}


def summary_text(record: dict[str, Any]) -> str:
    """A few lines for the terminal: one per check, the record's path last."""
    c = record["counts"]
    mode = "DRY RUN, cloud on the CPU (nothing here says anything about CUDA)" if record["dry_run"] else record["device"]
    lines = [f"specnb gpu-check [{mode}]: {c['pass']} passed, {c['fail']} failed, {c['skipped']} skipped "
             f"in {record.get('wall_s', 0):.0f} s"]
    for check in record["checks"]:
        text = check["figures"].get("summary") or ""
        if check["status"] != "pass":
            text = (check["error"] or "").splitlines()[0][:300] if check["error"] else text
        lines.append(f"  {check['status'].upper():7} {check['name']:15} {check['seconds']:6.1f} s  {text}")
    lines.append(f"record: {record.get('record')}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda",
                        help="device of the cloud under test; 'cpu' is the dry run of the plumbing (default: %(default)s)")
    parser.add_argument("--out", help="folder of the record (default outputs/gpu_check/<UTC time>)")
    parser.add_argument("--edge-threads", type=int, default=4, help="CPU threads of the edge model (default: %(default)s)")
    parser.add_argument("--skip", default="", metavar="LIST", help=f"comma-separated checks to skip: {', '.join(CHECKS)}")
    parser.add_argument("--fail", default="", metavar="LIST",
                        help="comma-separated checks to fail on purpose (tests that a failure stops nothing)")
    parser.add_argument("--tiny", action="store_true",
                        help="smallest workload (1 prompt x 8 tokens, small matmul, eager optimized steps): "
                             "plumbing only (default with --device cpu)")
    parser.add_argument("--deadline", type=float, default=DEADLINE_S,
                        help="seconds for all checks; a check with too little left is skipped (default: %(default)s)")


def _names(text: str, flag: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise SystemExit(f"specnb gpu-check: unknown check(s) in {flag}: {', '.join(unknown)}; use {', '.join(CHECKS)}")
    return names


def no_gpu_reason() -> str | None:
    """Why CUDA cannot be tested here, naming the fix; None when a GPU is usable."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return (f"no GPU check possible: this torch ({torch.__version__}) is a CPU build; on a GPU machine install a "
                "CUDA build (make clean && make TORCH=torch setup, or SPECNB_PYTHON=<a python with CUDA torch>), "
                "or pass --device cpu for the dry run")
    return (f"no GPU check possible: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device "
            "(check nvidia-smi and CUDA_VISIBLE_DEVICES), or pass --device cpu for the dry run")


def context_from(args: argparse.Namespace) -> Context:
    device = torch.device(args.device)
    tiny = args.tiny or device.type == "cpu"
    out = Path(args.out) if args.out else REPO_ROOT / "outputs" / "gpu_check" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    ctx = Context(device=device, out_dir=out.resolve(), edge_threads=args.edge_threads)
    if tiny:
        ctx.num_prompts, ctx.max_new_tokens, ctx.matmul_size, ctx.compile = 1, 8, 512, False
        ctx.real_prompts = 1
    return ctx


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every check that ran passed, 1 when one failed, 2 when no GPU is there to check."""
    skip, fail = _names(args.skip, "--skip"), _names(args.fail, "--fail")
    if args.edge_threads < 1:
        raise SystemExit("specnb gpu-check: --edge-threads must be a positive integer")
    if torch.device(args.device).type == "cuda":
        reason = no_gpu_reason()
        if reason:
            print(f"specnb gpu-check: {reason}", file=sys.stderr)
            return 2
    ctx = context_from(args)
    settings = {k: v for k, v in vars(args).items() if not k.startswith("_")} | {
        "num_prompts": ctx.num_prompts, "max_new_tokens": ctx.max_new_tokens, "gamma": ctx.gamma,
        "dtypes": list(ctx.dtypes), "spec_dtypes": list(ctx.spec_dtypes), "compile": ctx.compile,
        "budgets_s": BUDGET_S}
    record = run_all(ctx, skip, fail, args.deadline, settings)
    print(summary_text(record))
    return 1 if record["counts"]["fail"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specnb.bench.gpu_check", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
