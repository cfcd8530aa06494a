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


def _edited_copy(tmp_path: Path, old: str, new: str) -> Path:
    nb = nbformat.read(NB_DIR / "speculative.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert old in cell.source
    cell.source = cell.source.replace(old, new)
    path = tmp_path / "speculative.ipynb"
    nbformat.write(nb, path)
    return path


def test_a_changed_default_passes_a_renamed_or_retyped_parameter_fails(tmp_path):
    """Problems an edit adds, beyond those of the committed notebook (none, once it matches MethodParams)."""
    before = set(parameter_problems(_edited_copy(tmp_path, "gamma", "gamma")))

    def added(old: str, new: str) -> list[str]:
        return sorted(set(parameter_problems(_edited_copy(tmp_path, old, new))) - before)

    assert added("gamma: int = 4", "gamma: int = 7") == []
    assert added("verify: str = 'greedy'", "verify: str = 'sample'") == []
    assert added("num_prompts: Optional[int] = 3", "num_prompts: Optional[int] = None") == []

    renamed = added("gamma: int = 4", "gama: int = 4")
    assert any(p.startswith("gamma: missing") for p in renamed), renamed
    assert any(p.startswith("gama: not a field") and "'gamma'" in p for p in renamed), renamed
    assert added("gamma: int = 4", "gamma: float = 4.0") == ["gamma: annotated 'float', MethodParams says 'int'"]
    assert [p.split(":")[0] for p in added("gamma: int = 4", "gamma: int = '4'")] == ["gamma"]
    assert [p.split(":")[0] for p in added("verify: str = 'greedy'", "verify: str = 'greddy'")] == ["verify"]
    unreadable = added("seed: int = 0", "seed: int | None = 0")
    assert any(p.startswith("seed: papermill cannot read") for p in unreadable), unreadable


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
