"""``specnb demo`` prints every method and checks speculative against the cloud's greedy text."""

from __future__ import annotations

from specnb.cli import main
from tiny_models import build_llama, build_tokenizer


def test_demo_runs_every_method(tmp_path, capsys):
    tok = build_tokenizer(tmp_path / "tok")
    build_llama(tmp_path / "cloud", tok, seed=0)
    build_llama(tmp_path / "edge", tok, seed=0, base=tmp_path / "cloud", noise=0.05)
    code = main(["demo", "--edge", str(tmp_path / "edge"), "--cloud", str(tmp_path / "cloud"),
                 "--max-new-tokens", "8", "--prompt", "def f(x):"])
    out = capsys.readouterr().out
    assert code == 0
    for method in ("edge", "cloud", "cloud_optimized", "speculative", "hf_assisted"):
        assert f"\n{method} " in out
    assert "identical to the cloud's greedy text: True" in out
