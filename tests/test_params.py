"""Params YAML and notebook-parameter validation: bad input names the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from specnb.study.params import MethodParams, ParamsError, load_grid_params, validate_method_params


def write_yaml(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def base(models: dict[str, str]) -> dict:
    return {
        "models": {"edge": {"model": models["edge"], "device": "cpu", "threads": 1},
                   "cloud": {"model": models["cloud"], "device": "cpu"}},
        "prompts": "builtin:code",
        "parameters": {"max_new_tokens": 8, "gamma": 3},
        "grid": {"method": ["edge", "speculative"], "dtype": ["float32", "bf16"]},
    }


def test_good_yaml_loads_and_canonicalizes(tmp_path, fake_models):
    gp = load_grid_params(write_yaml(tmp_path, base(fake_models)))
    assert gp.grid["dtype"] == ["float32", "bf16"]
    assert gp.base_parameters()["edge_threads"] == 1
    assert gp.base_parameters()["edge_model"] == fake_models["edge"]


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["models"]["edge"].update(modle="x"), "models.edge.modle"),
    (lambda d: d.update(gird={}), "gird"),
    (lambda d: d["grid"].update(dtype=["float32", "fp8"]), "grid.dtype[1]"),
    (lambda d: d["grid"].update(method=["edge", "spec"]), "grid.method[1]"),
    (lambda d: d["grid"].update(gama=[1, 2]), "grid.gama"),
    (lambda d: d["parameters"].update(verify="maybe"), "parameters.verify"),
    (lambda d: d["parameters"].update(max_new_tokens=0), "parameters.max_new_tokens"),
    (lambda d: d["models"]["cloud"].update(device="tpu"), "models.cloud.device"),
    (lambda d: d["models"].pop("cloud"), "models.cloud.model"),
    (lambda d: d["models"]["cloud"].update(model="/nonexistent/model"), "models.cloud.model"),
    (lambda d: d["models"]["edge"].update(model="zoo:no-such-model"), "models.edge.model"),
    (lambda d: d["parameters"].update(dtype="float32"), "parameters.dtype"),  # also a grid axis
    (lambda d: d.update(prompts="missing.jsonl"), "prompts"),
    (lambda d: d.update(prompts="builtin:nope"), "prompts"),
    (lambda d: d["grid"].update(prompts=["builtin:code", "x.jsonl"]), "grid.prompts[1]"),
    (lambda d: d["parameters"].update(result_path="x.json"), "parameters.result_path"),
    (lambda d: d["parameters"].update(chat_template="yes"), "parameters.chat_template"),
    (lambda d: d["grid"].update(chat_template=["auto", "raw"]), "grid.chat_template[1]"),
])
def test_bad_yaml_names_the_field(tmp_path, fake_models, mutate, field):
    data = base(fake_models)
    mutate(data)
    with pytest.raises(ParamsError) as err:
        load_grid_params(write_yaml(tmp_path, data))
    assert field in str(err.value)


def test_unknown_key_suggests_the_right_one(tmp_path, fake_models):
    data = base(fake_models)
    data["models"]["edge"]["modle"] = data["models"]["edge"].pop("model")
    with pytest.raises(ParamsError, match="did you mean 'model'"):
        load_grid_params(write_yaml(tmp_path, data))


def test_edge_only_grid_needs_no_cloud_model(tmp_path, fake_models):
    data = base(fake_models)
    data["models"].pop("cloud")
    data["grid"]["method"] = ["edge"]
    assert load_grid_params(write_yaml(tmp_path, data)).grid["method"] == ["edge"]


def test_method_params_defaults_and_overrides():
    p = MethodParams()
    assert (p.resolved_edge_dtype, p.resolved_cloud_dtype) == ("float32", "float32")
    p = MethodParams(dtype="fp16", cloud_dtype="bf16")
    assert (p.resolved_edge_dtype, p.resolved_cloud_dtype) == ("float16", "bfloat16")


def test_notebook_validation_lists_every_bad_field():
    with pytest.raises(ParamsError) as err:
        validate_method_params({"dtype": "int8", "gamma": 0, "tempature": 0.5})
    text = str(err.value)
    assert "dtype" in text and "gamma" in text and "tempature" in text and "did you mean 'temperature'" in text


NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["default", "edge3b_cloud7b", "memory_optimized"])
def test_shipped_params_files_validate(name):
    from specnb.grid.cells import expand

    gp = load_grid_params(NB_DIR.parent / "params" / f"{name}.yaml")
    cells = expand(gp, "/tmp/specnb-never-written")
    assert len(cells) >= 10 and len({c.cell_id for c in cells}) == len(cells)


def test_chat_template_is_a_grid_axis_that_splits_every_method(tmp_path, fake_models):
    """Rendering with the template changes what every method decodes: auto and none are two cells each."""
    from specnb.grid.cells import expand
    from specnb.study.params import METHODS, relevant_fields

    assert all("chat_template" in relevant_fields(m) for m in METHODS)
    data = base(fake_models)
    data["grid"] = {"method": ["edge", "cloud"], "chat_template": ["auto", "none"]}
    cells = expand(load_grid_params(write_yaml(tmp_path, data)), tmp_path / "run")
    assert sorted((c.method, c.parameters["chat_template"]) for c in cells) == [
        ("cloud", "auto"), ("cloud", "none"), ("edge", "auto"), ("edge", "none")]
    with pytest.raises(ParamsError, match="'auto' or 'none'"):
        validate_method_params({"chat_template": "yes"})
