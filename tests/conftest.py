"""Shared fixtures: fake method notebooks (no model needed) and fake model folders."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from specnb.params import NOTEBOOKS

FAKE_METHOD_CODE = '''
import json, os, time, uuid
from pathlib import Path
payload = {"status": "ok", "method": METHOD, "nonce": uuid.uuid4().hex,
           "settings": {"dtype": dtype, "edge_dtype": edge_dtype or dtype, "cloud_dtype": cloud_dtype or dtype,
                        "edge_device": edge_device, "cloud_device": cloud_device}}
time.sleep(float(os.environ.get("FAKE_SLEEP_S", "0")))
if dtype == os.environ.get("FAKE_FAIL_DTYPE", "float16"):
    raise RuntimeError(f"boom in {dtype}")
Path(result_path).write_text(json.dumps(payload))
print("wrote", result_path)
'''


def make_fake_notebook(path: Path, method: str) -> None:
    """A method notebook stand-in: parameters cell, then write result_path (or fail on fail_dtype)."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'dtype = "float32"\nedge_dtype = None\ncloud_dtype = None\nedge_device = "cpu"\ncloud_device = "cpu"\n'
        'result_path = "result.json"'
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(f"METHOD = {method!r}\n" + FAKE_METHOD_CODE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def fake_notebooks(tmp_path: Path) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for method, name in NOTEBOOKS.items():
        make_fake_notebook(folder / name, method)
    return folder


@pytest.fixture
def fake_models(tmp_path: Path) -> dict[str, str]:
    """Two folders that pass the 'model exists' check (config.json only)."""
    out = {}
    for role in ("edge", "cloud"):
        folder = tmp_path / f"{role}-model"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
        out[role] = str(folder)
    return out
