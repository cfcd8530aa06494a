"""Shared fixtures: fake method notebooks (no model needed) and fake model folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# Tiny test models gain nothing from intra-op threads, and on a shared machine a busy second
# core makes every OpenMP region wait for it (a tiny matmul then takes milliseconds, not
# microseconds). Tests that check thread caps set their own counts explicitly.
torch.set_num_threads(1)

from specnb.study.params import NOTEBOOKS

from fake_notebooks import make_fake_notebook  # noqa: E402  (a plain module: 'conftest' is ambiguous under two roots)


@pytest.fixture
def fake_notebooks(tmp_path: Path) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for method, name in NOTEBOOKS.items():
        make_fake_notebook(folder / name, method)
    return folder


@pytest.fixture
def fake_models(tmp_path: Path) -> dict[str, str]:
    """Two folders that pass the 'model exists' check (config.json only)."""
    out = {}
    for role in ("edge", "cloud"):
        folder = tmp_path / f"{role}-model"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
        out[role] = str(folder)
    return out


CONFTEST_TEXT = ["def read_config(path):\n    return open(path).read()\n", "class Queue:\n    def __init__(self):\n",
                 "for key, value in sorted(mapping.items()):\n        if value is None:\n"] * 4


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> dict[str, str]:
    """Two tiny random Llama models (1 and 2 layers) sharing one tokenizer: folders by role."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_models import build_tokenizer

    tokenizer = build_tokenizer(texts=CONFTEST_TEXT)
    root = tmp_path_factory.mktemp("tiny_pair")
    out = {}
    for role, layers in (("edge", 1), ("cloud", 2)):
        torch.manual_seed(layers)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                             num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                             max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=None, pad_token_id=None)
        folder = root / role
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[role] = str(folder)
    return out


@pytest.fixture(scope="session")
def related_pair(tmp_path_factory) -> Path:
    """The tests' speculative pair, built once: a folder with ``tok`` (the tokenizer), ``cloud`` (a
    tiny random Llama, seed 0) and ``edge`` (the cloud perturbed by noise 0.05: a related draft that
    is accepted often, as a distilled edge would be)."""
    from tiny_models import build_llama, build_tokenizer

    root = tmp_path_factory.mktemp("related_pair")
    tok = build_tokenizer(root / "tok")
    build_llama(root / "cloud", tok, seed=0)
    build_llama(root / "edge", tok, seed=2, base=root / "cloud", noise=0.05)
    return root
