"""Tiny random causal LMs (Llama, and one per architecture family: :data:`FAMILIES`) with a shared
byte-level BPE tokenizer, built in seconds for tests.

Importable from any test module (pytest puts tests/ on sys.path): ``from tiny_models import build_tokenizer, build_llama``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaForCausalLM, PreTrainedConfig, PreTrainedTokenizerFast

from specnb.zoo.tokenizer import train_tokenizer

TEXT = (
    "def parse(text):\n    return text.split()\n\nclass Stack:\n    def push(self, item):\n"
    "        self.items.append(item)\n    def pop(self):\n        return self.items.pop()\n"
    "import os\nimport sys\nfor i in range(10):\n    print(i, os.path.join('a', 'b'))\n"
) * 4


def build_tokenizer(folder: Path | None = None, vocab_size: int = 300, extra_tokens: list[str] | None = None,
                    texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    """The zoo's byte-level BPE (:func:`specnb.zoo.tokenizer.train_tokenizer`) with ``<eos>``, trained on
    ``texts`` (default: a few lines of Python); ``extra_tokens`` makes a deliberately different one.
    Saved to ``folder`` when given."""
    fast = train_tokenizer(texts or [TEXT], vocab_size, eos="<eos>", extra_tokens=extra_tokens or ())
    if folder is not None:
        fast.save_pretrained(folder)
    return fast


def build_llama(
    folder: Path,
    tokenizer: PreTrainedTokenizerFast,
    *,
    seed: int,
    layers: int = 2,
    hidden: int = 32,
    pad_vocab: int = 0,
    base: Path | None = None,
    noise: float = 0.0,
    eos_token_id: int | None = None,
) -> Path:
    """Save a random LlamaForCausalLM to ``folder`` (with the tokenizer).

    ``pad_vocab`` adds padding rows to the output layer (as Qwen's larger models do);
    ``base`` + ``noise`` makes a perturbed copy of another tiny model (a "related" draft).
    Weights are drawn with a large std so that logits are peaked and greedy ties are rare.
    """
    torch.manual_seed(seed)
    if base is not None:
        model = perturbed(base, noise)
    else:
        model = LlamaForCausalLM(family_config("llama", tokenizer, layers=layers, hidden=hidden, pad_vocab=pad_vocab))
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    model.config.eos_token_id = eos
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# Per family: its config class and what it needs beyond the shared settings of :func:`family_config`
# (head_dim where the default is the real models' 128 or 256; the sliding-window keys, filled in with
# ``window``). Qwen2 keeps its small models' tied embeddings; the Gemmas are untied here (tied, their
# sqrt(hidden)-scaled embedding dominates a 2-layer model, which then emits one token over and over). Beyond
# the families asked for: OLMo 2 and Granite, both shipped in sizes that make an edge/cloud pair
# (OLMo 2 1B/7B/13B, Granite 3 2B/8B) and both with their own code paths (norms after attention and
# on queries/keys; embedding, residual, attention and logit multipliers); Cohere 2 (Command R7B,
# Command A), one more hybrid sliding/full family, with parallel attention and MLP and a logit scale.
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),  # as Qwen2.5 0.5B-3B
    "qwen3": ("Qwen3Config", {"head_dim": 8}),
    "mistral": ("MistralConfig", {"head_dim": 8, "sliding_window": "window"}),
    "gemma2": ("Gemma2Config", {"head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": "window"}),  # sliding / full
    "gemma3": ("Gemma3TextConfig", {"head_dim": 8, "query_pre_attn_scalar": 8,
                                    "sliding_window": "window", "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("Phi3Config", {"sliding_window": "window"}),
    "gpt_neox": ("GPTNeoXConfig", {"rotary_pct": 0.5, "num_key_value_heads": None}),  # no grouped-query attention
    "olmo2": ("Olmo2Config", {}),
    "granite": ("GraniteConfig", {"embedding_multiplier": 4.0, "residual_multiplier": 0.5,
                                  "attention_multiplier": 0.125, "logits_scaling": 2.0}),
    "cohere2": ("Cohere2Config", {"head_dim": 8, "sliding_window": "window",
                                  "layer_types": ["sliding_attention", "full_attention"]}),
}
SLIDING = ("mistral", "gemma2", "gemma3", "phi3", "cohere2")


def family_config(family: str, tokenizer: PreTrainedTokenizerFast, *, layers: int = 2, hidden: int = 32,
                  window: int | None = None, pad_vocab: int = 0) -> PreTrainedConfig:
    """A tiny config of ``family`` (a key of :data:`FAMILIES`): 4 heads of 8 (2 key/value heads where the
    family has them), a large init std (peaked logits: greedy ties are rare), ``window`` as the sliding
    window of the families that have one (required for those)."""
    name, extra = FAMILIES[family]
    if "window" in extra.values() and window is None:
        raise ValueError(f"{family} has sliding-window layers: pass window=")
    settings = dict(
        vocab_size=len(tokenizer) + pad_vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=0.3, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=tokenizer.eos_token_id,
    )
    settings |= {key: window if value == "window" else value for key, value in extra.items()}
    settings = {key: value for key, value in settings.items() if value is not None or key != "num_key_value_heads"}
    return getattr(transformers, name)(**settings)


def perturbed(base: Path, noise: float):
    """The tiny model saved at ``base`` with every weight moved by ``noise`` x its own std (a related draft)."""
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p) * p.std())
    return model


def build_family(folder: Path, tokenizer: PreTrainedTokenizerFast, family: str, *, seed: int,
                 base: Path | None = None, noise: float = 0.0, **config) -> Path:
    """Save a random model of ``family`` (:func:`family_config` takes ``config``) to ``folder`` with the
    tokenizer; ``base`` + ``noise``: a perturbed copy of another tiny model instead (a related draft)."""
    torch.manual_seed(seed)
    if base is not None:
        model = perturbed(base, noise)
    else:
        model = AutoModelForCausalLM.from_config(family_config(family, tokenizer, **config))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
