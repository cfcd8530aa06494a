"""``specnb serve`` subprocesses for the link's fault, access and fuzz tests (loopback only, always stopped)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from specnb import ModelSpec, load
from specnb.link.loopback import _first_line
from tiny_models import build_llama, build_tokenizer

HANG_S = 60  # "no hang": generous, the machine is shared


def build_pair(root: Path) -> dict:
    """The tiny related pair of tests/test_link.py: a cloud and an edge that drafts it well."""
    tok = build_tokenizer(root / "tok")
    build_llama(root / "cloud", tok, seed=0)
    build_llama(root / "edge", tok, seed=2, base=root / "cloud", noise=0.05)
    return {name: load(ModelSpec(str(root / name), device="cpu")) for name in ("cloud", "edge")} | {"root": root}


def launch(model: str, *extra: str, host: str = "127.0.0.1", env: dict | None = None,
           stderr: int = subprocess.PIPE) -> subprocess.Popen:
    """``specnb serve`` on ``host``, port 0, one thread; stderr piped (read by :func:`stop`) unless told
    otherwise: a long-lived server whose log nobody reads gets ``subprocess.DEVNULL``."""
    cmd = [sys.executable, "-m", "specnb.cli", "serve", "--model", model, "--device", "cpu", "--threads", "1",
           "--host", host, "--port", "0", *extra]
    clean = {k: v for k, v in os.environ.items() if k != "SPECNB_TOKEN"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=clean | (env or {}))


def start_server(model: str, *extra: str, host: str = "127.0.0.1", env: dict | None = None,
                 stderr: int = subprocess.PIPE) -> tuple[subprocess.Popen, str]:
    """``specnb serve`` on ``host``, port 0; returns the process and the address it printed."""
    proc = launch(model, *extra, host=host, env=env, stderr=stderr)
    line = readline(proc)
    match = re.fullmatch(rf"listening on ({re.escape(host)}:\d+)\n", line)
    if not match:
        stop(proc)
        pytest.fail(f"specnb serve did not start: {line!r}")
    return proc, match.group(1)


def readline(proc: subprocess.Popen) -> str:
    """The next line ``proc`` prints ('' if it exits first), or the test fails after HANG_S (never a hang):
    the package's own reader (:mod:`specnb.link.loopback`), which kills a silent server."""
    try:
        return _first_line(proc, HANG_S)
    except RuntimeError:
        proc.wait()
        pytest.fail(f"{proc.args[:4]} printed no line within {HANG_S} s")


def stop(proc: subprocess.Popen) -> tuple[str, str]:
    """SIGCONT (in case it was frozen), SIGTERM, and its remaining stdout / stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def run_concurrently(fns) -> list:
    """Run each function on its own thread; their results in order, or the first error."""
    out: list = [None] * len(fns)
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            out[i] = fns[i]()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_S)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a session hung"
    return out


def sessions_freed(remote, timeout_s: float = 10.0) -> dict:
    """The server's status once its open sessions are back to 0, or at ``timeout_s``: a session is freed when
    the server's handler ends, which may be just after the client has read its last reply."""
    deadline = time.monotonic() + timeout_s
    while (status := remote.status())["sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return status
