"""The cloud as a service: sessions over gRPC bidirectional streams, one per generation.

One gRPC service ``specnb.Cloud`` with three methods, all carrying :mod:`specnb.link.wire` bytes:

* ``Hello`` (unary): versions, model, dtype, device, vocabulary and the tokenizer's files, so the
  client can encode and decode locally and check its edge's tokenizer as in-process;
* ``Status`` (unary): open sessions and sessions served (how a test sees a vanished client freed);
* ``Session`` (stream both ways): one generation. ``V`` messages are rounds of edge-cloud
  speculation on the session's verifier (its KV cache lives as long as the stream and is cropped
  after each rejection), answered in order; a round the edge drafted ahead carries its premise
  (``ahead: [back, accepted]``: the verdict it assumes of the round ``back`` places before it, whose token is
  its own first) and is answered ``[-1, -1]`` without a model call unless that round was the last one scored
  and answered exactly that (:mod:`specnb.decode.ahead`). A session whose settings ask the cloud to lead
  (``lead``, greedy) has its messages read by a thread, and decodes the cloud's own tokens until one is there;
  a verdict then carries those its round's draft did not reach (:mod:`specnb.decode.lead`). A ``G`` message
  generates on the server (cloud-only, streamed back token
  by token, or server-side speculation with ``--draft``). The session ends, and its cache is freed,
  when the stream ends for any reason: the client closes it, cancels it, or vanishes (the
  connection drops; keepalive pings find a silent peer, in up to a minute as measured), or the
  client stops sending for longer than the server's idle timeout (``--idle-timeout``: the server
  cancels the session).

Every message is checked before any model call (:mod:`specnb.link.limits`): a bad one ends its
session with one error naming the field and the limit. With a token (``--token``), every call must
carry it (gRPC metadata ``authorization: Bearer TOKEN``); see ``docs/link-security.md``.

Sessions run concurrently on the server's threads; their model calls take turns (one lock per
server), so no session sees another's state. With ``batch`` other than ``none``, the verify rounds of
concurrent plain sessions, and the tokens of cloud-only streams (a round with an empty draft), run as
one forward pass (:mod:`specnb.link.server_batching`), each on its own cache.
"""

from __future__ import annotations

import base64
import hmac
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
from ..decode.ahead import VOID, Chain
from ..decode.lead import Lead, next_leading
from ..decode.loops import speculative
from ..decode.pair import as_verifier
from ..models import LoadedModel
from ..decode.roles import RoundSettings, Verdict
from .server_batching import Batcher, batchable
from .limits import BadMessage, Limits, check_generate, check_verify, parse
from .server_speculation import ServerCloud, ServerDraft
from .wire import Message, decode, encode

SERVICE = "specnb.Cloud"
# 2: a round drafted ahead carries its premise ([back, accepted], specnb.decode.ahead); 3: a verdict may carry the
# cloud's own tokens after its token (``lead``: specnb.decode.lead), [accepted, token, server us, *extra]
PROTOCOL = 3
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


def _us(t0: float) -> int:
    return int((time.perf_counter() - t0) * 1e6)


class Session:
    """One generation's state on the server: the verifier (and its KV cache) of edge-cloud speculation."""

    def __init__(self, cloud: "CloudService"):
        self.cloud = cloud
        self.verifier = None
        self.length = 0  # tokens in the verifier's cache: seq[:-1]
        self.used = ""  # the kind of the session's first message: one generation per session
        self.chain = Chain()  # which rounds drafted ahead count (specnb.decode.ahead)
        self.lead: Lead | None = None  # the cloud's own tokens while it waits (settings.lead)
        self._stop = threading.Event()

    def verify(self, msg: Message) -> Message:
        if self.used == "G":
            raise BadMessage("kind", "a session carries one generation: open a new session for another")
        self.used = "V"
        t0 = time.perf_counter()
        begun = self.verifier is not None
        committed = len(self.chain.verdict.extra) if "ahead" in msg.meta else 0  # of its drafts, if scored (Chain.plan)
        settings, prompt, last, draft, premise = check_verify(
            msg, self.cloud.limits, self.cloud.model.vocab_size, length=self.length - committed if begun else None,
            rule=self.settings.rule if begun else None, max_len=self.settings.max_len if begun else 0,
            rounds=self.chain.rounds, scored=self.chain.admits)  # before any model call
        batcher = self.cloud.batcher
        if settings is not None and settings.lead and batcher is not None:
            raise BadMessage("begin.lead", "this server batches verify rounds across sessions (--batch): the cloud "
                                           "cannot lead a session there; use lead=False, or a server with --batch none")
        decided, last, draft, skip = self.chain.plan(last, draft, premise)
        if decided is not None:  # drafted ahead on a verdict that did not come (VOID), or decided by its extra tokens
            self.chain.record(decided)
            return Message("v", ints=[decided.accepted, decided.token, _us(t0), *decided.extra])
        extra: tuple[int, ...] = ()
        with self.cloud.lock, torch.inference_mode():
            if settings is not None:
                self._begin(settings, prompt)
            verifier = self.verifier
            solo = batcher is None or not batchable(verifier)
            if self.lead is not None:
                verdict = self.lead.verify(last, draft)
                n, tok, row, extra = verdict.accepted, verdict.token, None, verdict.extra
            elif solo:
                n, tok, row = self._settle(verifier, verifier.length, draft, msg, None, last)
        if not solo and self.lead is None:  # this round joins the next batch across sessions (specnb.link.server_batching)
            start = verifier.length
            n, tok, row = batcher.submit(verifier, [last] + draft,
                                         lambda logits: self._settle(verifier, start, draft, msg, logits))
        self.length += 1 + n + len(extra)
        self.chain.record(Verdict(skip + n, tok, extra))
        return Message("v", ints=[skip + n, tok, _us(t0), *extra], floats=row)

    def lead_step(self) -> bool:
        """One token of the cloud's own while the session waits for its next round (``lead``); False when
        there is nothing to do."""
        with self.cloud.lock, torch.inference_mode():
            if self._stop.is_set() or self.lead is None or self.verifier is None:
                return False
            return self.lead.step()

    def _settle(self, verifier, start: int, draft: list[int], msg: Message, logits, last: int = -1):
        """The session's rule on its round: (accepted, token or -1, the row p_n to resample from or None).
        ``logits`` None: the verifier scores ``[last] + draft`` itself (solo)."""
        row = None
        if self.settings.rule == "sample":
            qx = torch.from_numpy(msg.floats.copy()) if msg.floats is not None else torch.zeros(0)
            if logits is None:
                n, tok, p_row = verifier.verify_split(last, draft, qx)
            else:
                n, tok, p_row = verifier.settle_split(start, draft, logits, qx)
            if tok is None:
                row, tok = p_row.cpu().numpy(), -1
        else:
            verdict = verifier.verify(last, draft, None) if logits is None else verifier.settle(start, draft, logits, None)
            n, tok = verdict.accepted, verdict.token
        return n, tok, row

    def _begin(self, settings: RoundSettings, prompt: list[int]) -> None:
        self._release()
        self.settings = settings
        self.verifier = as_verifier(self.cloud.model, settings)  # the in-process cloud verifier, as is
        self.cloud.built += 1  # (under the model lock, as is ``freed``)
        self.verifier.begin(prompt, settings)
        self.length = len(prompt) - 1
        self.lead = Lead(self.verifier, self.cloud.limits.max_draft, settings.max_len) if settings.lead else None

    def generate(self, msg: Message) -> Iterator[Message]:
        """Cloud-only decoding streamed back as it decodes, or server-side speculation (one message)."""
        if self.used:
            raise BadMessage("kind", "a session carries one generation: open a new session for another")
        self.used = "G"
        method, kw, n_new, prompt = check_generate(msg, self.cloud.limits, self.cloud.model.vocab_size,
                                                   has_draft=self.cloud.draft is not None)  # before any model call
        t0 = time.perf_counter()
        if method == "speculative":
            if self.cloud.batcher is not None:  # draft steps and verify rounds batched across sessions (server_spec)
                g = speculative(ServerDraft(self.cloud.draft, self.cloud.draft_batcher),
                                ServerCloud(self.cloud.model, self.cloud.batcher, self.cloud.lock), prompt, n_new, **kw)
            else:
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
            batcher = self.cloud.batcher
            verifier = self.verifier
            batched = batcher is not None and batchable(verifier)  # streams batch with each other and with rounds
            while n < n_new and not (n and last in eos):
                t1 = time.perf_counter()
                if batched:
                    if self._stop.is_set():
                        return
                    start = verifier.length
                    last = batcher.submit(verifier, [last], lambda lg: verifier.settle(start, [], lg, None)).token
                    n += 1
                    tokens.put((last, _us(t1)))
                    continue
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
            self.cloud.freed += 1


class CloudService:
    """The server's state: the model(s), the open sessions, and the handlers of the three methods."""

    def __init__(self, model: LoadedModel, draft: LoadedModel | None = None, max_sessions: int = 8, *,
                 limits: Limits | None = None, token: str | None = None, idle_timeout_s: float = 120.0,
                 batch: str = "none", max_batch: int = 8, batch_wait_ms: float = 0.0):
        self.model, self.draft, self.max_sessions = model, draft, max_sessions
        # verify rounds of concurrent sessions in one forward (docs/capacity.md); "none": one at a time
        self.lock = threading.Lock()
        self.batcher = None if batch == "none" else Batcher(model, self.lock, batch, max_batch, batch_wait_ms)
        # server-side speculation on a batching server: the draft model's steps batched too, under the same
        # model lock (the server's model calls take turns, as on one accelerator)
        self.draft_batcher = None if self.batcher is None or draft is None else \
            Batcher(draft, self.lock, batch, max_batch, batch_wait_ms)
        self.limits, self.token, self.idle_timeout_s = limits or Limits(), token or None, idle_timeout_s
        self.sessions: dict[int, str] = {}
        self._ids = itertools.count(1)
        self._table = threading.Lock()
        self.served = 0
        self.built = self.freed = 0  # verifiers (KV caches) built and freed, see ``caches``
        self.stopped = threading.Event()
        self.refused = 0  # sessions ended by a bad message
        self.idle_dropped = 0  # sessions cancelled by the idle timeout
        self._waiting: dict[int, tuple[float, Any]] = {}  # sid -> (waiting for the client since, its context)
        self.info = versions() | {
            "limits": asdict(self.limits), "idle_timeout_s": idle_timeout_s,
            "model": model.spec.name_or_path, "dtype": model.spec.dtype, "device": str(model.device),
            "vocab_size": model.vocab_size, "eos_ids": sorted(model.eos_ids),
            "batch": batch, "max_batch": max_batch, "batch_wait_ms": batch_wait_ms,
            "draft": None if draft is None else draft.spec.name_or_path, "tokenizer": _tokenizer_files(model),
        }

    def _admit(self, context) -> None:
        """With a token, every call must carry it (compared in constant time)."""
        if self.token is None:
            return
        sent = dict(context.invocation_metadata()).get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {self.token}".encode()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "this specnb cloud needs its token: "
                          "connect(..., token=...) or set SPECNB_TOKEN")

    def hello(self, raw: bytes, context) -> bytes:
        self._admit(context)
        try:
            client = parse_hello(raw)
        except ValueError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if client.get("protocol") != PROTOCOL:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"link protocol {client.get('protocol')} (specnb {client.get('specnb')}) is not this "
                          f"server's {PROTOCOL} (specnb {__version__}): use the same specnb version on both sides")
        return encode(Message("h", meta=self.info))

    def status(self, raw: bytes, context) -> bytes:
        self._admit(context)
        with self._table:
            return encode(Message("s", meta={"sessions": len(self.sessions), "served": self.served,
                                             "refused": self.refused, "idle_dropped": self.idle_dropped,
                                             "caches": self.caches, "peers": sorted(self.sessions.values()),
                                             "batches": self.batch_sizes(),
                                             "draft_batches": {} if self.draft_batcher is None else self.draft_batcher.histogram()}))

    def batch_sizes(self) -> dict[str, int]:
        """Verify batches run, by size (``{"3": 12}``: twelve batches of three sessions); {} without batching."""
        return {} if self.batcher is None else self.batcher.histogram()

    @property
    def caches(self) -> int:
        """Verifiers (KV caches) built and not yet freed: 0 whenever no session is open, else memory leaked."""
        return self.built - self.freed

    def close(self) -> None:
        """Stop the idle reaper and the batch thread (after the gRPC server has stopped)."""
        self.stopped.set()
        for batcher in (self.batcher, self.draft_batcher):
            if batcher is not None:
                batcher.close()

    def session(self, requests: Iterator[bytes], context) -> Iterator[bytes]:
        self._admit(context)
        with self._table:
            if len(self.sessions) >= self.max_sessions:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the server holds {self.max_sessions} sessions, its limit")
            sid = next(self._ids)
            self.sessions[sid] = context.peer()
            self.served += 1
        state = Session(self)
        context.add_callback(lambda: self._free(sid, state))  # runs however the stream ends
        inbox: queue.SimpleQueue | None = None  # once the session leads, a thread reads the client's messages
        try:
            while True:
                self._waiting[sid] = (time.monotonic(), context)  # the idle clock runs while we wait for the client
                if state.lead is not None and inbox is None:
                    inbox = _reader(requests)
                raw = next(requests, None) if inbox is None else next_leading(inbox, state.lead_step)
                self._waiting.pop(sid, None)
                if raw is None:
                    break
                try:
                    msg = parse(raw)
                    if msg.kind == "V":
                        yield encode(state.verify(msg))
                    elif msg.kind == "G":
                        for out in state.generate(msg):
                            yield encode(out)
                    else:
                        raise ValueError(f"unknown message kind {msg.kind!r}")
                except Exception as err:  # the client gets the error as one message; the session ends
                    if isinstance(err, BadMessage):
                        with self._table:
                            self.refused += 1
                    meta = {"type": type(err).__name__, "error": str(err), "field": getattr(err, "field", None)}
                    yield encode(Message("e", meta=meta))
                    return
        finally:
            self._free(sid, state)

    def _free(self, sid: int, state: Session) -> None:
        self._waiting.pop(sid, None)
        with self._table:
            if self.sessions.pop(sid, None) is None:
                return
        with self.lock:
            state.close()

    def reap_idle(self, now: float | None = None) -> int:
        """Cancel the sessions that have waited for their client longer than the idle timeout (a client
        that stopped sending holds a KV cache and a worker thread); returns how many."""
        now = time.monotonic() if now is None else now
        stale = [(sid, ctx) for sid, (since, ctx) in list(self._waiting.items()) if now - since > self.idle_timeout_s]
        for sid, ctx in stale:
            self._waiting.pop(sid, None)
            ctx.cancel()  # ends the stream: its callback frees the session
        with self._table:
            self.idle_dropped += len(stale)
        return len(stale)


def _reader(requests: Iterator[bytes]) -> queue.SimpleQueue:
    """A thread that puts the stream's messages into a queue as they come (then None: the stream ended)."""
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        try:
            for raw in requests:
                inbox.put(raw)
        except Exception:  # noqa: BLE001 - cancelled or broken: the session ends as when the client closes it
            pass
        inbox.put(None)

    threading.Thread(target=read, name="specnb-session-reader", daemon=True).start()
    return inbox


def _tokenizer_files(model: LoadedModel) -> dict[str, str]:
    """The tokenizer as files (base64), written by ``save_pretrained``: the client loads them as is."""
    with tempfile.TemporaryDirectory() as tmp:
        model.tokenizer.save_pretrained(tmp)
        return {p.name: base64.b64encode(p.read_bytes()).decode() for p in Path(tmp).iterdir() if p.is_file()}


def parse_hello(raw: bytes) -> dict[str, Any]:
    """A hello's meta: an object, or a ValueError."""
    try:
        meta = decode(raw).meta
    except Exception as err:  # noqa: BLE001 - any garbage
        raise ValueError(f"malformed hello ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError("malformed hello (meta is not an object)")
    return meta


def start(cloud: CloudService, host: str = "127.0.0.1", port: int = 0,
          tls: tuple[bytes, bytes] | None = None) -> tuple[grpc.Server, int]:
    """Serve ``cloud`` on ``host:port`` (0: a free port); returns the started server and its port.

    ``tls``: (certificate chain, private key), PEM bytes: serve over TLS. The largest message gRPC
    accepts follows the operator's limits, and a thread cancels sessions idle past the timeout.
    """
    workers = cloud.max_sessions + 4
    options = [o for o in SERVER_OPTIONS if o[0] != "grpc.max_receive_message_length"]
    options += [("grpc.max_receive_message_length", cloud.limits.max_message_bytes()),
                ("grpc.max_connection_idle_ms", int(cloud.idle_timeout_s * 1000))]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options,
                         maximum_concurrent_rpcs=workers)
    handlers = {
        "Hello": grpc.unary_unary_rpc_method_handler(cloud.hello),
        "Status": grpc.unary_unary_rpc_method_handler(cloud.status),
        "Session": grpc.stream_stream_rpc_method_handler(cloud.session),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if tls is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        bound = server.add_secure_port(f"{host}:{port}", grpc.ssl_server_credentials([(tls[1], tls[0])]))
    if not bound:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    tick = min(1.0, cloud.idle_timeout_s / 4)
    threading.Thread(target=_reaper, args=(cloud, server, tick), daemon=True).start()
    return server, bound


def _reaper(cloud: CloudService, server: grpc.Server, tick: float) -> None:
    """Every ``tick`` seconds, cancel the idle sessions, until the server stops."""
    while not cloud.stopped.wait(tick):
        cloud.reap_idle()
