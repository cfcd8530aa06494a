"""``specnb serve``: the cloud model as a verification service (see :mod:`specnb.link.server`).

Prints exactly one line, ``listening on HOST:PORT``, once it accepts sessions (``--port 0``
picks a free port: read the line), then serves until SIGTERM or Ctrl-C.

Beyond loopback it refuses to start without a token (``--token`` or ``$SPECNB_TOKEN``) unless the
operator says ``--insecure``; ``--tls-cert`` / ``--tls-key`` serve over TLS. Limits and deadlines:
``docs/link-security.md``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading

import torch

from ..models import ModelSpec, check_pair, load
from .limits import Limits
from .server import CloudService, start

TOKEN_ENV = "SPECNB_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="cloud model (folder, hub id or zoo:NAME)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the server's model calls")
    parser.add_argument("--draft", default=None,
                        help="a draft model loaded beside the cloud, for server-side speculation (both models here)")
    parser.add_argument("--draft-threads", type=int, default=None)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port (printed)")
    parser.add_argument("--max-sessions", type=int, default=8)
    d = Limits()
    parser.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens, help="longest prompt a session may send")
    parser.add_argument("--max-draft", type=int, default=d.max_draft, help="longest draft of one round (and gamma on the server)")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="most tokens one request may generate here")
    parser.add_argument("--max-session-tokens", type=int, default=d.max_session_tokens,
                        help="most tokens one session may hold in its KV cache (prompt + output + draft): its memory")
    parser.add_argument("--idle-timeout", type=float, default=120.0,
                        help="seconds a session may wait for its client's next message before the server drops it")
    parser.add_argument("--token", default=None,
                        help=f"shared secret every client must send (default: ${TOKEN_ENV}); needed beyond loopback")
    parser.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve over TLS (with --tls-key)")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    parser.add_argument("--batch", default="none", choices=("none", "dynamic", "wait"),
                        help="verify rounds of concurrent sessions in one forward: none (one at a time), dynamic "
                             "(what is queued, up to --max-batch), wait (up to --batch-wait-ms for more); docs/capacity.md")
    parser.add_argument("--max-batch", type=int, default=8, help="most sessions' rounds in one verify forward")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0,
                        help="with --batch wait: how long the first round of a batch waits for others")
    parser.add_argument("--insecure", action="store_true",
                        help="allow listening beyond loopback without a token (anyone who reaches the port may use it)")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); anything else reaches beyond this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def access(args: argparse.Namespace) -> tuple[str | None, tuple[bytes, bytes] | None]:
    """The token and TLS material the server runs with, or a ValueError before anything is loaded:
    beyond loopback a token is required unless ``--insecure``."""
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and token is None and not args.insecure:
        raise ValueError(f"refusing to listen on {args.host} without a token: anyone who reaches the port could use "
                         f"the model. Give --token (or set {TOKEN_ENV}), or say --insecure if the network is yours")
    if not args.idle_timeout > 0:
        raise ValueError(f"--idle-timeout must be > 0 seconds, got {args.idle_timeout}")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    tls = None
    if args.tls_cert:
        with open(args.tls_cert, "rb") as cert, open(args.tls_key, "rb") as key:
            tls = (cert.read(), key.read())
    return token, tls


def run(args: argparse.Namespace) -> int:
    try:  # refused before minutes of model loading
        token, tls = access(args)
        limits = Limits(args.max_prompt_tokens, args.max_draft, args.max_new_tokens, args.max_session_tokens)
        if args.max_batch < 1 or args.batch_wait_ms < 0:
            raise ValueError(f"--max-batch must be >= 1 and --batch-wait-ms >= 0, got {args.max_batch} and {args.batch_wait_ms}")
    except (ValueError, OSError) as err:
        print(f"specnb serve: {err}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(ModelSpec(args.model, dtype=args.dtype, device=args.device, threads=args.threads))
    draft = None
    if args.draft:
        draft = load(ModelSpec(args.draft, dtype=args.dtype, device=args.device, threads=args.draft_threads))
        check_pair(draft, model)  # refused here, before any client asks for server-side speculation
    cloud = CloudService(model, draft, args.max_sessions, limits=limits, token=token, idle_timeout_s=args.idle_timeout,
                         batch=args.batch, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
    server, port = start(cloud, args.host, args.port, tls=tls)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"listening on {args.host}:{port}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(grace=1.0).wait()
    cloud.close()
    sys.stdout.flush()
    return 0
