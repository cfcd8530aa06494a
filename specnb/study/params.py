"""Validated parameters: the method notebooks' parameter cell and the grid's params YAML.

One pydantic model, :class:`MethodParams`, describes what every method notebook accepts; the
notebooks validate their (papermill-injected) values with it, and the grid validates every
fixed parameter and every axis value of a params YAML with it before anything runs. Errors
name the field as it is spelled in the YAML (``grid.dtype[2]``, ``models.cloud.model``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..decode.loops import VERIFY_RULES
from ..decode.schedule import SCHEDULES
from . import methods as _methods
from ..dtypes import parse_dtype

METHODS = tuple(_methods.METHODS)  # the registry's names (specnb.study.methods)
NOTEBOOKS = {name: m.notebook for name, m in _methods.METHODS.items()}
ROLES = ("edge", "cloud")


class ParamsError(ValueError):
    """A params file or notebook parameter is invalid; the message names the field(s)."""


class MethodParams(BaseModel):
    """The parameters of every method notebook (the cell tagged ``parameters``).

    ``edge_dtype`` / ``cloud_dtype`` override ``dtype`` for one role when set. ``prompts`` is
    a built-in set (``builtin:NAME``) or a Spec-Bench style JSONL path; ``num_prompts`` keeps
    N questions spread over the prompt categories (:func:`specnb.prompts.load_prompts`; a
    multi-turn question runs all its turns). ``chat_template``:
    ``auto`` renders prompts with the tokenizer's chat template when it has one (multi-turn
    questions turn by turn), ``none`` feeds raw text, first turns only (see :mod:`specnb.chat`).
    ``warmup`` generations on the first prompt run before anything is measured, then
    ``reps`` timed repetitions over all prompts (rotated order; speed-up intervals need >= 2).
    ``schedule`` sets the speculative draft length per round (``constant`` = gamma);
    ``optimized`` gives the speculative loop the optimized set-up (static caches, compiled steps);
    ``compile_steps`` overrides the per-device choice of compiling optimized steps (None = the default).
    ``result_path`` None means ``outputs/adhoc/<method>-<edge dtype>-<cloud dtype>.json``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    dtype: str = "float32"
    edge_dtype: str | None = None
    cloud_dtype: str | None = None
    edge_model: str = "zoo:tiny-edge"
    cloud_model: str = "zoo:tiny-cloud"
    edge_device: str = "cpu"
    cloud_device: str = "cpu"
    edge_threads: int | None = Field(1, ge=1)
    cloud_threads: int | None = Field(None, ge=1)
    prompts: str = "builtin:code"
    num_prompts: int | None = Field(3, ge=1)
    chat_template: Literal["auto", "none"] = "auto"
    max_new_tokens: int = Field(24, ge=1)
    gamma: int = Field(4, ge=1)
    verify: Literal[VERIFY_RULES] = "greedy"  # type: ignore[valid-type]
    rank_k: int = Field(5, ge=1)
    schedule: Literal[SCHEDULES] = "constant"  # type: ignore[valid-type]
    optimized: bool = False
    compile_steps: bool | None = None
    temperature: float = Field(0.0, ge=0.0)
    seed: int = 0
    warmup: int = Field(1, ge=0)
    reps: int = Field(3, ge=1)
    result_path: str | None = None

    @field_validator("dtype", "edge_dtype", "cloud_dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        return None if value is None else parse_dtype(value)

    @field_validator("edge_device", "cloud_device")
    @classmethod
    def _device(cls, value: str) -> str:
        kind = value.split(":", 1)[0]
        if kind not in ("auto", "cpu", "cuda", "mps") or (":" in value and kind != "cuda"):
            raise ValueError(f"unknown device {value!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return value

    @field_validator("edge_model", "cloud_model", "prompts")
    @classmethod
    def _nonempty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @property
    def resolved_edge_dtype(self) -> str:
        return self.edge_dtype or self.dtype

    @property
    def resolved_cloud_dtype(self) -> str:
        return self.cloud_dtype or self.dtype


AXIS_NAMES = ("method",) + tuple(f for f in MethodParams.model_fields if f != "result_path")


def relevant_fields(method: str) -> set[str]:
    """Parameters that change what ``method`` runs (used to drop duplicate grid cells): from the registry."""
    return set(_methods.get(method).relevant_fields)


class RoleModel(BaseModel):
    """One role of ``models:`` in a params YAML."""

    model_config = ConfigDict(extra="forbid")
    model: str
    device: str | None = None
    threads: int | None = Field(None, ge=1)
    dtype: str | None = None


class SlurmOptions(BaseModel):
    """Defaults for ``--executor slurm``; command-line flags override them."""

    model_config = ConfigDict(extra="forbid")
    partition: str | None = None
    gpus_per_cell: int = Field(0, ge=0)
    time_min: int = Field(60, ge=1)
    mem_gb: int | None = Field(None, ge=1)
    max_parallel: int | None = Field(None, ge=1)
    opts: dict[str, str] = {}


class RunnerOptions(BaseModel):
    """How the grid runs by default: parallel cells, per-cell time limit, executor."""

    model_config = ConfigDict(extra="forbid")
    jobs: int = Field(1, ge=1)
    timeout_s: int | None = Field(1800, ge=1)
    executor: Literal["local", "slurm"] = "local"
    analysis: bool = True
    drift_device: str | None = None  # precision analysis: None = the run's cloud device
    drift_prompts: int = Field(3, ge=1)
    slurm: SlurmOptions = SlurmOptions()


class GridParams(BaseModel):
    """A params YAML: models per role, prompts, fixed ``parameters`` and ``grid:`` axes."""

    model_config = ConfigDict(extra="forbid")
    description: str = ""
    models: dict[Literal["edge", "cloud"], RoleModel] = {}
    prompts: str | None = None
    parameters: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    extra: list[dict[str, Any]] = []  # more points: each entry a small grid of its own (values or lists)
    runner: RunnerOptions = RunnerOptions()

    def base_parameters(self) -> dict[str, Any]:
        """Notebook parameters shared by every cell: models, prompts, then ``parameters``."""
        return {name: value for name, (value, _) in self.parameter_origins().items()}

    def parameter_origins(self) -> dict[str, tuple[Any, str]]:
        """Each shared notebook parameter with the YAML field it comes from."""
        out: dict[str, tuple[Any, str]] = {}
        for role, rm in self.models.items():
            out[f"{role}_model"] = (rm.model, f"models.{role}.model")
            for key in ("device", "threads", "dtype"):
                value = getattr(rm, key)
                if value is not None:
                    out[f"{role}_{key}"] = (value, f"models.{role}.{key}")
        if self.prompts is not None:
            out["prompts"] = (self.prompts, "prompts")
        out.update({k: (v, f"parameters.{k}") for k, v in self.parameters.items()})
        return out


def _where(loc: tuple[Any, ...], prefix: str = "") -> str:
    """``('grid', 'dtype', 2)`` -> ``grid.dtype[2]``."""
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _explain(err: dict[str, Any], where: str, known: tuple[str, ...] = ()) -> str:
    """One line for one pydantic error, with a 'did you mean' for unknown keys."""
    if err["type"] == "extra_forbidden":
        name = str(err["loc"][-1])
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else (f"; known keys: {', '.join(known)}" if known else "")
        return f"{where}: unknown key{hint}"
    if err["type"] == "missing":
        return f"{where}: missing (required)"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg} (got {err.get('input')!r})"


def _known_at(loc: tuple[Any, ...]) -> tuple[str, ...]:
    """Keys accepted at a YAML location, for suggestions."""
    tables: dict[tuple[Any, ...], tuple[str, ...]] = {
        (): tuple(GridParams.model_fields),
        ("runner",): tuple(RunnerOptions.model_fields),
        ("runner", "slurm"): tuple(SlurmOptions.model_fields),
    }
    if len(loc) == 2 and loc[0] == "models":
        return tuple(RoleModel.model_fields)
    return tables.get(tuple(loc), ())


def format_errors(exc: ValidationError, prefix: str = "", known: tuple[str, ...] = ()) -> list[str]:
    """Readable lines naming each bad field of a pydantic error."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        lines.append(_explain(err, _where(loc, prefix), known or _known_at(loc[:-1])))
    return lines


def validate_method_params(values: dict[str, Any], prefix: str = "") -> MethodParams:
    """Validate notebook parameters; raise one :class:`ParamsError` listing every bad field."""
    try:
        return MethodParams(**values)
    except ValidationError as exc:
        known = tuple(MethodParams.model_fields)
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(format_errors(exc, prefix, known))) from None


def check_model_exists(name: str, where: str) -> None:
    """Fail, naming ``where``, when a ``zoo:`` name or local folder does not exist (hub ids pass)."""
    from ..models import locate

    try:
        locate(name)
    except ValueError as err:
        raise ParamsError(f"{where}: {err}") from None


def _check_prompts(source: str, where: str, base_dir: Path) -> str:
    """A prompt file must exist; relative paths are taken from the cwd, then the YAML's folder."""
    if source.startswith("builtin:"):
        from ..prompts import BUILTIN

        if source.removeprefix("builtin:") not in BUILTIN:
            known = ", ".join(f"builtin:{n}" for n in sorted(BUILTIN))
            raise ParamsError(f"{where}: unknown built-in prompt set {source!r}; built-in sets: {known}, or a JSONL path")
        return source
    for candidate in (Path(source).expanduser(), base_dir / source):
        if candidate.is_file():
            return str(candidate.resolve())
    raise ParamsError(f"{where}: prompt file {source!r} not found; give a path or 'builtin:NAME'")


def _axis_errors(grid: dict[str, list[Any]]) -> list[str]:
    """Check each axis name and each value on its own, so errors say which value is bad."""
    lines = []
    for axis, values in grid.items():
        if axis not in AXIS_NAMES:
            near = difflib.get_close_matches(axis, AXIS_NAMES, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; axes may be: {', '.join(AXIS_NAMES)}"
            lines.append(f"grid.{axis}: unknown axis{hint}")
            continue
        if not values:
            lines.append(f"grid.{axis}: empty list; give at least one value")
        for i, value in enumerate(values):
            if axis == "method":
                if value not in METHODS:
                    lines.append(f"grid.method[{i}]: unknown method {value!r}; methods: {', '.join(METHODS)}")
                continue
            try:
                MethodParams(**{axis: value})
            except ValidationError as exc:
                lines += [_explain(e, f"grid.{axis}[{i}]") for e in exc.errors()]
    return lines


def _parameter_errors(gp: GridParams) -> list[str]:
    """Check each shared parameter on its own, naming the YAML field it came from."""
    lines = []
    known = tuple(MethodParams.model_fields)
    for name, (value, where) in gp.parameter_origins().items():
        if name in ("method", "result_path"):
            what = "put methods in grid.method" if name == "method" else "the grid sets it per cell"
            lines.append(f"{where}: not allowed here; {what}")
            continue
        try:
            MethodParams(**{name: value})
        except ValidationError as exc:
            lines += [_explain(e, where, known) for e in exc.errors()]
    return lines


def load_grid_params(path: str | Path) -> GridParams:
    """Read and fully validate a params YAML; raise :class:`ParamsError` naming every bad field."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {str(path)!r} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of keys (models, prompts, parameters, grid, runner)")
    try:
        gp = GridParams(**raw)
    except ValidationError as exc:
        raise ParamsError(f"{path}: invalid params:\n  " + "\n  ".join(format_errors(exc))) from None
    problems = _axis_errors(gp.grid)
    for i, entry in enumerate(gp.extra):
        lists = {k: v if isinstance(v, list) else [v] for k, v in entry.items()}
        problems += [line.replace("grid.", f"extra[{i}].", 1) for line in _axis_errors(lists)]
        if "method" not in entry:
            problems.append(f"extra[{i}]: missing method; each extra entry names its method(s)")
    clash = set(gp.parameters) & set(gp.grid)
    problems += [f"parameters.{k}: also a grid axis (grid.{k}); keep it in one place" for k in sorted(clash)]
    problems += _parameter_errors(gp)
    if problems:
        raise ParamsError(f"{path}: invalid params:\n  " + "\n  ".join(problems))
    _check_models(gp)
    if gp.prompts is not None:
        gp.prompts = _check_prompts(gp.prompts, "prompts", path.parent)
    if "prompts" in gp.parameters:
        gp.parameters["prompts"] = _check_prompts(gp.parameters["prompts"], "parameters.prompts", path.parent)
    for i, source in enumerate(gp.grid.get("prompts", [])):
        gp.grid["prompts"][i] = _check_prompts(source, f"grid.prompts[{i}]", path.parent)
    return gp


def _check_models(gp: GridParams) -> None:
    """Every role a method needs has a model, and every named model exists."""
    methods = list(gp.grid.get("method", list(METHODS)))
    for entry in gp.extra:
        methods += entry["method"] if isinstance(entry.get("method"), list) else [entry.get("method")]
    for role in ROLES:
        needed = any(m in methods for m in METHODS if f"{role}_model" in relevant_fields(m))
        where = f"models.{role}.model"
        names = gp.grid.get(f"{role}_model")
        if names is None:
            if role not in gp.models and needed:
                raise ParamsError(f"{where}: missing; methods {', '.join(methods)} need a {role} model")
            names = [gp.models[role].model] if role in gp.models else []
            for name in names:
                check_model_exists(name, where)
        else:
            for i, name in enumerate(names):
                check_model_exists(name, f"grid.{role}_model[{i}]")
