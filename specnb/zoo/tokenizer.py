"""The pair's shared tokenizer: a byte-level BPE trained with ``tokenizers`` on the corpus.

Byte-level means every string encodes (no unknown token); a small vocabulary (about 2k)
keeps the embedding tables small and each next token easier to predict. One special token,
``<|endoftext|>``, separates documents and serves as BOS, EOS and padding.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, eos: str = EOS,
                    extra_tokens: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` tokens (special token included) on ``texts``.

    ``eos`` is the one special token (BOS, EOS and padding); ``extra_tokens`` are added after
    training (tests use them to make a deliberately different vocabulary).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    extra = list(extra_tokens)
    if extra:
        tok.add_tokens(extra)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eos, eos_token=eos, pad_token=eos,
        clean_up_tokenization_spaces=False,
    )
