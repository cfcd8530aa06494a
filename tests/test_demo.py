"""``specnb demo`` prints every method and checks speculative against the cloud's greedy text."""

from __future__ import annotations

import logging

from specnb.decode import loops
from specnb.study import demo
from specnb.study.methods import METHODS, WARMUP_TOKENS
from specnb.cli import main


def test_demo_runs_every_method(related_pair, capsys, monkeypatch):
    calls = []
    real = loops.autoregressive
    monkeypatch.setattr(loops, "autoregressive", lambda m, p, n, **kw: calls.append(n) or real(m, p, n, **kw))
    code = main(["demo", "--edge", str(related_pair / "edge"), "--cloud", str(related_pair / "cloud"),
                 "--max-new-tokens", "12", "--prompt", "def f(x):"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0
    for method in METHODS:  # every method of the registry, prompt lookup included
        assert f"\n{method} " in out
    assert "identical to the cloud's greedy text: True" in out
    assert "a quick look, not a benchmark" in out and "`specnb bench`" in out
    # each autoregressive method: one short warm-up generation, then the timed one
    assert calls == [WARMUP_TOKENS, 12] * 3
    assert "Passing `generation_config`" not in captured.out + captured.err


def test_demo_threads_default_to_specnb_default():
    from specnb.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert args.edge_threads is None and args.cloud_threads is None


def test_only_transformers_internal_warnings_are_dropped():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("transformers.generation.utils")
    handler = Keep()
    logger.addHandler(handler)
    try:
        with demo.quiet_hf_internal_warnings():
            logger.warning("Passing `generation_config` together with generation-related arguments=({'max_new_tokens'}) "
                           "is deprecated and will be removed in future versions.")
            logger.warning("some other warning")
        logger.warning("Passing `generation_config` together with generation-related arguments=() is deprecated")
    finally:
        logger.removeHandler(handler)
    assert records == ["some other warning",
                       "Passing `generation_config` together with generation-related arguments=() is deprecated"]
