"""Drafting ahead (specnb.decode.ahead): greedy output stays the cloud's, the sampling rule stays exact,
rounds whose premise failed are dropped, on tiny models and on a Markov chain with known distributions."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from specnb import ModelSpec, PromptLookup, autoregressive, load, speculative
from specnb.decode.ahead import VOID, Chain, ThreadedVerifier, depth_of
from specnb.decode.roles import Verdict
from specnb.decode.verifying import CloudVerifier, accept_sample

PROMPTS = ["def parse(text):", "class Stack:\n    def push(self, item):", "import os", "x"]
N = 24


@pytest.fixture(scope="module")
def pair(related_pair):
    cloud = load(ModelSpec(str(related_pair / "cloud"), device="cpu", threads=1))
    edge = load(ModelSpec(str(related_pair / "edge"), device="cpu", threads=1))
    return edge, cloud


class Slow:
    """The in-process verifier, ``delay_s`` slower per round: the edge drafts several rounds ahead."""

    def __init__(self, cloud, settings, delay_s):
        self.inner, self.delay_s = CloudVerifier(cloud, settings), delay_s
        self.vocab, self.eos_ids = self.inner.vocab, self.inner.eos_ids
        self.drafts = []

    def begin(self, prompt_ids, settings):
        self.inner.begin(prompt_ids, settings)

    def verify(self, last, draft, q):
        time.sleep(self.delay_s)
        self.drafts.append(len(draft))
        return self.inner.verify(last, draft, q)

    def close(self):
        self.inner.close()

    def stats(self):
        return self.inner.stats()


class Lazy:
    """A pipeline whose verdicts come only when the edge has nothing left to do (an endlessly slow cloud):
    the edge always drafts as many rounds ahead as it may. Deterministic, no threads."""

    def __init__(self, inner):
        self.inner, self.vocab, self.eos_ids = inner, inner.vocab, inner.eos_ids
        from specnb.decode import ahead as ahead_mod

        self.pending, self.chain, self.premises = [], ahead_mod.Chain(), []  # (looked up late: a test swaps it)
        self.lengths, self.answers = [], []  # drafts per round submitted; the verdict each got, in order

    def begin(self, prompt_ids, settings):
        self.inner.begin(prompt_ids, settings)

    def submit(self, last, draft, q, premise):
        self.pending.append((last, draft, q, premise))
        self.premises.append(premise)
        self.lengths.append(len(draft))

    def collect(self, block):
        if not block:
            return None
        last, draft, q, premise = self.pending.pop(0)
        verdict = self.inner.verify(last, draft, q) if self.chain.admits(last, premise) else VOID
        self.chain.record(verdict)
        self.answers.append(verdict)
        return verdict

    def stop(self):
        pass

    def close(self):
        self.inner.close()

    def stats(self):
        return self.inner.stats()


def slow_cloud(cloud, delay_s):
    """A cloud object whose verifier is ``delay_s`` slower a round; ``None``: :class:`Lazy`."""
    class Cloud:
        encode, decode = staticmethod(cloud.encode), staticmethod(cloud.decode)
        tokenizer, vocab_size = cloud.tokenizer, cloud.vocab_size

        def verifier(self, settings):
            self.made = Slow(cloud, settings, delay_s or 0.0)
            self.made_pipe = Lazy(self.made) if delay_s is None else self.made
            return self.made_pipe
    return Cloud()


@pytest.mark.parametrize("ahead", [True, 1])
def test_greedy_output_is_the_clouds(pair, ahead):
    edge, cloud = pair
    for prompt in PROMPTS:
        want = autoregressive(cloud, prompt, N).tokens
        for gamma in (1, 2, 4, 8):
            g = speculative(edge, cloud, prompt, N, gamma=gamma, ahead=ahead)
            assert g.tokens == want, (prompt, gamma)
            m = g.metrics
            assert m["rounds"] == len(g.trace) == len(g.drafted_trace) and sum(g.trace) == m["accepted"]
            assert m["cloud_calls"] == m["rounds"] + (len(cloud.encode(prompt)) > 1)  # VOID rounds cost no call
            assert 0 <= m["ahead_rounds"] <= m["rounds"] and m["ahead"] == (64 if ahead is True else 1)
            assert m["ahead_kept"] >= m["ahead_rounds"] and m["ahead_dropped"] >= 0
            assert 0 < m["edge_idle_share"] < 1


@pytest.mark.parametrize("delay_s", [0.0, None])
def test_edge_as_its_own_cloud_keeps_every_round_ahead(pair, delay_s):
    """Every draft accepted: nothing is dropped; with verdicts that wait for the edge (Lazy), every round
    after the first was drafted ahead."""
    _, cloud = pair
    for gamma in (1, 3):
        for ahead in (True, 1):
            g = speculative(cloud, slow_cloud(cloud, delay_s), PROMPTS[0], N, gamma=gamma, ahead=ahead)
            assert g.tokens == autoregressive(cloud, PROMPTS[0], N).tokens
            m = g.metrics
            assert m["acceptance_rate"] == 1.0 and m["ahead_void"] == 0 and m["ahead_dropped"] == 0
            assert m["rounds"] == -(-N // (gamma + 1))  # as the plain loop: g + 1 tokens a round
            if delay_s is None:
                assert m["ahead_rounds"] == m["rounds"] - 1
                assert m["ahead_kept"] == N - gamma - 1  # all but the first draft and the last bonus token


def test_rounds_ahead_of_a_rejection_are_dropped(pair):
    """A slow cloud lets the edge run several rounds ahead; rejections void them, the output stays."""
    edge, cloud = pair
    totals = dict.fromkeys(("ahead_rounds", "ahead_void", "ahead_dropped"), 0)
    for prompt in PROMPTS:
        want = autoregressive(cloud, prompt, N).tokens
        for ahead, delay_s in ((True, None), (2, None), (True, 0.002)):
            remote = slow_cloud(cloud, delay_s)
            g = speculative(edge, remote, prompt, N, gamma=2, ahead=ahead)
            assert g.tokens == want
            assert remote.made.drafts == g.drafted_trace  # only rounds that count reached the model
            for k in totals:
                totals[k] += g.metrics[k]
    assert all(v > 0 for v in totals.values()), totals


def test_unrelated_edge_and_prompt_lookup(pair, tmp_path):
    """Drafts that are almost always rejected, and a drafter that often proposes nothing."""
    from tiny_models import build_llama, build_tokenizer

    _, cloud = pair
    other = load(ModelSpec(str(build_llama(tmp_path / "u", build_tokenizer(), seed=1, layers=1)), device="cpu"))
    for prompt in PROMPTS[:2]:
        want = autoregressive(cloud, prompt, N).tokens
        assert speculative(other, cloud, prompt, N, gamma=4, ahead=True).tokens == want
        assert speculative(PromptLookup(), cloud, prompt, N, gamma=4, ahead=True).tokens == want
        assert speculative(PromptLookup(), slow_cloud(cloud, None), prompt, N, gamma=4, ahead=True).tokens == want
        assert speculative(other, slow_cloud(cloud, None), prompt, N, gamma=4, ahead=True).tokens == want


def test_stops_at_eos_inside_a_round_ahead(pair, related_pair, tmp_path):
    from transformers import AutoTokenizer

    from tiny_models import build_llama

    full = autoregressive(pair[1], PROMPTS[0], N).tokens
    stop_at = 9
    eos = full[stop_at]
    assert eos not in full[:stop_at]
    tok = AutoTokenizer.from_pretrained(related_pair / "tok")
    c = load(ModelSpec(str(build_llama(tmp_path / "c", tok, seed=0, eos_token_id=eos)), device="cpu"))
    for gamma in (1, 2, 4):
        for delay_s in (0.0, None):
            g = speculative(c, slow_cloud(c, delay_s), PROMPTS[0], N, gamma=gamma, ahead=True)
            assert g.tokens == full[: stop_at + 1]


def test_optimized_and_sampling_settings(pair):
    edge, cloud = pair
    want = autoregressive(cloud, PROMPTS[1], N).tokens
    assert speculative(edge, cloud, PROMPTS[1], N, gamma=4, ahead=True, optimized=True, compile=False).tokens == want
    for schedule in ("heuristic", "cost"):
        assert speculative(edge, cloud, PROMPTS[1], N, gamma=4, ahead=True, schedule=schedule).tokens == want
    g = speculative(edge, cloud, PROMPTS[1], N, gamma=4, ahead=True, verify="sample", temperature=1.0, seed=3)
    assert len(g.tokens) == N or g.tokens[-1] in cloud.eos_ids


def test_refusals(pair):
    edge, cloud = pair
    for schedule in ("confidence", "adaptive"):
        with pytest.raises(ValueError, match="ahead does not combine"):
            speculative(edge, cloud, PROMPTS[0], 4, schedule=schedule, ahead=True)
    for bad in (-1, 1.5, "yes"):
        with pytest.raises(ValueError, match="ahead must be"):
            depth_of(bad)
    assert depth_of(False) == depth_of(0) == 0 and depth_of(3) == 3


def test_a_failing_verifier_raises_and_closes(pair):
    edge, cloud = pair
    box = {}

    class Broken(Slow):
        def verify(self, last, draft, q):
            if len(self.drafts) == 2:
                raise RuntimeError("cloud failed")
            return super().verify(last, draft, q)

        def close(self):
            box["closed"] = True
            super().close()

    class Cloud:
        encode, decode = staticmethod(cloud.encode), staticmethod(cloud.decode)

        def verifier(self, settings):
            return Broken(cloud, settings, 0.0)

    with pytest.raises(RuntimeError, match="cloud failed"):
        speculative(edge, Cloud(), PROMPTS[0], N, gamma=2, ahead=True)
    assert box["closed"]


@pytest.mark.parametrize("delay_s", [None, 0.002, 0.0])
def test_hedged_greedy_output_is_the_clouds(pair, delay_s):
    """Branches on rejections (hedge): the output stays the cloud's greedy output, only rounds that count reach
    the model, and branches are both submitted and verified (with the Lazy pipeline every branch that can be
    drafted is)."""
    edge, cloud = pair
    totals = dict.fromkeys(("ahead_hedged", "hedge_hits", "ahead_void"), 0)
    for prompt in PROMPTS:
        want = autoregressive(cloud, prompt, N).tokens
        for gamma, ahead, hedge in ((1, True, 1), (2, True, 2), (4, True, 3), (4, 1, 2), (8, True, 6)):
            remote = slow_cloud(cloud, delay_s)
            g = speculative(edge, remote, prompt, N, gamma=gamma, ahead=ahead, hedge=hedge)
            assert g.tokens == want, (prompt, gamma, ahead, hedge)
            assert remote.made.drafts == g.drafted_trace  # only rounds that count reached the model
            m = g.metrics
            assert m["hedge"] == hedge and 0 <= m["hedge_hits"] <= min(m["ahead_hedged"], m["ahead_rounds"])
            assert m["rounds"] == len(g.trace) and sum(g.trace) == m["accepted"]
            if delay_s is None:  # premises sent: one per round, in order; a branch assumes a verdict short of whole
                premises = remote.made_pipe.premises
                assert premises[0] is None and all(p is None or 1 <= p[0] <= i for i, p in enumerate(premises))
            for k in totals:
                totals[k] += m[k]
    if delay_s is not None and delay_s == 0.0:
        return  # a verifier as fast as the edge leaves little time to branch: no claim on the counts
    assert totals["ahead_hedged"] > 0 and totals["hedge_hits"] > 0 and totals["ahead_void"] > 0, totals


def test_a_chain_that_ignores_the_accepted_count_breaks_the_output(pair):
    """The test above has teeth: a verifier that scores a branch whenever its first input is the cloud's token,
    whatever count of drafts the branch assumed kept, gives output that is not the cloud's, or verifies a round
    the edge knows dropped (which the loop asserts against)."""
    edge, cloud = pair

    class Careless(Chain):
        def admits(self, last, premise):
            return premise is None or (self.rounds - premise[0] == self.tip and self.verdict.token == last)

    import specnb.decode.ahead as ahead_mod

    wrong = caught = 0
    for prompt in PROMPTS:
        want = autoregressive(cloud, prompt, N).tokens
        real, ahead_mod.Chain = ahead_mod.Chain, Careless
        try:
            wrong += speculative(edge, slow_cloud(cloud, None), prompt, N, gamma=4, ahead=True, hedge=4).tokens != want
        except AssertionError as err:
            assert "premise the edge saw fail" in str(err)
            caught += 1
        finally:
            ahead_mod.Chain = real
    assert wrong + caught > 0


@pytest.mark.parametrize("delay_s", [None, 0.002])
def test_shorter_branches_keep_the_output_and_their_length(pair, delay_s):
    """``hedge_len``: branches of at most that many drafts. The output stays the cloud's greedy output (Lazy and
    a slow threaded verifier), every branch sent is that short, and with Lazy some branches that short are
    verified: a branch is a round with a premise, of any length."""
    edge, cloud = pair
    sent = verified_short = 0
    for prompt in PROMPTS:
        want = autoregressive(cloud, prompt, N).tokens
        for gamma, hedge, hedge_len in ((4, 3, 1), (8, 6, 2), (6, 4, 3), (4, 2, 8)):
            remote = slow_cloud(cloud, delay_s)
            g = speculative(edge, remote, prompt, N, gamma=gamma, ahead=True, hedge=hedge, hedge_len=hedge_len)
            assert g.tokens == want, (prompt, gamma, hedge, hedge_len)
            assert remote.made.drafts == g.drafted_trace
            m = g.metrics
            assert m["hedge_len"] == hedge_len
            assert m["hedge_drafted"] <= min(hedge_len, gamma) * m["ahead_hedged"], m
            sent += m["ahead_hedged"]
            if delay_s is None:  # a round premised on fewer drafts kept than its parent sent is a branch
                pipe = remote.made_pipe
                for i, (p, n) in enumerate(zip(pipe.premises, pipe.lengths)):
                    if p is not None and p[1] < pipe.lengths[i - p[0]]:
                        assert n <= hedge_len, (i, p, n, hedge_len)
                        if i < len(pipe.answers) and pipe.answers[i] is not VOID and n < gamma:
                            verified_short += 1
    assert sent > 0
    if delay_s is None:
        assert verified_short > 0


def test_shorter_branches_across_the_link(pair, related_pair):
    """The same across a loopback link (protocol unchanged: a branch is a round of any length up to the most
    drafts the server takes), at 0 and 6 ms RTT."""
    from specnb import Link, connect
    from specnb.link import local_server

    edge, cloud = pair
    hedged = 0
    with local_server(str(related_pair / "cloud")) as address:
        for link in (Link(), Link(rtt_ms=6)):
            remote = connect(address, link=link)
            for prompt in PROMPTS:
                want = autoregressive(cloud, prompt, N).tokens
                for gamma, hedge, hedge_len in ((4, 4, 1), (6, 3, 2)):
                    g = speculative(edge, remote, prompt, N, gamma=gamma, ahead=True, hedge=hedge, hedge_len=hedge_len)
                    assert g.tokens == want, (link, prompt, gamma, hedge, hedge_len)
                    m = g.metrics
                    assert m["hedge_len"] == hedge_len and m["hedge_drafted"] <= hedge_len * m["ahead_hedged"]
                    assert 0 <= m["hedge_hits"] <= m["ahead_hedged"]
                    hedged += m["ahead_hedged"]
            remote.close()
    assert hedged > 0


def test_hedge_refusals(pair):
    edge, cloud = pair
    with pytest.raises(ValueError, match="hedge does not combine with verify='sample'.*use hedge=0"):
        speculative(edge, cloud, PROMPTS[0], 4, ahead=True, hedge=2, verify="sample", temperature=1.0)
    with pytest.raises(ValueError, match="pass ahead=True"):
        speculative(edge, cloud, PROMPTS[0], 4, hedge=2)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="hedge must be a number of branches"):
            speculative(edge, cloud, PROMPTS[0], 4, ahead=True, hedge=bad)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="hedge_len must be a number of drafts per branch >= 1"):
            speculative(edge, cloud, PROMPTS[0], 4, ahead=True, hedge=2, hedge_len=bad)
    with pytest.raises(ValueError, match="pass hedge=K.*or leave hedge_len=None"):
        speculative(edge, cloud, PROMPTS[0], 4, ahead=True, hedge_len=2)
    with pytest.raises(ValueError, match="reports its runner-up tokens.*PromptLookup"):
        speculative(PromptLookup(), cloud, PROMPTS[0], 4, ahead=True, hedge=1)
    g = speculative(edge, cloud, PROMPTS[0], 8, ahead=True)
    assert g.metrics["hedge"] == 0 and g.metrics["ahead_hedged"] == g.metrics["hedge_hits"] == 0


def test_chain_admits_a_round_ahead_only_after_a_whole_acceptance_of_its_guess():
    chain = Chain()
    assert chain.admits(5, None) and not chain.admits(5, (1, 3))
    chain.record(Verdict(3, 7))  # round 0: 3 drafts accepted whole, bonus 7
    assert chain.admits(7, (1, 3)) and not chain.admits(6, (1, 3)) and not chain.admits(7, (1, 2))
    chain.record(Verdict(2, 7))  # round 1: a rejection; round 2, drafted after round 1 accepted whole, fails
    assert not chain.admits(7, (1, 3))
    chain.record(VOID)  # round 2 answered VOID: the tip stays round 1
    assert not chain.admits(VOID.token, (1, 2)) and chain.admits(7, (2, 2))  # round 3, premised on round 1


def test_chain_scores_exactly_the_branch_whose_premise_the_verdict_is():
    """Round 0 in flight with three children: the spine (whole, guess 9) and two branches (rejected at 0 with
    token 4, at 1 with token 5); then a child of the spine. Each verdict of round 0 admits one child at most."""
    children = [(9, (1, 3)), (4, (2, 0)), (5, (3, 1)), (8, (3, 2))]  # (last, premise); the last: the spine's child
    for verdict, scored in ((Verdict(3, 9), [0, 3]), (Verdict(0, 4), [1]), (Verdict(1, 5), [2]),
                            (Verdict(1, 4), []), (Verdict(2, 6), [])):
        chain = Chain()
        chain.record(verdict)
        got = []
        for i, (last, premise) in enumerate(children):
            ok = chain.admits(last, premise)
            chain.record(Verdict(2, 8) if ok else VOID)  # a scored child answers "2 kept, then 8"
            got += [i] if ok else []
        assert got == scored, (verdict, got)
    chain = Chain()
    chain.record(Verdict(0, 4))
    assert chain.admits(4, (1, 0))
    chain.record(Verdict(1, 1))  # the branch scored: its siblings after it are not, whatever they assume
    assert not chain.admits(4, (2, 0)) and chain.admits(1, (1, 1)) and not chain.admits(1, (2, 1))


# ---------------------------------------------------------------- exactness of sampling, on a Markov chain

P = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.3, 0.5, 0.2]])  # cloud: p(next | last)
Q = torch.tensor([[0.2, 0.5, 0.3], [0.5, 0.3, 0.2], [0.3, 0.2, 0.5]])  # edge: q(next | last)


class MarkovEdge:
    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)

    def begin(self, prompt_ids, settings):
        pass

    def draft(self, seq, g):
        out, rows, t = [], [], seq[-1]
        for _ in range(g):
            t = int(torch.multinomial(Q[t], 1, generator=self.gen))
            out.append(t)
            rows.append(Q[out[-2] if len(out) > 1 else seq[-1]])
        return out, torch.stack(rows) if rows else None

    def rollback(self, length):
        pass

    def stats(self):
        return {}


class MarkovCloud:
    vocab, eos_ids = 3, frozenset()

    def __init__(self, seed, delay_s):
        self.gen, self.delay_s = torch.Generator().manual_seed(seed + 10_000), delay_s

    def encode(self, prompt):
        return list(prompt)

    def decode(self, ids):
        return ""

    def begin(self, prompt_ids, settings):
        pass

    def verify(self, last, draft, q):
        time.sleep(self.delay_s)
        p = P[[last] + draft]
        n, token = accept_sample(draft, p, q if draft else p[:0], self.gen)
        return Verdict(n, token)

    def close(self):
        pass

    def stats(self):
        return {}


class MarkovFactory:
    """The Markov cloud behind a :class:`Lazy` pipeline: every round that can be drafted ahead is."""

    def __init__(self, seed):
        self.cloud = MarkovCloud(seed, 0.0)
        self.encode, self.decode = self.cloud.encode, self.cloud.decode

    def verifier(self, settings):
        return Lazy(self.cloud)


def _three_token_chi2(trials, lazy):
    """Pearson's chi-square of the first three tokens' 27 outcomes against the cloud's chain, and the rounds
    kept ahead."""
    counts, kept = torch.zeros(27), 0
    for seed in range(trials):
        cloud = MarkovFactory(seed) if lazy else MarkovCloud(seed, 0.0)
        g = speculative(MarkovEdge(seed), cloud, [0], 4, gamma=1, verify="sample", temperature=1.0, ahead=True)
        a, b, c = g.tokens[:3]
        counts[9 * a + 3 * b + c] += 1
        kept += g.metrics["ahead_rounds"]
    return ((counts - trials * EXACT) ** 2 / (trials * EXACT)).sum().item(), kept


EXACT = torch.tensor([P[0, a] * P[a, b] * P[b, c] for a, b, c in itertools.product(range(3), repeat=3)])
CHI2_26_P001 = 54.05  # chi-square with 26 degrees of freedom: exceeded with probability 0.001


@pytest.mark.parametrize("lazy, trials", [(True, 6000), (False, 2000)])
def test_sampling_ahead_is_distributed_as_the_cloud(lazy, trials):
    """The first three of four tokens (27 outcomes) over many seeds: drafting ahead leaves them distributed
    as the cloud's chain. gamma 1; with the Lazy pipeline every round that can go ahead does (round 2
    whenever round 1 was accepted whole), with the threaded one as the timing falls. The test has teeth:
    feeding the ahead round's draft the q row of its guess (an off-by-one) gives chi-square 75 at 3000 trials."""
    chi2, kept = _three_token_chi2(trials, lazy)
    if lazy:
        assert kept > trials / 10  # rounds ahead kept: the path is exercised
    assert chi2 < CHI2_26_P001, chi2
    edge_chain = torch.tensor([Q[0, a] * Q[a, b] * Q[b, c] for a, b, c in itertools.product(range(3), repeat=3)])
    assert (trials * (edge_chain - EXACT) ** 2 / EXACT).sum() > 10 * CHI2_26_P001  # the edge's own chain fails


def test_threaded_verifier_answers_in_order():
    cloud = MarkovCloud(0, 0.0)
    v = ThreadedVerifier(cloud)
    v.begin([0], None)
    v.submit(0, [1], Q[[0]], None)
    v.submit(2, [0], Q[[2]], (1, 1))
    first = v.collect(True)
    second = v.collect(True)
    assert isinstance(first, Verdict) and first is not VOID
    if first.accepted == 1 and first.token == 2:
        assert second is not VOID
    else:
        assert second is VOID
    assert v.collect(False) is None
    v.close()


def test_the_registry_and_the_grid_know_the_lever(tmp_path):
    import yaml

    from specnb.grid.cells import expand
    from specnb.study.params import GridParams, ParamsError

    grid = GridParams(**yaml.safe_load("grid:\n  method: [speculative, cloud]\n  ahead: [0, 64]\n  gamma: [4]\n"))
    cells = {c.cell_id: c.parameters.get("ahead") for c in expand(grid, tmp_path)}
    assert cells == {"speculative-ahead0-g4": 0, "speculative-ahead64-g4": 64, "cloud": 0}  # the baseline ignores it
    bad = GridParams(**yaml.safe_load("grid:\n  method: [speculative]\n  ahead: [1]\n  schedule: [adaptive]\n"))
    with pytest.raises(ParamsError, match="ahead: drafting ahead does not combine"):
        expand(bad, tmp_path)
