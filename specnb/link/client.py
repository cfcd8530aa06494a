"""The edge's side of the link: :func:`connect` to a ``specnb serve`` and use the result as the cloud.

``connect`` checks the link protocol, reads the server's model, dtype and versions, and loads the
server's tokenizer locally (its files travel in the hello), so prompts are encoded and outputs
decoded at the edge. As in-process, an edge of the cloud's tokenizer shares its vocabulary
(``check_pair(edge, cloud)``), and ``speculative`` lets an edge of another tokenizer draft through a
translation (:mod:`specnb.decode.translate`, docs/tokenizers.md).

``speculative(edge, cloud, ...)`` gets one :class:`RemoteVerifier` per generation from
``cloud.verifier(settings)``: one gRPC stream (one server session), one round trip per round. Its
metrics add ``link_s`` (round-trip time minus the server's own time: the link plus the transport),
``bytes_up`` / ``bytes_down`` (messages as sent, see :func:`specnb.link.wire.wire_bytes``),
``round_trips``, ``server_s`` (time the server spent on the rounds), ``emulated_s`` (delay the
:class:`~specnb.link.emulate.Link` profile added) and per-round lists ``round_bytes_up``,
``round_bytes_down``, ``round_link_s``, ``round_server_s``, ``round_emulated_s``.

Deadlines: every reply the edge waits for (a round's verdict, each streamed token) must come within
``deadline_s`` (a session's first reply, which includes the prefill and any set-up on the server,
within ``setup_s + deadline_s``); past it the call is cancelled and one ``ConnectionError`` names
the address, what was pending and how long it waited. gRPC offers deadlines per call, not per
message of a stream, so a watchdog thread per stream cancels the call (``call.cancel()``); gRPC's
keepalive pings stay on for connections that go quiet between generations. Messages are checked
here against the server's limits before they are sent (:mod:`specnb.link.limits`), as the server
checks them again.
"""

from __future__ import annotations

import base64
import copy
from collections import deque
import os
import queue
import tempfile
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import torch

from ..decode.adaptive import Controller, Prior, recorded_prior
from ..decode.loops import _check_common
from ..measure.metrics import Generation, summarize
from ..models import TextIds
from ..decode.ahead import VOID
from ..decode.roles import RoundSettings, Verdict
from ..decode.verifying import residual_sample
from .emulate import Direction, Link, sleep_until
from .limits import Limits, check_generate, check_verify
from .server import KEEPALIVE, SERVICE, settings_to_dict, versions
from .wire import Message, decode, encode, wire_bytes

GENERATE_KW = ("temperature", "top_k", "top_p", "seed", "optimized", "compile")
TOKEN_ENV = "SPECNB_TOKEN"
DEADLINE_S = 15.0  # default: longest wait for one reply (a verdict, a streamed token)
SETUP_S = 120.0  # default: extra allowance for a session's first reply (prefill, static cache, compiling)


class RemoteError(RuntimeError):
    """The server refused or failed a request (its message says why)."""


def connect(address: str, link: Link | None = None, *, timeout_s: float = 10.0,
            model: str | None = None, dtype: str | None = None, deadline_s: float = DEADLINE_S,
            setup_s: float = SETUP_S, token: str | None = None, tls: bool | str | bytes | None = None) -> "RemoteCloud":
    """A cloud model served by ``specnb serve`` at ``address`` (``HOST:PORT``), across ``link``.

    ``link``: the profile emulated on top of the real connection (default ``Link()``: none).
    ``model`` / ``dtype``: what you expect the server to hold; a different one is refused.
    ``timeout_s``: to connect and for each unary call (hello, status). ``deadline_s``: the longest
    wait for any one reply of a session (a round's verdict, a streamed token; default 15 s, where a
    round takes milliseconds); ``setup_s`` more for a session's first reply (prefill, static cache,
    compiling; default 120 s). A server that misses one gives a ``ConnectionError`` naming the address,
    what was pending and how long it waited. ``token``: the server's shared token (default:
    ``$SPECNB_TOKEN``). ``tls``: True (trust the system's roots), a PEM file path or PEM bytes (trust
    that certificate, e.g. a self-signed one), or None (plain connection).
    """
    for name, value, low in (("timeout_s", timeout_s, 1e-3), ("deadline_s", deadline_s, 1e-3), ("setup_s", setup_s, 0.0)):
        if not value >= low:
            raise ValueError(f"{name} must be at least {low:g} seconds, got {value!r}")
    return RemoteCloud(address, link or Link(), timeout_s=timeout_s, model=model, dtype=dtype, deadline_s=deadline_s,
                       setup_s=setup_s, token=token if token is not None else os.environ.get(TOKEN_ENV), tls=tls)


def _credentials(tls: bool | str | bytes | None) -> grpc.ChannelCredentials | None:
    if tls is None or tls is False:
        return None
    if tls is True:
        return grpc.ssl_channel_credentials()
    pem = tls if isinstance(tls, bytes) else Path(tls).read_bytes()
    return grpc.ssl_channel_credentials(root_certificates=pem)


class RemoteCloud(TextIds):
    """A connected cloud: quacks like a ``LoadedModel`` for tokenizing and the pair check, and
    builds a :class:`RemoteVerifier` per generation (``verifier(settings)``)."""

    def __init__(self, address: str, link: Link, *, timeout_s: float, model: str | None, dtype: str | None,
                 deadline_s: float = DEADLINE_S, setup_s: float = SETUP_S, token: str | None = None,
                 tls: bool | str | bytes | None = None):
        self.address, self.link = address, link
        self.timeout_s, self.deadline_s, self.setup_s = timeout_s, deadline_s, setup_s
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        options = KEEPALIVE + [("grpc.max_receive_message_length", 64 << 20)]
        creds = _credentials(tls)
        self.channel = (grpc.insecure_channel(address, options=options) if creds is None
                        else grpc.secure_channel(address, creds, options=options))
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise ConnectionError(f"no specnb cloud answers at {address} within {timeout_s:g} s "
                                  "(is 'specnb serve' running there, on that port"
                                  f"{', with TLS' if creds else ', without TLS'}?)") from None
        self._hello = self.channel.unary_unary(f"/{SERVICE}/Hello")
        self._status = self.channel.unary_unary(f"/{SERVICE}/Status")
        self._session = self.channel.stream_stream(f"/{SERVICE}/Session")
        try:
            info = decode(self._hello(encode(Message("H", meta=versions())), timeout=timeout_s, metadata=self.metadata)).meta
        except grpc.RpcError as err:
            self.channel.close()
            kind = PermissionError if err.code() == grpc.StatusCode.UNAUTHENTICATED else ConnectionError
            raise kind(f"the specnb cloud at {address} refused the connection: {err.details()}") from None
        self.info = {k: v for k, v in info.items() if k != "tokenizer"}
        self._check(model, dtype)
        self.tokenizer = _load_tokenizer(info["tokenizer"])
        self.vocab_size = int(info["vocab_size"])
        self.eos_ids = frozenset(info["eos_ids"])
        self.limits = Limits(**info.get("limits", {}))  # a server from before the limits: the defaults
        self.up = Direction(link, link.seed)
        self.down = Direction(link, link.seed + 1)
        self.rtt_s = self._handshake_rtt()
        self.controllers: dict[str, Controller] = {}  # the adaptive schedule's, per edge: controller_for

    def _handshake_rtt(self, tries: int = 3) -> float:
        """The real connection's round trip: the fastest of ``tries`` Status calls (the server does nearly
        nothing for one). The emulated profile comes on top (:meth:`round_trip_s`)."""
        best = float("inf")
        for _ in range(tries):
            t0 = time.perf_counter()
            self.status()
            best = min(best, time.perf_counter() - t0)
        return best

    def round_trip_s(self) -> float:
        """What a round is expected to spend on the link, known at connect: the handshake's round trip plus
        the emulated profile's (its first stage, for a draft of ~16 ids up and a verdict down)."""
        return self.rtt_s + self.link.at(0.0, 0).expected_round_s(64, 32)

    def controller_for(self, edge: Any) -> Controller:
        """This session's controller of the ``adaptive`` schedule for ``edge`` (one per edge model, made at its
        first use): ``speculative(edge, cloud, ..., schedule="adaptive")`` without ``controller=`` uses it, so it
        learns over the session's generations. It starts from a prior: the link's round trip
        (:meth:`round_trip_s`) and, when the pair has a record (:func:`specnb.decode.adaptive.recorded_prior`), its
        acceptance and step costs. Save it with ``.save(path)``; to start from a saved one, put
        ``Controller.load(path)`` in ``cloud.controllers[name]`` (name: the edge's model name) or pass it as
        ``controller=``."""
        name = _model_name(edge)
        if name not in self.controllers:
            prior = recorded_prior(name, self.info["model"]) or Prior(source="none recorded for the pair")
            self.controllers[name] = Controller(prior=replace(prior, rtt_s=self.round_trip_s()))
        return self.controllers[name]

    def _check(self, model: str | None, dtype: str | None) -> None:
        info = self.info
        if model is not None and model != info["model"]:
            raise ValueError(f"the cloud at {self.address} serves {info['model']!r}, not {model!r}")
        if dtype is not None:
            from ..dtypes import parse_dtype
            if parse_dtype(dtype) != info["dtype"]:
                raise ValueError(f"the cloud at {self.address} runs {info['dtype']}, not {dtype}")
        mine = versions()
        differ = [f"{k} {info[k]} (here {mine[k]})" for k in ("specnb", "torch", "transformers") if info[k] != mine[k]]
        if differ:
            warnings.warn(f"the cloud at {self.address} runs {', '.join(differ)}", stacklevel=3)

    # ---- what a LoadedModel offers (encode and decode come with TextIds)

    def __repr__(self) -> str:
        return f"RemoteCloud({self.address!r}, model={self.info['model']!r}, dtype={self.info['dtype']!r}, link={self.link})"

    def with_link(self, link: Link) -> "RemoteCloud":
        """The same connection across another link profile (fresh jitter and wire state)."""
        other = copy.copy(self)
        other.link, other.up, other.down = link, Direction(link, link.seed), Direction(link, link.seed + 1)
        other.controllers = {}  # another link: the adaptive schedule's controllers start again from their prior
        return other

    # ---- roles
    def verifier(self, settings: RoundSettings) -> "RemoteVerifier":
        return RemoteVerifier(self, settings)

    def status(self) -> dict[str, Any]:
        """The server's session count (``sessions``: open now; ``served``: since it started)."""
        try:
            return decode(self._status(b"", timeout=self.timeout_s, metadata=self.metadata)).meta
        except grpc.RpcError as err:
            raise ConnectionError(f"the specnb cloud at {self.address} does not answer: {err.details()}") from None

    def close(self) -> None:
        self.channel.close()

    # ---- generation on the server: one request, tokens streamed back (the RTT paid once)
    def autoregressive(self, prompt: str | list[int], max_new_tokens: int, **kw) -> Generation:
        """Cloud-only decoding on the server, streamed back token by token across the link."""
        unknown = set(kw) - set(GENERATE_KW)
        if unknown:
            raise TypeError(f"autoregressive over the link takes {', '.join(GENERATE_KW)}; not {', '.join(sorted(unknown))}")
        _check_common(max_new_tokens, kw.get("temperature", 0.0), kw.get("top_k"), kw.get("top_p"))
        return self._generate("autoregressive", prompt, max_new_tokens, kw)

    def server_speculative(self, prompt: str | list[int], max_new_tokens: int, **kw) -> Generation:
        """Speculative decoding with both models on the server (``specnb serve --draft``): one request,
        the RTT paid once. ``kw`` as for :func:`specnb.speculative`."""
        return self._generate("speculative", prompt, max_new_tokens, kw)

    def _generate(self, method: str, prompt, max_new_tokens: int, kw: dict) -> Generation:
        ids = self.encode(prompt)
        request = Message("G", meta={"method": method, "kw": kw, "max_new_tokens": max_new_tokens}, ints=ids)
        check_generate(request, self.limits, self.vocab_size, has_draft=self.info.get("draft") is not None)  # as the server will
        stream = Stream(self)
        t0 = time.perf_counter()
        up = stream.send(request)
        what = ("the reply of speculation on the server (one message, after the whole generation)" if method == "speculative"
                else f"cloud-only decoding's tokens (up to {max_new_tokens})")
        stream.read_ahead(what, extra_s=up)
        out: list[int] = []
        ttft = None
        server_s = 0.0  # sum of the per-message times (speculation on the server sends one)
        try:
            while True:
                msg, _, waited = stream.recv()
                if msg.kind == "t":
                    server_s += msg.ints[0] / 1e6
                    out.extend(msg.ints[1:])
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                elif msg.kind == "d":
                    break
        finally:
            stream.close()
        wall = time.perf_counter() - t0
        remote = msg.meta["metrics"]
        keys = ("rounds", "drafted", "accepted", "rejected_rounds", "cloud_calls", "edge_calls", "draft_s", "verify_s")
        metrics = summarize(new_tokens=len(out), wall_s=wall, ttft_s=ttft or 0.0, **{k: remote[k] for k in keys if k in remote})
        server_wall = remote.get("server_s", server_s)  # the server's handler time, first message in to last out
        metrics |= stream.totals() | {"link_s": wall - server_wall, "server_s": server_wall, "round_trips": 1,
                                      "emulated_s": up + waited}
        return Generation(tokens=out, text=self.decode(out), metrics=metrics,
                          trace=msg.meta.get("trace", []), drafted_trace=msg.meta.get("drafted_trace", []))


def _model_name(edge: Any) -> str:
    """The name a session keys an edge's controller by: its model's name (a loaded model), else its class."""
    spec = getattr(edge, "spec", None)
    return getattr(spec, "name_or_path", None) or type(edge).__name__


class RemoteVerifier:
    """The cloud's side of one generation, across the link (a :class:`specnb.decode.roles.Verifier`).

    ``begin`` sends nothing: the prompt and settings travel with the first round (one round trip
    saved). Greedy and rank rounds send ids up and (accepted, token) down. Sampling rounds use the
    split of :func:`specnb.decode.verifying.accept_split`: q of each drafted token up, the cloud's p row down only after
    a rejection, and this side samples the residual.
    """

    def __init__(self, cloud: RemoteCloud, settings: RoundSettings):
        self.cloud, self.settings = cloud, settings
        self.vocab, self.eos_ids = cloud.vocab_size, cloud.eos_ids
        self.stream: Stream | None = None
        self.rounds: list[tuple[int, int, float, float, float]] = []  # up, down, link_s, server_s, emulated_s
        self._prompt_len = 0
        self._length: int | None = None  # tokens in the server's cache, as the server counts them
        self._prompt_pending = False
        self._starts: list[int | None] = []  # per round sent: the server's cache length it assumes (None: the first)
        self._flight: deque = deque()  # rounds sent and not yet answered (drafting ahead)
        self.voids, self.void_bytes, self.lead_tokens = 0, (0, 0), 0

    def begin(self, prompt_ids: list[int], settings: RoundSettings) -> None:
        self.close()
        self.settings = settings
        self.rounds = []
        self._prompt = list(prompt_ids)
        self._prompt_len = len(self._prompt)
        self._length = None
        self._starts = []
        self._flight.clear()
        self.voids, self.void_bytes, self.lead_tokens = 0, (0, 0), 0
        self.gen = torch.Generator().manual_seed(settings.seed + 2) if settings.seed is not None else None
        self._prompt_pending = True  # the session (a stream) opens with the first round, once it passed the checks

    def _request(self, last: int, draft: list[int], q: torch.Tensor | None, length: int | None,
                 premise: tuple[int, int] | None = None) -> tuple[Message, list[int]]:
        """The round's message (with the prompt and settings on the session's first), checked here as the
        server will check it with ``length`` tokens in its cache (None: the first round); and the prompt ids
        it carries."""
        if self.stream is None and not self._prompt_pending:
            raise RuntimeError("verify() before begin()")
        meta, ints = ({"ahead": list(premise)} if premise else {}), []
        if self._prompt is not None:
            meta = {"begin": settings_to_dict(self.settings), "prompt": len(self._prompt)}
            ints, self._prompt = self._prompt, None
        qx = None
        if self.settings.rule == "sample" and draft:
            qx = q[torch.arange(len(draft), device=q.device), torch.tensor(draft, device=q.device)].float().cpu().numpy()
        request = Message("V", meta, ints + [last] + list(draft), qx)
        check_verify(request, self.cloud.limits, self.cloud.vocab_size, length=length, rule=self.settings.rule,
                     max_len=self.settings.max_len if length is not None else 0, rounds=len(self._starts))
        if self.stream is None:
            self.stream, self._prompt_pending = Stream(self.cloud), False
        return request, ints

    def verify(self, last: int, draft: list[int], q: torch.Tensor | None) -> Verdict:
        request, ints = self._request(last, draft, q, self._length)
        first = self._length is None
        t0 = time.perf_counter()
        up_s = self.stream.send(request)
        what = (f"round {len(self.rounds) + 1}'s verdict ({len(draft)} drafted tokens"
                f"{f', after a prefill of {len(ints)} prompt tokens' if first else ''})")
        msg, down, down_s = self.stream.recv(what, setup=first, extra_s=up_s)  # (the emulated uplink delay is not the server's)
        rt = time.perf_counter() - t0
        return self._settle(msg, down, down_s, rt, self.stream.last_up, up_s, len(ints), q, self._length)

    def _settle(self, msg: Message, down: int, down_s: float, rt: float, up: int, up_s: float, prompt: int,
                q: torch.Tensor | None, start: int | None) -> Verdict:
        """A verdict off the wire: the server's cache length and the round's figures recorded, the residual
        sampled here after a rejection while sampling (``prompt``: prompt ids the round carried; ``start``: the
        cache length the round started from, None for the first; ``accepted`` counts from there, the drafts a
        verdict's extra tokens committed before included)."""
        n, tok, server_us, *extra = msg.ints  # extra: the cloud's own tokens (lead), only when it leads
        if extra and not self.settings.lead:
            raise RemoteError(f"the specnb cloud at {self.cloud.address} sent {len(extra)} tokens of its own in a "
                              "session that did not ask it to lead")
        self._length = (prompt - 1 if start is None else start) + 1 + n + len(extra)
        self.lead_tokens += len(extra)
        self.rounds.append((up, down, rt - server_us / 1e6, server_us / 1e6, up_s + down_s))
        if tok < 0:  # rejected while sampling: the residual is sampled here, where q lives
            tok = residual_sample(torch.from_numpy(msg.floats.copy()), q[n].float().cpu(), self.gen)
        return Verdict(n, tok, tuple(extra))

    # ---- drafting ahead (specnb.decode.ahead): rounds sent before the ones before them are answered

    def submit(self, last: int, draft: list[int], q: torch.Tensor | None, premise: tuple[int, int] | None) -> None:
        """Send a round now; its verdict comes from :meth:`collect`, in order. A round with a ``premise``
        (drafted ahead, :class:`specnb.decode.ahead.Chain`) is checked at the length the server's cache has
        if that premise holds: the length its parent started from, plus its first input and the drafts kept."""
        start = self._length
        if premise is not None:
            back, accepted = premise
            if not 1 <= back <= len(self._starts):
                raise ValueError(f"a round drafted ahead assumes the round {back} place(s) before it, of {len(self._starts)}")
            start = self._starts[-back] + 1 + accepted
        request, ints = self._request(last, draft, q, start, premise)
        first = start is None
        self._starts.append(len(ints) - 1 if first else start)
        t0 = time.perf_counter()
        up_s = self.stream.send(request)
        self._flight.append((t0, self.stream.last_up, up_s, len(ints), q, start))
        what = (f"the verdict of a round sent {len(self._flight)} round(s) ahead of this one ({len(draft)} drafted tokens"
                f"{f', after a prefill of {len(ints)} prompt tokens' if first else ''})")
        self.stream.expect(what, setup=first, extra_s=up_s)

    def collect(self, block: bool) -> Verdict | None:
        """The next verdict (or :data:`specnb.decode.ahead.VOID`), once its emulated delay has passed; None
        when ``block`` is False and it has not arrived."""
        got = self.stream.poll(block)
        if got is None:
            return None
        msg, down, down_s, due = got
        t0, up, up_s, prompt, q, start = self._flight.popleft()
        if msg.ints[0] < 0:  # a round drafted ahead of one that was not accepted whole: no model call
            self.voids += 1
            self.void_bytes = (self.void_bytes[0] + up, self.void_bytes[1] + down)
            return VOID
        return self._settle(msg, down, down_s, due - t0, up, up_s, prompt, q, start)

    def stop(self) -> None:
        """The generation is over: verdicts still in flight are not read (closing the stream drops them)."""

    def close(self) -> None:
        self._prompt_pending = False
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def stats(self) -> dict[str, Any]:
        cols = list(zip(*self.rounds)) if self.rounds else [()] * 5
        up, down, link, server, emulated = (list(c) for c in cols)
        vu, vd = self.void_bytes  # rounds answered VOID (drafting ahead): bytes, no model call
        return {"cloud_calls": len(self.rounds) + (self._prompt_len > 1), "link_s": sum(link), "bytes_up": sum(up) + vu,
                "bytes_down": sum(down) + vd, "round_trips": len(self.rounds) + self.voids,
                "lead_tokens": self.lead_tokens,
                "server_s": sum(server), "emulated_s": sum(emulated), "round_bytes_up": up, "round_bytes_down": down,
                "round_link_s": link, "round_server_s": server, "round_emulated_s": emulated}


class Stream:
    """One server session: a gRPC bidirectional stream with the link profile applied per message.

    Messages up wait in a queue until their emulated arrival (gRPC's sending thread sleeps, not the
    caller); messages down are held on receipt until theirs. Any failure of the connection becomes
    one ``ConnectionError`` naming the address. A watchdog thread cancels the call when a reply is
    overdue (see the module's docstring: gRPC has no per-message deadline).
    """

    def __init__(self, cloud: RemoteCloud):
        self.cloud = cloud
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._call = cloud._session(self._requests(), metadata=cloud.metadata)
        cloud.up.restart(), cloud.down.restart()  # a changing link (LinkProfile) starts again per session
        self.bytes_up = self.bytes_down = self.last_up = 0
        self._failed: Exception | None = None
        self._inbox: queue.SimpleQueue | None = None
        self._pending: tuple[float, float, str] | None = None  # (waiting since, allowed seconds, for what)
        self._overdue: str | None = None
        self._closed = threading.Event()
        self._setup_left = True  # the session's first reply gets setup_s more
        self._due: queue.SimpleQueue | None = None  # replies announced by expect() (rounds sent ahead)
        self._replies: queue.SimpleQueue | None = None
        self._held: Any = None  # a reply taken off _replies whose emulated delay has not passed
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        """Cancel the call once the reply waited for is overdue (checked every tick: ~1/20 of the deadline)."""
        tick = min(0.25, self.cloud.deadline_s / 20)
        while not self._closed.wait(tick):
            pending = self._pending
            if pending is None:
                continue
            since, allowed, what = pending
            waited = time.monotonic() - since
            if waited > allowed:
                self._overdue = (f"the specnb cloud at {self.cloud.address} sent nothing for {waited:.1f} s while the "
                                 f"edge waited for {what} (deadline {allowed:g} s, connect(deadline_s=..., setup_s=...)): "
                                 "the server is frozen, overloaded or cut off")
                self._call.cancel()
                return

    def _allowed(self, setup: bool) -> float:
        return self.cloud.deadline_s + (self.cloud.setup_s if setup else 0.0)

    def _requests(self):
        while True:
            item = self._q.get()
            if item is None:
                return
            raw, due = item
            sleep_until(due)
            yield raw

    def send(self, msg: Message) -> float:
        """Queue ``msg``; returns the delay the link profile adds to it."""
        if self._failed:
            raise self._failed
        raw = encode(msg)
        self.last_up = nbytes = wire_bytes(raw)
        now = time.perf_counter()
        due = self.cloud.up.arrival(nbytes, now)
        self._q.put((raw, due))
        self.bytes_up += nbytes
        return due - now

    def _next(self, what: str, allowed: float) -> tuple[bytes, float]:
        """The next message from gRPC and when it arrived here; ``what`` and ``allowed`` for the watchdog."""
        self._pending = (time.monotonic(), allowed, what)
        try:
            raw = next(self._call)
        except grpc.RpcError as err:
            if self._overdue:
                raise ConnectionError(self._overdue) from None
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise PermissionError(f"the specnb cloud at {self.cloud.address}: {err.details()}") from None
            raise ConnectionError(f"lost the specnb cloud at {self.cloud.address} mid-generation "
                                  f"({err.code().name}: {err.details()})") from None
        except StopIteration:
            raise ConnectionError(f"the specnb cloud at {self.cloud.address} ended the session unexpectedly") from None
        finally:
            self._pending = None
        return raw, time.perf_counter()

    def read_ahead(self, what: str, extra_s: float = 0.0) -> None:
        """For a streamed reply: take messages off the socket as they come (a thread), so that each is
        delayed from its own arrival, not from when the caller asks for it. Each message has the
        deadline (the first: plus the set-up allowance)."""
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()

        def pump() -> None:
            setup = True
            while True:
                try:
                    item = self._next(what, self._allowed(setup) + (extra_s if setup else 0.0))
                except (ConnectionError, PermissionError) as err:
                    self._inbox.put(err)
                    return
                setup = False
                self._inbox.put(item)
                if item[0][:1] in (b"d", b"e"):
                    return

        threading.Thread(target=pump, daemon=True).start()

    def recv(self, what: str = "a reply", setup: bool = False, extra_s: float = 0.0) -> tuple[Message, int, float]:
        """The next message, its size and the delay the link profile added to it (``what``: what the
        edge waits for, named if it is overdue; ``setup``: the session's first reply; ``extra_s``: more
        time allowed, e.g. the emulated delay of the message it answers)."""
        if self._failed:
            raise self._failed
        item = self._inbox.get() if self._inbox is not None else None
        try:
            if item is None:
                item = self._next(what, self._allowed(setup) + extra_s)
            elif isinstance(item, (ConnectionError, PermissionError)):
                raise item
        except (ConnectionError, PermissionError) as err:
            self._failed = err
            raise err from None
        raw, now = item
        nbytes = wire_bytes(raw)
        due = self.cloud.down.arrival(nbytes, now)
        return self._arrived(raw, nbytes, due), nbytes, due - now

    def _arrived(self, raw: bytes, nbytes: int, due: float) -> Message:
        """A reply whose emulated delay ends at ``due``: waits until then, counts it and decodes it; the
        server's error reply raised here (ValueError for a message it refused, else RemoteError)."""
        sleep_until(due)
        self.bytes_down += nbytes
        msg = decode(raw)
        if msg.kind == "e":
            kind = ValueError if msg.meta.get("type") in ("ValueError", "BadMessage") else RemoteError
            self._failed = kind(f"the specnb cloud at {self.cloud.address}: {msg.meta.get('error')}")
            raise self._failed
        return msg

    def expect(self, what: str, setup: bool = False, extra_s: float = 0.0) -> None:
        """One more reply is due (a round sent ahead): a thread takes replies off the socket as they come,
        only as many as are due (so that the watchdog never waits for a reply nobody asked for), and
        :meth:`poll` hands each on once its emulated delay has passed."""
        if self._due is None:
            self._due, self._replies = queue.SimpleQueue(), queue.SimpleQueue()
            threading.Thread(target=self._pump, daemon=True).start()
        self._due.put((what, self._allowed(setup) + extra_s))

    def _pump(self) -> None:
        while True:
            job = self._due.get()
            if job is None:
                return
            try:
                raw, now = self._next(*job)
            except (ConnectionError, PermissionError) as err:
                self._replies.put(err)
                return
            nbytes = wire_bytes(raw)
            self._replies.put((raw, nbytes, now, self.cloud.down.arrival(nbytes, now)))

    def poll(self, block: bool) -> tuple[Message, int, float, float] | None:
        """The next reply :meth:`expect` announced: (message, its size, the delay the link profile added, when
        it arrived here); None when ``block`` is False and it is not there yet."""
        if self._failed:
            raise self._failed
        if self._held is None:
            try:
                self._held = self._replies.get(block)
            except queue.Empty:
                return None
        if isinstance(self._held, Exception):
            self._failed = self._held
            raise self._failed
        raw, nbytes, now, due = self._held
        if not block and time.perf_counter() < due:
            return None
        self._held = None
        return self._arrived(raw, nbytes, due), nbytes, due - now, due

    def totals(self) -> dict[str, int]:
        return {"bytes_up": self.bytes_up, "bytes_down": self.bytes_down}

    def close(self) -> None:
        self._closed.set()
        self._q.put(None)
        if self._due is not None:
            self._due.put(None)
        self._call.cancel()


def _load_tokenizer(files: dict[str, str]):
    from transformers import AutoTokenizer
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(base64.b64decode(data))
        return AutoTokenizer.from_pretrained(tmp)
