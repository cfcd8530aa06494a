"""The decoding loops against each other and against Hugging Face ``generate``, on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch

from specnb import ModelSpec, autoregressive, load, speculative
from specnb.decode.verifying import accept_greedy, accept_rank, accept_sample
from tiny_models import build_llama, build_tokenizer

PROMPTS = [
    "def parse(text):",
    "class Stack:\n    def push(self, item):",
    "import os",
    "for i in range(10):\n    print(",
    "x",
]
GAMMAS = [1, 2, 4, 8]
N = 24


@pytest.fixture(scope="module")
def pair(related_pair, tmp_path_factory):
    """cloud, an unrelated edge, a related (perturbed cloud) edge, and a padded-vocab cloud."""
    root = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer()  # the related pair's (trained the same way)
    build_llama(root / "unrelated", tok, seed=1, layers=1)
    build_llama(root / "padded", tok, seed=3, pad_vocab=16)
    folders = {"cloud": related_pair / "cloud", "related": related_pair / "edge",
               "unrelated": root / "unrelated", "padded": root / "padded"}
    return {name: load(ModelSpec(str(f), device="cpu")) for name, f in folders.items()} | {"root": related_pair}


def hf_greedy(m, prompt, n):
    ids = torch.tensor([m.encode(prompt)])
    out = m.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                           pad_token_id=m.tokenizer.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_autoregressive_matches_hf_generate(pair):
    cloud = pair["cloud"]
    for prompt in PROMPTS:
        ours = autoregressive(cloud, prompt, N)
        assert ours.tokens == hf_greedy(cloud, prompt, N)
        assert autoregressive(cloud, prompt, N, optimized=True).tokens == ours.tokens


@pytest.mark.parametrize("draft", ["unrelated", "related", "cloud"])
def test_greedy_speculative_equals_cloud_greedy(pair, draft):
    cloud, edge = pair["cloud"], pair[draft]
    rates = []
    for prompt in PROMPTS:
        want = autoregressive(cloud, prompt, N).tokens
        for gamma in GAMMAS:
            g = speculative(edge, cloud, prompt, N, gamma=gamma)
            assert g.tokens == want, (prompt, gamma)
            m = g.metrics
            assert m["new_tokens"] == len(g.tokens)
            assert len(g.tokens) == N or (len(g.tokens) < N and g.tokens[-1] in cloud.eos_ids)
            assert m["accepted"] <= m["drafted"]
            assert m["acceptance_rate"] == pytest.approx(m["accepted"] / m["drafted"])
            assert m["cloud_calls"] == m["rounds"] + (1 if len(cloud.encode(prompt)) > 1 else 0)
            assert m["rounds"] == len(g.trace) and sum(g.trace) == m["accepted"]
            assert m["tokens_per_round"] == pytest.approx(len(g.tokens) / m["rounds"])
            if draft == "cloud":
                assert m["acceptance_rate"] == 1.0
                assert m["rounds"] == math.ceil(len(g.tokens) / (gamma + 1))
            rates.append(m["acceptance_rate"])
    mean = sum(rates) / len(rates)
    if draft == "unrelated":
        assert mean < 0.2
    elif draft == "related":
        assert 0.2 < mean < 1.0


def test_stops_at_eos_reached_mid_draft(pair, tmp_path):
    root = pair["root"]
    tok_folder = root / "tok"
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_folder)
    cloud = pair["cloud"]
    prompt = PROMPTS[0]
    full = autoregressive(cloud, prompt, N).tokens
    stop_at = 9
    eos = full[stop_at]
    assert eos not in full[:stop_at]
    c = load(ModelSpec(str(build_llama(tmp_path / "c", tok, seed=0, eos_token_id=eos)), device="cpu"))
    e = load(ModelSpec(str(build_llama(tmp_path / "e", tok, seed=0, eos_token_id=eos)), device="cpu"))
    want = full[: stop_at + 1]
    assert autoregressive(c, prompt, N).tokens == want
    for gamma in GAMMAS:  # the identical draft runs through the EOS inside a draft
        g = speculative(e, c, prompt, N, gamma=gamma)
        assert g.tokens == want
        assert g.metrics["new_tokens"] == stop_at + 1
        assert g.metrics["accepted"] <= g.metrics["drafted"]


def test_padded_output_layer_pairs_with_same_tokenizer(pair):
    cloud = pair["padded"]  # 16 more logits than the tokenizer has tokens
    assert cloud.model.config.vocab_size == len(cloud.tokenizer) + 16
    for prompt in PROMPTS[:3]:
        want = autoregressive(cloud, prompt, N)
        assert max(want.tokens) < len(cloud.tokenizer)
        for edge in (pair["unrelated"], pair["cloud"]):
            assert speculative(edge, cloud, prompt, N, gamma=4).tokens == want.tokens


def test_rank_rule_limits(pair):
    cloud, edge = pair["cloud"], pair["related"]
    vocab = len(cloud.tokenizer)
    for prompt in PROMPTS[:3]:
        greedy = speculative(edge, cloud, prompt, N, gamma=4)
        assert speculative(edge, cloud, prompt, N, gamma=4, verify="rank", rank_k=1).tokens == greedy.tokens
        everything = speculative(edge, cloud, prompt, N, gamma=4, verify="rank", rank_k=vocab)
        assert everything.metrics["acceptance_rate"] == 1.0
        assert all(n == 4 for n in everything.trace[:-1])  # every full round keeps all 4 drafts


def test_token_id_prompt_equals_text_prompt(pair):
    cloud, edge = pair["cloud"], pair["related"]
    ids = cloud.encode(PROMPTS[1])
    assert speculative(edge, cloud, ids, N).tokens == speculative(edge, cloud, PROMPTS[1], N).tokens


def test_sampling_is_reproducible_with_seed(pair):
    cloud, edge = pair["cloud"], pair["related"]
    a = speculative(edge, cloud, PROMPTS[0], N, verify="sample", temperature=1.0, seed=7)
    b = speculative(edge, cloud, PROMPTS[0], N, verify="sample", temperature=1.0, seed=7)
    assert a.tokens == b.tokens
    c = autoregressive(cloud, PROMPTS[0], N, temperature=1.0, seed=7)
    assert c.tokens == autoregressive(cloud, PROMPTS[0], N, temperature=1.0, seed=7).tokens


# ---------------------------------------------------------------- the acceptance rules as pure functions

def test_accept_greedy_prefix():
    assert accept_greedy([1, 2, 3], [1, 2, 9, 4]) == (2, 9)
    assert accept_greedy([1, 2, 3], [1, 2, 3, 4]) == (3, 4)
    assert accept_greedy([5], [1, 2]) == (0, 1)
    assert accept_greedy([], [7]) == (0, 7)


def test_accept_rank_uses_top_k():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0], [5.0, 0.0, 0.0, 4.0], [0.0, 0.0, 1.0, 0.0]])
    assert accept_rank([2, 3], logits, 1) == (0, 1)
    assert accept_rank([2, 3], logits, 2) == (2, 2)
    assert accept_rank([3, 3], logits, 2) == (0, 1)


def _wrong_rule(draft, p, q, generator):
    """Deliberately broken: accepts with probability p/q but resamples from p, not from (p - q)+."""
    n, _ = accept_sample(draft, p, q, generator)
    if n < len(draft):
        return n, int(torch.multinomial(p[n], 1, generator=generator))
    return n, int(torch.multinomial(p[len(draft)], 1, generator=generator))


def _first_token_tv(rule, p, q, trials, seed=0):
    """Total variation between p[0] and the first emitted token of ``rule`` with drafts drawn from q."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(p.shape[-1])
    for _ in range(trials):
        draft = [int(torch.multinomial(q[i], 1, generator=gen)) for i in range(q.shape[0])]
        n, nxt = rule(draft, p, q, gen)
        counts[(draft[:n] + [nxt])[0]] += 1
    return 0.5 * (counts / trials - p[0]).abs().sum().item()


def test_accept_sample_matches_target_distribution():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]])
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    trials = 6000  # TV noise for 4 outcomes at this size is ~0.01
    assert _first_token_tv(accept_sample, p, q, trials) < 0.03
    # the test has teeth: the broken rule lands near TV 0.13 and fails the same bound
    assert _first_token_tv(_wrong_rule, p, q, trials) > 0.06


def test_speculative_sampling_matches_cloud_sampling(pair):
    """First new token over many seeds: speculative sampling vs the cloud's own distribution."""
    cloud, edge = pair["cloud"], pair["unrelated"]
    prompt = cloud.encode("def parse(")
    temperature = 2.0  # spread the distribution so that a wrong rule would show
    with torch.inference_mode():
        logits = cloud.model(torch.tensor([prompt])).logits[0, -1, : cloud.vocab_size]
    p = torch.softmax(logits.float() / temperature, -1)
    trials = 1500
    counts = torch.zeros_like(p)
    for seed in range(trials):
        g = speculative(edge, cloud, prompt, 2, gamma=1, verify="sample", temperature=temperature, seed=seed)
        counts[g.tokens[0]] += 1
    top = torch.topk(p, 8).indices  # compare on the 8 likeliest tokens + the rest as one bucket
    emp = torch.cat([counts[top] / trials, (trials - counts[top].sum()).view(1) / trials])
    ref = torch.cat([p[top], (1 - p[top].sum()).view(1)])
    tv = 0.5 * (emp - ref).abs().sum().item()
    assert tv < 0.08, tv


def test_compiled_optimized_step_matches_plain(pair):
    """The torch.compile path of optimized=True (default on CUDA) gives the same greedy tokens on CPU."""
    cloud = pair["cloud"]
    want = autoregressive(cloud, PROMPTS[0], N).tokens
    g = autoregressive(cloud, PROMPTS[0], N, optimized=True, compile=True)
    assert g.tokens == want
    assert g.metrics["compile_s"] > 0


@pytest.mark.parametrize("schedule", ["heuristic", "cost"])
def test_adaptive_schedules_keep_greedy_output(pair, schedule):
    cloud, edge = pair["cloud"], pair["related"]
    for prompt in PROMPTS[:3]:
        g = speculative(edge, cloud, prompt, N, gamma=4, schedule=schedule)
        assert g.tokens == autoregressive(cloud, prompt, N).tokens
        assert sum(g.drafted_trace) == g.metrics["drafted"]
        if schedule == "cost":
            assert max(g.drafted_trace) <= 4


@pytest.mark.parametrize("schedule", ["constant", "heuristic", "cost"])
def test_optimized_speculative_keeps_greedy_output(pair, schedule):
    """Static caches + compiled steps + padded verification give the same tokens as the plain loop."""
    cloud, edge = pair["cloud"], pair["related"]
    for prompt in PROMPTS[:3]:
        g = speculative(edge, cloud, prompt, N, gamma=4, schedule=schedule, optimized=True)
        plain = speculative(edge, cloud, prompt, N, gamma=4, schedule=schedule)
        assert g.tokens == autoregressive(cloud, prompt, N).tokens
        if schedule != "cost":  # the cost rule picks draft lengths from measured step times: runs differ
            assert g.trace == plain.trace


@pytest.mark.parametrize("optimized", ["edge", "cloud"])
def test_one_model_optimized_keeps_greedy_output(pair, optimized):
    cloud, edge = pair["cloud"], pair["related"]
    plain = speculative(edge, cloud, PROMPTS[1], N, gamma=3)
    g = speculative(edge, cloud, PROMPTS[1], N, gamma=3, optimized=optimized)
    assert g.tokens == plain.tokens == autoregressive(cloud, PROMPTS[1], N).tokens
    assert g.trace == plain.trace


@pytest.mark.parametrize("lever", ["logits_to_keep", "one_sync", "crop"])
def test_levers_off_change_speed_not_output(pair, lever):
    """Each ablation of the plain loop gives the same tokens and per-round acceptances."""
    cloud, edge = pair["cloud"], pair["related"]
    for prompt in PROMPTS[:2] + PROMPTS[-1:]:
        plain = speculative(edge, cloud, prompt, N, gamma=3)
        g = speculative(edge, cloud, prompt, N, gamma=3, levers_off=[lever])
        assert g.tokens == plain.tokens
        assert g.trace == plain.trace


def test_lever_and_optimized_errors(pair):
    cloud, edge = pair["cloud"], pair["related"]
    with pytest.raises(ValueError, match="unknown lever.*'sync'.*use any of logits_to_keep, one_sync, crop"):
        speculative(edge, cloud, "x", 4, levers_off=["sync"])
    with pytest.raises(ValueError, match=r"list of lever names, e.g. \['crop'\]"):
        speculative(edge, cloud, "x", 4, levers_off="crop")
    with pytest.raises(ValueError, match="optimized=False"):
        speculative(edge, cloud, "x", 4, levers_off=["crop"], optimized=True)
    with pytest.raises(ValueError, match="optimized must be True, False, 'edge' or 'cloud'"):
        speculative(edge, cloud, "x", 4, optimized="both")


def test_compiled_steps_hold_more_graphs_than_torch_default(pair, monkeypatch):
    """Regression: edge and cloud share one forward, so the graphs of one benchmark (2 edge shapes, one
    cloud shape per gamma) pass torch's recompile limit. Past it dynamo silently ran the cloud eager
    on a static cache, timed as 'optimized'. Warm-up now makes room, and fails loudly past that."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    import specnb.decode.steps as steps

    cloud, edge = pair["cloud"], pair["related"]
    prompt = "for i in range(10):\n    print(i)\n" * 40  # > 256 tokens: a cache bucket no other test compiles
    assert len(cloud.encode(prompt)) > 256
    want = autoregressive(cloud, prompt, 8).tokens
    before = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(recompile_limit=2):  # (monkeypatch would delete the config entry on undo)
        for gamma in (1, 2):  # cloud widths 2 and 3, edge shapes (1, 1) and (2, 1): more than 2 graphs
            g = speculative(edge, cloud, prompt, 8, gamma=gamma, optimized=True)
            assert g.tokens == want
    assert counters["stats"]["unique_graphs"] >= before + 4  # compiled here, not skipped
    monkeypatch.setattr(steps, "GRAPH_LIMIT", 1)
    with torch._dynamo.config.patch(recompile_limit=1), pytest.raises(Exception, match="(?i)recompile.limit"):
        speculative(edge, cloud, prompt, 8, gamma=5, optimized=True)
    assert torch._dynamo.config.recompile_limit == 8
