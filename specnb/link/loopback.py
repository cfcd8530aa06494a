"""A ``specnb serve`` subprocess on this machine's loopback, for notebooks, studies and tests."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import tempfile
import threading
from typing import Iterator


@contextlib.contextmanager
def local_server(model: str, *, dtype: str = "float32", device: str = "cpu", threads: int | None = 1,
                 draft: str | None = None, draft_threads: int | None = 1, timeout_s: float = 300.0,
                 extra: tuple[str, ...] | list[str] = ()) -> Iterator[str]:
    """Start ``specnb serve`` on 127.0.0.1 (a free port), yield its ``HOST:PORT``, stop it on exit.

    ``draft``: also load a draft model there (server-side speculation). Raises ``RuntimeError`` when
    the server does not announce itself within ``timeout_s``. ``extra``: more ``specnb serve``
    options (``["--batch", "dynamic"]``).
    """
    cmd = [sys.executable, "-m", "specnb.cli", "serve", "--model", model, "--dtype", dtype, "--device", device,
           "--host", "127.0.0.1", "--port", "0"]
    if threads:
        cmd += ["--threads", str(threads)]
    if draft:
        cmd += ["--draft", draft] + (["--draft-threads", str(draft_threads)] if draft_threads else [])
    cmd += list(extra)
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = _first_line(proc, timeout_s)
        match = re.fullmatch(r"listening on (\S+:\d+)\n", line)
        if not match:
            proc.kill()
            proc.wait()
            log.seek(0)
            raise RuntimeError(f"specnb serve did not start: {line.strip() or log.read()[-2000:]}")
        yield match.group(1)
    finally:
        log.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _first_line(proc: subprocess.Popen, timeout_s: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not box:
        proc.kill()
        raise RuntimeError(f"specnb serve printed nothing within {timeout_s:g} s")
    return box[0]
