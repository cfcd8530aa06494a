"""``extra:`` grid entries, the default grid's shape, and disjoint cores for concurrent cells."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from specnb.grid.local import core_sets
from specnb.grid.cells import expand
from specnb.study.params import ParamsError, load_grid_params

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, models: dict[str, str], **body) -> Path:
    doc = {"models": {role: {"model": path, "device": "cpu"} for role, path in models.items()}, **body}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_extra_entries_add_their_own_small_grids(tmp_path, fake_models):
    p = write(tmp_path, fake_models, grid={"method": ["cloud", "speculative"], "dtype": ["float32", "float16"]},
              extra=[{"method": "speculative", "optimized": True, "dtype": ["float32", "float16"]},
                     {"method": "speculative", "edge_dtype": "float32", "cloud_dtype": "bfloat16"},
                     {"method": "cloud", "dtype": "float32"}])  # a repeat of a product point: dropped
    ids = [c.cell_id for c in expand(load_grid_params(p), tmp_path / "run")]
    assert ids == ["cloud-float32", "cloud-float16", "speculative-float32", "speculative-float16",
                   "speculative-float32-opt_True", "speculative-float16-opt_True",
                   "speculative-cloud_bfloat16-edge_float32"]  # keys in YAML order (safe_dump sorts)


def test_bad_extra_entries_are_named(tmp_path, fake_models):
    p = write(tmp_path, fake_models, grid={"method": ["cloud"]}, extra=[{"method": "specultive"}, {"dtype": "fp8"}])
    with pytest.raises(ParamsError) as err:
        load_grid_params(p)
    text = str(err.value)
    assert "extra[0].method[0]: unknown method 'specultive'" in text
    assert "extra[1].dtype[0]" in text and "extra[1]: missing method" in text


def test_default_grid_gives_both_setup_pairs_and_the_mixed_setup():
    cells = expand(load_grid_params(ROOT / "params" / "default.yaml"), "/tmp/unused-run")
    by_id = {c.cell_id: c for c in cells}
    for dtype in ("float32", "bfloat16", "float16"):
        assert {f"cloud-{dtype}", f"cloud_optimized-{dtype}", f"speculative-{dtype}",
                f"speculative-opt_True-{dtype}"} <= set(by_id)
    mixed = by_id["speculative-edge_float32-cloud_bfloat16"].parameters
    assert (mixed["edge_dtype"], mixed["cloud_dtype"]) == ("float32", "bfloat16")
    assert all(c.parameters["reps"] >= 3 for c in cells)


def test_core_sets_are_disjoint_and_cover_the_cores():
    assert core_sets(2, [0, 1]) == [(0,), (1,)]
    assert core_sets(1, [0, 1]) == [(0, 1)]
    assert core_sets(3, [0, 1, 2, 3, 4, 5, 6]) == [(0, 1, 2), (3, 4), (5, 6)]
    assert core_sets(3, [0, 1]) == [(0,), (1,), (0,)]  # more jobs than cores: shared, round-robin
