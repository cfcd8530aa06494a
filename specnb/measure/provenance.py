"""Provenance shared by results and run manifests: versions, machine, git commit; atomic JSON."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from ..threads import cpu_name

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "papermill", "nbformat", "pandas", "pydantic")


def now() -> str:
    """UTC timestamp, ISO 8601, seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str | None]:
    """Python and the libraries a result depends on (None when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    # the package is always imported before its modules: read its version without an import
    # (``from . import __version__`` would make provenance and the package import each other)
    out["specnb"] = getattr(sys.modules.get(__package__ or ""), "__version__", None)
    return out


def machine() -> dict[str, Any]:
    """Host, OS, CPU count and memory, and the GPUs torch sees (names only)."""
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "memory_gib": _memory_gib(),
    }
    try:
        import torch

        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if info["gpus"]:
            info["sdpa_backends"] = sdpa_backends()
    except Exception:  # noqa: BLE001 - provenance must never fail a run
        info["gpus"] = []
    return info



def sdpa_backends() -> dict[str, bool]:
    """Which CUDA attention backends PyTorch may pick now: loading a model on CUDA turns cuDNN's off
    (:func:`specnb.models.steady_attention_kernels` says why), and CUDA timings depend on it."""
    import torch

    b = torch.backends.cuda
    return {"flash": b.flash_sdp_enabled(), "mem_efficient": b.mem_efficient_sdp_enabled(),
            "math": b.math_sdp_enabled(), "cudnn": b.cudnn_sdp_enabled()}


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit of the checkout and whether it has uncommitted changes (None outside git)."""

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if dirty is None else bool(dirty)}


def umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (briefly process-wide)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON to a temporary file beside ``path`` then rename it: readers never see half a file.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 minus the umask), not
    ``mkstemp``'s private 0600, so colleagues on a shared cluster can read results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, ensure_ascii=False, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def log_tail(*paths: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log; of several logs, each readable one under ``--- <name>``."""
    out = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        out += [f"--- {path.name}", *text] if len(paths) > 1 else text
    return "\n".join(out)
