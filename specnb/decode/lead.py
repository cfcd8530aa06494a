"""The cloud leads: while it waits for the edge's next round, it decodes its own greedy tokens.

Across a link the cloud idles after each verdict: for the verdict's way down, the edge's next draft and that
round's way up (at 50 ms RTT, most of a round). With ``lead`` it spends that time decoding on its own, one
greedy token per step, from the sequence the verdict committed. When the next round arrives, its draft is
first compared with those tokens, which are the cloud's greedy continuation of exactly the context the
round starts from:

* the draft leaves them at position m (or ends before them): the verdict is ``m`` drafts accepted, the
  cloud's token at m, and the cloud's tokens after it as :attr:`~specnb.decode.roles.Verdict.extra`,
  committed with the verdict; no model call;
* the draft agrees with all k of them: the rest of the draft is verified as in any round, from the k-th
  token on, and the verdict counts the k.

Every committed token is thus a draft the greedy rule accepts or the cloud's greedy token on the committed
context: the output is the cloud's greedy output. A round that was rejected early now brings as many tokens
as the cloud decoded while it waited. Greedy only (a sampled token of the cloud's would have to be drawn
against the edge's q, which stays on the edge's side of a link).

A round drafted ahead (:mod:`specnb.decode.ahead`) premised on a verdict that carried extra tokens e is judged
against them first (:meth:`specnb.decode.ahead.Chain.plan`): a draft that begins with all of e is verified from
after them; one that leaves them at p is decided by them (p kept, e[p] the cloud's token, the rest of e extra:
the greedy verdict on that draft, and nothing new), so the edge, which holds e too, settles it at once and goes
on with the rounds premised on it.

Across a link the server leads while its session waits for the client's next message
(:mod:`specnb.link.server`); in this process, the worker thread of :class:`specnb.decode.ahead.ThreadedVerifier`
leads while it waits for the next round (drafting ahead only: the plain loop waits for each verdict).
"""

from __future__ import annotations

import queue
from typing import Any, Callable

from .roles import Verdict


class Lead:
    """One session's lead: ``verifier`` (greedy; holding ``seq[:-1]`` in its cache between rounds, with
    ``verify`` and ``keep`` as :class:`specnb.decode.verifying.CloudVerifier`'s) decodes up to ``cap`` tokens of
    its own between two rounds, one :meth:`step` at a time, never past ``max_len`` tokens in its cache (0: no
    limit). :meth:`verify` replaces the verifier's own for the session's rounds."""

    def __init__(self, verifier: Any, cap: int, max_len: int = 0):
        if cap < 1:
            raise ValueError(f"a lead of {cap} tokens decodes nothing: give it cap >= 1")
        self.verifier, self.cap, self.max_len = verifier, cap, max_len
        self.tokens: list[int] = []  # the cloud's greedy tokens after the committed sequence
        self.last: int | None = None  # the committed sequence's last token (its verdict's; not in the cache)
        self.steps = 0  # model calls made while waiting
        self.sent = 0  # of their tokens, those committed by a verdict (accepted drafts or extra tokens)

    def begin(self, last: int) -> None:
        """The committed sequence ends with ``last`` (after the prompt, after each verdict): nothing decoded yet."""
        self.tokens, self.last = [], last

    def step(self) -> bool:
        """Decode one more token on the cloud's own; False when there is nothing to do (no sequence yet, the
        cap reached, an EOS decoded, the cache full)."""
        if self.last is None or len(self.tokens) >= self.cap or (self.tokens and self.tokens[-1] in self.verifier.eos_ids):
            return False
        if self.max_len and self.verifier.length + 2 >= self.max_len:
            return False
        feed = self.tokens[-1] if self.tokens else self.last
        self.tokens.append(self.verifier.verify(feed, [], None).token)
        self.steps += 1
        return True

    def verify(self, last: int, draft: list[int]) -> Verdict:
        """The verdict on ``[last] + draft``, a round on the committed sequence, using what was decoded."""
        ahead, k = self.tokens, len(self.tokens)
        if k and last != self.last:  # not a round on the committed sequence: forget the lead
            self.verifier.keep(self.verifier.length - k)
            ahead, k = [], 0
        m = common(draft, ahead)
        if m < k:  # the draft left the cloud's own tokens (or ended) before their end: no model call
            verdict = Verdict(m, ahead[m], tuple(ahead[m + 1:]))
        else:  # agreed with all of them: verify the rest from the last one on
            rest = self.verifier.verify(ahead[-1] if k else last, draft[k:], None)
            verdict = Verdict(k + rest.accepted, rest.token)
        self.sent += k  # either way, all of them are committed now
        self.begin(verdict.extra[-1] if verdict.extra else verdict.token)
        return verdict

    def stats(self) -> dict[str, int]:
        return {"lead_steps": self.steps, "lead_sent": self.sent}


def next_leading(inbox: queue.SimpleQueue, step: Callable[[], bool]) -> Any:
    """The next item of ``inbox``; until one is there, ``step()`` (one token of the cloud's own), as long as it
    has something to do (returns True). The wait of the link's server per session and of the in-process worker."""
    while True:
        try:
            return inbox.get_nowait()
        except queue.Empty:
            if not step():
                return inbox.get()


def common(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of ``a`` and ``b`` (also :mod:`specnb.decode.ahead`'s)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    return next(i for i in range(n) if a[i] != b[i])
