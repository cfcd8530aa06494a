"""Drift against float32 with float32's own noise floor: the per-prompt judgement, the wording (English and
中文) from small frames, and the measurement on the tiny pair (no downloads)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from specnb.report import drift, findings
from specnb.report.drift import FLOOR

NAN = math.nan


def row(dtype, prompt, div=NAN, kl=1e-6, top1=1.0, dec_top1=None, dec_kl=None):
    return {"dtype": dtype, "prompt": prompt, "positions": 32, "top1_agreement": top1, "mean_kl": kl, "max_kl": kl,
            "decode_top1_agreement": top1 if dec_top1 is None else dec_top1,
            "decode_mean_kl": kl if dec_kl is None else dec_kl, "first_divergence": div, "margin": NAN}


def frame(*rows):
    return pd.DataFrame(list(rows))


def words(rows: pd.DataFrame) -> list[findings.Text]:
    return findings.on_drift(drift.summary(rows))


def test_summary_puts_the_floor_first_and_counts_divergences_beyond_it():
    rows = frame(row("float16", "a", div=24), row("float16", "b", div=5),
                 row(FLOOR, "a", div=20, kl=1e-12), row(FLOOR, "b", kl=1e-12))
    s = drift.summary(rows)
    assert list(s.index) == [FLOOR, "float16"]
    assert s.loc["float16", "diverged"] == 2 and s.loc["float16", "earliest_divergence"] == 5
    # prompt a diverges after float32's own divergence (20 <= 24): explained; prompt b is not
    assert s.loc["float16", "beyond_floor"] == 1 and s.loc["float16", "earliest_beyond_floor"] == 5
    assert pd.isna(s.loc[FLOOR, "beyond_floor"]) and s.loc[FLOOR, "diverged"] == 1


def test_beyond_floor_per_prompt():
    rows = frame(row(FLOOR, "a", div=20, kl=1e-12), row(FLOOR, "b", kl=1e-6),
                 row("float16", "a", div=20),        # at the floor's own divergence: explained
                 row("float16", "a2", div=3),        # no floor measured on this prompt: unknown
                 row("bfloat16", "a", div=19),       # before it: not explained
                 row("bfloat16", "b", div=7, dec_kl=1e-7),  # decoding KL within the floor's on b: explained
                 row("float16", "b"))                # no divergence
    beyond = drift._beyond_floor(rows)
    assert [None if pd.isna(x) else bool(x) for x in beyond] == [None, None, False, None, True, False, False]


def test_clean_floor_and_a_divergence_say_the_precision_changed_the_text():
    """The case of the issue: 100% teacher-forced top-1 agreement beside a divergence at token 24."""
    texts = words(frame(row(FLOOR, "a", kl=1e-12), row(FLOOR, "b", kl=1e-12),
                        row("float16", "a", div=24, top1=1.0, dec_top1=31 / 32), row("float16", "b")))
    floor, fp16 = texts
    assert "Noise floor" in floor.en and "same token at every position on all 2 prompts" in floor.en
    assert "噪声基线" in floor.zh and "相同的词元" in floor.zh
    assert "departs from float32's on 1/2 prompts (first at new token 24)" in fp16.en
    assert "100.0% teacher-forced in one prefill and 98.4% in KV-cache decoding" in fp16.en
    assert "the lower precision, not the way of computing, changed the text" in fp16.en
    assert "Teacher-forced agreement scores each position on float32's own text" in fp16.en
    assert "第 24 个新词元" in fp16.zh and "改变文本的是较低的精度" in fp16.zh and "教师强制" in fp16.zh
    assert "98.4%" in fp16.zh


def test_a_divergence_after_the_floors_own_is_not_called_damage():
    texts = words(frame(row(FLOOR, "a", div=20, kl=1e-12, top1=31 / 32), row("float16", "a", div=24)))
    floor, fp16 = texts
    assert "float32 itself picks another token" in floor.en and "first at new token 20" in floor.en
    assert "speculative verification" in floor.en and "shows no low-precision damage" in floor.en
    assert "float32 自身" in floor.zh and "第 20 个新词元" in floor.zh and "推测解码" in floor.zh
    assert "within the noise floor, not evidence of low-precision damage" in fp16.en
    assert "噪声基线之内" in fp16.zh and "不能说明低精度造成了损害" in fp16.zh
    assert "changed the text" not in fp16.en


def test_a_divergence_before_the_floors_own_is_the_precision():
    _, fp16 = words(frame(row(FLOOR, "a", div=20, kl=1e-12), row("float16", "a", div=10)))
    assert "changed the text" in fp16.en and "Runs in float16 produce different text" in fp16.en
    assert "改变文本的是较低的精度" in fp16.zh


def test_some_prompts_explained_some_not():
    _, fp16 = words(frame(row(FLOOR, "a", div=20, kl=1e-12), row(FLOOR, "b", kl=1e-12),
                          row("float16", "a", div=24), row("float16", "b", div=9)))
    assert "2/2 prompts (first at new token 9" in fp16.en and "both ways on 1 of them" in fp16.en
    assert "在其中 1 个提示词" in fp16.zh


def test_no_divergence_and_no_floor():
    """Frames measured without the floor (or before the decoding columns existed) still read well."""
    old = frame(row("float16", "a"), row("bfloat16", "a", div=3)).drop(columns=["decode_top1_agreement",
                                                                                   "decode_mean_kl"])
    fp16, bf16 = words(old)
    assert "reproduces float32's greedy output on all 1 prompts" in fp16.en and "一致" in fp16.zh
    assert "noise floor" not in fp16.en.lower() and "KV-cache" not in fp16.en
    assert "first at new token 3)" in bf16.en and "changed the text" not in bf16.en
    assert "Runs in bfloat16 produce different text" in bf16.en and "只在同一精度内比较速度" in bf16.zh
    assert findings.on_drift(drift.summary(pd.DataFrame())) == []


# -- on the tiny pair (random weights, CPU) -------------------------------------------------------------------


def test_floor_and_fed_decoding_match_free_running_greedy(tiny_pair, capsys):
    """The fed KV-cache decoding finds exactly where each dtype's own greedy output departs from float32's."""
    from specnb.decode.loops import autoregressive
    from specnb.models import ModelSpec, load
    from specnb.prompts import load_prompts

    prompts = load_prompts("builtin:code", 2)
    rows = drift.measure(tiny_pair["cloud"], prompts, 12, dtypes=("float32", "float16", "bfloat16"))
    assert list(rows["dtype"]) == [FLOOR, FLOOR, "float16", "float16", "bfloat16", "bfloat16"]
    floor = rows[rows["dtype"] == FLOOR]
    assert floor["mean_kl"].lt(1e-6).all() and floor["top1_agreement"].between(0, 1).all()
    assert rows["decode_top1_agreement"].between(0, 1).all() and (rows["decode_mean_kl"] >= -1e-12).all()
    err = capsys.readouterr().err
    assert "drift" in err and "bfloat16" in err and "9/9" not in err and "6/6" in err

    for dtype in ("float16", "bfloat16"):
        ref, low = (load(ModelSpec(tiny_pair["cloud"], d, "cpu")) for d in ("float32", dtype))
        for p, (_, r) in zip(prompts, rows[rows["dtype"] == dtype].iterrows()):
            want = drift.first_divergence(autoregressive(ref, p.text, 12).tokens, autoregressive(low, p.text, 12).tokens)
            got = None if pd.isna(r["first_divergence"]) else int(r["first_divergence"])
            assert got == want, (dtype, p.id)


def test_measure_reuses_what_it_measured(tiny_pair, monkeypatch, capsys):
    from specnb import models
    from specnb.prompts import load_prompts

    prompts = load_prompts("builtin:code", 1)
    first = drift.measure(tiny_pair["cloud"], prompts, 4, dtypes=("float32", "bfloat16"), progress=False)
    assert capsys.readouterr().err.count("drift") == 0  # progress=False draws nothing

    def no_loading(spec):
        raise AssertionError("loaded again")

    monkeypatch.setattr(models, "load", no_loading)
    again = drift.measure(tiny_pair["cloud"], prompts, 4, dtypes=("float32", "bfloat16"), progress=False)
    pd.testing.assert_frame_equal(first, again)
    with pytest.raises(AssertionError, match="loaded again"):
        drift.measure(tiny_pair["cloud"], prompts, 5, dtypes=("float32", "bfloat16"), progress=False)
