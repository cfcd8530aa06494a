"""The method registry: every method declared once; params, grid, report and notebooks derive from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from specnb.study import methods, params
from specnb.report import frame

ROOT = Path(__file__).resolve().parents[1]


def test_every_method_has_its_notebook_and_derived_tables():
    for name, m in methods.METHODS.items():
        assert (ROOT / "notebooks" / m.notebook).is_file(), m.notebook
        nb = (ROOT / "notebooks" / m.notebook).read_text()
        assert f"METHOD = '{name}'" in nb or f'METHOD = \\"{name}\\"' in nb
    assert frame.REFERENCES == {"plain": "cloud", "optimized": "cloud_optimized"}


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


def test_the_registry_rules_are_the_loops_and_the_parameters_rules():
    import typing

    from specnb.decode.loops import VERIFY_RULES

    assert typing.get_args(params.MethodParams.model_fields["verify"].annotation) == VERIFY_RULES
    for m in methods.METHODS.values():
        assert set(m.verify_rules) <= set(VERIFY_RULES)
        assert bool(m.verify_rules) == ("verify" in m.fields), m.name  # a method with a rule axis names its rules


def test_a_rule_a_method_does_not_allow_fails_at_validation():
    from specnb.study import experiment

    with pytest.raises(params.ParamsError, match="'sample' is not a rule of prompt_lookup.*verify = greedy or rank"):
        experiment.validate("prompt_lookup", {"verify": "sample", "temperature": 1.0})
    assert experiment.validate("speculative", {"verify": "sample", "temperature": 1.0}).verify == "sample"
    assert methods.get("prompt_lookup").problems({"verify": "rank"}) == []
    assert methods.get("hf_assisted").problems({"verify": "sample"}) == []  # not one of its parameters


def test_a_grid_crossing_a_method_with_a_rule_it_does_not_allow_fails(tmp_path):
    from specnb.grid.cells import expand

    path = tmp_path / "p.yaml"
    models = 'models:\n  edge: {model: "zoo:tiny-edge"}\n  cloud: {model: "zoo:tiny-cloud"}\n'
    path.write_text(models + "grid:\n  method: [speculative, prompt_lookup]\n  verify: [greedy, sample]\n"
                    "parameters:\n  temperature: 1.0\n")
    with pytest.raises(params.ParamsError, match="prompt_lookup at .*'sample' is not a rule of prompt_lookup"):
        expand(params.load_grid_params(path), tmp_path / "run")
    path.write_text(models + "grid:\n  method: [speculative]\n  verify: [greedy, sample]\n"
                    "extra:\n  - {method: prompt_lookup, verify: greedy}\n")
    assert [c.method for c in expand(params.load_grid_params(path), tmp_path / "run")] == [
        "speculative", "speculative", "prompt_lookup"]


def test_the_drafting_methods_are_those_with_a_drafter():
    assert methods.drafting() == ("speculative", "hf_assisted", "prompt_lookup")


def test_the_link_studies_and_their_report_name_methods_from_the_registry():
    """The capacity study's methods, its findings' labels (EN / 中文) and the RTT plot's come from LINK_METHODS."""
    from specnb.report import capacity as report
    from specnb.study import capacity

    assert set(capacity.SERVED) <= set(methods.LINK_METHODS)
    assert report.NAMES["cloud"] == methods.LINK_METHODS["cloud"].label == "cloud-only streaming"
    assert report.NAMES_ZH["edge_cloud"] == methods.LINK_METHODS["edge_cloud"].label_zh
