"""Numeric precision names and what each device can run.

The grid, the notebooks and the fairness audit all speak in canonical names
(``float32``, ``float16``, ``bfloat16``); aliases are accepted on input only.
"""

from __future__ import annotations

import torch

CANONICAL = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}


def parse_dtype(name: str | torch.dtype) -> str:
    """Canonical name of a dtype given by name or alias (case-insensitive)."""
    if isinstance(name, torch.dtype):
        for canonical, dt in CANONICAL.items():
            if dt is name:
                return canonical
        raise ValueError(f"unsupported dtype {name}; valid dtypes: {valid_names()}")
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in CANONICAL:
        raise ValueError(f"unknown dtype {name!r}; valid dtypes: {valid_names()}")
    return key


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """The torch dtype for a name or alias."""
    return CANONICAL[parse_dtype(name)]


def valid_names() -> str:
    """All accepted spellings, for error messages."""
    return ", ".join(list(CANONICAL) + list(ALIASES))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None) means CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but this machine has no CUDA GPU; use device='cpu'")
    return dev


def device_class(device: str | torch.device) -> str:
    """The device class compared by the fairness rule: ``CPU``, ``GPU`` or ``MPS``."""
    kind = torch.device(device).type
    return {"cpu": "CPU", "cuda": "GPU", "mps": "MPS"}.get(kind, kind.upper())


def check_supported(name: str, device: torch.device) -> None:
    """Fail early, naming the device and a dtype that works, when ``device`` cannot run ``name``.

    float16 and bfloat16 run on every CPU torch supports (slowly where the CPU lacks native
    instructions). On CUDA, bfloat16 needs compute capability 8.0 (Ampere) or newer.
    """
    dtype = parse_dtype(name)
    if dtype == "bfloat16" and not native_bf16(device):
        gpu = torch.cuda.get_device_name(device)
        raise ValueError(
            f"bfloat16 is not supported on {gpu} ({device}); use dtype='float16' or 'float32' there"
        )


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 natively: CPUs (torch runs it on every one), CUDA from capability 8.0.

    Not ``torch.cuda.is_bf16_supported()``: that answers for the current GPU, not ``device``, and
    (by default since torch 2.3) says yes where bfloat16 is only emulated, slowly (e.g. a V100),
    which would let the grid time an emulation against native float16.
    """
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)


def device_name(device: torch.device) -> str:
    """Human-readable name of the device (GPU model, or CPU model from /proc/cpuinfo)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    from .threads import cpu_name

    return cpu_name() or platform.machine() or "cpu"
