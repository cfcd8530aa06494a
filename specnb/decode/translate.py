"""Drafting with another tokenizer than the cloud's: a :class:`~specnb.decode.roles.Drafter` that proposes in
the cloud's token ids (universal assisted generation).

An edge of another family (a Llama-style 1B on a phone, a Qwen or a Gemma in the data centre) splits
text into other tokens. :class:`TranslatingDrafter` wraps the edge's own drafter and speaks the cloud's
ids on the round's side of the seam, so the verifier and the loop are unchanged. Two modes:

* **greedy** (and ``rank``): text level, as Hugging Face's universal assisted generation. The cloud's
  sequence is kept as bytes; the edge's context is that text re-encoded by the edge's tokenizer from an
  anchor ``lookbehind`` edge tokens back (so a word the cloud finished is re-split the way the edge would
  split it); the edge drafts ``g`` of its tokens greedily; their text is encoded by the cloud's tokenizer
  *together with* the cloud's last ``lookbehind`` tokens, and the draft is the cloud tokens after the
  point where the cloud's sequence ends. Token healing: when the edge's context ends with a token made
  from the cloud's text (often a piece the edge would not write alone, e.g. a lone space before a word it
  spells ``" jumps"``), the edge drafts from before that token and its draft counts only if it spells the
  token's bytes first. Lossless whatever the translation does: the cloud verifies every drafted id, so
  the output is the cloud's greedy output token for token.
  Assumes: both tokenizers are "text in, text out" (decoding a token sequence gives its bytes, see
  :func:`token_bytes`). Loses acceptance (never correctness) where: (a) the cloud's canonical split of
  ``tail + draft text`` merges across the end of its sequence (the cloud ended on ``" th"``, the edge
  drafted ``"e cat"``, the cloud's tokenizer makes ``" the"``): a *boundary mismatch*, counted in
  ``boundary_mismatches``; the draft then falls back to the draft text encoded alone; (b) the cloud's own
  split of a text is not the canonical one the tokenizer produces (models emit non-canonical splits now
  and then); (c) the last drafted cloud token may be a prefix of a longer token the cloud prefers;
  (d) re-splitting the edge's context costs edge calls: ``retokenized`` counts edge tokens whose text
  survived but whose split changed; (e) the cloud's sequence ends inside a UTF-8 character (a byte-level
  token): the round drafts nothing (``held_rounds``).
* **sample**: token-level intersection (Timor et al., ICML 2025, "Accelerating LLM inference with
  lossless speculative decoding algorithms for heterogeneous vocabularies"; Hugging Face's
  ``UniversalSpeculativeDecodingGenerator``). Only edge tokens whose bytes are also one cloud token may be
  drafted: the edge's logits of the others are set to -inf before temperature / top-k / top-p, so it
  samples x ~ q' = normalize(q restricted to the intersection), and q' is carried into the cloud's
  vocabulary by the one-to-one map (zero elsewhere). Then the standard rule (accept with
  min(1, p(x)/q'(x)), resample from normalize(max(0, p - q'))) is exact for *any* proposal distribution
  q', so the output is distributed as the cloud's sampling (Leviathan et al. 2023, Theorem 1).
  Assumes: q' is the distribution the draft was drawn from given the drafter's state, which the mask
  guarantees. Loses acceptance where the cloud puts mass on tokens outside the image of the map (the
  edge can never propose them: acceptance <= sum of p over the image), and the edge's mass on unmapped
  tokens is redistributed over the mapped ones; ``vocab_overlap`` (the share of the edge's tokens that
  map) says how much is at stake.

The edge's context in both modes is kept by text: every round re-syncs it to the cloud's accepted
sequence (rejected drafts, and the cloud's own tokens, which may be anything in its vocabulary).
"""

from __future__ import annotations

import bisect
import json
import re
import weakref
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..models import same_tokenizer
from .drafting import EdgeDrafter
from .roles import Drafter, RoundSettings

LOOKBEHIND = 8  # tokens re-encoded behind the end of a sequence, for the tokenizer's context
EDGE_POSITIONS = 4  # an optimized edge's static cache holds this many of its tokens per cloud position
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


# ---------------------------------------------------------------------------- tokens as bytes

def _decoder_kinds(tokenizer: Any) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is a slow tokenizer; translating between tokenizers needs "
                         "fast ones (AutoTokenizer.from_pretrained(..., use_fast=True))")
    spec = json.loads(backend.to_str()).get("decoder") or {}
    stack, kinds = [spec], set()
    while stack:
        d = stack.pop()
        if not d:
            continue
        kinds.add(d.get("type"))
        if d.get("type") == "Replace":
            kinds.add(f"Replace:{(d.get('pattern') or {}).get('String')}")
        stack.extend(d.get("decoders") or [])
    return kinds


def token_bytes(tokenizer: Any) -> tuple[list[bytes], frozenset[int]]:
    """Every token id's bytes (what it adds to the text) and the ids of special tokens.

    Byte-level BPEs (GPT-2, Llama 3, Qwen, SmolLM2: a ``ByteLevel`` decoder) map each character of a
    token back to one byte; SentencePiece-style vocabularies (Llama 2, Mistral, Gemma: a ``Metaspace``
    decoder or ``Replace("▁", " ")``, with ``ByteFallback``) write a space as ``▁`` and a raw byte as
    ``<0xNN>``. A special token's bytes are its text. Other decoders (WordPiece, ...) are refused by name:
    their tokens do not concatenate to the text.
    """
    kinds = _decoder_kinds(tokenizer)
    n = len(tokenizer)
    names = tokenizer.convert_ids_to_tokens(list(range(n)))
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    special = frozenset(i for i, t in tokenizer.added_tokens_decoder.items() if t.special)
    if "ByteLevel" in kinds:
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        back = {c: b for b, c in bytes_to_unicode().items()}
        piece = lambda s: bytes(back[c] for c in s) if all(c in back for c in s) else s.encode()  # noqa: E731
    elif "Metaspace" in kinds or "Replace:▁" in kinds:
        def piece(s: str) -> bytes:
            m = _BYTE_TOKEN.fullmatch(s)
            return bytes([int(m.group(1), 16)]) if m and "ByteFallback" in kinds else s.replace("▁", " ").encode()
    else:
        raise ValueError(f"cannot translate through tokenizer {type(tokenizer).__name__} (decoder {sorted(k for k in kinds if k)}): "
                         "only byte-level BPE and SentencePiece-style (▁) tokenizers spell their text token by token")
    pieces = [added[i].encode() if i in added else piece(s) if s is not None else b"" for i, s in enumerate(names)]
    return pieces, special


def valid_prefix(data: bytes) -> bytes:
    """The longest prefix of ``data`` that is valid UTF-8 (a character cut by a token boundary, or garbage, ends it)."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError as err:
        return data[: err.start]


def ends_mid_character(data: bytes) -> bool:
    """Whether ``data`` ends inside a multi-byte UTF-8 character (its last token was part of one)."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 != 0x80:  # the last lead byte: how long its character is
            need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
            return need > back
    return False


def common_prefix(a: bytes | bytearray, b: bytes | bytearray) -> int:
    """Length of the common prefix of two byte strings (binary search on slice equality: memcmp speed)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo < hi:  # invariant: a[:lo] == b[:lo], a[:hi + 1] != b[:hi + 1] ... search the first difference
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Side:
    """One tokenizer seen from the other: its tokens' bytes (special tokens the other side lacks count as
    no text: they are dropped in translation) and how it encodes text."""

    def __init__(self, tokenizer: Any, pieces: list[bytes], special: frozenset[int], other_special_text: set[bytes]):
        self.tokenizer = tokenizer
        self.piece = [b"" if i in special and p not in other_special_text else p for i, p in enumerate(pieces)]
        self.special = special
        self.byte_ids: dict[int, int] = {}  # byte value -> a token of that one byte
        for i, p in enumerate(pieces):
            if len(p) == 1 and i not in special:
                self.byte_ids.setdefault(p[0], i)

    def render(self, ids: list[int]) -> bytes:
        return b"".join(self.piece[i] for i in ids)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_after(self, data: bytes, cut: int, at_start: bool = False) -> tuple[list[int], list[int]] | str:
        """The tokens of ``data`` (encoded whole, so that the tokenizer sees the context before ``cut``) that
        lie after byte ``cut``, with their end offsets in ``data``; or why not: ``"straddle"`` (a token
        spans ``cut``: the tokenizer merges across it), ``"unspelled"`` (its encoding does not spell the
        bytes, e.g. a normalizer changed them).

        Bytes that are not valid UTF-8 (a character cut by a token boundary, garbage a model emitted) cannot
        be text: after the last valid character they are spelled by :meth:`spell`; before ``cut`` they
        make the context shorter (encoding starts after them). A tokenizer that marks the start of its input
        (SentencePiece's dummy ``▁`` prefix) spells some bytes more than its text: that shift is allowed
        before ``cut``, or at ``cut == 0`` when ``data`` starts the whole text (``at_start``).
        """
        offset = 0  # bytes skipped at the front
        valid = valid_prefix(data)
        while len(valid) < cut:  # an invalid byte before the cut: the context starts after it
            skip = len(valid) + 1
            data, cut, at_start, offset = data[skip:], cut - skip, False, offset + skip
            valid = valid_prefix(data)
        ids = self.encode(valid.decode("utf-8"))
        ends = _ends(ids, self.piece, 0)
        shift = (ends[-1] if ends else 0) - len(valid)
        if shift < 0 or self.render(ids)[shift:] != valid:
            return "unspelled"
        ends = [e - shift for e in ends]
        k = bisect.bisect_right(ends, cut)  # the first token ending after the cut
        if (k == 0 and not (cut == 0 and (shift == 0 or at_start))) or (k > 0 and ends[k - 1] != cut):
            return "straddle"
        ids, ends = ids[k:], ends[k:]
        rest = data[len(valid):]
        if rest:
            more = self.spell(rest)
            if more is None:
                return "unspelled"
            ids, ends = ids + more, ends + _ends(more, self.piece, len(valid))
        return ids, [e + offset for e in ends]

    def spell(self, data: bytes) -> list[int] | None:
        """Tokens whose bytes are exactly ``data``, without context: valid text encoded (when the encoding
        spells it), anything else one byte token per byte (every byte-level BPE, and SentencePiece with byte
        fallback, has one); None if a byte has no token."""
        out: list[int] = []
        while data:
            valid = valid_prefix(data)
            if valid:
                ids = self.encode(valid.decode("utf-8"))
                if self.render(ids) != valid:
                    ids = [self.byte_ids.get(b, -1) for b in valid]
                data = data[len(valid):]
            else:
                ids, data = [self.byte_ids.get(data[0], -1)], data[1:]
            if -1 in ids:
                return None
            out += ids
        return out


def _ends(ids: list[int], piece: list[bytes], start: int) -> list[int]:
    out, total = [], start
    for i in ids:
        total += len(piece[i])
        out.append(total)
    return out


@dataclass(frozen=True)
class Bridge:
    """The pair's two sides and the token-level intersection: ``edge_to_cloud[e]`` is the cloud id with the
    same bytes as edge token ``e`` (-1: none), one to one; special tokens map only to special tokens."""

    edge: Side
    cloud: Side
    edge_to_cloud: torch.Tensor  # [edge vocab] long
    overlap: float  # share of the edge's tokens that map


def _canonical(side_tok: Any, pieces: list[bytes], special: frozenset[int], ids: list[int]) -> int:
    """Among ids with the same bytes, the one the tokenizer itself produces for that text (else the smallest)."""
    text = pieces[ids[0]]
    try:
        enc = side_tok(text.decode("utf-8"), add_special_tokens=False)["input_ids"]
    except UnicodeDecodeError:
        enc = []
    return enc[0] if len(enc) == 1 and enc[0] in ids else min(ids)


def _by_bytes(tokenizer: Any, pieces: list[bytes], special: frozenset[int], vocab: int) -> dict[tuple[bool, bytes], int]:
    groups: dict[tuple[bool, bytes], list[int]] = {}
    for i in range(min(vocab, len(pieces))):
        if pieces[i]:
            groups.setdefault((i in special, pieces[i]), []).append(i)
    return {key: ids[0] if len(ids) == 1 else _canonical(tokenizer, pieces, special, ids) for key, ids in groups.items()}


_BRIDGES: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def bridge(edge_tokenizer: Any, cloud_tokenizer: Any, edge_vocab: int | None = None, cloud_vocab: int | None = None) -> Bridge:
    """The :class:`Bridge` of two tokenizers (built once per pair and kept: a 262k vocabulary takes a second).

    ``edge_vocab`` / ``cloud_vocab``: the ids each model may emit (default: the tokenizer's length).
    """
    key = (edge_vocab, cloud_vocab, id(cloud_tokenizer))
    try:
        per_edge = _BRIDGES.setdefault(edge_tokenizer, {})
    except TypeError:  # not weak-referenceable: no cache
        per_edge = {}
    if key in per_edge and per_edge[key][0]() is cloud_tokenizer:
        return per_edge[key][1]
    e_pieces, e_special = token_bytes(edge_tokenizer)
    c_pieces, c_special = token_bytes(cloud_tokenizer)
    ev = min(edge_vocab or len(e_pieces), len(e_pieces))
    cv = min(cloud_vocab or len(c_pieces), len(c_pieces))
    e_text, c_text = {e_pieces[i] for i in e_special}, {c_pieces[i] for i in c_special}
    edge = Side(edge_tokenizer, e_pieces, e_special, c_text)
    cloud = Side(cloud_tokenizer, c_pieces, c_special, e_text)
    e_map, c_map = _by_bytes(edge_tokenizer, e_pieces, e_special, ev), _by_bytes(cloud_tokenizer, c_pieces, c_special, cv)
    table = torch.full((edge_vocab or len(e_pieces),), -1, dtype=torch.long)
    for k, e in e_map.items():
        c = c_map.get(k)
        if c is not None:
            table[e] = c
    built = Bridge(edge, cloud, table, float((table >= 0).sum()) / ev)
    try:
        per_edge[key] = (weakref.ref(cloud_tokenizer), built)
    except TypeError:
        pass
    return built


def pair_info(edge: Any, cloud: Any) -> dict[str, Any]:
    """What a result records about a pair's tokenizers: ``tokenizers`` ``same`` | ``different`` and
    ``vocab_overlap``, the share of the edge's tokens whose bytes are one cloud token (1.0 for one
    tokenizer). Refuses, by name, a tokenizer the translation cannot read (see :func:`token_bytes`)."""
    if same_tokenizer(edge, cloud):
        return {"tokenizers": "same", "vocab_overlap": 1.0, "edge_vocab": edge.vocab_size, "cloud_vocab": cloud.vocab_size}
    overlap = bridge(edge.tokenizer, cloud.tokenizer, edge.vocab_size, cloud.vocab_size).overlap
    return {"tokenizers": "different", "vocab_overlap": overlap, "edge_vocab": edge.vocab_size, "cloud_vocab": cloud.vocab_size}


# counters a translating drafter adds to a generation's metrics, summed over a run's prompts
TRANSLATION_COUNTS = ("translated_rounds", "boundary_mismatches", "retokenized", "held_rounds", "unmapped_stops",
                      "healed_rounds", "heal_misses")


def translation_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The translation counters summed over prompt rows, with mismatches per translated round (empty
    when no row drafted through a translation)."""
    if not any("translated_rounds" in r for r in rows):
        return {}
    out = {k: sum(r.get(k) or 0 for r in rows) for k in TRANSLATION_COUNTS}
    rounds = out["translated_rounds"]
    out["mismatches_per_round"] = (out["boundary_mismatches"] + out["retokenized"]) / rounds if rounds else None
    return out


# ---------------------------------------------------------------------------- the drafter

class TranslatingDrafter:
    """The edge's own drafter (:class:`~specnb.decode.drafting.EdgeDrafter`, in edge ids) behind a translation to
    the cloud's ids; see the module doc for the two modes, what each assumes and where each loses.

    State: ``text`` holds the bytes of the cloud's sequence (each cloud token's end in ``c_end``), and
    the edge's tokens (``e_ids``) spell a prefix of it (their ends in ``e_end``; None where a token's end
    is not known exactly, e.g. inside text the edge's tokenizer could not spell byte for byte). A round:
    re-sync the edge to the cloud's sequence (keep the edge tokens whose text survived, re-encode from
    an anchor ``lookbehind`` tokens back, cut the edge's cache to what it keeps), draft, translate.

    Per-generation counters (:meth:`stats`): ``translated_rounds``; ``boundary_mismatches`` (rounds whose
    draft text the cloud's tokenizer merged into the sequence's last token); ``retokenized`` (edge tokens
    re-split after the fact); ``held_rounds`` (no draft: the sequence ended inside a character);
    ``unmapped_stops`` (sampling: drafts cut because the edge's restricted distribution was empty);
    ``healed_rounds`` / ``heal_misses`` (greedy: token healing kept / given up, the latter costing a
    re-draft); ``vocab_overlap``.
    """

    def __init__(self, inner: Drafter, edge_tokenizer: Any, cloud_tokenizer: Any, settings: RoundSettings, *,
                 edge_vocab: int | None = None, cloud_vocab: int | None = None, lookbehind: int = LOOKBEHIND,
                 max_steps: int = 2, heal: bool = True):
        if not isinstance(lookbehind, int) or lookbehind < 1:
            raise ValueError(f"lookbehind must be a positive integer, got {lookbehind!r}")
        self.inner = inner
        self.bridge = bridge(edge_tokenizer, cloud_tokenizer, edge_vocab, cloud_vocab)
        self.cloud_vocab = cloud_vocab or len(cloud_tokenizer)
        self.edge_vocab = edge_vocab or len(edge_tokenizer)
        self.lookbehind = lookbehind
        self.max_steps = max_steps  # greedy: edge steps per round, at most max_steps x gamma
        self.heal = heal  # greedy: token healing of the context's last token (see _healed_draft)
        self.settings = settings
        self.sampling = settings.rule == "sample"
        self.steps = getattr(inner, "steps", None)  # the loop guards compiled steps it finds here
        self.compiled = getattr(self.steps, "compiled", None) is not None and hasattr(inner, "catch_up")
        self.room = EDGE_POSITIONS * settings.max_len if settings.optimized else None  # a static cache's length
        if self.sampling:
            if not (self.bridge.edge_to_cloud >= 0).any():
                raise ValueError("the edge and cloud tokenizers share no token, so the edge cannot draft for "
                                 "verify='sample'; use verify='greedy' or an edge that shares part of the vocabulary")
            if not hasattr(inner, "suppress"):
                raise TypeError(f"{type(inner).__name__} cannot restrict its draft to the shared tokens; "
                                "verify='sample' with another tokenizer needs an edge model")
        self._restrict()
        e_tok = edge_tokenizer
        with_bos = e_tok("a", add_special_tokens=True)["input_ids"]
        bare = e_tok("a", add_special_tokens=False)["input_ids"]
        self.head = with_bos[: len(with_bos) - len(bare)] if with_bos[-len(bare):] == bare else []  # the edge's BOS
        self._reset()

    def _restrict(self) -> None:
        """Sampling: the edge may only draw tokens of the intersection (its ``suppress`` mask, -inf logits)."""
        if self.sampling:
            vocab = getattr(self.inner, "vocab", None) or len(self.bridge.edge_to_cloud)
            device = getattr(getattr(self.inner, "model", None), "device", "cpu")
            self.inner.suppress = (self.bridge.edge_to_cloud[:vocab] < 0).to(device)

    def _reset(self) -> None:
        self.text = bytearray()
        self.c_ids: list[int] = []
        self.c_end: list[int] = []
        self.e_ids: list[int] = list(self.head)
        self.e_end: list[int | None] = [0] * len(self.head)
        self.e_text = bytearray()  # the bytes the edge's tokens spell (may run past ``text``: its draft)
        self.counts = dict(translated_rounds=0, boundary_mismatches=0, retokenized=0, held_rounds=0, unmapped_stops=0,
                           healed_rounds=0, heal_misses=0)
        self._fresh = False

    # ---- the seam
    def begin(self, prompt_ids: list[int], settings: RoundSettings) -> None:
        self._reset()
        self._sync_cloud(prompt_ids)
        self._sync_edge(cut_cache=False)  # the edge's cache is built by its begin, below
        if not self.e_ids:  # nothing the edge can read (a prompt of dropped special tokens): start from its EOS
            eos = getattr(self.bridge.edge.tokenizer, "eos_token_id", None)
            self.e_ids, self.e_end = [eos if eos is not None else 0], [0]
        self.inner.begin(self.e_ids, edge_settings(settings, self.edge_vocab))
        self._restrict()

    def draft(self, seq: list[int], g: int) -> tuple[list[int], torch.Tensor | None]:
        if g == 0:
            return [], None
        self._sync_cloud(seq)
        if ends_mid_character(self.text):
            self.counts["held_rounds"] += 1
            return [], None
        self._sync_edge()
        self.counts["translated_rounds"] += 1
        self._room(g)
        if self.compiled:  # compiled steps take 1 or 2 new tokens: feed a longer re-synced context eagerly
            self.inner.catch_up(self.e_ids)
        if self.sampling:  # one edge token, one cloud token
            e_draft, q = self.inner.draft(self.e_ids, g)
            e_draft, q = self._cut_unmapped(e_draft, q)
            self._extend_edge(e_draft)
            return self._to_cloud_ids(e_draft, q)
        if self.heal and self._fresh and len(self.e_ids) > len(self.head) + 1 and self.e_end[-2] is not None:
            ids = self._healed_draft(g)
            if ids is not None:
                return ids, None
        return self._text_draft(g, b""), None

    def _text_draft(self, g: int, pending: bytes) -> list[int] | None:
        """Greedy: the edge drafts until its text covers ``g`` cloud tokens (at most ``max_steps`` x g steps); the
        cloud tokens of that text. ``pending``: bytes the draft must start with, which the cloud already has
        (token healing); None when the draft does not start with them."""
        drafted: list[int] = []
        ids: list[int] = []
        straddled = False
        while len(ids) < g and len(drafted) < self.max_steps * g:  # its text covers too few cloud tokens
            data = self.bridge.edge.render(drafted)
            # while the pending bytes are not spelled yet, one token at a time: a miss costs one step
            more, _ = self.inner.draft(self.e_ids, 1 if len(data) < len(pending) else g - len(ids))
            self._extend_edge(more)
            drafted += more
            data = self.bridge.edge.render(drafted)
            if not (data.startswith(pending) or pending.startswith(data)):
                return None
            if len(data) > len(pending):
                ids, straddled = self._to_cloud_text(data[len(pending):])
        self.counts["boundary_mismatches"] += straddled
        return ids[:g]

    def _healed_draft(self, g: int) -> list[int] | None:
        """Token healing: the re-sync ended the edge's context with a token the cloud's text made (often a
        short one, e.g. a lone space where the edge writes " jumps"); the edge drafts from before it, and its
        draft counts only if it spells that token's bytes first. None (context restored) when it does not."""
        last, end = self.e_ids[-1], self.e_end[-1]
        start = self.e_end[-2]
        pending = bytes(self.text[start:end])
        del self.e_ids[-1], self.e_end[-1], self.e_text[start:]
        base = len(self.e_ids)
        self.inner.rollback(base - 1)
        ids = self._text_draft(g, pending)
        if ids is not None:
            self.counts["healed_rounds"] += 1
            return ids
        self.counts["heal_misses"] += 1
        del self.e_ids[base:], self.e_end[base:]  # drop the failed draft, put the token back
        self.e_ids.append(last)
        self.e_end.append(end)
        self.e_text = bytearray(self.text[:end])
        self.inner.rollback(base)
        return None

    def _room(self, g: int) -> None:
        if self.room is not None and len(self.e_ids) + self.max_steps * g > self.room:
            raise ValueError(f"the edge's text takes {len(self.e_ids)} of its tokens, past the {self.room} its static "
                             f"cache was sized for ({EDGE_POSITIONS} per cloud position); use optimized='cloud' or "
                             "False for this pair (the edge's cache then grows)")

    def rollback(self, length: int) -> None:
        """Nothing here: the next :meth:`draft` re-syncs both sides to the sequence that survived."""

    def stats(self) -> dict[str, Any]:
        return self.inner.stats() | self.counts | {"vocab_overlap": self.bridge.overlap}

    # ---- keeping the two sequences in step
    def _sync_cloud(self, seq: list[int]) -> None:
        """``text`` := the bytes of ``seq`` (reuses the common prefix with the previous sequence)."""
        k = len(self.c_ids)
        if seq[:k] != self.c_ids:
            k = next((i for i, (a, b) in enumerate(zip(self.c_ids, seq)) if a != b), min(k, len(seq)))
        del self.c_ids[k:], self.c_end[k:]
        del self.text[self.c_end[-1] if self.c_end else 0:]
        piece = self.bridge.cloud.piece
        for t in seq[k:]:
            self.text += piece[t]
            self.c_ids.append(t)
            self.c_end.append(len(self.text))

    def _anchor(self, count: int, back: int) -> int:
        """The number of edge tokens at an exact boundary, at most ``count - back`` (never into the BOS)."""
        i = max(len(self.head), count - back)
        while i > len(self.head) and self.e_end[i - 1] is None:
            i -= 1
        return i

    def _end(self, count: int) -> int:
        return self.e_end[count - 1] if count > len(self.head) else 0

    def _sync_edge(self, cut_cache: bool = True) -> None:
        """Make the edge's tokens spell ``text``: keep those whose bytes survived, re-encode from an anchor."""
        survive = common_prefix(self.text, self.e_text)
        m = len(self.e_ids)
        while m > len(self.head) and (self.e_end[m - 1] is None or self.e_end[m - 1] > survive):
            m -= 1
        a = self._anchor(m, self.lookbehind)
        w = self._anchor(a, self.lookbehind)
        start, cut = self._end(w), self._end(a)
        edge = self.bridge.edge
        new = edge.encode_after(bytes(self.text[start:]), cut - start, at_start=start == 0) if len(self.text) > cut else ([], [])
        if isinstance(new, str):  # not spelled from the anchor in context: spell what follows it alone
            spelled = edge.spell(bytes(self.text[cut:]))
            if spelled is not None:
                new = spelled, _ends(spelled, edge.piece, cut - start)
        if isinstance(new, str):  # not even byte by byte: the edge reads the text as its tokenizer has it
            ids = edge.encode(bytes(self.text[cut:]).decode("utf-8", errors="replace"))
            ends: list[int | None] = [None] * (len(ids) - 1) + [len(self.text)] if ids else []
        else:
            ids, ends = new[0], [start + e for e in new[1]]
        old = self.e_ids[a:]
        r = 0
        while r < min(len(old), len(ids)) and old[r] == ids[r] and ends[r] is not None and self.e_end[a + r] == ends[r]:
            r += 1
        self.counts["retokenized"] += max(0, m - (a + r))  # surviving edge tokens split anew
        self._fresh = len(ids) > r  # the context now ends with tokens of the cloud's text (token healing)
        keep = a + r
        self.e_ids[keep:] = ids[r:]
        self.e_end[keep:] = ends[r:]
        self.e_text = bytearray(self.text)
        if cut_cache:
            self.inner.rollback(min(keep, len(self.e_ids) - 1))  # its cache holds at most all but the last token

    def _extend_edge(self, e_draft: list[int]) -> None:
        piece = self.bridge.edge.piece
        for t in e_draft:
            self.e_text += piece[t]
            self.e_ids.append(t)
            self.e_end.append(len(self.e_text))

    # ---- the draft in the cloud's ids
    def _to_cloud_text(self, text: bytes) -> tuple[list[int], bool]:
        """The draft's ``text`` as cloud tokens that continue the cloud's sequence (see the module doc), and
        whether the cloud's tokenizer merged it into the sequence's last token (a boundary mismatch)."""
        end = len(self.text)
        data = valid_prefix(text)
        if not data:
            return [], False
        cloud = self.bridge.cloud
        start = self.c_end[len(self.c_end) - self.lookbehind - 1] if len(self.c_end) > self.lookbehind else 0
        while 0 < start < end and self.text[start] & 0xC0 == 0x80:  # never start inside a character
            start -= 1
        res = cloud.encode_after(bytes(self.text[start:]) + data, end - start, at_start=start == 0)
        straddled = res == "straddle"  # the cloud's tokenizer merges the draft into the sequence's last token
        if isinstance(res, str):
            res = cloud.encode_after(data, 0)  # the draft's text alone
        return ([] if isinstance(res, str) else res[0]), straddled

    def _cut_unmapped(self, e_draft: list[int], q: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        """Sampling: a draft token off the map can only come from an all-unmapped distribution: stop there."""
        table = self.bridge.edge_to_cloud
        for i, t in enumerate(e_draft):
            if t >= len(table) or table[t] < 0:
                self.counts["unmapped_stops"] += 1
                return e_draft[:i], q[:i]
        return e_draft, q

    def _to_cloud_ids(self, e_draft: list[int], q: torch.Tensor | None) -> tuple[list[int], torch.Tensor | None]:
        """Sampling: the drafted ids and their distributions, carried into the cloud's vocabulary one to one."""
        if not e_draft:
            return [], None
        table = self.bridge.edge_to_cloud.to(q.device)[: q.shape[-1]]
        mapped = (table >= 0).nonzero().squeeze(-1)
        qc = torch.zeros(q.shape[0], self.cloud_vocab, dtype=q.dtype, device=q.device)
        qc[:, table[mapped]] = q[:, mapped]
        return table[torch.tensor(e_draft, device=q.device)].tolist(), qc


def edge_settings(settings: RoundSettings, edge_vocab: int) -> RoundSettings:
    """The edge's own settings: its vocabulary, and room for EDGE_POSITIONS of its tokens per cloud position
    (its sequence counts its own tokens; a static cache is sized by it)."""
    return replace(settings, vocab=edge_vocab, max_len=EDGE_POSITIONS * settings.max_len)


def translating(edge: Any, cloud: Any, settings: RoundSettings, **kw: Any) -> TranslatingDrafter:
    """``edge`` (a loaded model) as a drafter in ``cloud``'s token ids (``cloud``: a loaded model or a remote
    cloud: anything with ``tokenizer`` and ``vocab_size``). ``kw``: :class:`TranslatingDrafter`'s options."""
    inner = EdgeDrafter(edge, edge_settings(settings, edge.vocab_size))
    return TranslatingDrafter(inner, edge.tokenizer, cloud.tokenizer, settings, edge_vocab=edge.vocab_size,
                              cloud_vocab=cloud.vocab_size, **kw)
