"""What the server accepts: the operator's limits and the check of every message before any model call.

A client is not trusted. Every message of a session is parsed and checked here, at the door, and
only a message that passes reaches the model: its kind, its size, its fields (an allow-list, with
pydantic models for the settings), every token id within the vocabulary (on CUDA an id past the
embedding is a device-side assert that breaks the GPU context of every session on the server), and
the lengths within the limits the operator set (``specnb serve --max-prompt-tokens --max-draft
--max-new-tokens --max-session-tokens``). A message that fails gets one :class:`BadMessage` naming
the field, the value and the limit; the server ends that session only. The client runs the same
checks before it sends (:func:`check_verify`, :func:`check_generate`), so a mistake at the edge is
reported there, without a round trip.

``max_session_tokens`` bounds the memory one session may hold: every token of its prompt, its
output and its draft sits in the session's KV cache, and a static cache (``optimized``) is sized
from ``max_len``, which the client chooses, so ``max_len`` is held to the same bound.
"""

from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from ..decode.loops import LEVERS, VERIFY_RULES
from ..decode.roles import RoundSettings
from ..decode.schedule import SCHEDULES
from .wire import Message, decode

KINDS_UP = ("V", "G")  # what a client may send on a session
GENERATIONS = ("autoregressive", "speculative")  # what a G message may ask the server to run
LIMIT_FLAGS = {"max_prompt_tokens": "--max-prompt-tokens", "max_draft": "--max-draft",
               "max_new_tokens": "--max-new-tokens", "max_session_tokens": "--max-session-tokens"}


class BadMessage(ValueError):
    """A message the server refuses before any model call: names the field, the value and the limit."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True)
class Limits:
    """The operator's limits on what one session may ask (flags of ``specnb serve``, same names).

    Defaults fit the models specnb studies (prompts of a few thousand tokens, drafts of a few
    tokens); an operator lowers them to bound the work and memory a client can claim.
    """

    max_prompt_tokens: int = 4096
    max_draft: int = 64
    max_new_tokens: int = 4096
    max_session_tokens: int = 8192  # prompt + output + draft: the KV cache one session may hold

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{LIMIT_FLAGS[name]} must be a positive integer, got {value!r}")

    def max_message_bytes(self) -> int:
        """The largest message a valid client sends: a prompt plus a draft (ids and, when sampling,
        one float each) and the settings; gRPC refuses anything bigger before our code sees it."""
        return 4 * (2 * self.max_prompt_tokens + 2 * self.max_draft + 16) + 64 * 1024

    def flag(self, name: str) -> str:
        return LIMIT_FLAGS[name]


def _too_many(field: str, value: int, limit: int, flag: str) -> BadMessage:
    return BadMessage(field, f"{value} is past the server's limit of {limit} ({flag})")


# ---------------------------------------------------------------------------- settings allow-lists

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Decoding(_Strict):
    """What every kind of session may set about decoding: the sampling warp, its seed, the set-up."""

    temperature: float = Field(0.0, ge=0.0, le=1e4, allow_inf_nan=False)
    top_k: StrictInt | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: StrictInt | None = Field(None, ge=0, lt=2 ** 63)
    optimized: StrictBool = False
    compile: StrictBool | None = None


class RoundSettingsIn(_Decoding):
    """The settings a ``V`` session may carry (:class:`specnb.decode.roles.RoundSettings`), and nothing else."""

    rule: Literal[VERIFY_RULES] = "greedy"  # type: ignore[valid-type]
    rank_k: StrictInt = Field(5, ge=1)
    widths: list[StrictInt] = Field(default_factory=list, max_length=64)
    levers_off: list[Literal[LEVERS]] = Field(default_factory=list, max_length=len(LEVERS))  # type: ignore[valid-type]
    max_len: StrictInt = Field(0, ge=0)
    vocab: StrictInt = Field(0, ge=0)
    lead: StrictBool = False


class AutoregressiveIn(_Decoding):
    """Keyword arguments of cloud-only decoding on the server (``RemoteCloud.autoregressive``)."""


class SpeculativeIn(AutoregressiveIn):
    """Keyword arguments of speculation with both models on the server (``server_speculative``)."""

    gamma: StrictInt = Field(4, ge=1)
    verify: Literal[VERIFY_RULES] = "greedy"  # type: ignore[valid-type]
    rank_k: StrictInt = Field(5, ge=1)
    schedule: Literal[SCHEDULES] = "constant"  # type: ignore[valid-type]
    optimized: StrictBool | Literal["edge", "cloud"] = False
    levers_off: list[Literal[LEVERS]] = Field(default_factory=list, max_length=len(LEVERS))  # type: ignore[valid-type]


def _allowed(model: type[_Strict], data: Any, where: str) -> _Strict:
    """``data`` checked against ``model``'s allow-list; the first problem as one :class:`BadMessage`."""
    if not isinstance(data, dict):
        raise BadMessage(where, f"must be an object of settings, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "?"
        problem = "is not an allowed setting" if first["type"] == "extra_forbidden" else first["msg"].lower()
        shown = repr(first.get("input"))[:60]
        raise BadMessage(f"{where}.{name}", f"{problem} (got {shown})") from None


def settings_in(data: Any, limits: Limits, vocab: int) -> RoundSettings:
    """A ``V`` session's settings from the wire, allow-listed and within the limits."""
    s = _allowed(RoundSettingsIn, data, "begin")
    if s.rank_k > vocab:
        raise BadMessage("begin.rank_k", f"{s.rank_k} is past the vocabulary ({vocab} tokens)")
    if s.vocab > vocab:
        raise BadMessage("begin.vocab", f"{s.vocab} is past the server's vocabulary ({vocab} tokens)")
    if s.max_len > limits.max_session_tokens:
        raise _too_many("begin.max_len", s.max_len, limits.max_session_tokens, limits.flag("max_session_tokens"))
    for w in s.widths:
        if not 1 <= w <= limits.max_draft + 1:
            raise BadMessage("begin.widths", f"width {w} is outside 1..{limits.max_draft + 1} ({limits.flag('max_draft')} + 1)")
    if s.rule == "sample" and s.temperature == 0:
        raise BadMessage("begin.temperature", "rule 'sample' needs temperature > 0")
    if s.lead and s.rule != "greedy":
        raise BadMessage("begin.lead", f"the cloud leads (decodes its own tokens) with rule 'greedy' only, not {s.rule!r}: "
                                       "use lead=False with it")
    d = s.model_dump()
    return RoundSettings(**d | {"widths": tuple(d["widths"]), "levers_off": frozenset(d["levers_off"])})


# ---------------------------------------------------------------------------- messages

def parse(raw: bytes) -> Message:
    """One message off the wire, or a :class:`BadMessage` saying what is wrong with its bytes."""
    if not isinstance(raw, bytes) or len(raw) < 9:
        raise BadMessage("message", f"{len(raw) if isinstance(raw, bytes) else 0} bytes is shorter than any message (9)")
    try:
        msg = decode(raw)
    except (ValueError, UnicodeDecodeError, OverflowError, struct.error) as err:  # json and numpy raise ValueErrors
        raise BadMessage("message", f"malformed ({err})") from None
    if msg.kind not in KINDS_UP:
        raise BadMessage("kind", f"{msg.kind!r} is not a message a client sends (one of {', '.join(KINDS_UP)})")
    if not isinstance(msg.meta, dict):
        raise BadMessage("meta", f"must be an object, got {type(msg.meta).__name__}")
    return msg


def check_ids(field: str, ids: list[int], vocab: int) -> None:
    """Every id in ``0 <= id < vocab`` (an id past the embedding crashes the model call, on CUDA for
    every session)."""
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise BadMessage(field, f"token id {bad} is outside the vocabulary 0..{vocab - 1}")


def _count(field: str, value: Any, low: int, limit: int, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadMessage(field, f"must be an integer, got {type(value).__name__}")
    if value < low:
        raise BadMessage(field, f"{value} is below {low}")
    if value > limit:
        raise _too_many(field, value, limit, flag)
    return value


def check_verify(msg: Message, limits: Limits, vocab: int, *, length: int | None, rule: str | None,
                 max_len: int = 0, rounds: int = 0,
                 scored: Callable[[int, tuple[int, int]], bool] | None = None
                 ) -> tuple[RoundSettings | None, list[int], int, list[int], tuple[int, int] | None]:
    """A ``V`` message against the limits and the session so far.

    ``length``: tokens already in the session's cache (None: no round yet, so this one must carry
    the prompt and settings); ``rule``: the session's verification rule; ``max_len``: the session's
    own cache size (its settings' ``max_len``, 0: none); ``rounds``: rounds of the session before this one.
    Returns (settings or None, prompt, last token, draft, premise or None).

    A round drafted ahead (:mod:`specnb.decode.ahead`) carries its premise, ``meta["ahead"] = [back,
    accepted]``: it assumes that the round ``back`` places before it (1 <= back <= rounds) kept ``accepted``
    drafts (0..max_draft) and answered its ``last`` token. It is scored only if that holds, and then at
    exactly the length the edge assumed; so the lengths are checked at ``length`` for a round that will be
    scored (``scored(last, premise)``; None: every round, as the edge checks its own at the length it assumed),
    and not for one answered VOID, which takes no place in the cache.
    """
    extra = set(msg.meta) - {"begin", "prompt", "ahead"}
    if extra:
        raise BadMessage("meta", f"{', '.join(sorted(extra))} is not a field of a verify message")
    premise = _premise(msg.meta, rounds, limits) if "ahead" in msg.meta else None
    ints, settings, prompt = msg.ints, None, []
    if "begin" in msg.meta:
        if length is not None:
            raise BadMessage("begin", "a session carries one generation: open a new session for another")
        settings = settings_in(msg.meta["begin"], limits, vocab)
        n = _count("prompt", msg.meta.get("prompt"), 1, limits.max_prompt_tokens, limits.flag("max_prompt_tokens"))
        if n > len(ints) - 1:
            raise BadMessage("prompt", f"{n} prompt tokens, but the message carries {len(ints)} ids (prompt + last token)")
        prompt, ints = ints[:n], ints[n:]
        check_ids("prompt", prompt, vocab)
        length, rule = n - 1, settings.rule
    elif "prompt" in msg.meta:
        raise BadMessage("prompt", "a prompt travels with the settings ('begin') of a session's first round")
    elif length is None:
        raise BadMessage("begin", "a session's first round must carry the prompt and settings")
    if not ints:
        raise BadMessage("ints", "a round carries the last accepted token and the draft; got no token")
    last, draft = ints[0], ints[1:]
    _count("draft", len(draft), 0, limits.max_draft, limits.flag("max_draft"))
    check_ids("last", [last], vocab)
    check_ids("draft", draft, vocab)
    _check_q(msg, draft, rule)
    if premise is None or scored is None or scored(last, premise):
        after = length + 2 + len(draft)  # cache + last + draft, and the cloud's own token
        if after > limits.max_session_tokens:
            raise _too_many("session tokens", after, limits.max_session_tokens, limits.flag("max_session_tokens"))
        cap = settings.max_len if settings is not None else max_len
        if cap and after - 1 > cap:  # the cache holds the last token and the draft; a static one has cap places
            raise BadMessage("session tokens", f"{after - 1} is past the session's own max_len {cap}")
    return settings, prompt, last, draft, premise


def _premise(meta: dict, rounds: int, limits: Limits) -> tuple[int, int]:
    """A round ahead's ``[back, accepted]`` (see :func:`check_verify`)."""
    value = meta["ahead"]
    if "begin" in meta:
        raise BadMessage("ahead", "a session's first round is not drafted ahead")
    if not isinstance(value, list) or len(value) != 2:
        raise BadMessage("ahead", f"the premise of a round drafted ahead is [back, accepted], got {value!r:.40}")
    back = value[0]
    if isinstance(back, bool) or not isinstance(back, int) or not 1 <= back <= rounds:
        raise BadMessage("ahead.back", f"{back!r:.20} does not name one of the {rounds} round(s) this session sent "
                                       f"before (1 = the round just before)")
    return back, _count("ahead.accepted", value[1], 0, limits.max_draft, limits.flag("max_draft"))


def _check_q(msg: Message, draft: list[int], rule: str | None) -> None:
    """Sampling rounds carry q(x), one probability per drafted token; other rounds carry none."""
    n = 0 if msg.floats is None else len(msg.floats)
    if rule != "sample" or not draft:
        if n:
            raise BadMessage("floats", f"{n} draft probabilities, but this round carries none (rule {rule})")
        return
    if n != len(draft):
        raise BadMessage("floats", f"{n} draft probabilities for {len(draft)} drafted tokens")
    if not all(math.isfinite(q) and 0.0 < q <= 1.0 for q in msg.floats.tolist()):
        raise BadMessage("floats", "a draft probability is outside (0, 1]")


def check_generate(msg: Message, limits: Limits, vocab: int, *, has_draft: bool) -> tuple[str, dict, int, list[int]]:
    """A ``G`` message: (method, its keyword arguments, new tokens, prompt), all within the limits."""
    extra = set(msg.meta) - {"method", "kw", "max_new_tokens"}
    if extra:
        raise BadMessage("meta", f"{', '.join(sorted(extra))} is not a field of a generate message")
    method = msg.meta.get("method", "autoregressive")
    if method not in GENERATIONS:
        raise BadMessage("method", f"{method!r} is not one of {', '.join(GENERATIONS)}")
    if method == "speculative" and not has_draft:
        raise BadMessage("method", "this server has no draft model: start it with 'specnb serve --draft MODEL'")
    kw = _allowed(SpeculativeIn if method == "speculative" else AutoregressiveIn, msg.meta.get("kw", {}), "kw")
    kw = kw.model_dump(exclude_unset=True)
    n_new = _count("max_new_tokens", msg.meta.get("max_new_tokens"), 1, limits.max_new_tokens, limits.flag("max_new_tokens"))
    prompt = msg.ints
    _count("prompt", len(prompt), 1, limits.max_prompt_tokens, limits.flag("max_prompt_tokens"))
    check_ids("prompt", prompt, vocab)
    if msg.floats is not None and len(msg.floats):
        raise BadMessage("floats", "a generate message carries no probabilities")
    gamma = kw.get("gamma", 4) if method == "speculative" else 0
    if gamma > limits.max_draft:
        raise _too_many("kw.gamma", gamma, limits.max_draft, limits.flag("max_draft"))
    total = len(prompt) + n_new + gamma + 1
    if total > limits.max_session_tokens:
        raise _too_many("session tokens", total, limits.max_session_tokens, limits.flag("max_session_tokens"))
    if method == "speculative":
        _speculative_rules(kw)
    return method, kw, n_new, prompt


def _speculative_rules(kw: dict) -> None:
    verify, temperature = kw.get("verify", "greedy"), kw.get("temperature", 0.0)
    if verify == "sample" and temperature == 0:
        raise BadMessage("kw.temperature", "verify 'sample' needs temperature > 0")
    if verify != "sample" and temperature != 0:
        raise BadMessage("kw.temperature", f"verify {verify!r} decodes greedily: temperature must be 0")
