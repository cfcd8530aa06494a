"""The cloud as a service: sessions over gRPC bidirectional streams, one per generation.

One gRPC service ``specnb.Cloud`` with three methods, all carrying :mod:`specnb.link.wire` bytes:

* ``Hello`` (unary): versions, model, dtype, device, vocabulary and the tokenizer's files, so the
  client can encode and decode locally and check its edge's tokenizer as in-process;
* ``Status`` (unary): open sessions and sessions served (how a test sees a vanished client freed);
* ``Session`` (stream both ways): one generation. ``V`` messages are rounds of edge-cloud
  speculation on the session's verifier (its KV cache lives as long as the stream and is cropped
  after each rejection); a ``G`` message generates on the server (cloud-only, streamed back token
  by token, or server-side speculation with ``--draft``). The session ends, and its cache is freed,
  when the stream ends for any reason: the client closes it, cancels it, or vanishes (the
  connection drops; keepalive pings find a silent peer within ~15 s).

Sessions run concurrently on the server's threads; their model calls take turns (one lock per
server: batch size 1, no batching across sessions), so no session sees another's state.
"""

from __future__ import annotations

import base64
import itertools
import queue
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import grpc
import torch

from .._version import __version__
from ..decode.loops import as_verifier, speculative
from ..models import LoadedModel
from ..decode.roles import RoundSettings
from .wire import Message, decode, encode

SERVICE = "specnb.Cloud"
PROTOCOL = 1
# Keepalive: both ends ping an idle connection every 5 s and give up 10 s after an unanswered ping.
KEEPALIVE = [("grpc.keepalive_time_ms", 5000), ("grpc.keepalive_timeout_ms", 10000),
             ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
SERVER_OPTIONS = KEEPALIVE + [("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
                              ("grpc.http2.max_ping_strikes", 0), ("grpc.max_receive_message_length", 64 << 20)]


def versions() -> dict[str, str]:
    import transformers
    return {"protocol": PROTOCOL, "specnb": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def settings_to_dict(s: RoundSettings) -> dict[str, Any]:
    d = asdict(s)
    d["widths"] = list(s.widths)
    d["levers_off"] = sorted(s.levers_off)
    return d


def settings_from_dict(d: dict[str, Any]) -> RoundSettings:
    d = dict(d)
    d["widths"] = tuple(d.get("widths", ()))
    d["levers_off"] = frozenset(d.get("levers_off", ()))
    return RoundSettings(**d)


def _us(t0: float) -> int:
    return int((time.perf_counter() - t0) * 1e6)


class Session:
    """One generation's state on the server: the verifier (and its KV cache) of edge-cloud speculation."""

    def __init__(self, cloud: "CloudService"):
        self.cloud = cloud
        self.verifier = None
        self.length = 0  # tokens in the verifier's cache: seq[:-1]
        self._stop = threading.Event()

    def verify(self, msg: Message) -> Message:
        t0 = time.perf_counter()
        ints = msg.ints
        with self.cloud.lock, torch.inference_mode():
            if "begin" in msg.meta:
                self._begin(settings_from_dict(msg.meta["begin"]), ints[: msg.meta["prompt"]])
                ints = ints[msg.meta["prompt"]:]
            if self.verifier is None:
                raise ValueError("a session's first round must carry the prompt and settings")
            last, draft = ints[0], ints[1:]
            row = None
            if self.settings.rule == "sample":
                qx = torch.from_numpy(msg.floats.copy()) if msg.floats is not None else torch.zeros(0)
                n, tok, p_row = self.verifier.verify_split(last, draft, qx)
                if tok is None:
                    row, tok = p_row.cpu().numpy(), -1
            else:
                verdict = self.verifier.verify(last, draft, None)
                n, tok = verdict.accepted, verdict.token
            self.length += 1 + n
        return Message("v", ints=[n, tok, _us(t0)], floats=row)

    def _begin(self, settings: RoundSettings, prompt: list[int]) -> None:
        self._release()
        self.settings = settings
        self.verifier = as_verifier(self.cloud.model, settings)  # the in-process cloud verifier, as is
        self.verifier.begin(prompt, settings)
        self.length = len(prompt) - 1

    def generate(self, msg: Message) -> Iterator[Message]:
        """Cloud-only decoding streamed back as it decodes, or server-side speculation (one message)."""
        kw, n_new, prompt = dict(msg.meta.get("kw", {})), int(msg.meta["max_new_tokens"]), msg.ints
        t0 = time.perf_counter()
        if msg.meta.get("method") == "speculative":
            if self.cloud.draft is None:
                raise ValueError("this server has no draft model: start it with 'specnb serve --draft MODEL'")
            with self.cloud.lock:
                g = speculative(self.cloud.draft, self.cloud.model, prompt, n_new, **kw)
            yield Message("t", ints=[_us(t0)] + g.tokens)
            metrics = g.metrics | {"server_s": time.perf_counter() - t0}
            yield Message("d", meta={"metrics": metrics, "trace": g.trace, "drafted_trace": g.drafted_trace})
            return
        temperature = float(kw.get("temperature", 0.0))
        optimized = bool(kw.get("optimized", False))
        settings = RoundSettings(rule="sample" if temperature > 0 else "greedy", temperature=temperature,
                                 top_k=kw.get("top_k"), top_p=kw.get("top_p"), seed=kw.get("seed"),
                                 optimized=optimized, compile=kw.get("compile"), widths=(1,) if optimized else (),
                                 max_len=len(prompt) + n_new + 1)
        tokens: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._decode, args=(settings, prompt, n_new, tokens), daemon=True).start()
        out: list[int] = []
        while True:
            # send what is ready in one message: decoding goes on while a message is on its way
            items = [tokens.get()]
            while not tokens.empty():
                items.append(tokens.get())
            done = items[-1] is None or isinstance(items[-1], Exception)
            ready = [it for it in items if isinstance(it, tuple)]
            if ready:
                out += [tok for tok, _ in ready]
                yield Message("t", ints=[sum(us for _, us in ready)] + [tok for tok, _ in ready])
            if isinstance(items[-1], Exception):
                raise items[-1]
            if done:
                break
        yield Message("d", meta={"metrics": {"new_tokens": len(out), "server_s": time.perf_counter() - t0,
                                             "cloud_calls": len(out) + (len(prompt) > 1)}})

    def _decode(self, settings: RoundSettings, prompt: list[int], n_new: int, tokens: queue.SimpleQueue) -> None:
        """Cloud-only decoding on a thread of its own, token by token into ``tokens`` (then None, or the error)."""
        try:
            eos = self.cloud.model.eos_ids
            with self.cloud.lock, torch.inference_mode():
                if self._stop.is_set():
                    return
                self._begin(settings, prompt)
            last, n = prompt[-1], 0
            while n < n_new and not (n and last in eos):
                t1 = time.perf_counter()
                with self.cloud.lock, torch.inference_mode():  # one token = verifying an empty draft
                    if self._stop.is_set():
                        return
                    last = self.verifier.verify(last, [], None).token
                n += 1
                tokens.put((last, _us(t1)))
            tokens.put(None)
        except Exception as err:  # noqa: BLE001 - handed to the stream, which reports it
            tokens.put(err)

    def close(self) -> None:
        """Free the cache (called with the model lock held); a decoding thread stops at its next token."""
        self._stop.set()
        self._release()

    def _release(self) -> None:
        if self.verifier is not None:
            self.verifier.close()
            self.verifier = None


class CloudService:
    """The server's state: the model(s), the open sessions, and the handlers of the three methods."""

    def __init__(self, model: LoadedModel, draft: LoadedModel | None = None, max_sessions: int = 8):
        self.model, self.draft, self.max_sessions = model, draft, max_sessions
        self.lock = threading.Lock()
        self.sessions: dict[int, str] = {}
        self._ids = itertools.count(1)
        self._table = threading.Lock()
        self.served = 0
        self.info = versions() | {
            "model": model.spec.name_or_path, "dtype": model.spec.dtype, "device": str(model.device),
            "vocab_size": model.vocab_size, "eos_ids": sorted(model.eos_ids),
            "draft": None if draft is None else draft.spec.name_or_path, "tokenizer": _tokenizer_files(model),
        }

    def hello(self, raw: bytes, context) -> bytes:
        client = decode(raw).meta
        if client.get("protocol") != PROTOCOL:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"link protocol {client.get('protocol')} (specnb {client.get('specnb')}) is not this "
                          f"server's {PROTOCOL} (specnb {__version__}): use the same specnb version on both sides")
        return encode(Message("h", meta=self.info))

    def status(self, raw: bytes, context) -> bytes:
        with self._table:
            return encode(Message("s", meta={"sessions": len(self.sessions), "served": self.served,
                                             "peers": sorted(self.sessions.values())}))

    def session(self, requests: Iterator[bytes], context) -> Iterator[bytes]:
        with self._table:
            if len(self.sessions) >= self.max_sessions:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the server holds {self.max_sessions} sessions, its limit")
            sid = next(self._ids)
            self.sessions[sid] = context.peer()
            self.served += 1
        state = Session(self)
        context.add_callback(lambda: self._free(sid, state))  # runs however the stream ends
        try:
            for raw in requests:
                msg = decode(raw)
                try:
                    if msg.kind == "V":
                        yield encode(state.verify(msg))
                    elif msg.kind == "G":
                        for out in state.generate(msg):
                            yield encode(out)
                    else:
                        raise ValueError(f"unknown message kind {msg.kind!r}")
                except Exception as err:  # the client gets the error as one message; the session ends
                    yield encode(Message("e", meta={"type": type(err).__name__, "error": str(err)}))
                    return
        finally:
            self._free(sid, state)

    def _free(self, sid: int, state: Session) -> None:
        with self._table:
            if self.sessions.pop(sid, None) is None:
                return
        with self.lock:
            state.close()


def _tokenizer_files(model: LoadedModel) -> dict[str, str]:
    """The tokenizer as files (base64), written by ``save_pretrained``: the client loads them as is."""
    with tempfile.TemporaryDirectory() as tmp:
        model.tokenizer.save_pretrained(tmp)
        return {p.name: base64.b64encode(p.read_bytes()).decode() for p in Path(tmp).iterdir() if p.is_file()}


def start(cloud: CloudService, host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.Server, int]:
    """Serve ``cloud`` on ``host:port`` (0: a free port); returns the started server and its port."""
    workers = cloud.max_sessions + 4
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=SERVER_OPTIONS,
                         maximum_concurrent_rpcs=workers)
    handlers = {
        "Hello": grpc.unary_unary_rpc_method_handler(cloud.hello),
        "Status": grpc.unary_unary_rpc_method_handler(cloud.status),
        "Session": grpc.stream_stream_rpc_method_handler(cloud.session),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    return server, bound
