"""The edge-cloud link, the network only: the cloud verifier as a service, ``connect``, ``Link`` emulation, prediction.

::

    specnb serve --model zoo:tiny-cloud --dtype float32 --device cpu --port 0   # prints "listening on HOST:PORT"

    cloud = connect("127.0.0.1:PORT", link=Link(rtt_ms=20, bandwidth_mbps=100))
    g = speculative(edge, cloud, prompt, max_new_tokens=64, gamma=4)   # RTT every round
    a = autoregressive(cloud, prompt, max_new_tokens=64)               # cloud-only, streamed: RTT once
    s = cloud.server_speculative(prompt, 64, gamma=4)                  # both models on the server: RTT once
    predict(g, Link(rtt_ms=50))                                        # wall time on another link

Transport: gRPC bidirectional streams (grpcio), one stream per generation, messages of
:mod:`~specnb.link.wire` (no generated code). gRPC rather than a lighter socket library: a stream
*is* a session (its end, however caused, frees the server's cache), the stack detects a dead peer
(connection loss at once; a frozen peer by the client's per-reply deadline, ``connect(deadline_s=...)``,
and the server's idle timeout), and it is what SpecEdge uses. What the transport costs per round is
measured, never hidden (``link_s``); the measured figures and the comparison with pyzmq are in
docs/link.md. Limits, deadlines, tokens and TLS: docs/link-security.md and :mod:`specnb.link.limits`.
"""

from .client import RemoteCloud, RemoteError, RemoteVerifier, connect
from .emulate import Link
from .limits import BadMessage, Limits
from .loopback import local_server
from .predict import best_gamma, crossover_r, link_steps, predict, speedup_bound

__all__ = ["connect", "Link", "RemoteCloud", "RemoteVerifier", "RemoteError", "predict", "speedup_bound",
           "best_gamma", "crossover_r", "link_steps", "local_server", "Limits", "BadMessage"]
