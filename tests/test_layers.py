"""The package's layers import downward only.

Each module belongs to one layer (by its subpackage, or by name for the top-level modules); a
module may import its own layer and the layers below it, never one above. The graph is the cycle
test's (:func:`test_imports.import_graph`: every import in the source, those inside functions too).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from test_imports import import_graph

# bottom first; one row per layer: the modules (a package name covers its submodules)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("specnb._version", "specnb.threads", "specnb.prompts", "specnb.chat", "specnb.zoo",
              "specnb.zoo.corpus", "specnb.zoo.tokenizer", "specnb.zoo.train")),
    ("measure", ("specnb.measure",)),
    ("models", ("specnb.dtypes", "specnb.models", "specnb.gguf", "specnb.registry")),
    ("decode", ("specnb.decode",)),
    # model building: the embedded pair's builder and its checks, the distilled edge (they run the decoding loops)
    ("build", ("specnb.zoo.build", "specnb.zoo.evaluate", "specnb.zoo.distill")),
    ("link", ("specnb.link",)),
    ("study", ("specnb.study",)),
    ("report", ("specnb.report",)),
    ("grid", ("specnb.grid",)),
    ("bench", ("specnb.bench",)),
    # the entry points: the command line and the package's face
    ("entry points", ("specnb.cli", "specnb")),
]


def layer_of(module: str, layers=LAYERS) -> int:
    """The index of the layer that owns ``module``: the row naming it, else the row naming its
    innermost package."""
    owners = {name: i for i, (_, names) in enumerate(layers) for name in names}
    name = module
    while name:
        if name in owners:
            return owners[name]
        name = name.rpartition(".")[0]
    raise KeyError(f"{module} belongs to no layer: add it to a row of LAYERS in tests/test_layers.py")


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Every import of a module from a layer above its own, as 'a (layer) -> b (layer)'."""
    out = []
    for mod in sorted(graph):
        for target in sorted(graph[mod]):
            if layer_of(target, layers) > layer_of(mod, layers):
                out.append(f"{mod} ({layers[layer_of(mod, layers)][0]}) -> {target} ({layers[layer_of(target, layers)][0]})")
    return out


def depth(graph: dict[str, set[str]]) -> int:
    """Modules on the longest import chain (a module importing nothing: 1); the graph has no cycle."""
    memo: dict[str, int] = {}

    def level(m: str) -> int:
        if m not in memo:
            memo[m] = 1 + max((level(d) for d in graph[m]), default=0)
        return memo[m]

    return max(level(m) for m in graph)


# modules on the package's longest import chain, imports inside functions counted (docs/development.md):
# report -> report.tables -> report.categories -> report.fairness -> report.frame -> study.methods ->
# decode.hf_reference -> decode.pair -> decode.translate -> models -> registry -> gguf -> measure.provenance -> threads
DEPTH = 14


def test_the_package_is_as_deep_as_written():
    found = depth(import_graph())
    assert found == DEPTH, f"the longest import chain has {found} modules, not {DEPTH}: update DEPTH and docs/development.md"
    doc = (Path(__file__).resolve().parents[1] / "docs" / "development.md").read_text(encoding="utf-8")
    assert f"The longest import chain has {DEPTH} modules" in doc


def test_every_module_has_a_layer():
    for mod in import_graph():
        layer_of(mod)


def test_layers_import_downward_only():
    bad = upward_imports(import_graph())
    assert not bad, "upward imports (move the code down, or the import up):\n" + "\n".join(bad)


def test_the_checker_catches_an_upward_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    (pkg / "high").mkdir()
    for path in ("__init__.py", "low/__init__.py", "high/__init__.py", "high/b.py"):
        (pkg / path).write_text("")
    (pkg / "high" / "b.py").write_text("from ..low import a\n")
    (pkg / "low" / "a.py").write_text("def f():\n    from ..high import b\n")  # upward, inside a function
    layers = [("low", ("pkg.low",)), ("high", ("pkg.high", "pkg"))]
    graph = import_graph(pkg, "pkg")
    assert upward_imports(graph, layers) == ["pkg.low.a (low) -> pkg.high.b (high)"]
    (pkg / "low" / "a.py").write_text("x = 1\n")
    assert upward_imports(import_graph(pkg, "pkg"), layers) == []


def test_depth_counts_the_longest_chain():
    assert depth({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"c"}}) == 3


def test_a_module_outside_every_layer_is_named():
    with pytest.raises(KeyError, match="pkg.new"):
        layer_of("pkg.new", [("low", ("pkg.low",))])
