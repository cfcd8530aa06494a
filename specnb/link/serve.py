"""``specnb serve``: the cloud model as a verification service (see :mod:`specnb.link.service`).

Prints exactly one line, ``listening on HOST:PORT``, once it accepts sessions (``--port 0``
picks a free port: read the line), then serves until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import torch

from ..models import ModelSpec, check_pair, load
from .service import CloudService, start


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


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(ModelSpec(args.model, dtype=args.dtype, device=args.device, threads=args.threads))
    draft = None
    if args.draft:
        draft = load(ModelSpec(args.draft, dtype=args.dtype, device=args.device, threads=args.draft_threads))
        check_pair(draft, model)  # refused here, before any client asks for server-side speculation
    server, port = start(CloudService(model, draft, args.max_sessions), args.host, args.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"listening on {args.host}:{port}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(grace=1.0).wait()
    sys.stdout.flush()
    return 0
