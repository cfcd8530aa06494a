"""Method-notebook stand-ins for grid and executor tests (no model needed).

A plain module rather than part of conftest.py: with the repository root's conftest.py also loaded,
``from conftest import ...`` can resolve to the wrong file.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

FAKE_METHOD_CODE = '''
import json, os, time, uuid
from pathlib import Path
payload = {"status": "ok", "method": METHOD, "nonce": uuid.uuid4().hex,
           "settings": {"dtype": dtype, "edge_dtype": edge_dtype or dtype, "cloud_dtype": cloud_dtype or dtype,
                        "edge_device": edge_device, "cloud_device": cloud_device}}
time.sleep(float(os.environ.get("FAKE_SLEEP_S", "0")))
if dtype == os.environ.get("FAKE_DIE_DTYPE"):
    os.kill(os.getpid(), 9)  # the kernel dies (as under the OOM killer)
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
