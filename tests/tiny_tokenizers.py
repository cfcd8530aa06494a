"""Tiny tokenizers that differ from :func:`tiny_models.build_tokenizer`'s byte-level BPE, for pairs
with different tokenizers: another byte-level BPE (other merges, other size, other special token) and a
SentencePiece-style BPE (``▁`` for a space, ``<0xNN>`` byte fallback, a ``▁`` prefixed to the text as
Llama 2's tokenizer does).

Importable from any test module: ``from tiny_tokenizers import build_other_bytelevel, build_sentencepiece``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from specnb.zoo.tokenizer import train_tokenizer
from tiny_models import TEXT

# other text than tiny_models.TEXT: other merges win
OTHER_TEXT = (
    "The quick brown fox jumps over the lazy dog. Unicode: café, naïve, 東京, emoji 🙂.\n"
    "def main():\n    for item in items:\n        yield item.strip()\n"
    "while True:\n    break\n"
) * 4


def build_other_bytelevel(folder: Path | None = None, vocab_size: int = 420) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on other text, with another size and another EOS string (``</s>``) than
    :func:`tiny_models.build_tokenizer`'s."""
    fast = train_tokenizer([OTHER_TEXT + TEXT[:200]], vocab_size, eos="</s>")
    if folder is not None:
        fast.save_pretrained(folder)
    return fast


def build_sentencepiece(folder: Path | None = None, vocab_size: int = 500) -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE: ``▁`` marks a space (and is prefixed to the text), bytes the merges do not
    cover fall back to ``<0xNN>`` tokens; ``<s>`` / ``</s>`` specials, ``<s>`` added at the start."""
    trained = Tokenizer(models.BPE(byte_fallback=True, unk_token=None))
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    trained.train_from_iterator([TEXT, OTHER_TEXT], trainer=trainer)
    spec = json.loads(trained.to_str())
    learned = spec["model"]["vocab"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for tok_, _ in sorted(learned.items(), key=lambda kv: kv[1]):
        vocab.setdefault(tok_, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>", clean_up_tokenization_spaces=False)
    if folder is not None:
        fast.save_pretrained(folder)
    return fast


def build_trained(folder: Path, tokenizer: PreTrainedTokenizerFast, *, seed: int, steps: int = 120,
                  text: str | None = None, hidden: int = 64, layers: int = 2) -> Path:
    """A tiny Llama trained for ``steps`` Adam steps on ``text`` (default: both texts of this module), saved
    with its tokenizer. Two models trained on the same text, whatever their tokenizers, continue it the
    same way: a pair whose drafts get accepted, so translation is measured, not only checked."""
    import torch
    from transformers import LlamaForCausalLM

    from tiny_models import family_config

    torch.manual_seed(seed)
    config = family_config("llama", tokenizer, layers=layers, hidden=hidden)
    config.initializer_range = 0.02
    model = LlamaForCausalLM(config)
    ids = torch.tensor(tokenizer(text or (TEXT + OTHER_TEXT), add_special_tokens=False)["input_ids"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    window = 64
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - window - 1, (16,), generator=gen)
        batch = torch.stack([ids[s:s + window + 1] for s in starts.tolist()])
        loss = torch.nn.functional.cross_entropy(model(input_ids=batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
