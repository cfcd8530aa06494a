"""What crosses the link: one small binary message format, no generated code.

A message is ``kind`` (1 byte) + JSON ``meta`` (length-prefixed, empty on the hot path) +
``ints`` (int32) + ``floats`` (float32, the rest)::

    kind:u8 | meta_len:u32 | meta | n_ints:u32 | ints:i32[n_ints] | floats:f32[...]

gRPC carries each message as raw bytes (generic handlers, identity serializers) and frames it
with a 5-byte prefix (1 compression flag + 4 length), counted in :func:`wire_bytes`. HTTP/2 frame
headers (9 bytes per DATA frame) and TCP/IP headers are below what we count.

Kinds, client to cloud: ``V`` verify a draft (the first one also carries the prompt and the
settings), ``G`` generate on the server (cloud-only or server-side speculation); cloud to client:
``v`` verdict, ``t`` streamed tokens, ``d`` done, ``e`` error.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GRPC_PREFIX = 5  # bytes gRPC adds to each message (compressed flag + length)
_HEAD = struct.Struct("<BI")
_COUNT = struct.Struct("<I")


@dataclass
class Message:
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    ints: list[int] = field(default_factory=list)
    floats: np.ndarray | None = None  # float32, 1-D


def encode(msg: Message) -> bytes:
    meta = json.dumps(msg.meta, separators=(",", ":")).encode() if msg.meta else b""
    ints = np.asarray(msg.ints, dtype="<i4").tobytes()
    floats = b"" if msg.floats is None else np.asarray(msg.floats, dtype="<f4").tobytes()
    return b"".join((_HEAD.pack(ord(msg.kind), len(meta)), meta, _COUNT.pack(len(msg.ints)), ints, floats))


def decode(raw: bytes) -> Message:
    kind, n_meta = _HEAD.unpack_from(raw, 0)
    pos = _HEAD.size
    meta = json.loads(raw[pos:pos + n_meta]) if n_meta else {}
    pos += n_meta
    (n_ints,) = _COUNT.unpack_from(raw, pos)
    pos += _COUNT.size
    ints = np.frombuffer(raw, dtype="<i4", count=n_ints, offset=pos).tolist()
    pos += 4 * n_ints
    floats = np.frombuffer(raw, dtype="<f4", offset=pos) if pos < len(raw) else None
    return Message(chr(kind), meta, ints, floats)


def wire_bytes(raw: bytes) -> int:
    """Bytes one message puts on the link as gRPC sends it: payload + gRPC's 5-byte frame prefix."""
    return len(raw) + GRPC_PREFIX
