"""The edge-cloud link: the cloud verifier as a service, ``connect``, ``Link`` emulation, prediction.

::

    specnb serve --model zoo:tiny-cloud --dtype float32 --device cpu --port 0   # prints "listening on HOST:PORT"

    cloud = connect("127.0.0.1:PORT", link=Link(rtt_ms=20, bandwidth_mbps=100))
    g = speculative(edge, cloud, prompt, max_new_tokens=64, gamma=4)   # RTT every round
    a = autoregressive(cloud, prompt, max_new_tokens=64)               # cloud-only, streamed: RTT once
    s = cloud.server_speculative(prompt, 64, gamma=4)                  # both models on the server: RTT once
    predict(g, Link(rtt_ms=50))                                        # wall time on another link

Transport: gRPC bidirectional streams (grpcio), one stream per generation, messages of
:mod:`~specnb.link.wire` (no generated code). Measured on loopback, 2-core CPU machine: a round
trip of a verification-sized message costs ~0.15 ms (median; p90 ~0.2 ms) against ~0.1 µs for an
in-process call; pyzmq DEALER/ROUTER does it in ~0.04 ms. gRPC was chosen anyway: a stream is a
session (its end, however caused, frees the server's cache), a dead server or client is detected
by the stack (connection loss, keepalive pings), and it is what SpecEdge uses; 0.1 ms is below
the RTT of any network link an edge would use. The overhead is counted in ``link_s``.
"""

from .client import RemoteCloud, RemoteError, RemoteVerifier, connect
from .emulate import Link
from .predict import best_gamma, crossover_r, link_steps, predict, speedup_bound

__all__ = ["connect", "Link", "RemoteCloud", "RemoteVerifier", "RemoteError", "predict", "speedup_bound",
           "best_gamma", "crossover_r", "link_steps"]
