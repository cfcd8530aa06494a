"""The method registry: every method declared once; params, grid, report and notebooks derive from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from specnb.study import methods, params
from specnb.report import frame as report

ROOT = Path(__file__).resolve().parents[1]


def test_every_method_has_its_notebook_and_derived_tables():
    for name, m in methods.METHODS.items():
        assert (ROOT / "notebooks" / m.notebook).is_file(), m.notebook
        nb = (ROOT / "notebooks" / m.notebook).read_text()
        assert f"METHOD = '{name}'" in nb or f'METHOD = \\"{name}\\"' in nb
    assert params.METHODS == tuple(methods.METHODS)
    assert set(params.NOTEBOOKS) == set(report.METHOD_NAMES) == set(report.ROLE_USE) == set(methods.METHODS)
    assert report.REFERENCES == {"plain": "cloud", "optimized": "cloud_optimized"}


def test_relevant_fields_follow_roles_and_declared_parameters():
    hf = params.relevant_fields("hf_assisted")
    assert {"gamma", "optimized", "edge_model", "cloud_model"} <= hf
    assert not {"schedule", "verify", "rank_k"} & hf  # HF's own loop ignores them: no duplicate cells
    lookup = params.relevant_fields("prompt_lookup")
    assert "gamma" in lookup and not any(f.startswith("edge_") for f in lookup)
    with pytest.raises(ValueError, match="unknown method 'nope'; methods: edge, cloud"):
        params.relevant_fields("nope")


def test_setup_classes_and_same_output():
    spec = methods.get("speculative")
    assert spec.setup({"optimized": False}) == "plain" and spec.setup({"optimized": True}) == "optimized"
    assert methods.get("cloud_optimized").setup({}) == "optimized" and methods.get("cloud").setup({"optimized": True}) == "plain"
    assert not methods.get("edge").reproduces_cloud({})
    assert not spec.reproduces_cloud({"verify": "rank"}) and spec.reproduces_cloud({"verify": "greedy"})
