"""The cloud leads (specnb.decode.lead): it decodes its own greedy tokens while it waits for the next round,
and a verdict commits those the draft did not reach. Greedy output stays the cloud's: in process on the
verifier itself, and across a loopback link with plain rounds, rounds drafted ahead and branches."""

from __future__ import annotations

import itertools
import random

import pytest

from specnb import Link, ModelSpec, autoregressive, connect, load, speculative
from specnb.decode.ahead import VOID, Chain
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


def begun(cloud, prompt, room):
    """``prompt``'s ids, settings with ``room`` tokens past it, and the cloud's verifier with the prompt taken."""
    ids = cloud.tokenizer(prompt)["input_ids"]
    settings = RoundSettings(max_len=len(ids) + room)
    verifier = CloudVerifier(cloud, settings)
    verifier.begin(ids, settings)
    return ids, settings, verifier


def test_a_verdict_commits_exactly_the_clouds_greedy_tokens(pair):
    """Rounds of every kind against a lead of every length (none, shorter than the draft, as long, longer):
    drafts right for a while then wrong, or all right; the committed sequence is the cloud's greedy decoding,
    and the verifier's cache holds all of it but its last token after every round."""
    _, cloud = pair
    rng = random.Random(0)
    extra_seen = called_past = 0
    for prompt in PROMPTS:
        ids, settings, verifier = begun(cloud, prompt, 100)
        want = ids + autoregressive(cloud, prompt, 60).tokens
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
    ids, _, verifier = begun(cloud, "import os", 40)
    _, _, plain = begun(cloud, "import os", 40)
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
    ids, settings, verifier = begun(cloud, "x", 3)
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


def test_chain_judges_a_round_on_a_verdict_with_extra_tokens_against_them_first():
    chain = Chain()
    chain.record(Verdict(2, 7, (8, 9)))  # round 0: two drafts kept, the cloud's 7, then its own 8 and 9
    assert chain.plan(7, [8, 9, 10], (1, 2)) == (None, 9, [10], 2)  # begins with them: verified from after them
    assert chain.plan(7, [8, 9], (1, 2)) == (None, 9, [], 2)  # exactly them: the cloud's token after them
    assert chain.plan(7, [8, 5, 10], (1, 2))[0] == Verdict(1, 9, ())  # leaves them at 1: decided by them
    assert chain.plan(7, [4], (1, 2))[0] == Verdict(0, 8, (9,))
    assert chain.plan(7, [8], (1, 2))[0] == Verdict(1, 9, ())  # ends inside them
    assert chain.plan(7, [], (1, 2))[0] == Verdict(0, 8, (9,))
    assert chain.plan(6, [8, 9, 10], (1, 2))[0] is VOID and chain.plan(7, [8, 9, 10], (1, 3))[0] is VOID
    assert chain.plan(9, [1], None) == (None, 9, [1], 0)


@pytest.fixture
def slow_edge(monkeypatch):
    """The edge 3 ms slower per drafting call, so that the cloud's worker has time to lead."""
    import time

    from specnb.decode.drafting import EdgeDrafter

    draft = EdgeDrafter.draft

    def slow(self, seq, g):
        time.sleep(0.003)
        return draft(self, seq, g)

    monkeypatch.setattr(EdgeDrafter, "draft", slow)


@pytest.mark.parametrize("hedge", [0, 3])
def test_in_process_with_the_cloud_leading_the_output_is_the_clouds(pair, slow_edge, hedge):
    edge, cloud = pair
    steps = sent = 0
    for prompt in PROMPTS:
        want = autoregressive(cloud, prompt, N).tokens
        g = speculative(edge, cloud, prompt, N, gamma=4, ahead=True, hedge=hedge, lead=True)
        assert g.tokens == want, prompt
        steps, sent = steps + g.metrics["lead_steps"], sent + g.metrics["lead_sent"]
    assert steps > 0 and sent > 0  # the worker did lead, and its tokens were used


class LazyLead:
    """A pipeline whose verdicts come only when the edge has nothing left to do, the cloud decoding ``steps`` tokens
    of its own before each round it takes (as a server that leads while rounds are on their way). Deterministic:
    every round that can go ahead does, and every verdict carries what the lead left over."""

    def __init__(self, cloud, settings, steps):
        self.inner = CloudVerifier(cloud, settings)
        self.vocab, self.eos_ids, self.steps = self.inner.vocab, self.inner.eos_ids, steps
        self.pending, self.decided, self.scored = [], 0, 0

    def begin(self, prompt_ids, settings):
        from specnb.decode import ahead

        self.inner.begin(prompt_ids, settings)
        self.chain, self.lead = ahead.Chain(), Lead(self.inner, cap=32, max_len=settings.max_len)  # (a test swaps Chain)

    def submit(self, last, draft, q, premise):
        self.pending.append((last, draft, premise))

    def collect(self, block):
        if not block:
            return None
        last, draft, premise = self.pending.pop(0)
        for _ in range(self.steps):
            self.lead.step()
        verdict, last, rest, skip = self.chain.plan(last, draft, premise)
        if verdict is None:
            v = self.lead.verify(last, rest)
            verdict = Verdict(skip + v.accepted, v.token, v.extra)
            self.scored += 1
        elif verdict is not VOID:
            self.decided += 1
        self.chain.record(verdict)
        return verdict

    def stop(self):
        pass

    def close(self):
        self.inner.close()

    def stats(self):
        return self.inner.stats()


def leading(cloud, steps):
    class Cloud:
        encode, decode = staticmethod(cloud.encode), staticmethod(cloud.decode)
        tokenizer, vocab_size = cloud.tokenizer, cloud.vocab_size

        def verifier(self, settings):
            self.made = LazyLead(cloud, settings, steps)
            return self.made
    return Cloud()


def test_every_round_ahead_with_the_cloud_leading_keeps_the_output(pair):
    """With every round ahead in flight and the lead's tokens (0 to 6 a round) in every verdict, rounds on them
    are verified from after them or decided by them; the output is the cloud's greedy output."""
    edge, cloud = pair
    decided = scored = 0
    for steps in (0, 1, 3, 6):
        for prompt in PROMPTS:
            want = autoregressive(cloud, prompt, N).tokens
            for gamma, hedge in ((3, 0), (4, 3)):
                c = leading(cloud, steps)
                g = speculative(edge, c, prompt, N, gamma=gamma, ahead=True, hedge=hedge, lead=True)
                assert g.tokens == want, (prompt, steps, gamma, hedge)
                decided, scored = decided + c.made.decided, scored + c.made.scored
    assert scored and decided  # both kinds of round came


def _loosened(monkeypatch, which):
    from specnb.decode import ahead

    if which == "edge":  # the edge keeps a round on a verdict with extra tokens only if its draft begins with them
        holds = ahead._Round.holds
        monkeypatch.setattr(ahead._Round, "holds", lambda self, v: holds(self, v) and tuple(self.draft[:len(v.extra)]) == v.extra)
    else:  # the verifier does not judge such a round against the extra tokens (verifies its whole draft)
        plan = ahead.Chain.plan

        def ignoring(self, last, draft, premise):
            verdict, _, _, _ = plan(self, last, draft, premise)
            return (verdict, last, draft, 0) if verdict is VOID else (None, last, draft, 0)

        monkeypatch.setattr(ahead.Chain, "plan", ignoring)


@pytest.mark.parametrize("which", ["edge", "verifier"])
def test_either_side_that_ignores_the_extra_tokens_in_a_premise_is_caught(pair, monkeypatch, which):
    """Each side's rule changed on its own: the edge's (which rounds hold) or the verifier's (judging against
    the extra tokens first); the run then fails (an assertion, or output not the cloud's)."""
    edge, cloud = pair
    _loosened(monkeypatch, which)
    failed = 0
    for steps, prompt, (gamma, hedge) in itertools.product((1, 3), PROMPTS, ((3, 0), (4, 3))):
        want = autoregressive(cloud, prompt, N).tokens
        try:
            failed += speculative(edge, leading(cloud, steps), prompt, N, gamma=gamma, ahead=True, hedge=hedge,
                                  lead=True).tokens != want
        except (RuntimeError, AssertionError):
            failed += 1
    assert failed


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
        speculative(edge, cloud, "x", 4, gamma=2, lead=True)  # in this process without ahead: nobody waits
    with pytest.raises(ValueError, match="True or False"):
        speculative(edge, cloud, "x", 4, gamma=2, lead=1)
    with local_server(str(related_pair / "cloud")) as address:
        remote = connect(address)
        for verify, temperature in (("sample", 0.7), ("rank", 0.0)):
            with pytest.raises(ValueError, match="verify='greedy' only"):
                speculative(edge, remote, "x", 4, gamma=2, lead=True, verify=verify, temperature=temperature)
        remote.close()
