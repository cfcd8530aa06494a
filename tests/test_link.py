"""The cloud as a service across a real gRPC link: a ``specnb serve`` subprocess on loopback.

Tiny random models (tests/tiny_models.py) keep every test to seconds; no timing asserts except
generous bounds on "no hang".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import pytest
import torch

from specnb import Link, ModelSpec, autoregressive, check_pair, connect, load, speculative
from specnb.link.server import PROTOCOL
from serving import HANG_S, readline, sessions_freed, start_server, stop
from tiny_models import build_llama, build_tokenizer

PROMPTS = ["def parse(text):", "class Stack:\n    def push(self, item):", "import os", "x"]
N = 24


@pytest.fixture(scope="module")
def models(related_pair, tmp_path_factory):
    """The related pair (a related draft: long acceptances) and a cloud with another tokenizer."""
    other_root = tmp_path_factory.mktemp("link")
    other = build_tokenizer(other_root / "other-tok", extra_tokens=["<tool>", "</tool>"])
    mismatched = build_llama(other_root / "mismatched", other, seed=4, layers=1)
    loaded = {name: load(ModelSpec(str(related_pair / name), device="cpu")) for name in ("cloud", "edge")}
    return loaded | {"mismatched": load(ModelSpec(str(mismatched), device="cpu")), "root": related_pair}


@pytest.fixture(scope="module")
def server(models):
    proc, address = start_server(str(models["root"] / "cloud"), "--draft", str(models["root"] / "edge"),
                                 stderr=subprocess.DEVNULL)  # long-lived: a log nobody reads must not fill a pipe
    yield address
    assert stop(proc)[0] == ""  # exactly one line on stdout, already read


def test_greedy_through_the_link_equals_local(models, server):
    cloud, edge = models["cloud"], models["edge"]
    remote = connect(server)
    for prompt in PROMPTS:
        want = autoregressive(cloud, prompt, N).tokens
        assert autoregressive(remote, prompt, N).tokens == want  # cloud-only, streamed
        for gamma in (1, 3, 6):
            g = speculative(edge, remote, prompt, N, gamma=gamma)
            assert g.tokens == want, (prompt, gamma)
            m = g.metrics
            assert m["round_trips"] == m["rounds"] == len(m["round_bytes_up"])
            assert m["bytes_up"] == sum(m["round_bytes_up"]) and m["bytes_down"] == sum(m["round_bytes_down"])
            assert m["link_s"] >= 0 and m["emulated_s"] == 0
        assert remote.server_speculative(prompt, N, gamma=3).tokens == want  # both models on the server
    assert sessions_freed(remote)["sessions"] == 0


@pytest.mark.parametrize("link", [Link(), Link(rtt_ms=6, jitter_ms=2)])
def test_drafting_ahead_through_the_link_keeps_the_output(models, server, link):
    """Rounds sent ahead, several in flight (specnb.decode.ahead): the server answers VOID to those whose
    premise failed, without a model call; greedy output stays the cloud's; sampling runs the split rule."""
    cloud, edge = models["cloud"], models["edge"]
    remote = connect(server, link=link)
    voids = kept = hedged = hits = 0
    for prompt in PROMPTS:
        want = autoregressive(cloud, prompt, N).tokens
        for gamma, ahead, hedge in ((1, True, 0), (3, True, 0), (3, 1, 0), (2, True, 2), (4, True, 4)):
            g = speculative(edge, remote, prompt, N, gamma=gamma, ahead=ahead, hedge=hedge)
            assert g.tokens == want, (prompt, gamma, ahead, hedge)
            m = g.metrics
            assert m["rounds"] == len(m["round_bytes_up"]) == len(g.trace)
            assert m["cloud_calls"] == m["rounds"] + (len(cloud.encode(prompt)) > 1)  # VOID rounds: no model call
            assert m["round_trips"] >= m["rounds"] + m["ahead_void"]  # (rounds abandoned at the end: not read)
            assert 0 <= m["hedge_hits"] <= m["ahead_hedged"] and (hedge or m["ahead_hedged"] == 0)
            voids, kept = voids + m["ahead_void"], kept + m["ahead_rounds"]
            hedged, hits = hedged + m["ahead_hedged"], hits + m["hedge_hits"]
        g = speculative(edge, remote, prompt, N, gamma=3, ahead=True, verify="sample", temperature=1.0, seed=5)
        assert len(g.tokens) == N or g.tokens[-1] in cloud.eos_ids
    assert voids > 0 and kept > 0 and hedged > 0
    if link.rtt_ms:  # branches sent while a round is in flight; some are the cloud's verdict
        assert hits > 0
    assert sessions_freed(remote)["sessions"] == 0


def test_emulated_link_keeps_output_and_adds_its_delay(models, server):
    edge, prompt = models["edge"], PROMPTS[0]
    plain = speculative(edge, connect(server), prompt, N, gamma=3)
    slow = speculative(edge, connect(server, link=Link(rtt_ms=10, bandwidth_mbps=1, jitter_ms=2)), prompt, N, gamma=3)
    assert slow.tokens == plain.tokens
    m = slow.metrics
    assert m["link_s"] >= m["emulated_s"] >= m["round_trips"] * (0.008 + 8 * 20 / 1e6)  # rtt - 2 jitter + some bytes
    assert m["wall_s"] > plain.metrics["wall_s"]


def _first_token_tv(tokens: list[int], p: torch.Tensor) -> float:
    counts = torch.bincount(torch.tensor(tokens), minlength=p.shape[-1]).float()
    top = torch.topk(p, 8).indices  # the 8 likeliest tokens + the rest as one bucket
    trials = len(tokens)
    emp = torch.cat([counts[top] / trials, (trials - counts[top].sum()).view(1) / trials])
    ref = torch.cat([p[top], (1 - p[top].sum()).view(1)])
    return 0.5 * (emp - ref).abs().sum().item()


def test_sampling_through_the_link_matches_cloud_sampling(models, server):
    """First new token over many seeds (as tests/test_decoding.py does in-process), through the link's
    split rule: q(x) up, the cloud's row down at a rejection, the residual sampled at the edge."""
    cloud, edge = models["cloud"], models["edge"]
    remote = connect(server)
    # chosen so that a wrong residual shows: p and q overlap by ~0.5 here, and resampling from p
    # instead of max(0, p - q) lands near TV 0.19 (checked once by swapping the rule)
    prompt = cloud.encode("import os")
    temperature = 0.5
    with torch.inference_mode():
        logits = cloud.model(torch.tensor([prompt])).logits[0, -1, : cloud.vocab_size]
    p = torch.softmax(logits.float() / temperature, -1)
    firsts, rows_down = [], 0
    for seed in range(1200):
        g = speculative(edge, remote, prompt, 2, gamma=1, verify="sample", temperature=temperature, seed=seed)
        firsts.append(g.tokens[0])
        rows_down += g.metrics["round_bytes_down"][0] > 4 * cloud.vocab_size  # a rejection: p row sent down
    assert rows_down > 300  # the residual path ran (about half the drafts are rejected)
    tv = _first_token_tv(firsts, p)
    assert tv < 0.08, tv


def test_two_concurrent_clients_get_their_solo_outputs(models, server):
    edge = models["edge"]
    jobs = [(PROMPTS[0], {}), (PROMPTS[1], {"verify": "sample", "temperature": 1.0, "seed": 7})]
    solo = [speculative(edge, connect(server), p, N, gamma=3, **kw).tokens for p, kw in jobs]
    got: dict[int, list[list[int]]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            remote = connect(server)
            for _ in range(4):
                p, kw = jobs[i]
                got[i].append(speculative(edge, remote, p, N, gamma=3, **kw).tokens)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_S)
    assert not errors, errors
    assert got == {0: [solo[0]] * 4, 1: [solo[1]] * 4}


def test_killed_server_gives_one_clear_error(models):
    proc, address = start_server(str(models["root"] / "cloud"), stderr=subprocess.DEVNULL)
    remote = connect(address, link=Link(rtt_ms=20))
    killer = threading.Timer(1.0, proc.kill)
    killer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ConnectionError, match=re.escape(address)) as err:
            speculative(models["edge"], remote, PROMPTS[0], 200, gamma=1)  # ~200 round trips: killed mid-way
    finally:
        killer.cancel()
        proc.kill()
        proc.wait()
    assert time.monotonic() - t0 < HANG_S
    assert "mid-generation" in str(err.value) and err.value.__cause__ is None
    with pytest.raises(ConnectionError, match=re.escape(address)):
        autoregressive(remote, PROMPTS[0], 4)
    with pytest.raises(ConnectionError, match="no specnb cloud answers"):
        connect(address, timeout_s=1)


CLIENT = """
import sys, time, torch
from specnb import ModelSpec, Link, connect, load, speculative
edge = load(ModelSpec(sys.argv[2], device="cpu"))
remote = connect(sys.argv[1], link=Link(rtt_ms=50))
class Loud:  # says when its first round is on the server, then keeps the session open
    def __init__(self, v): self.v, self.vocab, self.eos_ids = v, v.vocab, v.eos_ids
    def begin(self, *a): self.v.begin(*a)
    def verify(self, *a):
        out = self.v.verify(*a); print("started", flush=True); return out
    def close(self): self.v.close()
    def stats(self): return self.v.stats()
speculative(edge, Loud(remote.verifier(None)), "import os", 400, gamma=1)
"""


def test_vanished_client_frees_its_session(models, server):
    remote = connect(server)
    before = remote.status()
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, server, str(models["root"] / "edge")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        assert readline(proc) == "started\n"
        assert remote.status()["sessions"] == before["sessions"] + 1
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + HANG_S
    while remote.status()["sessions"] > before["sessions"] and time.monotonic() < deadline:
        time.sleep(0.1)
    status = remote.status()
    assert status["sessions"] == before["sessions"] and status["served"] == before["served"] + 1


def test_connect_checks_model_dtype_and_tokenizer(models, server):
    remote = connect(server, model=str(models["root"] / "cloud"), dtype="fp32")
    assert remote.info["dtype"] == "float32" and remote.info["protocol"] == PROTOCOL
    assert remote.encode("def parse(") == models["cloud"].encode("def parse(")
    assert check_pair(models["edge"], remote) == models["cloud"].vocab_size
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_pair(models["mismatched"], remote)
    # speculative() translates the mismatched edge's drafts, as in-process (tests/test_tokenizers.py)
    assert speculative(models["mismatched"], remote, "def parse(", 4).tokens == autoregressive(models["cloud"], "def parse(", 4).tokens
    with pytest.raises(ValueError, match="serves"):
        connect(server, model="zoo:tiny-cloud")
    with pytest.raises(ValueError, match="runs float32"):
        connect(server, dtype="bfloat16")


def test_local_server_reports_a_server_that_cannot_start(tmp_path):
    from specnb.link import local_server

    with pytest.raises(RuntimeError, match="did not start"):
        with local_server(str(tmp_path / "no-such-model"), timeout_s=HANG_S):
            pass


def test_adaptive_schedule_over_a_changing_link_in_the_link_study(models, server):
    """schedule='adaptive' through the link on a LinkProfile keeps the greedy output; the study runs it
    beside fixed gammas and sets it against the best of them."""
    from specnb.study import rtt
    from specnb.link.profile import LinkProfile

    edge, cloud = models["edge"], models["cloud"]
    profile = LinkProfile.steps([(0, Link(rtt_ms=1)), (3, Link(rtt_ms=4))], by="round")
    remote = connect(server, link=profile)
    g = speculative(edge, remote, PROMPTS[0], N, gamma=8, schedule="adaptive")
    assert g.tokens == autoregressive(cloud, PROMPTS[0], N).tokens
    df = rtt.link_grid(edge, connect(server), PROMPTS[:2], rtts_ms=(1, profile), gammas=(2, 4), max_new_tokens=8,
                         reps=2, server_gamma=None, schedules=("adaptive",))
    spec = df[df.method.str.startswith("edge_cloud")]
    assert set(spec.method) == {"edge_cloud", "edge_cloud:adaptive"} and set(df.rtt_ms.dropna()) == {1, profile.label}
    assert df[df.rtt_ms == profile.label].predicted_wall_s.isna().all()
    table = rtt.against_best_fixed(df)
    assert len(table) == 2 * 3 and (table.low <= table.vs_best_fixed).all() and (table.vs_best_fixed <= table.high).all()
    best = table[(table.method == "edge_cloud") & (table.gamma == table.best_fixed_gamma)]
    assert (best.vs_best_fixed == 1).all()
    ad = table[table.method == "edge_cloud:adaptive"]
    assert (ad.drafted_p90 <= 4).all() and (ad.gamma == 4).all()


def test_the_link_study_runs_drafting_ahead_and_predicts_it_with_its_bound(models, server):
    """link_grid(..., ahead=True): method edge_cloud:ahead at every gamma, its rows predicted by the model
    (predict() swaps the modelled loop time), its bound row from S_ahead."""
    from specnb.study import rtt

    edge = models["edge"]
    df = rtt.link_grid(edge, connect(server), PROMPTS[:2], rtts_ms=(0, 8), gammas=(2, 4), max_new_tokens=12,
                       reps=2, server_gamma=None, ahead=True)
    spec = df[df.method.str.startswith("edge_cloud")]
    assert set(spec.method) == {"edge_cloud", "edge_cloud:ahead"}
    ahead = df[df.method == "edge_cloud:ahead"]
    assert (ahead.ahead == 64).all() and ahead.edge_idle_share.between(0, 1).all()
    assert ahead[ahead.rtt_ms == 8].predicted_wall_s.gt(0).all()  # from the model, not a sum over rounds
    assert rtt.prediction_errors(df).error.abs().lt(1.0).all()
    bounds = rtt.bound_table(df)
    assert set(bounds.method) == {"edge_cloud", "edge_cloud:ahead"} and bounds.bound.gt(0).all()
    plain = df[df.method == "edge_cloud"]
    assert all(t == p for t, p in zip(ahead.sort_values(["rtt_ms", "gamma", "rep", "prompt"]).tokens,
                                        plain.sort_values(["rtt_ms", "gamma", "rep", "prompt"]).tokens))


def test_the_link_study_runs_the_clouds_lead_and_bounds_it_with_its_model(models, server):
    """link_grid(..., lead=True): methods edge_cloud:lead (and edge_cloud:ahead+lead with ahead) at every gamma,
    the cloud's greedy output, no prediction for them, and a bound row for edge_cloud:lead from lead_rate."""
    from specnb.study import rtt

    df = rtt.link_grid(models["edge"], connect(server), PROMPTS[:2], rtts_ms=(0, 20), gammas=(2, 4), max_new_tokens=12,
                       reps=1, server_gamma=None, ahead=True, lead=True)
    spec = df[df.method.str.startswith("edge_cloud")]
    assert set(spec.method) == {"edge_cloud", "edge_cloud:ahead", "edge_cloud:lead", "edge_cloud:ahead+lead"}
    key = ["rtt_ms", "gamma", "rep", "prompt"]
    plain = df[df.method == "edge_cloud"].sort_values(key)
    for method in ("edge_cloud:lead", "edge_cloud:ahead+lead"):
        led = df[df.method == method].sort_values(key)
        assert list(led.tokens) == list(plain.tokens) and led.lead.all() and led.predicted_wall_s.isna().all()
    assert df[df.method.str.endswith("lead")].lead_tokens.sum() > 0
    bounds = rtt.bound_table(df)
    assert "edge_cloud:lead" in set(bounds.method) and bounds.bound.gt(0).all()


def test_gamma_table_checks_outputs_carries_one_controller_per_link_and_prints_the_issue_table(models, server, monkeypatch):
    """specnb.study.adaptive_gamma (tools/adaptive_table.py): fixed gammas and schedules on every link,
    interleaved; each output set against the cloud's greedy one; one adaptive controller per link for the run."""
    from specnb.decode.adaptive import Controller
    from specnb.study import adaptive_gamma
    from specnb.link.profile import LinkProfile

    made = []
    monkeypatch.setattr(adaptive_gamma, "Controller", lambda: made.append(Controller()) or made[-1])
    profile = LinkProfile.steps([(0, Link(rtt_ms=1)), (3, Link(rtt_ms=4))], by="round")
    df = adaptive_gamma.gamma_table(models["edge"], connect(server), PROMPTS[:2], links=(1, profile), gammas=(2, 4),
                                    schedules=(("adaptive", 4), ("heuristic", 2)), max_new_tokens=8, reps=2)
    assert len(made) == 2 and all(sum(c.calibration.tries) > 0 for c in made)
    assert len(df) == 2 * 2 * 2 * 4 and df.identical.all()
    s = adaptive_gamma.summary(df)
    assert s.identical.all() and len(s) == 2 * 4
    broken = df.copy()
    broken.loc[broken.method == "edge_cloud:heuristic", "identical"] = False
    assert not adaptive_gamma.summary(broken).set_index("method").loc["edge_cloud:heuristic"].identical.any()
    table = adaptive_gamma.markdown(s).splitlines()
    assert table[0].startswith("| link | best fixed (tok/s) | g2 | g4 | adaptive | heuristic |")
    assert len(table) == 2 + 2 and table[2].startswith("| 1 ms |") and table[3].startswith(f"| {profile.label} |")
    shares = adaptive_gamma.stage_shares(df, profile.label)  # emulated one-way delays: RTT / 2 up + down
    assert set(shares) == {1, 4} and sum(shares.values()) == pytest.approx(1, abs=0.01)
