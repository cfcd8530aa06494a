"""The committed notebooks are their own source: checks that hold whatever a researcher saves.

* each method notebook's ``parameters`` cell names every field of ``specnb.study.params.MethodParams``
  with its type (read with papermill's own parameter inference; default values are free);
* no stored output carries a path of the machine that ran it;
* test helpers stay out of the folder users browse.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
import typing
from pathlib import Path

import nbformat
import papermill
import pytest
from pydantic import TypeAdapter, ValidationError

from specnb.study.params import NOTEBOOKS, MethodParams

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"


def type_name(annotation: typing.Any) -> str:
    """How a parameters cell annotates a field, in the form papermill reads: ``int``, ``Optional[int]``.

    Papermill skips ``int | None`` lines, so an optional field is written ``Optional[T]``; a
    ``Literal`` of strings is written as its base type, ``str``.
    """
    args = typing.get_args(annotation)
    optional = type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else annotation
    if typing.get_origin(base) is typing.Literal:
        base = type(typing.get_args(base)[0])
    return f"Optional[{base.__name__}]" if optional else base.__name__


def _assigned(source: str) -> list[str]:
    """Names assigned at the top level of a cell, in order."""
    names = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def parameter_problems(path: Path) -> list[str]:
    """What keeps a notebook's parameters cell from matching MethodParams by names and types (empty: it matches)."""
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        return [f"{len(tagged)} cells tagged 'parameters'; want exactly one"]
    found = papermill.inspect_notebook(str(path))  # name -> inferred_type_name, default, help
    fields = MethodParams.model_fields
    problems = []
    for name in _assigned(tagged[0].source):
        if name not in found:
            problems.append(f"{name}: papermill cannot read this line; write `{name}: T = default` "
                            "(Optional[T] for a value that may be None, not `T | None`)")
    for name in found:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{name}: not a field of specnb.study.params.MethodParams{hint}; add it there or remove it here")
    for name, field in fields.items():
        want = type_name(field.annotation)
        if name not in found:
            problems.append(f"{name}: missing; add `{name}: {want} = {field.default!r}` to the parameters cell")
            continue
        got = found[name]["inferred_type_name"].replace(" ", "").replace("typing.", "")
        if got != want:
            problems.append(f"{name}: annotated {got!r}, MethodParams says {want!r}")
            continue
        try:
            value = ast.literal_eval(found[name]["default"])
        except (ValueError, SyntaxError):
            continue  # an expression: its type shows when the notebook runs
        try:  # the type only (Literal choices included); range constraints (ge=1) are checked when the notebook runs
            TypeAdapter(field.annotation).validate_python(value, strict=True)
        except ValidationError:
            problems.append(f"{name}: default {value!r} is not of type {field.annotation}")
    return problems


@pytest.mark.parametrize("name", sorted(NOTEBOOKS.values()))
def test_method_notebook_parameters_match_the_validation(name):
    """Names and types, not default values: a researcher may change a default in JupyterLab and save."""
    path = NB_DIR / name
    problems = parameter_problems(path)
    assert not problems, f"notebooks/{name}: fix its parameters cell (or MethodParams):\n  " + "\n  ".join(problems)
    nb = nbformat.read(path, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    assert "experiment.validate(" in nb.cells[at + 1].source


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))


def _edited_copy(tmp_path: Path, name: str, new_line: str, notebook: str = "speculative.ipynb") -> Path:
    """A copy of ``notebook`` whose parameters-cell line for ``name`` (whatever its default today) is
    ``new_line``: what a researcher's edit in JupyterLab saves."""
    nb = nbformat.read(NB_DIR / notebook, as_version=4)
    cell = _parameters_cell(nb)
    lines = cell.source.splitlines()
    at = [i for i, line in enumerate(lines) if re.match(rf"{re.escape(name)}\s*:", line)]
    assert len(at) == 1, f"{notebook}: no single line for parameter {name!r}"
    lines[at[0]] = new_line
    cell.source = "\n".join(lines)
    path = tmp_path / notebook
    nbformat.write(nb, path)
    return path


def _another_default(field) -> object:
    """A value of ``field``'s type other than its default: an edit a researcher may save."""
    args = [a for a in typing.get_args(field.annotation) if a is not type(None)]
    base = args[0] if args and typing.get_origin(field.annotation) is not typing.Literal else field.annotation
    if typing.get_origin(base) is typing.Literal:
        choices = typing.get_args(base)
        return next((c for c in choices if c != field.default), choices[0])
    if type(None) in typing.get_args(field.annotation) and field.default is not None:
        return None
    if base is bool:
        return not field.default
    if base is int:
        return (field.default or 0) + 1
    if base is float:
        return (field.default or 0.0) + 0.25
    return f"{field.default}-edited" if field.default else "edited"


def test_a_changed_default_passes_a_renamed_or_retyped_parameter_fails(tmp_path):
    """Problems an edit adds, beyond those of the committed notebook (none, once it matches MethodParams).
    The edits replace a parameter's whole line, so the test holds whatever the saved defaults are."""
    before = set(parameter_problems(NB_DIR / "speculative.ipynb"))

    def added(name: str, new_line: str) -> list[str]:
        return sorted(set(parameter_problems(_edited_copy(tmp_path, name, new_line))) - before)

    assert added("gamma", "gamma: int = 7") == []
    assert added("verify", "verify: str = 'sample'") == []
    assert added("num_prompts", "num_prompts: Optional[int] = None") == []

    renamed = added("gamma", "gama: int = 4")
    assert any(p.startswith("gamma: missing") for p in renamed), renamed
    assert any(p.startswith("gama: not a field") and "'gamma'" in p for p in renamed), renamed
    assert added("gamma", "gamma: float = 4.0") == ["gamma: annotated 'float', MethodParams says 'int'"]
    assert [p.split(":")[0] for p in added("gamma", "gamma: int = '4'")] == ["gamma"]
    assert [p.split(":")[0] for p in added("verify", "verify: str = 'greddy'")] == ["verify"]
    unreadable = added("seed", "seed: int | None = 0")
    assert any(p.startswith("seed: papermill cannot read") for p in unreadable), unreadable


@pytest.mark.parametrize("field", sorted(MethodParams.model_fields))
def test_any_default_edited_and_saved_keeps_the_notebook_valid(tmp_path, field):
    """Every parameter, not one: a new default of the same type adds no problem."""
    info = MethodParams.model_fields[field]
    value = _another_default(info)
    line = f"{field}: {type_name(info.annotation)} = {value!r}"
    path = _edited_copy(tmp_path, field, line)
    assert _parameters_cell(nbformat.read(path, as_version=4)).source.count(line) == 1
    assert set(parameter_problems(path)) <= set(parameter_problems(NB_DIR / "speculative.ipynb")), line


# Where a machine's paths begin: this checkout, and the usual roots of home and scratch folders.
MACHINE_PATH = re.compile("|".join([re.escape(str(ROOT))] + [rf"(?<![\w.~-])/{d}(?=/|\b)" for d in
                                                            ("root", "home", "work", "tmp", "Users")]))


def _stored_text(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """(where, text) of every stored output and of the metadata, images left out."""
    out = [("metadata", json.dumps(nb.metadata))]
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            o = {k: v for k, v in o.items() if k != "data"} | {
                "data": {k: v for k, v in o.get("data", {}).items() if not k.startswith("image/")}}
            out.append((f"cell {i}", json.dumps(o, ensure_ascii=False)))
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in NB_DIR.glob("*.ipynb")))
def test_committed_notebook_outputs_hold_no_machine_path(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    hits = [(where, m.group(0), text[max(0, m.start() - 60):m.end() + 60])
            for where, text in _stored_text(nb) for m in MACHINE_PATH.finditer(text)]
    assert not hits, f"{name}: print paths relative to the working folder; found {hits[:3]}"


def test_the_example_run_holds_no_machine_path():
    files = [p for p in (NB_DIR / "example_run").rglob("*.json")]
    assert files
    hits = [(p.relative_to(NB_DIR), m.group(0)) for p in files for m in MACHINE_PATH.finditer(p.read_text())]
    assert not hits, f"refresh it with tools/refresh_notebooks.py --example RUN (paths become relative): {hits[:3]}"


def test_machine_path_pattern():
    assert MACHINE_PATH.search("ok -> /home/ana/specnb/outputs/adhoc/x.json")
    assert MACHINE_PATH.search(f"ok -> {ROOT}/outputs/x.json")
    assert MACHINE_PATH.search("'/tmp/pytest-1/x'") and MACHINE_PATH.search("/root")
    assert not MACHINE_PATH.search("ok -> ../outputs/adhoc/speculative-float32.json")
    assert not MACHINE_PATH.search("network/tmp and a ./tmp/x folder")


def test_notebooks_folder_holds_only_what_users_browse():
    """Test helpers live at the repository root (conftest.py), not among the notebooks."""
    assert not list(NB_DIR.glob("*.py"))
    assert (ROOT / "conftest.py").is_file()


@pytest.mark.parametrize("name", sorted(p.name for p in NB_DIR.glob("*.ipynb")))
def test_committed_notebooks_store_no_stderr(name):
    """Progress bars and warnings vary from machine to machine: tools/refresh_notebooks.py drops them."""
    nb = nbformat.read(NB_DIR / name, as_version=4)
    stderr = [i for i, c in enumerate(nb.cells) for o in c.get("outputs", [])
              if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not stderr, f"{name}: stderr stored in cells {stderr}"
