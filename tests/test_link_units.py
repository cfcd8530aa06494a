"""The link's pure parts, no server: wire format, the emulated link's arithmetic, the split sampling
rule, prediction and the latency-extended bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specnb.link import Link, best_gamma, crossover_r, predict, speedup_bound
from specnb.link.emulate import Direction
from specnb.decode.verifying import accept_sample, accept_split, residual_sample
from specnb.link.wire import GRPC_PREFIX, Message, decode, encode, wire_bytes
from specnb.measure.metrics import Generation
from specnb.decode.schedule import MAX_GAMMA, expected_tokens


def test_wire_round_trip_and_size():
    msg = Message("V", {"prompt": 3}, [5, 6, 7, 8], np.array([0.5, 0.25], dtype=np.float32))
    back = decode(encode(msg))
    assert (back.kind, back.meta, back.ints, back.floats.tolist()) == ("V", {"prompt": 3}, [5, 6, 7, 8], [0.5, 0.25])
    greedy_round = encode(Message("V", ints=[1, 2, 3, 4, 5]))  # last + 4 drafts: ids only
    assert wire_bytes(greedy_round) == 1 + 4 + 4 + 5 * 4 + GRPC_PREFIX
    assert decode(encode(Message("v"))).floats is None


def test_link_delay_bandwidth_and_order():
    assert Direction(Link(), 0).arrival(10**6, 5.0) == 5.0  # Link() adds nothing
    d = Direction(Link(rtt_ms=20, bandwidth_mbps=8), 0)  # 8 Mbit/s: 1 byte per microsecond
    assert d.arrival(1000, 0.0) == pytest.approx(0.001 + 0.010)
    assert d.arrival(1000, 0.0) == pytest.approx(0.002 + 0.010)  # queued behind the first on the wire
    assert d.arrival(0, 1.0) == pytest.approx(1.010)
    jittery = [Direction(Link(rtt_ms=2, jitter_ms=5, seed=3), 3) for _ in range(2)]
    times = [[j.arrival(0, i * 1e-4) for i in range(200)] for j in jittery]
    assert times[0] == times[1]  # seeded
    assert times[0] == sorted(times[0])  # never reordered (TCP)
    assert all(t >= i * 1e-4 for i, t in enumerate(times[0]))  # never negative delay
    assert Link(rtt_ms=2, jitter_ms=5).expected_one_way_s(0) == pytest.approx((1 + 5) ** 2 / 20 / 1e3)
    with pytest.raises(ValueError):
        Link(rtt_ms=-1)


def test_split_rule_matches_target_distribution():
    """The rule split across the wire (cloud: accept and bonus; edge: residual) is the rule of
    tests/test_decoding.py: the first emitted token is distributed as p[0]."""
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]])
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    trials = 6000
    for _ in range(trials):
        draft = [int(torch.multinomial(q[i], 1, generator=gen)) for i in range(2)]
        qx = q[torch.arange(2), torch.tensor(draft)]
        n, tok = accept_split(draft, p, qx, gen)
        if tok is None:
            tok = residual_sample(p[n], q[n], gen)
        counts[(draft[:n] + [tok])[0]] += 1
    assert 0.5 * (counts / trials - p[0]).abs().sum() < 0.03


def test_the_split_rule_is_the_in_process_rule_draw_for_draw():
    """Same generator state in, same (accepted, token) out: the link's halves and accept_sample are one rule."""
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]])
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    for seed in range(200):
        draft = [int(torch.multinomial(q[i], 1, generator=torch.Generator().manual_seed(seed + i))) for i in range(2)]
        whole = accept_sample(draft, p, q, torch.Generator().manual_seed(seed))
        gen = torch.Generator().manual_seed(seed)
        n, tok = accept_split(draft, p, q[torch.arange(2), torch.tensor(draft)], gen)
        assert whole == (n, residual_sample(p[n], q[n], gen) if tok is None else tok)


def _run(wall, rounds):
    """A generation across Link(rtt_ms=10): rounds of (link_s, emulated_s, up, down)."""
    link, emu, up, down = (list(c) for c in zip(*rounds))
    return Generation([], "", {"wall_s": wall, "link_s": sum(link), "round_link_s": link, "round_emulated_s": emu,
                               "round_bytes_up": up, "round_bytes_down": down})


def test_predict_swaps_the_link_time_per_round():
    g = _run(1.0, [(0.0102, 0.010, 100, 40)] * 10)  # 0.2 ms of transport per round
    assert predict(g, Link(rtt_ms=10)) == pytest.approx(1.0)
    assert predict(g, Link()) == pytest.approx(1.0 - 0.1)
    assert predict(g, Link(rtt_ms=50)) == pytest.approx(1.0 + 0.4)
    assert predict(g, Link(rtt_ms=10, bandwidth_mbps=1)) == pytest.approx(1.0 + 10 * 140 * 8 / 1e6)


def test_latency_extended_bound():
    assert speedup_bound(0.8, 4, 0.1) == pytest.approx(expected_tokens(0.8, 4) / 1.4)  # r = 0, v = 1: Leviathan
    assert speedup_bound(0.8, 4, 0.1, v=1, r=2) < speedup_bound(0.8, 4, 0.1)
    gammas = [best_gamma(0.8, 0.05, 1.0, r) for r in (0, 1, 4, 16)]
    assert gammas == sorted(gammas) and gammas[-1] > gammas[0]  # the best draft grows with the link's cost
    r = crossover_r(0.8, 0.05)
    assert max(speedup_bound(0.8, g, 0.05, 1.0, r) for g in range(1, MAX_GAMMA + 1)) == pytest.approx(1.0)
    assert crossover_r(0.3, 0.5) < 0  # a poor edge loses even without a link


def test_study_summaries_on_synthetic_rows():
    """Cloud-only at 10 ms/token; speculation at gamma g: 64 tokens in 64 / (g / 2 + 1) rounds of
    (g * 1 ms + 10 ms) plus the RTT per round; cloud-only pays the RTT once."""
    import pandas as pd

    from specnb.study import rtt

    rows = []
    for rep in range(2):
        for prompt in range(3):
            rows.append(dict(method="edge", gamma=None, rtt_ms=None, rep=rep, prompt=prompt, new_tokens=64, wall_s=0.2,
                             emulated_s=0.0, round_trips=0, bytes_up=0, bytes_down=0))
            for ms in (0.0, 20.0):
                rows.append(dict(method="cloud", gamma=None, rtt_ms=ms, rep=rep, prompt=prompt, new_tokens=64,
                                 wall_s=0.64 + ms / 1e3, emulated_s=ms / 1e3, round_trips=1, bytes_up=100, bytes_down=64 * 22))
                for g in (1, 4):
                    rounds = 64 / (g / 2 + 1)
                    rows.append(dict(method="edge_cloud", gamma=g, rtt_ms=ms, rep=rep, prompt=prompt, new_tokens=64,
                                     wall_s=rounds * (g * 1e-3 + 10e-3 + ms / 1e3), emulated_s=rounds * ms / 1e3,
                                     round_trips=rounds, bytes_up=rounds * (14 + 4 * g), bytes_down=rounds * 17))
    df = pd.DataFrame(rows)
    df["predicted_wall_s"] = df.wall_s
    best = rtt.best_gammas(df)
    assert best.gamma.tolist() == [4, 4] and best.speedup.iloc[0] > 1 > best.speedup.iloc[1]
    assert rtt.speedups(df).query("method == 'edge'").speedup.iloc[0] == pytest.approx(3.2)
    assert (rtt.prediction_errors(df).error == 0).all()
    assert rtt.bytes_per_token(df).query("method == 'cloud'").down_per_token.iloc[0] == pytest.approx(22)
    # gamma 4: 64/3 rounds of 14 ms + RTT; cloud-only: 640 ms + one RTT; equal at RTT = 341.3 / 20.33 = 16.8 ms
    assert rtt.crossover_rtt(df) == pytest.approx(16.8, abs=0.5)
