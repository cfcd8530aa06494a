"""pyproject.toml is the one source of dependencies; environment.yml must mirror it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {req for req in pip if not req.startswith("-e")}
    assert listed == wanted, f"only in pyproject: {sorted(wanted - listed)}; only in environment.yml: {sorted(listed - wanted)}"
    assert "-e .[dev]" in pip


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_lock_pins_every_dependency_within_pyproject_ranges():
    """make installs through requirements.lock: every dependency of pyproject (torch aside: the Makefile
    installs it first) is pinned there to one exact version that pyproject's range allows."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [line.strip() for line in (ROOT / "requirements.lock").read_text().splitlines()]
    pins = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(text)
        if req.name == "torch":
            continue
        assert canonicalize_name(req.name) in pins, f"{req.name} is not pinned in requirements.lock (make lock)"
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), f"{req.name}=={pins[canonicalize_name(req.name)]} is outside {req}"
    assert "-c requirements.lock" in (ROOT / "Makefile").read_text()
