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
