"""The architecture matrix: on a tiny random model of each family (:data:`tiny_models.FAMILIES`), saved to a
folder and loaded with :func:`specnb.load`, greedy speculative decoding == autoregressive decoding ==
Hugging Face ``generate``, in the plain set-up and the optimized one.

Sliding-window families get a window shorter than the prompt + output, so that speculation rolls its
caches back past the window (where a crop once crashed). The optimized set-up runs eager here
(``compile=False``: static caches, padded verification); only Gemma 3's cloud, with hybrid sliding/full
layers, also runs through ``torch.compile`` (:func:`test_compiled_steps_past_the_window`): compiling
every family would cost minutes on a small CPU.
"""

from __future__ import annotations

import types

import pytest
import torch
from transformers.cache_utils import Cache, LinearAttentionLayer

from specnb import ModelSpec, autoregressive, load, speculative
from specnb.decode.hf_reference import hf_assisted
from specnb.decode.steps import check_rollback
from tiny_models import FAMILIES, SLIDING, build_family, build_tokenizer

WINDOW = 12
N = 24
GAMMA = 4
PROMPTS = [  # shorter than the window (generation crosses it), and longer (the prefill does)
    "def parse(text):",
    "class Stack:\n    def push(self, item):\n        self.items.append(item)\n    def pop(self):",
]
PADDED = "qwen2"  # its cloud's output layer has 16 rows more than the tokenizer has tokens (as Qwen2.5's)
COMPILED = "gemma3"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tokenizer, tmp_path_factory) -> dict:
    """A family's cloud and edge (loaded), the window if it has one.

    The edge is the cloud with 3% noise (a related draft: some rounds accept everything, some reject);
    the padded family's edge is a separate model (its output layer has another size)."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    window = WINDOW if family in SLIDING else None
    pad = 16 if family == PADDED else 0
    build_family(root / "cloud", tokenizer, family, seed=0, window=window, pad_vocab=pad)
    if pad:
        build_family(root / "edge", tokenizer, family, seed=1, window=window)
    else:
        build_family(root / "edge", tokenizer, family, seed=1, base=root / "cloud", noise=0.03)
    spec = lambda role: ModelSpec(str(root / role), device="cpu")  # noqa: E731
    return {"family": family, "cloud": load(spec("cloud")), "edge": load(spec("edge")), "window": window,
            "built_vocab": len(tokenizer)}


def hf_greedy(m, prompt: str, n: int) -> list[int]:
    """Hugging Face ``generate``, greedy, on Hugging Face's own cache; ids past the tokenizer (padding of
    the output layer) suppressed, as specnb cuts them."""
    ids = torch.tensor([m.encode(prompt)])
    padding = list(range(len(m.tokenizer), m.model.config.vocab_size))
    out = m.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                           pad_token_id=m.tokenizer.eos_token_id, suppress_tokens=padding or None)
    return out[0, ids.shape[1]:].tolist()


def test_greedy_speculative_equals_autoregressive_equals_hf(pair):
    cloud, edge, window = pair["cloud"], pair["edge"], pair["window"]
    rejected = 0
    for prompt in PROMPTS:
        want = hf_greedy(cloud, prompt, N)
        assert autoregressive(cloud, prompt, N).tokens == want
        assert autoregressive(cloud, prompt, N, optimized=True, compile=False).tokens == want
        plain = speculative(edge, cloud, prompt, N, gamma=GAMMA)
        assert plain.tokens == want
        fast = speculative(edge, cloud, prompt, N, gamma=GAMMA, optimized=True, compile=False)
        assert fast.tokens == want
        assert fast.trace == plain.trace
        rejected += plain.metrics["rejected_rounds"]
        if window:
            assert len(cloud.encode(prompt)) + len(want) > window + GAMMA
    assert rejected > 0  # caches were cut back (past the window, for the sliding families)


def test_families_have_the_layers_under_test(pair):
    """Guards the matrix itself: the sliding families have sliding layers, the padded pair pads."""
    config = pair["cloud"].model.config
    if pair["window"]:
        assert config.sliding_window == WINDOW
        assert "sliding_attention" in (getattr(config, "layer_types", None) or ["sliding_attention"])
    if pair["family"] == PADDED:
        assert config.vocab_size == pair["built_vocab"] + 16 and config.tie_word_embeddings
        assert pair["edge"].model.config.vocab_size == pair["built_vocab"]
        assert pair["cloud"].vocab_size < config.vocab_size  # decoding cuts the padding off


@pytest.mark.parametrize("pair", [COMPILED], indirect=True)
def test_compiled_steps_past_the_window(pair):
    """The compiled cloud (a decode step; a verification of gamma + 1 positions) on full-length static
    layers: the sliding mask is built inside the graph. One family only (two graphs to compile)."""
    cloud, edge = pair["cloud"], pair["edge"]
    for prompt in PROMPTS:
        want = hf_greedy(cloud, prompt, N)
        assert autoregressive(cloud, prompt, N, optimized=True, compile=True).tokens == want
        g = speculative(edge, cloud, prompt, N, gamma=GAMMA, optimized="cloud", compile=True)
        assert g.tokens == want


@pytest.mark.parametrize("setup", [{"optimized": "edge"}, {"optimized": "cloud"}, {"levers_off": ["crop"]}],
                         ids=["edge-optimized", "cloud-optimized", "caches-rebuilt"])
@pytest.mark.parametrize("pair", SLIDING, indirect=True)
def test_other_setups_past_the_window(pair, setup):
    """One side static (the other dynamic), and the plain loop's rebuild-instead-of-crop lever."""
    cloud, edge = pair["cloud"], pair["edge"]
    for prompt in PROMPTS:
        plain = speculative(edge, cloud, prompt, N, gamma=GAMMA)
        g = speculative(edge, cloud, prompt, N, gamma=GAMMA, compile=False, **setup)
        assert g.tokens == plain.tokens and g.trace == plain.trace


@pytest.mark.parametrize("pair", SLIDING, indirect=True)
def test_hf_assisted_generation_past_the_window(pair):
    """The peer on the same pair: Hugging Face's assisted generation records the past of its sliding
    layers (``activate_past_recording``) and rolls back past the window losslessly too."""
    cloud, edge = pair["cloud"], pair["edge"]
    for prompt in PROMPTS:
        assert hf_assisted(edge, cloud, prompt, N, gamma=GAMMA).tokens == hf_greedy(cloud, prompt, N)


def test_a_cache_that_cannot_roll_back_is_refused():
    """A layer with a recurrent state (linear attention) cannot forget a rejected draft: refused by name."""
    model = types.SimpleNamespace(model=types.SimpleNamespace(config=types.SimpleNamespace(model_type="qwen3_next")))
    with pytest.raises(ValueError, match="qwen3_next.*LinearAttentionLayer.*autoregressive"):
        check_rollback(Cache(layers=[LinearAttentionLayer()]), model)


def test_a_real_recurrent_model_is_refused_before_any_work(tokenizer, tmp_path):
    """End to end, on a tiny Qwen3-Next (linear attention + full attention) saved to a folder: whatever the
    installed transformers says of its layers (5.25 calls linear-attention layers croppable), speculative
    decoding refuses it by name before the first round, plain and optimized, instead of failing mid-run or
    returning tokens that are not the cloud's. Autoregressive decoding still runs it."""
    import transformers

    config = transformers.Qwen3NextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        layer_types=["linear_attention", "full_attention"], num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
        linear_value_head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        shared_expert_intermediate_size=16, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = load(ModelSpec(str(tmp_path), device="cpu"))
    assert len(autoregressive(model, PROMPTS[0], 4).tokens) == 4
    for optimized in (False, True):
        with pytest.raises(ValueError, match="qwen3_next.*LinearAttention.*autoregressive"):
            speculative(model, model, PROMPTS[0], 8, gamma=GAMMA, optimized=optimized, compile=False)


@pytest.mark.parametrize("pair", SLIDING, indirect=True)
def test_hf_assisted_optimized_past_the_window_is_refused_by_name(pair):
    """Hugging Face's static sliding layers cannot roll back past the window (its assisted generation
    refuses them with "requires a cache that can be cropped"); the peer names the set-up that can."""
    with pytest.raises(ValueError, match=f"sliding window \\({WINDOW}\\).*optimized=False"):
        hf_assisted(pair["edge"], pair["cloud"], PROMPTS[0], N, gamma=GAMMA, optimized=True)
