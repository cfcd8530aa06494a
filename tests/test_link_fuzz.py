"""Fuzzing a real ``specnb serve`` on loopback: malformed, truncated, oversized and out-of-range
messages and settings (random with a fixed seed, and hand-written: one or more per kind of bad message), each in a
session of its own, then a correct client.

Passes when: every bad message is answered by one refusal naming its field (or, past the size
limit, by gRPC's own RESOURCE_EXHAUSTED) and never by a model error; the server is alive; its
outputs still equal in-process greedy decoding; and no session or KV cache is left (``Status``:
sessions 0, caches 0). Bounded: a fixed number of messages, one at a time.
"""

from __future__ import annotations

import math
import random

import grpc
import numpy as np
import pytest

from serving import HANG_S, build_pair, sessions_freed, start_server, stop
from specnb import autoregressive, connect, speculative
from specnb.link.limits import Limits
from specnb.link.server import SERVICE, settings_to_dict
from specnb.link.wire import Message, decode, encode
from specnb.decode.roles import RoundSettings

SEED = 20
RANDOM = 600  # random messages (plus the hand-written ones)
LIMITS = Limits(max_prompt_tokens=32, max_draft=8, max_new_tokens=32, max_session_tokens=128)
FLAGS = ["--max-prompt-tokens", "32", "--max-draft", "8", "--max-new-tokens", "32", "--max-session-tokens", "128",
         "--idle-timeout", "10"]
VOCAB = 300  # the tiny models' vocabulary (checked against the server's hello below)
PROMPTS = ["def parse(text):", "import os", "class Stack:\n    def push(self, item):"]
GREEDY = settings_to_dict(RoundSettings())
SAMPLE = settings_to_dict(RoundSettings(rule="sample", temperature=1.0, seed=1))

# values a settings field may be given: right types, wrong types, out of range, non-finite, huge
WEIRD = [None, True, False, 0, 1, -1, 3, 2 ** 31, 10 ** 9, -10 ** 9, 2 ** 64, 0.5, -0.5, 1e308, math.inf, math.nan,
         "", "greedy", "sample", "rank", "exec", "x" * 300, [], [1, 2], [99], ["crop"], ["exec"], {}, {"a": 1}]
SETTING_KEYS = [k for k in GREEDY if k != "optimized"] + ["exec", "__class__", "device", "max_new_tokens"]
# ('optimized' stays out of the random keys: a valid optimized request compiles for minutes on this
# CPU; its checks are in the hand-written cases and tests/test_link_limits.py)


def first_round(prompt: list[int], draft: list[int], settings=None, **meta) -> Message:
    return Message("V", {"begin": GREEDY if settings is None else settings, "prompt": len(prompt)} | meta,
                   prompt + [7] + draft)


def hand_written() -> list[list[bytes]]:
    """One or more cases per kind of bad message, and their neighbours; each entry is one session's messages."""
    ok = encode(first_round([1, 2, 3], [4]))
    sessions = [
        [encode(first_round([1, 2], [10 ** 9]))], [encode(first_round([-5, 2], [1]))],
        [encode(first_round([1, 2], [3] * 5000))],
        [encode(Message("V", {"begin": GREEDY, "prompt": 50}, [1, 2, 3]))],  # prompt length past the message
        [encode(Message("V", {"begin": GREEDY, "prompt": -3}, [1, 2, 3]))],
        [encode(first_round([1], [2], GREEDY | {"rule": "exec"}))], [encode(first_round([1], [2], GREEDY | {"exec": 1}))],
        [encode(first_round([1], [2], GREEDY | {"max_len": 10 ** 9}))],
        [encode(first_round([1], [2], GREEDY | {"optimized": True, "max_len": 10 ** 9}))],
        [encode(first_round([1], [2], GREEDY | {"vocab": 10 ** 6}))],
        [encode(Message("G", {"method": "autoregressive", "max_new_tokens": 10 ** 7}, [1, 2]))],
        [encode(Message("G", {"method": "autoregressive", "max_new_tokens": 8, "kw": {"temperature": -1}}, [1]))],
        [encode(Message("G", {"method": "speculative", "max_new_tokens": 8}, [1]))],  # no --draft on this server
        [encode(Message("G", {"method": "exec", "max_new_tokens": 8}, [1]))],
        [b""], [b"\x00"], [b"garbage bytes, not a message"], [bytes(range(256))],
        [encode(Message("v", ints=[1]))], [encode(Message("e", {"error": "x"}))], [encode(Message("\x00"))],
        [ok[:5]], [ok[:12]], [ok[:-2]], [ok + b"\x01"],
        [ok, encode(first_round([1], [2]))],  # a second 'begin' in one session
        [ok, encode(Message("V", {}, [7] + [300]))],  # a later round out of the vocabulary
        [ok, encode(Message("V", {}, [7] + [1] * 9))],  # a later round past --max-draft
        [ok, encode(Message("V", {}, [7, 1], np.ones(1, np.float32)))],  # probabilities on a greedy round
        [ok, encode(Message("G", {"max_new_tokens": 4}, [1]))],  # a second generation in one session
        # rounds drafted ahead: a premise that is not [back, accepted], names no earlier round, is past
        # --max-draft; a first round drafted ahead; then a good one (answered VOID or scored) and a bad one
        [ok, encode(Message("V", {"ahead": True}, [7, 1]))], [ok, encode(Message("V", {"ahead": [0, 1]}, [7, 1]))],
        [ok, encode(Message("V", {"ahead": [2, 1]}, [7, 1]))], [ok, encode(Message("V", {"ahead": [1, 9]}, [7, 1]))],
        [ok, encode(Message("V", {"ahead": [1, None]}, [7, 1]))], [encode(first_round([1], [2], ahead=[1, 0]))],
        [ok, encode(Message("V", {"ahead": [1, 1]}, [7, 1])), encode(Message("V", {"ahead": [3, 1]}, [7, 1]))],
        [encode(first_round([1], [2, 3], SAMPLE))],  # sampling without q(x)
        [encode(Message("V", {"begin": SAMPLE, "prompt": 1}, [1, 7, 2], np.array([0.0], np.float32)))],
        [b"V" + b"\x00" * (LIMITS.max_message_bytes() + 16)],  # oversized: gRPC refuses it
    ]
    return sessions


def weird_settings(rng: random.Random, base: dict) -> dict:
    out = dict(base)
    for _ in range(rng.randint(1, 3)):
        out[rng.choice(SETTING_KEYS)] = rng.choice(WEIRD)
    if rng.random() < 0.2:
        out = rng.choice([[], "greedy", 5, None])
    return out


def random_session(rng: random.Random) -> list[bytes]:
    """One session of random messages: random bytes, mutated or truncated good ones, bad values."""
    prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 12))]
    draft = [rng.randrange(VOCAB) for _ in range(rng.randint(0, 6))]
    good = encode(first_round(prompt, draft))
    what = rng.randrange(8)
    if what == 0:
        return [rng.randbytes(rng.randint(0, 300))]
    if what == 1:
        return [good[: rng.randrange(len(good))]]
    if what == 2:  # a few flipped bytes
        raw = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return [bytes(raw)]
    if what == 3:  # ids and lengths from anywhere in int32
        ids = [rng.choice([rng.randrange(VOCAB), rng.randint(-2 ** 31, 2 ** 31 - 1), VOCAB, -1]) for _ in range(rng.randint(1, 40))]
        return [encode(Message("V", {"begin": GREEDY, "prompt": rng.choice([1, len(ids), len(ids) + 1, -1, 0, 33])}, ids))]
    if what == 4:  # settings from the allow-list and beyond, with weird values
        return [encode(first_round(prompt, draft, weird_settings(rng, GREEDY)))]
    if what == 5:  # generate requests with weird fields
        meta = {"method": rng.choice(["autoregressive", "speculative", "exec", None]),
                "max_new_tokens": rng.choice([1, 8, 32, 33, 0, -1, 10 ** 7, "8", None]),
                "kw": weird_settings(rng, {"temperature": 0.0}) if rng.random() < 0.7 else rng.choice([None, [], 3])}
        meta = {k: v for k, v in meta.items() if v is not None or rng.random() < 0.5}
        return [encode(Message("G", meta, prompt))]
    if what == 6:  # a good first round, then a bad one
        later = [rng.choice([7, VOCAB, -2, 2 ** 31 - 1])] + [rng.randrange(VOCAB + 5) for _ in range(rng.randint(0, 12))]
        return [good, encode(Message("V", rng.choice([{}, {"prompt": 2}, {"begin": GREEDY}]), later))]
    floats = np.array([rng.choice([0.0, -1.0, 2.0, math.nan, 0.5]) for _ in draft], np.float32)  # sampling with bad q
    return [encode(Message("V", {"begin": SAMPLE, "prompt": len(prompt)}, prompt + [7] + draft, floats if draft else None))]


def play(channel: grpc.Channel, messages: list[bytes]) -> str:
    """Send one session's messages, one reply at a time; the outcome: 'refused:FIELD', 'served' or 'grpc:CODE'."""
    call = channel.stream_stream(f"/{SERVICE}/Session")(iter(messages), timeout=HANG_S)
    outcome = "served"
    try:
        for raw in call:
            reply = decode(raw)
            if reply.kind == "e":
                assert reply.meta["type"] == "BadMessage", reply.meta  # never an error from inside the model
                return f"refused:{reply.meta['field']}"
    except grpc.RpcError as err:
        return f"grpc:{err.code().name}"
    finally:
        call.cancel()
    return outcome


def settled(remote) -> dict:
    """The server's status once its last cancelled session is freed (freeing runs after the cancel returns)."""
    return sessions_freed(remote, HANG_S)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_pair(tmp_path_factory.mktemp("fuzz"))


def lossless(models, remote) -> int:
    """Greedy outputs through the link equal in-process ones; returns the comparisons made."""
    checks = 0
    for prompt in PROMPTS:
        want = autoregressive(models["cloud"], prompt, 24).tokens
        for gamma in (1, 4):
            assert speculative(models["edge"], remote, prompt, 24, gamma=gamma).tokens == want, (prompt, gamma)
            checks += 1
        assert autoregressive(remote, prompt, 24).tokens == want
        checks += 1
    return checks


def test_fuzzed_messages_never_reach_the_model_and_leave_nothing_behind(models, record_property):
    proc, address = start_server(str(models["root"] / "cloud"), *FLAGS)
    try:
        remote = connect(address)
        assert remote.vocab_size == VOCAB and remote.limits == LIMITS
        lossless(models, remote)  # warm: the server's memory after real work, before the fuzz
        rss_before = rss_kb(proc.pid)
        rng = random.Random(SEED)
        sessions = hand_written() + [random_session(rng) for _ in range(RANDOM)]
        outcomes: dict[str, int] = {}
        with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) as channel:
            for messages in sessions:
                outcome = play(channel, messages)
                outcome = "refused" if outcome.startswith("refused:") else outcome  # (the field is checked in unit tests)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert proc.poll() is None, "the server died"
        status = settled(remote)
        assert status["sessions"] == 0 and status["caches"] == 0, status
        checks = lossless(models, remote)
        status = settled(remote)
        assert status["sessions"] == 0 and status["caches"] == 0, status
        rss_after = rss_kb(proc.pid)
        n = sum(len(m) for m in sessions)
        assert outcomes.get("refused", 0) == status["refused"] and outcomes.get("refused", 0) > len(sessions) / 2
        assert set(outcomes) <= {"refused", "served", "grpc:RESOURCE_EXHAUSTED"}, outcomes  # never UNKNOWN / INTERNAL
        summary = (f"fuzz: {len(sessions)} sessions, {n} messages ({len(hand_written())} sessions hand-written, "
                   f"{RANDOM} random, seed {SEED}): {outcomes}; sessions left {status['sessions']}, caches left "
                   f"{status['caches']}; {checks} lossless comparisons equal; server RSS {rss_before // 1024} -> "
                   f"{rss_after // 1024} MiB")
        print(summary)
        record_property("fuzz", summary)
    finally:
        out, err = stop(proc)
    assert "Traceback" not in err, err[-2000:]
