"""Tiny random Llama models with a shared byte-level BPE tokenizer, built in seconds for tests.

Importable from any test module (pytest puts tests/ on sys.path): ``from tiny_models import build_tokenizer, build_llama``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
        model = LlamaForCausalLM.from_pretrained(base)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn_like(p) * p.std())
    else:
        cfg = LlamaConfig(
            vocab_size=len(tokenizer) + pad_vocab, hidden_size=hidden, intermediate_size=2 * hidden,
            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, initializer_range=0.3, tie_word_embeddings=False,
            eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=tokenizer.eos_token_id,
        )
        model = LlamaForCausalLM(cfg)
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    model.config.eos_token_id = eos
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
