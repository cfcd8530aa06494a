"""The door of the link's server: every message checked, without a server or a model (specnb.link.limits)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from specnb.link.limits import BadMessage, Limits, check_generate, check_verify, parse, settings_in
from specnb.link.server import settings_to_dict
from specnb.link.wire import Message, encode
from specnb.decode.roles import RoundSettings

LIMITS = Limits(max_prompt_tokens=16, max_draft=4, max_new_tokens=32, max_session_tokens=48)
VOCAB = 300
BEGIN = settings_to_dict(RoundSettings())


def first_round(prompt: list[int], draft: list[int], settings: dict | None = None, **meta) -> Message:
    return Message("V", {"begin": settings or BEGIN, "prompt": len(prompt)} | meta, prompt + [7] + draft)


def verify(msg: Message, length: int | None = None, rule: str | None = None, rounds: int = 3):
    return check_verify(msg, LIMITS, VOCAB, length=length, rule=rule, rounds=rounds)


def test_a_good_first_round_passes_and_splits_prompt_last_and_draft():
    settings, prompt, last, draft, premise = verify(first_round([1, 2, 3], [4, 5]), rounds=0)
    assert (prompt, last, draft, premise) == ([1, 2, 3], 7, [4, 5], None) and settings == RoundSettings()
    assert verify(Message("V", ints=[9, 1]), length=10, rule="greedy")[1:] == ([], 9, [1], None)
    drafted_ahead = Message("V", {"ahead": [3, 2]}, [9, 1])  # assumes round -3 kept 2 drafts and answered 9
    assert verify(drafted_ahead, length=10, rule="greedy")[1:] == ([], 9, [1], (3, 2))


@pytest.mark.parametrize("msg, length, field, words", [
    (first_round([1, 2], [VOCAB]), None, "draft", "outside the vocabulary 0..299"),
    (first_round([-5, 2], [1]), None, "prompt", "token id -5"),
    (first_round([1] * 17, []), None, "prompt", "--max-prompt-tokens"),
    (first_round([1, 2], [1] * 5), None, "draft", "past the server's limit of 4 (--max-draft)"),
    (Message("V", {"begin": BEGIN, "prompt": 9}, [1, 2, 3]), None, "prompt", "the message carries 3 ids"),
    (Message("V", {"begin": BEGIN, "prompt": -1}, [1, 2, 3]), None, "prompt", "below 1"),
    (Message("V", {"begin": BEGIN, "prompt": "3"}, [1, 2, 3]), None, "prompt", "must be an integer"),
    (Message("V", {}, [1, 2]), None, "begin", "first round must carry"),
    (first_round([1], []), 3, "begin", "one generation"),
    (Message("V", {}, [1, 2, 3]), 45, "session tokens", "--max-session-tokens"),
    (Message("V", {"exec": "rm"}, [1]), 3, "meta", "exec is not a field"),
    (Message("V", {}, []), 3, "ints", "got no token"),
    (Message("V", {"ahead": True}, [1, 2]), 3, "ahead", "is [back, accepted], got True"),
    (Message("V", {"ahead": [1, 2, 3]}, [1, 2]), 3, "ahead", "is [back, accepted]"),
    (Message("V", {"ahead": [0, 1]}, [1, 2]), 3, "ahead.back", "0 does not name one of the 3 round(s)"),
    (Message("V", {"ahead": [4, 1]}, [1, 2]), 3, "ahead.back", "4 does not name"),
    (Message("V", {"ahead": [True, 1]}, [1, 2]), 3, "ahead.back", "True does not name"),
    (Message("V", {"ahead": [1, 5]}, [1, 2]), 3, "ahead.accepted", "past the server's limit of 4 (--max-draft)"),
    (Message("V", {"ahead": [1, -1]}, [1, 2]), 3, "ahead.accepted", "below 0"),
    (Message("V", {"ahead": [1, "2"]}, [1, 2]), 3, "ahead.accepted", "must be an integer"),
    (first_round([1], [2], ahead=[1, 1]), None, "ahead", "first round is not drafted ahead"),
    (first_round([1], [2], BEGIN | {"exec": "x"}), None, "begin.exec", "not an allowed setting"),
    (first_round([1], [2], BEGIN | {"rule": "exec"}), None, "begin.rule", "input should be"),
    (first_round([1], [2], BEGIN | {"max_len": 10 ** 9}), None, "begin.max_len", "--max-session-tokens"),
    (first_round([1], [2], BEGIN | {"temperature": float("nan")}), None, "begin.temperature", "finite number"),
    (first_round([1], [2], BEGIN | {"top_k": "5"}), None, "begin.top_k", "valid integer"),
    (first_round([1], [2], BEGIN | {"widths": [99]}), None, "begin.widths", "--max-draft"),
    (first_round([1], [2], BEGIN | {"levers_off": ["exec"]}), None, "begin.levers_off.0", "input should be"),
    (first_round([1], [2], BEGIN | {"rank_k": 10 ** 6}), None, "begin.rank_k", "vocabulary"),
    (first_round([1], [2], BEGIN | {"rule": "sample"}), None, "begin.temperature", "needs temperature > 0"),
    (first_round([1], [2], "greedy"), None, "begin", "must be an object"),
])
def test_a_bad_verify_message_is_refused_naming_its_field(msg, length, field, words):
    with pytest.raises(BadMessage, match=re.escape(words)) as err:
        verify(msg, length, "greedy" if length is not None else None)
    assert err.value.field == field and str(err.value).startswith(field)


def test_sampling_rounds_carry_one_probability_per_drafted_token():
    sample = settings_to_dict(RoundSettings(rule="sample", temperature=1.0))
    good = first_round([1], [2, 3], sample)
    good.floats = np.array([0.5, 1.0], dtype=np.float32)
    assert verify(good)[3] == [2, 3]
    for floats, words in (([0.5], "1 draft probabilities for 2"), ([0.5, 0.0], "outside"), ([np.nan, 0.5], "outside")):
        good.floats = np.array(floats, dtype=np.float32)
        with pytest.raises(BadMessage, match=words):
            verify(good)
    greedy = first_round([1], [2])
    greedy.floats = np.array([0.5], dtype=np.float32)
    with pytest.raises(BadMessage, match="carries none"):
        verify(greedy)


def generate(meta: dict, ints: list[int], has_draft: bool = True):
    return check_generate(Message("G", {"method": "autoregressive", "max_new_tokens": 8} | meta, ints),
                          LIMITS, VOCAB, has_draft=has_draft)


def test_a_good_generate_message_passes():
    assert generate({"kw": {"temperature": 0.5, "seed": 3}}, [1, 2]) == ("autoregressive", {"temperature": 0.5, "seed": 3}, 8, [1, 2])
    assert generate({"method": "speculative", "kw": {"gamma": 3}}, [1])[1] == {"gamma": 3}


@pytest.mark.parametrize("meta, ints, field, words", [
    ({"max_new_tokens": 10 ** 7}, [1], "max_new_tokens", "--max-new-tokens"),
    ({"max_new_tokens": 0}, [1], "max_new_tokens", "below 1"),
    ({}, [], "prompt", "below 1"),
    ({}, [10 ** 9], "prompt", "outside the vocabulary"),
    ({"kw": {"exec": 1}}, [1], "kw.exec", "not an allowed setting"),
    ({"kw": {"gamma": 3}}, [1], "kw.gamma", "not an allowed setting"),  # no gamma for cloud-only
    ({"method": "speculative", "kw": {"gamma": 50}}, [1], "kw.gamma", "--max-draft"),
    ({"method": "speculative", "kw": {"verify": "sample"}}, [1], "kw.temperature", "needs temperature"),
    ({"method": "exec"}, [1], "method", "not one of"),
    ({"max_new_tokens": 32}, [1] * 16, "session tokens", "--max-session-tokens"),
    ({"extra": 1}, [1], "meta", "not a field"),
])
def test_a_bad_generate_message_is_refused_naming_its_field(meta, ints, field, words):
    with pytest.raises(BadMessage, match=re.escape(words)) as err:
        generate(meta, ints)
    assert err.value.field == field


def test_speculation_on_a_server_without_a_draft_model_is_refused():
    with pytest.raises(BadMessage, match="--draft MODEL"):
        generate({"method": "speculative"}, [1], has_draft=False)


@pytest.mark.parametrize("raw, words", [
    (b"", "shorter than any message"),
    (b"V" + b"\xff" * 8, "malformed"),  # meta length past the message
    (encode(Message("V", ints=[1, 2]))[:-3], "malformed"),  # truncated ids
    (b"V\x03\x00\x00\x00{x}\x00\x00\x00\x00", "malformed"),  # meta that is not JSON
    (b"V\x02\x00\x00\x00[]\x00\x00\x00\x00", "must be an object"),
    (encode(Message("v", ints=[1])), "not a message a client sends"),
    (encode(Message("V", ints=[1])) + b"\x00", "malformed"),  # floats that are not whole float32s
])
def test_bytes_that_are_not_a_message_are_refused(raw, words):
    with pytest.raises(BadMessage, match=words):
        parse(raw)


def test_limits_must_be_positive_and_bound_the_message_size():
    with pytest.raises(ValueError, match="--max-draft"):
        Limits(max_draft=0)
    largest = encode(Message("V", {"begin": BEGIN, "prompt": 16}, [1] * (16 + 1 + 4), np.ones(4, np.float32)))
    assert len(largest) <= LIMITS.max_message_bytes()


def test_settings_in_gives_the_round_settings_the_client_sent():
    s = RoundSettings(rule="rank", rank_k=3, seed=5, optimized=True, widths=(1, 2, 5), levers_off=frozenset({"crop"}), max_len=40)
    assert settings_in(settings_to_dict(s), LIMITS, VOCAB) == s


def test_a_round_ahead_is_held_to_the_length_limits_only_if_it_will_be_scored():
    """A branch answered VOID takes no place in the cache: a sibling scored before it may have left the cache
    longer than the branch assumed, and the session must not fail for that."""
    msg = Message("V", {"ahead": [2, 0]}, [1, 2, 3])
    for scored in (None, lambda last, premise: True):
        with pytest.raises(BadMessage, match="--max-session-tokens"):
            check_verify(msg, LIMITS, VOCAB, length=45, rule="greedy", rounds=2, scored=scored)
    assert check_verify(msg, LIMITS, VOCAB, length=45, rule="greedy", rounds=2, scored=lambda last, premise: False)


def test_a_later_round_past_the_sessions_own_max_len_is_refused():
    assert verify(Message("V", {}, [1, 2, 3]), length=20, rule="greedy")  # 20 + last + 2 drafts = 23 places
    with pytest.raises(BadMessage, match="past the session's own max_len 22"):
        check_verify(Message("V", {}, [1, 2, 3]), LIMITS, VOCAB, length=20, rule="greedy", max_len=22)
    check_verify(Message("V", {}, [1, 2, 3]), LIMITS, VOCAB, length=20, rule="greedy", max_len=23)
