"""The link under faults and strangers: a frozen server, an idle client, bad messages, tokens and TLS.

Real ``specnb serve`` subprocesses on loopback (one bind on 0.0.0.0, stopped as soon as it has
started, never sent anything). Bounds are generous ("within the deadline plus slack"), never timing
figures.
"""

from __future__ import annotations

import queue
import re
import shutil
import signal
import subprocess
import threading
import time

import grpc
import pytest

from serving import HANG_S, build_pair, launch, readline, start_server, stop
from specnb import autoregressive, connect, speculative
from specnb.link.server import SERVICE, settings_to_dict
from specnb.link.wire import Message, decode, encode
from specnb.decode.roles import RoundSettings

PROMPT = "def parse(text):"
DEADLINE_S = 2.0
SLACK_S = 10.0  # the watchdog's tick, cancelling the call, a loaded machine


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_pair(tmp_path_factory.mktemp("faults"))


def test_a_frozen_server_gives_one_named_error_within_the_deadline(models, record_property):
    proc, address = start_server(str(models["root"] / "cloud"))
    remote = connect(address, deadline_s=DEADLINE_S, setup_s=5.0)
    want = autoregressive(models["cloud"], PROMPT, 8).tokens
    assert speculative(models["edge"], remote, PROMPT, 8, gamma=2).tokens == want  # alive and lossless first
    frozen_at: list[float] = []

    def freeze() -> None:
        proc.send_signal(signal.SIGSTOP)  # the socket stays open, as when a host or its GPU hangs
        frozen_at.append(time.monotonic())

    freezer = threading.Timer(0.5, freeze)
    try:
        freezer.start()
        with pytest.raises(ConnectionError) as err:
            speculative(models["edge"], connect(address, deadline_s=DEADLINE_S, setup_s=5.0), PROMPT, 1000, gamma=1)
        edge_s = time.monotonic() - frozen_at[0]
        message = str(err.value)
        assert address in message and re.search(r"round \d+'s verdict", message) and "sent nothing for" in message
        assert f"deadline {DEADLINE_S:g} s" in message and err.value.__cause__ is None
        assert edge_s < DEADLINE_S + SLACK_S, edge_s  # not the minute of the issue
        # a streamed cloud-only generation on the frozen server: the first token is overdue
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match=r"cloud-only decoding's tokens") as err:
            autoregressive(remote, PROMPT, 8)  # connected before the freeze
        stream_s = time.monotonic() - t0
        assert address in str(err.value) and stream_s < DEADLINE_S + 5.0 + SLACK_S, stream_s
        record_property("sigstop_detect_s", round(edge_s, 2))
        record_property("sigstop_stream_detect_s", round(stream_s, 2))
        print(f"SIGSTOP: speculation failed {edge_s:.2f} s after the freeze, the stream {stream_s:.2f} s "
              f"(deadline {DEADLINE_S:g} s; stream: + setup_s 5 s)")
    finally:
        freezer.cancel()
        stop(proc)


def open_session(address: str, first: Message, metadata=None):
    """A raw session that sends ``first`` and then nothing: (call, queue to send more, channel)."""
    channel = grpc.insecure_channel(address)
    q: queue.SimpleQueue = queue.SimpleQueue()

    def requests():
        yield encode(first)
        while (item := q.get()) is not None:
            yield item

    call = channel.stream_stream(f"/{SERVICE}/Session")(requests(), metadata=metadata)
    return call, q, channel


def status(address: str) -> dict:
    with grpc.insecure_channel(address) as channel:
        return decode(channel.unary_unary(f"/{SERVICE}/Status")(b"", timeout=HANG_S)).meta


def test_an_idle_client_is_dropped_and_a_bad_message_ends_only_its_session(models):
    proc, address = start_server(str(models["root"] / "cloud"), "--idle-timeout", "1", "--max-draft", "4")
    try:
        begin = Message("V", {"begin": settings_to_dict(RoundSettings()), "prompt": 2}, [5, 6, 7, 8])
        idle, q_idle, ch1 = open_session(address, begin)
        assert decode(next(idle)).kind == "v"  # one good round, then silence
        bad, q_bad, ch2 = open_session(address, Message("V", {}, [1] + [2] * 9))  # no settings, draft past --max-draft
        reply = decode(next(bad))
        assert reply.kind == "e" and reply.meta["field"] == "begin" and "first round" in reply.meta["error"]
        with pytest.raises(grpc.RpcError) as err:
            next(idle)  # the silent session is cancelled by the server
        assert err.value.code() == grpc.StatusCode.CANCELLED
        deadline = time.monotonic() + HANG_S
        while status(address)["sessions"] and time.monotonic() < deadline:
            time.sleep(0.1)
        s = status(address)
        assert s["sessions"] == 0 and s["caches"] == 0 and s["idle_dropped"] == 1 and s["refused"] == 1, s
        for q, ch in ((q_idle, ch1), (q_bad, ch2)):
            q.put(None)
            ch.close()
        want = autoregressive(models["cloud"], PROMPT, 12).tokens  # the server goes on serving
        remote = connect(address)
        assert speculative(models["edge"], remote, PROMPT, 12, gamma=3).tokens == want
        time.sleep(2.5)  # past --idle-timeout with no call: the server closes the connection; the channel reconnects
        assert speculative(models["edge"], remote, PROMPT, 12, gamma=3).tokens == want
        assert autoregressive(remote, PROMPT, 12).tokens == want
    finally:
        _, err = stop(proc)
    assert "Traceback" not in err, err[-2000:]


def test_the_client_checks_a_message_against_the_servers_limits_before_sending(models):
    proc, address = start_server(str(models["root"] / "cloud"), "--max-prompt-tokens", "4", "--max-new-tokens", "8")
    try:
        remote = connect(address)
        assert remote.limits.max_prompt_tokens == 4
        with pytest.raises(ValueError, match=re.escape("prompt: 5 is past the server's limit of 4 (--max-prompt-tokens)")):
            speculative(models["edge"], remote, [1, 2, 3, 4, 5], 4)
        with pytest.raises(ValueError, match="--max-new-tokens"):
            autoregressive(remote, [1, 2], 9)
        s = remote.status()
        assert s["served"] == 0 and s["refused"] == 0  # refused at the edge: nothing was sent
        # a real session with a static cache sized by max_len fits its own checks to the last round
        for gamma in (1, 4):
            want = speculative(models["edge"], models["cloud"], [5, 6, 7], 8, gamma=gamma, optimized="cloud", compile=False)
            got = speculative(models["edge"], remote, [5, 6, 7], 8, gamma=gamma, optimized="cloud", compile=False)
            assert got.tokens == want.tokens and len(got.tokens) == 8
    finally:
        stop(proc)


def test_beyond_loopback_the_server_needs_a_token_or_insecure(models):
    cloud = str(models["root"] / "cloud")
    refused = launch(cloud, host="0.0.0.0")
    out, err = refused.communicate(timeout=HANG_S)
    assert refused.returncode == 2 and out == ""
    assert "refusing to listen on 0.0.0.0 without a token" in err and "--insecure" in err
    # with a token it starts (stopped at once: nothing is ever sent to a non-loopback address)
    proc, address = start_server(cloud, host="0.0.0.0", env={"SPECNB_TOKEN": "s3cret"})
    stop(proc)
    assert address.startswith("0.0.0.0:")


def test_a_token_is_needed_on_every_call_and_tls_carries_it(models, tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=HANG_S)
    proc, address = start_server(str(models["root"] / "cloud"), "--token", "s3cret", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        with pytest.raises(PermissionError, match="needs its token"):
            connect(address, tls=str(cert))
        with pytest.raises(PermissionError, match="needs its token"):
            connect(address, tls=str(cert), token="wrong")
        with pytest.raises(ConnectionError, match="no specnb cloud answers"):
            connect(address, token="s3cret", timeout_s=2)  # plain HTTP/2 to a TLS port
        remote = connect(address, tls=cert.read_bytes(), token="s3cret")
        want = autoregressive(models["cloud"], PROMPT, 12).tokens
        assert speculative(models["edge"], remote, PROMPT, 12, gamma=3).tokens == want
        assert autoregressive(remote, PROMPT, 12).tokens == want
        # a raw session without the token never reaches the model
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(cert.read_bytes()))
        call = channel.stream_stream(f"/{SERVICE}/Session")(iter([encode(Message("V", {}, [1]))]))
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()
        assert remote.status()["served"] == 2
    finally:
        stop(proc)
