"""Logs carry what matters: no kernel transport warning per cell, no weight-loading bar per load."""

from __future__ import annotations

from pathlib import Path

import pytest

from specnb.grid.cells import LOG, Cell, kernel_options, read_result, run_cell
from specnb.study.params import NOTEBOOKS


def test_a_cell_log_has_no_plain_tcp_kernel_warning(tmp_path: Path, fake_notebooks: Path) -> None:
    if "config" not in kernel_options():
        pytest.skip("this pyzmq / jupyter_client cannot encrypt kernel sockets (CurveZMQ)")
    cell_dir = tmp_path / "cells" / "edge-float32"
    cell = Cell(cell_id="edge-float32", method="edge", notebook=str(fake_notebooks / NOTEBOOKS["edge"]),
                parameters={"dtype": "float32", "result_path": str(cell_dir / "result.json")}, cell_dir=str(cell_dir))
    run_cell(cell)
    assert read_result(cell)["status"] == "ok"
    log = (cell_dir / LOG).read_text()
    assert "without encryption" not in log, log


def test_loading_a_model_draws_no_loading_bar(capfd: pytest.CaptureFixture[str]) -> None:
    from specnb import ModelSpec, load

    load(ModelSpec("zoo:tiny-edge", "float32", "cpu"))
    err = capfd.readouterr().err
    assert "Loading weights" not in err, err
