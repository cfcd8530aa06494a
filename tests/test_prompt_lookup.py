"""Prompt lookup decoding: the n-gram drafter against Hugging Face's, and lossless under greedy verification."""

from __future__ import annotations

import random

import pytest
import torch
from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

from specnb import ModelSpec, PromptLookup, autoregressive, load, speculative
from specnb.decode.hf_reference import hf_prompt_lookup
from specnb.decode.roles import Drafter, RoundSettings
from tiny_models import build_llama, build_tokenizer

PROMPTS = ["def parse(text):", "import os", "x"]
REPEATING = "for i in range(10):\n    print(i)\n" * 3  # the continuation copies the prompt
N = 24


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer(root / "tok")
    return load(ModelSpec(str(build_llama(root / "cloud", tok, seed=0)), device="cpu"))


def hf_draft(seq: list[int], g: int, max_ngram: int) -> list[int]:
    gen = PromptLookupCandidateGenerator(num_output_tokens=g, max_matching_ngram_size=max_ngram, max_length=10**6)
    ids = torch.tensor([seq])
    candidates, _ = gen.get_candidates(ids)
    return candidates[0, len(seq):].tolist()


def test_drafts_equal_hugging_face_candidates():
    """On random sequences over a small alphabet (many matches), grown token by token as in a generation."""
    rng = random.Random(0)
    for trial in range(40):
        seq = [rng.randrange(5) for _ in range(rng.randrange(1, 40))]
        max_ngram, g = rng.randrange(1, 5), rng.randrange(1, 8)
        lookup = PromptLookup(max_ngram=max_ngram)
        lookup.begin(seq, RoundSettings())
        for _ in range(8):
            assert lookup.draft(seq, g) == (hf_draft(seq, g, max_ngram), None), (seq, g, max_ngram)
            seq = seq + [rng.randrange(5)]


def test_draft_rules():
    lookup = PromptLookup(max_ngram=2)
    assert isinstance(lookup, Drafter)
    assert lookup.draft([1, 2, 3, 9, 2, 3], 4) == ([9, 2, 3], None)  # the 2-gram (2, 3) matched first
    assert lookup.draft([7, 7, 7], 4) == ([7], None)  # only what exists after the first occurrence
    assert lookup.draft([1, 2, 3], 4) == ([], None)  # no earlier occurrence: empty draft
    assert lookup.draft([1, 2, 1], 0) == ([], None)
    assert PromptLookup(max_ngram=3, min_ngram=2).draft([4, 1, 5, 1], 2) == ([], None)  # 1-grams not tried
    with pytest.raises(ValueError, match="1 <= min_ngram <= max_ngram"):
        PromptLookup(max_ngram=0)


@pytest.mark.parametrize("max_ngram", [1, 3])
def test_greedy_output_equals_cloud_greedy(cloud, max_ngram):
    for prompt in PROMPTS + [REPEATING]:
        want = autoregressive(cloud, prompt, N).tokens
        for gamma in (1, 2, 4, 8):
            g = speculative(PromptLookup(max_ngram=max_ngram), cloud, prompt, N, gamma=gamma)
            assert g.tokens == want, (prompt, gamma)
            m = g.metrics
            assert m["edge_calls"] == 0 and m["accepted"] <= m["drafted"] <= gamma * m["rounds"]
            assert sum(g.drafted_trace) == m["drafted"] and sum(g.trace) == m["accepted"]


def test_repeating_prompt_gets_drafts_accepted(cloud):
    want = autoregressive(cloud, REPEATING, N).tokens
    g = speculative(PromptLookup(), cloud, REPEATING, N, gamma=4)
    assert g.tokens == want
    assert g.metrics["accepted"] > 0
    assert g.metrics["rounds"] < N  # fewer cloud rounds than tokens
    # the rank rule needs no draft probabilities either; optimized pads verification (compile off: fast)
    assert speculative(PromptLookup(), cloud, REPEATING, N, gamma=4, verify="rank", rank_k=1).tokens == want
    opt = speculative(PromptLookup(), cloud, REPEATING, N, gamma=4, optimized=True, compile=False)
    assert opt.tokens == want and opt.trace == g.trace


def test_sampling_is_refused_with_the_fix(cloud):
    with pytest.raises(ValueError, match="verify='greedy'"):
        speculative(PromptLookup(), cloud, "x", 4, verify="sample", temperature=1.0)


def test_hf_prompt_lookup_peer(cloud):
    for prompt in (PROMPTS[0], REPEATING):
        ours = speculative(PromptLookup(max_ngram=3), cloud, prompt, N, gamma=4)
        hf = hf_prompt_lookup(cloud, prompt, N, gamma=4, max_ngram=3)
        assert hf.tokens == ours.tokens == autoregressive(cloud, prompt, N).tokens
        m = hf.metrics
        assert m["new_tokens"] == N and m["cloud_calls"] == m["rounds"] and m["edge_calls"] == 0
        assert 0 <= m["accepted"] <= m["drafted"] <= 4 * m["rounds"]
        # same rounds and acceptances; HF's last drafts may run past max_new_tokens (it trims after), ours do not
        assert (m["rounds"], m["accepted"]) == (ours.metrics["rounds"], ours.metrics["accepted"])
        assert m["drafted"] >= ours.metrics["drafted"]
    assert hf.metrics["accepted"] > 0
