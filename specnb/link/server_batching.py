"""Verification batched across sessions: one forward pass of the cloud for the rounds of many edges.

Why: a speculative round costs the cloud one forward of ``1 + g`` tokens, which on any accelerator
(and, less so, on a CPU) is memory-bound: the weights are read once per call whatever the batch. N
edges queued behind one lock pay N weight reads per round; batched, they pay one. That is the
capacity case of edge-cloud speculation (``docs/capacity.md``).

How a batch runs (:func:`score_rows`), for sessions i with ``L_i`` tokens cached and ``n_i`` new tokens
(``[last] + draft``):

* **gather**: each layer's keys and values are stacked into one [B, H, Lmax, D] tensor, each row
  *left*-padded with zeros to ``Lmax = max L_i``; the new tokens are *right*-padded to ``N = max n_i``;
* one forward with a 2D attention mask (0 on every pad, cache or input) and position ids
  ``L_i + j`` for input j of row i: the causal mask compares column indices, which padding shifts
  alike for a row's cache and input, and rotary embeddings see each session's true positions;
* **scatter**: row i's new keys and values (columns ``Lmax .. Lmax + n_i``) are appended to session
  i's own cache, so it holds exactly what a solo forward would have added; the batch cache is dropped.

Each session then applies its own acceptance rule to its own rows, with its own generator, and cuts
its own cache back (:meth:`specnb.decode.verifying.CloudVerifier.settle`). Masked pads contribute
exact zeros, but a longer reduction or a batched matrix product may sum in another order: logits
agree with the solo forward to float rounding, not bit for bit, so greedy tokens agree except at a
near-tie of the top two logits (the same caveat as across devices), and sampling draws agree except
when a uniform falls within rounding of an acceptance threshold.

The cost of gathering is a copy of every batched session's cache per round (as SpecEdge copies
rows into batch slots); it is small beside the weights for short contexts, and not yet measured
against them.

Cloud-only streams on the server join the same batches: each token is a round with an empty draft.

Policies (:class:`Batcher`): ``none`` (one session at a time under the model lock, as before),
``dynamic`` (take what is queued, up to ``max_batch``, without waiting), ``wait`` (after the first
request, wait up to ``wait_ms`` for more, up to ``max_batch``).
"""

from __future__ import annotations

import collections
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

POLICIES = ("none", "dynamic", "wait")


def batchable(verifier: Any) -> bool:
    """A verifier whose rounds can join a batch: a plain dynamic cache of full attention layers, and no
    padding to compiled widths (an optimized session runs its static, compiled steps alone)."""
    steps = getattr(verifier, "steps", None)
    if steps is None or getattr(verifier.settings, "optimized", False):
        return False
    cache = steps.cache
    return isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not layer.is_initialized or layer.keys is None or layer.keys.numel() == 0:
        return None
    return layer.keys, layer.values


def gather(caches: list[DynamicCache], lengths: list[int], config) -> DynamicCache:
    """One batch cache of the sessions' caches, each row left-padded with zeros to the longest.

    Every cache holds ``lengths[i]`` positions in each layer (0: empty, never initialized). The pads
    are masked out by :func:`attention_mask`.
    """
    longest = max(lengths)
    batch = DynamicCache(config=config)
    batch.layers = [DynamicLayer() for _ in caches[0].layers]
    if longest == 0:
        return batch
    for li, out in enumerate(batch.layers):
        pairs = [_kv(c.layers[li]) for c in caches]
        k0, v0 = next(p for p in pairs if p is not None)
        keys, values = [], []
        for pair, length in zip(pairs, lengths):
            pad = longest - length
            kz = k0.new_zeros(1, k0.shape[1], pad, k0.shape[3])
            vz = v0.new_zeros(1, v0.shape[1], pad, v0.shape[3])
            keys.append(kz if pair is None else torch.cat([kz, pair[0]], dim=-2))
            values.append(vz if pair is None else torch.cat([vz, pair[1]], dim=-2))
        out.update(torch.cat(keys), torch.cat(values))
    return batch


def attention_mask(lengths: list[int], widths: list[int], device) -> torch.Tensor:
    """[B, Lmax + N]: 1 on each row's cached positions (right-aligned) and its inputs (left-aligned)."""
    longest, n = max(lengths), max(widths)
    mask = torch.zeros(len(lengths), longest + n, dtype=torch.long, device=device)
    for i, (length, width) in enumerate(zip(lengths, widths)):
        mask[i, longest - length:longest + width] = 1
    return mask


def inputs(rows: list[list[int]], lengths: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids [B, N] right-padded with 0, and position ids ``L_i + j`` (pads continue the count)."""
    n = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (n - len(r)) for r in rows], dtype=torch.long, device=device)
    pos = torch.tensor([[length + j for j in range(n)] for length in lengths], dtype=torch.long, device=device)
    return ids, pos


def scatter(batch: DynamicCache, caches: list[DynamicCache], lengths: list[int], widths: list[int]) -> None:
    """Append row i's new keys and values (the ``widths[i]`` columns after the gathered ones) to cache i."""
    longest = max(lengths)
    for li, layer in enumerate(batch.layers):
        for i, (cache, width) in enumerate(zip(caches, widths)):
            k = layer.keys[i:i + 1, :, longest:longest + width]
            v = layer.values[i:i + 1, :, longest:longest + width]
            cache.layers[li].update(k.clone(), v.clone())


def score_rows(model: Any, caches: list[DynamicCache], lengths: list[int], rows: list[list[int]],
               vocabs: list[int]) -> list[torch.Tensor]:
    """Logits [len(rows[i]), vocabs[i]] of each session's ``rows[i]`` on top of its cache, in one forward.

    ``model``: a loaded model (``.model``, ``.device``). Each cache grows by ``len(rows[i])``, as a
    solo forward would grow it.
    """
    device = model.device
    widths = [len(r) for r in rows]
    batch = gather(caches, lengths, model.model.config)
    ids, pos = inputs(rows, lengths, device)
    mask = attention_mask(lengths, widths, device)
    with torch.inference_mode():
        out = model.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=batch, use_cache=True)
    scatter(batch, caches, lengths, widths)
    return [out.logits[i, :w, :v] for i, (w, v) in enumerate(zip(widths, vocabs))]


@dataclass
class Job:
    """One session's round waiting for a batch: its verifier, ``[last] + draft``, and what to do with
    its logits (the session's acceptance rule and cache cut), run by the batch thread."""

    verifier: Any
    row: list[int]
    settle: Callable[[torch.Tensor], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class Batcher:
    """Collects verify rounds from sessions and runs them as batches on one thread, under the model lock.

    ``submit`` blocks its session's thread until its round is settled and returns the settled value (or
    raises that session's own error). A session closed before its batch runs is left out with an error;
    one closed while its batch runs waits for the model lock, which the batch holds to the end.
    """

    def __init__(self, model: Any, lock: threading.Lock, policy: str = "dynamic", max_batch: int = 8,
                 wait_ms: float = 0.0):
        if policy not in POLICIES:
            raise ValueError(f"unknown batch policy {policy!r}: choose one of {', '.join(POLICIES)}")
        if max_batch < 1:
            raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
        if wait_ms < 0:
            raise ValueError(f"--batch-wait-ms must be >= 0, got {wait_ms}")
        self.model, self.lock, self.policy = model, lock, policy
        self.max_batch, self.wait_s = max_batch, wait_ms / 1000.0
        self.queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.sizes: collections.Counter[int] = collections.Counter()  # batch size -> batches run
        self._counting = threading.Lock()
        self.closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="specnb-batcher")
        self._thread.start()

    def submit(self, verifier: Any, row: list[int], settle: Callable[[torch.Tensor], Any]) -> Any:
        if self.closed:
            raise RuntimeError("the server is stopping")
        job = Job(verifier, row, settle)
        self.queue.put(job)
        while not job.done.wait(1.0):
            if not self._thread.is_alive():  # closed between the check above and the put
                raise RuntimeError("the server is stopping")
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        self.closed = True
        self.queue.put(None)

    def histogram(self) -> dict[str, int]:
        """Batches run by size, as JSON keys: ``{"3": 12}`` = twelve batches of three rounds."""
        with self._counting:
            return {str(k): v for k, v in sorted(self.sizes.items())}

    def _take(self) -> list[Job] | None:
        first = self.queue.get()
        if first is None:
            return None
        jobs = [first]
        wait = self.wait_s if self.policy == "wait" else 0.0
        while len(jobs) < self.max_batch:
            try:
                job = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.queue.put(None)  # stop after this batch
                break
            jobs.append(job)
        return jobs

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            try:
                with self.lock:
                    run_batch(self.model, jobs)
                with self._counting:
                    self.sizes[len(jobs)] += 1
            except BaseException as err:  # noqa: BLE001 - never leave a session waiting on a dead thread
                for job in jobs:
                    job.error = job.error or err
            finally:
                for job in jobs:
                    job.done.set()
        self._fail_queued()

    def _fail_queued(self) -> None:
        """After close: rounds still queued get an error instead of waiting forever."""
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.error = RuntimeError("the server is stopping")
                job.done.set()


def run_batch(model: Any, jobs: list[Job]) -> None:
    """Score the live jobs in one forward and settle each; every failure stays its own job's error."""
    live = []
    for job in jobs:
        if job.verifier.steps is None:
            job.error = RuntimeError("the session was closed before its round ran")
        else:
            live.append(job)
    if not live:
        return
    if len(live) == 1:  # alone: the solo forward, no gathering (and bit for bit the solo logits)
        job = live[0]
        try:
            job.result = job.settle(job.verifier.score(job.row[0], job.row[1:]))
        except Exception as err:  # noqa: BLE001 - that session's error
            job.error = err
        return
    try:
        logits = score_rows(model, [j.verifier.steps.cache for j in live], [j.verifier.length for j in live],
                            [j.row for j in live], [j.verifier.vocab for j in live])
    except Exception as err:  # noqa: BLE001 - a failed forward fails every round in it, and only those
        for job in live:
            job.error = err
        return
    for job, lg in zip(live, logits):
        job.verifier.length += len(job.row)
        job.verifier.calls += 1
        try:
            job.result = job.settle(lg)
        except Exception as err:  # noqa: BLE001 - that session's error
            job.error = err
