"""The seams of a speculative round: any drafter or verifier drives the loop; the in-process verifier's parts."""

from __future__ import annotations

import pytest
import torch

from specnb import ModelSpec, autoregressive, load, speculative
from specnb.decode.verifying import accept_greedy
from specnb.decode.pair import as_drafter, as_verifier
from specnb.decode.roles import Drafter, RoundSettings, Verdict, Verifier
from specnb.decode.verifying import CloudVerifier

PROMPT = "def parse(text):"
N = 16


@pytest.fixture(scope="module")
def pair(related_pair):
    cloud = load(ModelSpec(str(related_pair / "cloud"), device="cpu"))
    edge = load(ModelSpec(str(related_pair / "edge"), device="cpu"))
    return edge, cloud


class Fixed:
    """A drafter that always proposes the same tokens (cut to g), and counts its rounds."""

    def __init__(self, tokens: list[int]):
        self.tokens, self.rounds = tokens, 0

    def begin(self, prompt_ids, settings):
        self.rounds = 0

    def draft(self, seq, g):
        self.rounds += 1
        return self.tokens[:g], None

    def rollback(self, length):
        pass

    def stats(self):
        return {"fixed_rounds": self.rounds}


def test_a_custom_drafter_drives_speculative(pair):
    _, cloud = pair
    want = autoregressive(cloud, PROMPT, N).tokens
    for tokens in ([], want[:3], [5, 6, 7, 8]):
        drafter = Fixed(tokens)
        assert isinstance(drafter, Drafter) and as_drafter(drafter, RoundSettings()) is drafter
        g = speculative(drafter, cloud, PROMPT, N, gamma=3)
        assert g.tokens == want
        assert g.metrics["fixed_rounds"] == g.metrics["rounds"]  # the drafter's stats reach the metrics
        assert g.metrics["edge_calls"] == 0
    assert speculative(Fixed(want[:3]), cloud, PROMPT, N, gamma=3).trace[0] == 3  # the right guess is kept


class Recording:
    """A verifier wrapping the in-process one, as a remote cloud would: records calls and closing."""

    def __init__(self, cloud, settings):
        self.inner = CloudVerifier(cloud, settings)
        self.vocab, self.eos_ids = self.inner.vocab, self.inner.eos_ids
        self.closed = False
        self.rounds = []

    def begin(self, prompt_ids, settings):
        self.inner.begin(prompt_ids, settings)

    def verify(self, last, draft, q):
        verdict = self.inner.verify(last, draft, q)
        self.rounds.append((len(draft), verdict.accepted))
        return verdict

    def close(self):
        self.closed = True
        self.inner.close()

    def stats(self):
        return self.inner.stats() | {"link_s": 0.0}


def test_a_custom_verifier_is_driven_and_closed(pair):
    edge, cloud = pair
    box = {}

    class Cloud:  # an object with a verifier factory (and the tokenizer), as a remote cloud has
        encode, decode = staticmethod(cloud.encode), staticmethod(cloud.decode)

        def verifier(self, settings):
            box["v"] = Recording(cloud, settings)
            return box["v"]

    g = speculative(edge, Cloud(), PROMPT, N, gamma=3)
    plain = speculative(edge, cloud, PROMPT, N, gamma=3)
    assert g.tokens == plain.tokens and g.trace == plain.trace
    assert box["v"].closed and [n for _, n in box["v"].rounds] == g.trace
    assert g.metrics["link_s"] == 0.0 and g.metrics["cloud_calls"] == plain.metrics["cloud_calls"]

    class Broken(Fixed):
        def draft(self, seq, g):
            raise RuntimeError("drafter failed")

    with pytest.raises(RuntimeError, match="drafter failed"):
        speculative(Broken([]), Cloud(), PROMPT, N)
    assert box["v"].closed  # closed on error too


def test_roles_refuse_other_objects(pair):
    with pytest.raises(TypeError, match="cannot draft with str"):
        as_drafter("edge", RoundSettings())
    with pytest.raises(TypeError, match="cannot verify with int"):
        as_verifier(3, RoundSettings())
    edge, cloud = pair
    assert isinstance(as_verifier(cloud, RoundSettings()), Verifier)


def test_score_and_keep(pair):
    """score() extends the cache by the call, keep() crops it; logits equal a full forward of the text."""
    _, cloud = pair
    ids = cloud.encode(PROMPT)
    settings = RoundSettings(max_len=len(ids) + 16)
    v = as_verifier(cloud, settings)
    v.begin(ids, settings)
    assert v.length == len(ids) - 1
    draft = [7, 8, 9]
    logits = v.score(ids[-1], draft)
    assert logits.shape == (len(draft) + 1, v.vocab)
    with torch.inference_mode():
        full = cloud.model(torch.tensor([ids + draft])).logits[0, -len(draft) - 1:, : v.vocab]
    torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-4)
    assert v.steps.cache.get_seq_length() == len(ids) + len(draft)
    v.keep(len(ids) + 1)  # the prompt and the first draft survive
    assert v.steps.cache.get_seq_length() == v.length == len(ids) + 1
    n, token = accept_greedy([8, 9], logits[1:].argmax(-1).tolist())
    verdict = v.verify(8, [9], None)  # verify = score + rule + keep, from the kept state
    assert verdict == Verdict(accepted=int(logits[2].argmax() == 9), token=verdict.token)
    assert v.length == len(ids) + 2 + verdict.accepted
    v.close()


def test_padded_score_keeps_only_real_positions(pair):
    _, cloud = pair
    ids = cloud.encode(PROMPT)
    settings = RoundSettings(max_len=len(ids) + 16, optimized=True, compile=False, widths=(5,))
    v = as_verifier(cloud, settings)
    v.begin(ids, settings)
    logits = v.score(ids[-1], [7])  # padded to width 5
    assert logits.shape == (2, v.vocab) and v.length == len(ids) - 1 + 5
    v.keep(len(ids))
    assert v.length == len(ids)
    v.close()


def test_autoregressive_delegates_to_a_remote_model():
    calls = []

    class Remote:
        def autoregressive(self, prompt, max_new_tokens, **kwargs):
            calls.append((prompt, max_new_tokens, kwargs))
            return "streamed"

    assert autoregressive(Remote(), "hi", 3, temperature=0.5, seed=1) == "streamed"
    assert calls == [("hi", 3, {"temperature": 0.5, "top_k": None, "top_p": None, "seed": 1,
                                "optimized": False, "compile": None})]
