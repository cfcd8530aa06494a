"""Verification batched across sessions (specnb/link/server_batching.py, ``specnb serve --batch``).

The embedded pair (zoo:tiny-edge drafts, zoo:tiny-cloud verifies) in float32, servers in this
process on loopback. No timing asserts: a wait window only makes batches likely, and each test
checks from the server's own histogram that batches of several sessions did run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
import torch

from specnb import ModelSpec, autoregressive, connect, load, speculative
from specnb.decode.pair import as_verifier
from specnb.decode.roles import RoundSettings
from specnb.link import server_batching as batching
from specnb.link.server_batching import Batcher, attention_mask, batchable, score_rows
from specnb.study.replay import RecordingDrafter, ReplayedEdge
from specnb.link.server import CloudService, start
from specnb.link.wire import Message
from serving import run_concurrently, sessions_freed

PROMPTS = ["def parse(text):", "class Stack:", "import os", "x"]
N = 20
HANG_S = 60  # "no hang": generous, the machine is shared


@pytest.fixture(scope="module")
def pair():
    return {name: load(ModelSpec(f"zoo:tiny-{name}", dtype="float32", device="cpu")) for name in ("cloud", "edge")}


def serve(model, **kw):
    cloud = CloudService(model, **kw)
    server, port = start(cloud)
    return cloud, server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def servers(pair):
    """A server without batching (the solo reference) and one that batches with a wait window."""
    solo, solo_server, solo_address = serve(pair["cloud"])
    batched, batched_server, batched_address = serve(pair["cloud"], batch="wait", max_batch=4, batch_wait_ms=30)
    yield {"solo": solo_address, "batched": batched_address, "cloud": batched}
    for server, cloud in ((solo_server, solo), (batched_server, batched)):
        server.stop(grace=None).wait()
        cloud.close()


def several_batched(status: dict) -> int:
    """Batches of two or more sessions' rounds in the server's histogram."""
    return sum(count for size, count in status["batches"].items() if int(size) > 1)




# ---- the gather / scatter, against per-session forwards


def verifiers(model, prompts: list[list[int]]):
    out = []
    for p in prompts:
        s = RoundSettings(rule="greedy", max_len=64)
        v = as_verifier(model, s)
        v.begin(p, s)
        out.append(v)
    return out


def test_batched_forward_equals_each_sessions_own_forward(pair):
    """Ragged caches (one empty: a one-token prompt) and ragged rows: the batch's logits and the keys
    and values scattered back match each session's solo forward, to float rounding."""
    cloud = pair["cloud"]
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3], [20 + i for i in range(12)], [40, 41, 42]]
    rows = [[12, 13, 14], [4, 5, 6, 7, 8], [32], [43, 44]]
    solo, batch = verifiers(cloud, prompts), verifiers(cloud, prompts)
    assert all(batchable(v) for v in batch)
    want = [v.score(r[0], r[1:]) for v, r in zip(solo, rows)]
    got = score_rows(cloud, [v.steps.cache for v in batch], [v.length for v in batch], rows,
                     [v.vocab for v in batch])
    for w, g in zip(want, got):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
        assert g.argmax(-1).tolist() == w.argmax(-1).tolist()
    for vs, vb in zip(solo, batch):
        for ls, lb in zip(vs.steps.cache.layers, vb.steps.cache.layers):
            assert lb.keys.shape == ls.keys.shape
            torch.testing.assert_close(lb.keys, ls.keys, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(lb.values, ls.values, rtol=1e-4, atol=1e-4)


def test_a_session_closed_before_its_batch_is_left_out_alone(pair):
    """A batch holding a closed session's round runs the others' rounds and fails only that one."""
    cloud = pair["cloud"]
    live, closed = verifiers(cloud, [[5, 6, 7], [8, 9]])
    want = verifiers(cloud, [[5, 6, 7]])[0].verify(8, [9, 10], None)
    closed.close()
    jobs = [batching.Job(v, [8, 9, 10], lambda lg, v=v: v.settle(v.length - 3, [9, 10], lg, None)) for v in (live, closed)]
    batching.run_batch(cloud, jobs)
    assert jobs[0].error is None and jobs[0].result == want
    assert "closed" in str(jobs[1].error)


def test_one_sessions_failing_rule_fails_only_that_session(pair):
    cloud = pair["cloud"]
    a, b = verifiers(cloud, [[5, 6, 7], [8, 9]])
    want = verifiers(cloud, [[5, 6, 7]])[0].verify(8, [9], None)

    def broken(logits):
        raise ValueError("this session's own trouble")

    jobs = [batching.Job(a, [8, 9], lambda lg: a.settle(a.length - 2, [9], lg, None)), batching.Job(b, [1, 2], broken)]
    batching.run_batch(cloud, jobs)
    assert jobs[0].error is None and jobs[0].result == want
    assert isinstance(jobs[1].error, ValueError)


def test_a_closed_batcher_refuses_rounds(pair):
    batcher = Batcher(pair["cloud"], threading.Lock(), policy="dynamic")
    batcher.close()
    v = verifiers(pair["cloud"], [[5, 6]])[0]
    with pytest.raises(RuntimeError, match="stopping"):
        batcher.submit(v, [7], lambda lg: None)


def test_attention_mask_covers_each_rows_cache_and_inputs():
    mask = attention_mask([3, 0, 1], [1, 2, 2], "cpu")
    assert mask.tolist() == [[1, 1, 1, 1, 0], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]


def test_batcher_refuses_bad_settings(pair):
    lock = threading.Lock()
    with pytest.raises(ValueError, match="unknown batch policy"):
        Batcher(pair["cloud"], lock, policy="static")
    with pytest.raises(ValueError, match="--max-batch"):
        Batcher(pair["cloud"], lock, max_batch=0)


# ---- sessions through a batching server


def test_four_concurrent_greedy_sessions_get_their_solo_outputs(pair, servers):
    edge, cloud = pair["edge"], pair["cloud"]
    want = [speculative(edge, cloud, p, N, gamma=3).tokens for p in PROMPTS]  # in process, no link
    before = several_batched(connect(servers["batched"]).status())
    got = run_concurrently([lambda p=p: speculative(edge, connect(servers["batched"]), p, N, gamma=3).tokens
                            for p in PROMPTS])
    assert got == want  # token equality (float sums may differ in the last bits: see docs/capacity.md)
    status = connect(servers["batched"]).status()
    assert several_batched(status) > before, status["batches"]


def test_four_concurrent_sampling_sessions_draw_as_solo(pair, servers):
    """Same seeds, same draws: each session's rule runs on its own rows with its own generator."""
    edge = pair["edge"]
    kw = {"gamma": 3, "verify": "sample", "temperature": 1.0}
    want = [speculative(edge, connect(servers["solo"]), p, N, seed=i, **kw).tokens for i, p in enumerate(PROMPTS)]
    before = several_batched(connect(servers["batched"]).status())
    got = run_concurrently([lambda i=i, p=p: speculative(edge, connect(servers["batched"]), p, N, seed=i, **kw).tokens
                            for i, p in enumerate(PROMPTS)])
    assert got == want
    assert several_batched(connect(servers["batched"]).status()) > before


def test_sessions_with_different_rules_share_batches(pair, servers):
    """Greedy, rank and sampling sessions in the same batches: each rule runs on its own rows only."""
    edge = pair["edge"]
    jobs = [(PROMPTS[0], {}), (PROMPTS[1], {"verify": "rank", "rank_k": 3}),
            (PROMPTS[2], {"verify": "sample", "temperature": 0.7, "seed": 11}), (PROMPTS[3], {"gamma": 5})]
    kw0 = {"gamma": 3}
    want = [speculative(edge, connect(servers["solo"]), p, N, **(kw0 | kw)).tokens for p, kw in jobs]
    before = several_batched(connect(servers["batched"]).status())
    got = run_concurrently([lambda p=p, kw=kw: speculative(edge, connect(servers["batched"]), p, N, **(kw0 | kw)).tokens
                            for p, kw in jobs])
    assert got == want
    assert several_batched(connect(servers["batched"]).status()) > before


def test_cloud_only_streams_batch_and_keep_their_solo_outputs(pair, servers):
    """The fair reference's server side: N cloud-only streams decode in shared batches (an empty draft
    per token), greedy equal to the cloud in process, sampling equal to a non-batching server's."""
    cloud = pair["cloud"]
    want = [autoregressive(cloud, p, N).tokens for p in PROMPTS[:2]]
    sample = {"temperature": 0.8, "seed": 5}
    want += [connect(servers["solo"]).autoregressive(p, N, **sample).tokens for p in PROMPTS[2:]]
    before = several_batched(connect(servers["batched"]).status())
    got = run_concurrently([lambda p=p: connect(servers["batched"]).autoregressive(p, N).tokens for p in PROMPTS[:2]]
                           + [lambda p=p: connect(servers["batched"]).autoregressive(p, N, **sample).tokens
                              for p in PROMPTS[2:]])
    assert got == want
    assert several_batched(connect(servers["batched"]).status()) > before


def test_session_cancelled_mid_batch_frees_its_cache_and_spares_the_others(pair, servers, monkeypatch):
    """A victim's round is in a batch with others when its client cancels the stream: the batch ends,
    the victim's cache is freed, and the others' outputs are their solo outputs."""
    edge, cloud = pair["edge"], pair["cloud"]
    address, service = servers["batched"], servers["cloud"]
    want = [speculative(edge, cloud, p, N, gamma=3).tokens for p in PROMPTS[:3]]
    marker = 6  # the victim's second round scores 6 tokens; the others' rounds at most 4 (gamma 3)
    victim: dict = {}
    fired = threading.Event()
    real = batching.score_rows

    def cancelling(model, caches, lengths, rows, vocabs):
        if not fired.is_set() and any(len(r) == marker for r in rows):
            fired.set()
            victim["batch"] = len(rows)
            open_before = len(service.sessions)
            victim["stream"].close()  # the client cancels while its round is in this batch
            deadline = time.monotonic() + HANG_S
            while len(service.sessions) >= open_before and time.monotonic() < deadline:
                time.sleep(0.01)  # until the server has seen the cancellation (it frees the cache after us)
        return real(model, caches, lengths, rows, vocabs)

    monkeypatch.setattr(batching, "score_rows", cancelling)

    def cancelled() -> None:
        remote = connect(address)
        settings = RoundSettings(rule="greedy", max_len=64)
        v = remote.verifier(settings)
        v.begin(remote.encode("import sys"), settings)
        v.verify(5, [6, 7], None)  # opens the session, its cache holds the prompt and a round
        victim["stream"] = v.stream
        v.stream.send(Message("V", {}, [9] + [10] * (marker - 1)))
        fired.wait(HANG_S)

    got = run_concurrently([lambda p=p: speculative(edge, connect(address), p, N, gamma=3).tokens
                            for p in PROMPTS[:3]] + [cancelled])
    assert fired.is_set() and victim["batch"] > 1, victim  # the victim shared its batch
    assert got[:3] == want
    status = sessions_freed(connect(address), HANG_S)
    assert status["sessions"] == 0 and status["caches"] == 0, status


def test_a_bad_message_is_its_own_sessions_error(pair, servers):
    """A draft outside the vocabulary ends only that session; the others, concurrent, decode as solo."""
    edge, cloud = pair["edge"], pair["cloud"]
    want = [speculative(edge, cloud, p, N, gamma=3).tokens for p in PROMPTS[:2]]

    def bad() -> str:
        remote = connect(servers["batched"])
        settings = RoundSettings(rule="greedy", max_len=64)
        v = remote.verifier(settings)
        v.begin(remote.encode("import sys"), settings)
        v.verify(5, [6, 7], None)
        v.stream.send(Message("V", {}, [9, 10 ** 6]))
        with pytest.raises(ValueError, match="vocab") as err:
            v.stream.recv()
        v.close()
        return str(err.value)

    got = run_concurrently([lambda p=p: speculative(edge, connect(servers["batched"]), p, N, gamma=3).tokens
                            for p in PROMPTS[:2]] + [bad])
    assert got[:2] == want


# ---- replayed edges (specnb/study/replay.py)


@pytest.mark.parametrize("kw", [{}, {"verify": "sample", "temperature": 1.0, "seed": 3}], ids=["greedy", "sample"])
def test_replayed_edge_sends_the_real_edges_requests(pair, servers, kw):
    """Recorded once from the real edge, the replay sends the same rounds (drafts, bytes up per round)
    and waits at least the recorded drafting time, without an edge model."""
    remote = connect(servers["solo"])
    recorder = RecordingDrafter(pair["edge"])
    real = speculative(recorder, remote, PROMPTS[1], N, gamma=3, **kw)
    recording = recorder.recording
    assert len(recording.rounds) == real.metrics["rounds"] and recording.draft_s() > 0
    replay = speculative(ReplayedEdge(recording), remote, PROMPTS[1], N, gamma=3, **kw)
    assert replay.tokens == real.tokens
    assert (replay.trace, replay.drafted_trace) == (real.trace, real.drafted_trace)
    assert replay.metrics["round_bytes_up"] == real.metrics["round_bytes_up"]
    assert replay.metrics["draft_s"] >= recording.draft_s()  # it slept at least the recorded times
    assert replay.metrics["replayed_rounds"] == len(recording.rounds)


def test_replayed_edges_through_a_batching_server(pair, servers):
    """Four replays of one recording at once through the batching server: each ends as recorded."""
    recorder = RecordingDrafter(pair["edge"])
    real = speculative(recorder, connect(servers["solo"]), PROMPTS[0], N, gamma=3)
    got = run_concurrently([lambda: speculative(ReplayedEdge(recorder.recording), connect(servers["batched"]),
                                                PROMPTS[0], N, gamma=3).tokens for _ in range(4)])
    assert got == [real.tokens] * 4


def test_a_replay_that_diverges_says_where(pair, servers):
    recorder = RecordingDrafter(pair["edge"])
    speculative(recorder, connect(servers["solo"]), PROMPTS[0], N, gamma=3)
    with pytest.raises(ValueError, match="same prompt"):
        speculative(ReplayedEdge(recorder.recording, wait=False), connect(servers["solo"]), PROMPTS[2], N, gamma=3)
    bent = recorder.recording
    bent.rounds[1] = replace(bent.rounds[1], last=bent.rounds[1].last + 1)
    with pytest.raises(RuntimeError, match="diverged at round 2"):
        speculative(ReplayedEdge(bent, wait=False), connect(servers["solo"]), PROMPTS[0], N, gamma=3)


def test_serve_refuses_a_bad_batch_setting_before_loading():
    """``specnb serve --max-batch 0``: one line on stderr naming the flag, exit 2, no model loaded."""
    from serving import launch
    proc = launch("zoo:does-not-exist", "--batch", "dynamic", "--max-batch", "0")
    out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 2 and "--max-batch" in err and out == "", (proc.returncode, err)


def test_hello_and_status_say_how_the_server_batches(servers):
    remote = connect(servers["batched"])
    assert (remote.info["batch"], remote.info["max_batch"], remote.info["batch_wait_ms"]) == ("wait", 4, 30)
    assert connect(servers["solo"]).status()["batches"] == {}
