"""The edge-cloud link: the cloud verifier as a service, ``connect``, ``Link`` emulation, prediction.

::

    specnb serve --model zoo:tiny-cloud --dtype float32 --device cpu --port 0   # prints "listening on HOST:PORT"

    cloud = connect("127.0.0.1:PORT", link=Link(rtt_ms=20, bandwidth_mbps=100))
    g = speculative(edge, cloud, prompt, max_new_tokens=64, gamma=4)   # RTT every round
    a = autoregressive(cloud, prompt, max_new_tokens=64)               # cloud-only, streamed: RTT once
    s = cloud.server_speculative(prompt, 64, gamma=4)                  # both models on the server: RTT once
    predict(g, Link(rtt_ms=50))                                        # wall time on another link

Transport: gRPC bidirectional streams (grpcio), one stream per generation, messages of
:mod:`~specnb.link.wire` (no generated code). Measured on loopback on the project's 2-core CPU
machine (shared, load 6-10), echoing a 40-byte message: gRPC stream 0.15-0.26 ms per round trip
(median; p90 0.2-3 ms), gRPC unary calls no better, pyzmq DEALER/ROUTER 0.04 ms, an in-process
call 0.1 µs. Inside a real run (embedded pair, RTT 0) a round's ``link_s`` (round trip minus the
server's own time: serialization, the loopback socket, four thread hand-offs) has a median of
1.1-2.1 ms (p10 1.0, p90 12 ms on that loaded machine). gRPC was chosen over pyzmq anyway: a stream
*is* a session (its end, however caused, frees the server's cache), the stack detects a dead peer
(connection loss at once; a frozen peer by the client's per-reply deadline, ``connect(deadline_s=...)``,
and the server's idle timeout), and it is what SpecEdge uses; ~0.1 ms more per round than pyzmq is
below the RTT of any network an edge would use, and it is counted in ``link_s``, never hidden.
Limits, deadlines, tokens and TLS: ``docs/link-security.md`` and :mod:`specnb.link.limits`.
"""

from .client import RemoteCloud, RemoteError, RemoteVerifier, connect
from .emulate import Link
from .limits import BadMessage, Limits
from .local import local_server
from .predict import best_gamma, crossover_r, link_steps, predict, speedup_bound

__all__ = ["connect", "Link", "RemoteCloud", "RemoteVerifier", "RemoteError", "predict", "speedup_bound",
           "best_gamma", "crossover_r", "link_steps", "local_server", "Limits", "BadMessage"]
