"""Smoke run of ``specnb bench`` (no timing asserts: speed belongs to the benchmark's printout)."""

from __future__ import annotations

import json
import math

from specnb.cli import main
from tiny_models import build_llama, build_tokenizer


def test_bench_quick_writes_a_complete_record(tmp_path, capsys):
    tok = build_tokenizer(tmp_path / "tok")
    build_llama(tmp_path / "cloud", tok, seed=0)
    build_llama(tmp_path / "edge", tok, seed=0, base=tmp_path / "cloud", noise=0.05)
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--edge", str(tmp_path / "edge"), "--cloud", str(tmp_path / "cloud"),
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for key in ("R1 speculative / cloud_optimized", "R2 speculative / hf_assisted", "R3 speed-up", "loop overhead"):
        assert key in printed
    record = json.loads(out.read_text())
    labels = {m["label"] for m in record["methods"]}
    assert {"cloud", "cloud_optimized", "edge", "speculative g=2", "hf_assisted g=4", "speculative cost"} <= labels
    r = record["ratios"]
    assert r["best_gamma"] in (2, 4)
    for key in ("R1", "R2", "R3", "alpha", "c", "S", "loop_overhead"):
        assert math.isfinite(r[key]), key
    assert 0 <= r["alpha"] <= 1 and 0 <= r["loop_overhead"] <= 1
    assert record["git"]["commit"]


def test_bench_rejects_bad_gammas(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="--gammas must be positive integers"):
        main(["bench", "--gammas", "0,x"])
