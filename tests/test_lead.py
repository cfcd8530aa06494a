"""The cloud leads (specnb.decode.lead): it decodes its own greedy tokens while it waits for the next round,
and a verdict commits those the draft did not reach. Greedy output stays the cloud's: in process on the
verifier itself, and across a loopback link with plain rounds, rounds drafted ahead and branches."""

from __future__ import annotations

import random

import pytest

from specnb import Link, ModelSpec, autoregressive, connect, load, speculative
from specnb.decode.ahead import Chain
from specnb.decode.lead import Lead
from specnb.decode.roles import RoundSettings, Verdict
from specnb.decode.verifying import CloudVerifier
from specnb.link import local_server

PROMPTS = ["def parse(text):", "class Stack:\n    def push(self, item):", "import os", "x"]
N = 24


@pytest.fixture(scope="module")
def pair(related_pair):
    cloud = load(ModelSpec(str(related_pair / "cloud"), device="cpu", threads=1))
    edge = load(ModelSpec(str(related_pair / "edge"), device="cpu", threads=1))
    return edge, cloud


def test_a_verdict_commits_exactly_the_clouds_greedy_tokens(pair):
    """Rounds of every kind against a lead of every length (none, shorter than the draft, as long, longer):
    drafts right for a while then wrong, or all right; the committed sequence is the cloud's greedy decoding,
    and the verifier's cache holds all of it but its last token after every round."""
    _, cloud = pair
    rng = random.Random(0)
    extra_seen = called_past = 0
    for prompt in PROMPTS:
        ids = cloud.tokenizer(prompt)["input_ids"]
        want = ids + autoregressive(cloud, prompt, 60).tokens
        settings = RoundSettings(max_len=len(ids) + 100)
        verifier = CloudVerifier(cloud, settings)
        verifier.begin(ids, settings)
        lead = Lead(verifier, cap=8)
        seq = list(ids)
        while len(seq) < len(want) - 20:
            for _ in range(rng.choice([0, 1, 3, 6, 9])):
                lead.step()
            g, right = rng.randint(0, 6), rng.randint(0, 7)
            truth = want[len(seq):len(seq) + g]
            draft = truth[:right] + [(t + 1) % cloud.vocab_size for t in truth[right:]]
            calls = verifier.calls
            verdict = lead.verify(seq[-1], draft)
            seq += verdict.emitted(draft, frozenset())
            assert seq == want[:len(seq)], (prompt, draft, verdict)
            assert verifier.length == len(seq) - 1
            extra_seen += bool(verdict.extra)
            called_past += verifier.calls > calls and verdict.accepted > 0
        assert lead.sent <= lead.steps
    assert extra_seen and called_past  # both kinds of round came


def test_a_round_not_on_the_committed_sequence_makes_it_forget(pair):
    """A client may send any ``last``: the lead is then dropped and the round verified as it is."""
    _, cloud = pair
    ids = cloud.tokenizer("import os")["input_ids"]
    settings = RoundSettings(max_len=len(ids) + 40)
    verifier = CloudVerifier(cloud, settings)
    verifier.begin(ids, settings)
    plain = CloudVerifier(cloud, settings)
    plain.begin(ids, settings)
    lead = Lead(verifier, cap=4)
    first = lead.verify(ids[-1], [])
    assert first == plain.verify(ids[-1], [], None)
    for _ in range(4):
        lead.step()
    assert len(lead.tokens) == 4 and not lead.step()  # the cap
    other = (first.token + 1) % cloud.vocab_size
    assert lead.verify(other, [3, 4]) == plain.verify(other, [3, 4], None)
    assert verifier.length == plain.length


def test_the_lead_stops_at_eos_and_at_the_cache_size(pair):
    _, cloud = pair
    ids = cloud.tokenizer("x")["input_ids"]
    settings = RoundSettings(max_len=len(ids) + 3)
    verifier = CloudVerifier(cloud, settings)
    verifier.begin(ids, settings)
    lead = Lead(verifier, cap=32, max_len=settings.max_len)
    lead.verify(ids[-1], [])
    while lead.step():
        pass
    assert verifier.length + 2 >= settings.max_len and lead.steps <= 2
    verifier.eos_ids = frozenset({lead.tokens[-1]}) if lead.tokens else verifier.eos_ids
    assert not lead.step()
    with pytest.raises(ValueError, match="cap >= 1"):
        Lead(verifier, cap=0)


@pytest.mark.parametrize("alpha, gamma, c, v, r, step", [(0.86, 8, 1.4, 19.0, 52.0, 9.8), (0.6, 4, 1.0, 18.0, 1.0, 9.8),
                                                      (0.9, 12, 1.3, 20.0, 5.0, 30.0), (0.5, 3, 1.0, 10.0, 300.0, 2.0)])
def test_the_model_of_the_lead_is_the_mean_of_its_rounds(alpha, gamma, c, v, r, step):
    """lead_rate against a simulation of the rounds it describes: the cloud decodes while the link and the
    drafts take their time, then commits max(k, n + 1) tokens, verifying only when the draft agreed with all k."""
    import math

    from specnb.decode.schedule import lead_rate, speedup_bound

    rng = random.Random(1)
    idle = gamma * c + r
    k = min(32, math.ceil(idle / step))
    tokens = time = 0.0
    for _ in range(200_000):
        n = 0
        while n < gamma and rng.random() < alpha:
            n += 1
        tokens += max(k, n + 1)
        time += max(idle, k * step) + (v if n >= k else 0.0)
    assert lead_rate(alpha, gamma, c, v, r, step) == pytest.approx(tokens / time, rel=0.01)
    assert speedup_bound(alpha, gamma, c, v, r, lead=step) == lead_rate(alpha, gamma, c, v, r, step)
    assert lead_rate(alpha, gamma, c, v, r, step) > speedup_bound(alpha, gamma, c, v, r) or k == 1
    with pytest.raises(ValueError, match="plain rounds only"):
        speedup_bound(alpha, gamma, c, v, r, ahead=4, lead=step)


def test_chain_admits_a_round_on_a_verdict_with_extra_tokens_only_if_its_draft_begins_with_them():
    chain = Chain()
    chain.record(Verdict(2, 7, (8, 9)))  # round 0: two drafts kept, the cloud's 7, then its own 8 and 9
    assert chain.admits(7, (1, 2), [8, 9, 10]) and chain.skip((1, 2)) == 2
    assert chain.admits(7, (1, 2), [8, 9])  # exactly the extra tokens: verified from after them, no draft
    assert not chain.admits(7, (1, 2), [8])  # shorter than them
    assert not chain.admits(7, (1, 2), [8, 5, 10])  # left them
    assert not chain.admits(7, (1, 2), [])
    assert not chain.admits(6, (1, 2), [8, 9, 10]) and not chain.admits(7, (1, 3), [8, 9, 10])
    assert chain.admits(9, None, [1]) and chain.skip(None) == 0


class _Replies:
    """A stream stand-in for the client's bookkeeping: the replies are given, nothing is sent."""

    last_up = 0

    def __init__(self, replies):
        self.replies = list(replies)

    def send(self, msg):
        return 0.0

    def expect(self, what, setup=False, extra_s=0.0):
        pass

    def poll(self, block):
        return self.replies.pop(0), 0, 0.0, 0.0


def test_the_client_counts_the_servers_cache_after_extra_tokens():
    """A round on a verdict that carried extra tokens starts where its premise puts it, and its accepted count
    includes the drafts those tokens had committed: the client's count of the server's cache must not add them
    twice (it did once; a session then ran past its max_len near the end of a long generation)."""
    from specnb.link.client import RemoteVerifier
    from specnb.link.limits import Limits
    from specnb.link.wire import Message

    class Cloud:
        limits, vocab_size, eos_ids, address = Limits(), 300, frozenset(), "test"

    v = RemoteVerifier(Cloud(), RoundSettings(lead=True, max_len=100))
    v.stream, v._prompt, v._length, v._starts = _Replies([
        Message("v", ints=[2, 7, 0, 8]),  # two drafts kept, the cloud's 7, then its own 8
        Message("v", ints=[3, 9, 0]),  # the round on it: 8 (already committed), two more drafts kept, then 9
    ]), None, 10, [0]
    v.submit(5, [1, 2], None, None)  # starts at 10
    v.submit(7, [8, 3, 4], None, (1, 2))  # on "two kept, 7": starts at 10 + 1 + 2 = 13
    assert v.collect(True) == Verdict(2, 7, (8,)) and v._length == 10 + 1 + 2 + 1
    assert v.collect(True) == Verdict(3, 9) and v._length == 13 + 1 + 3  # = 14 + 1 + 2: the server's count


def test_greedy_across_the_link_with_the_cloud_leading_equals_local(pair, related_pair):
    """Plain rounds, rounds ahead and branches, at 0, 6 and 30 ms RTT: the output is the cloud's greedy
    decoding, and over the whole test the cloud's own tokens did come (the server had time to decode)."""
    edge, cloud = pair
    came = {}
    with local_server(str(related_pair / "cloud")) as address:
        for link in (Link(), Link(rtt_ms=6), Link(rtt_ms=30)):
            remote = connect(address, link=link)
            for prompt in PROMPTS:
                want = autoregressive(cloud, prompt, N).tokens
                for gamma, ahead, hedge in ((1, False, 0), (4, False, 0), (3, True, 0), (4, True, 3)):
                    g = speculative(edge, remote, prompt, N, gamma=gamma, ahead=ahead, hedge=hedge, lead=True)
                    assert g.tokens == want, (link, prompt, gamma, ahead, hedge)
                    assert g.metrics["lead"] is True
                    key = (gamma, ahead, hedge)
                    came[key] = came.get(key, 0) + g.metrics["lead_tokens"]
            remote.close()
        remote = connect(address, link=Link(rtt_ms=50))
        for prompt in PROMPTS[:2]:  # to the last token: the lengths both sides count stay the same after extra tokens
            want = autoregressive(cloud, prompt, 64).tokens
            assert speculative(edge, remote, prompt, 64, gamma=8, ahead=True, hedge=4, lead=True).tokens == want
        remote.close()
    assert all(came.values()), came


def test_an_edge_that_ignores_the_extra_tokens_in_a_premise_is_caught(pair, related_pair, monkeypatch):
    """The edge's side of the premise (``_Round.holds``) loosened to ignore a verdict's extra tokens: it keeps
    rounds the server answers VOID (or emits what the cloud did not commit), and the run fails."""
    from specnb.decode import ahead

    def loose(self, verdict):
        return verdict.accepted == self.accepted and bool(self.tokens) and verdict.token == self.tokens[0]

    edge, cloud = pair
    monkeypatch.setattr(ahead._Round, "holds", loose)
    failed = 0
    with local_server(str(related_pair / "cloud")) as address:
        remote = connect(address, link=Link(rtt_ms=30))
        for prompt in PROMPTS:
            want = autoregressive(cloud, prompt, N).tokens
            try:
                failed += speculative(edge, remote, prompt, N, gamma=4, ahead=True, hedge=3, lead=True).tokens != want
            except (RuntimeError, AssertionError):
                failed += 1
        remote.close()
    assert failed


def test_the_server_answers_extra_tokens_only_to_a_session_that_asked(pair, related_pair):
    edge, cloud = pair
    with local_server(str(related_pair / "cloud")) as address:
        remote = connect(address, link=Link(rtt_ms=30))
        g = speculative(edge, remote, "import os", N, gamma=2)
        assert g.metrics["lead_tokens"] == 0 and "lead" not in g.metrics
        remote.close()


def test_refusals(pair, related_pair):
    edge, cloud = pair
    with pytest.raises(ValueError, match="connect"):
        speculative(edge, cloud, "x", 4, gamma=2, lead=True)
    with pytest.raises(ValueError, match="True or False"):
        speculative(edge, cloud, "x", 4, gamma=2, lead=1)
    with local_server(str(related_pair / "cloud")) as address:
        remote = connect(address)
        for verify, temperature in (("sample", 0.7), ("rank", 0.0)):
            with pytest.raises(ValueError, match="verify='greedy' only"):
                speculative(edge, remote, "x", 4, gamma=2, lead=True, verify=verify, temperature=temperature)
        remote.close()
