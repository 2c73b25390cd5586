"""Continuous batching for a Hugging Face causal LM: requests join the running batch between decode
steps and leave it as soon as they finish or are aborted.

    engine = BatchedGenerator(model, tokenizer, max_batch=8)
    job = engine.submit(prompt_ids, GenerationParams(max_new_tokens=32), on_token=print)
    job.result()   # -> Generated;  job.abort() ends it early (its tokens so far, finish "abort")

One worker thread owns the model. Each turn it admits waiting requests (prefilled together, then
their key/value cache is left-padded and stacked onto the running one), runs one decode step for
every active row, and drops finished or aborted rows from the cache; a short request therefore
waits for at most one step of a long one, and a client that leaves frees its row at once.
Positions count only real tokens and padded cache slots are masked, so a row gives the same
greedy tokens whatever it is batched with.

Hand-written because the maintained engines that do this (vLLM, TGI, SGLang) are GPU servers in
their own right, and transformers' `generate` decodes a fixed batch from start to end. Models
whose cache is not a plain per-layer key/value cache (sliding-window or recurrent layers) still
batch, but a request waits until the running batch ends, and finished rows stay in it until then.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from distill.models.generation import (
    Generated,
    GenerationParams,
    GeneratorClosed,
    _generator,
    _left_pad,
    _Row,
    _step,
    eos_ids_of,
)

log = logging.getLogger(__name__)
_STOP = object()


class Job(concurrent.futures.Future):
    """A submitted request: a Future of its `Generated`, which `abort()` ends at the next step."""

    def __init__(self) -> None:
        super().__init__()
        self._abort = threading.Event()

    def abort(self) -> None:
        """Stop generating for this request; its result keeps the tokens made so far."""
        self._abort.set()

    @property
    def aborted(self) -> bool:
        return self._abort.is_set()


@dataclass
class _Request:
    prompt_ids: list[int]
    params: GenerationParams | None  # None: score the prompt (`score_k` alternatives per position)
    on_token: Callable[[int], None] | None
    job: Job
    score_k: int = 0


@dataclass
class Scored:
    """A prompt's own log-probabilities: position i holds token i's given the tokens before it (None
    for the first, which nothing predicts) and the top-k (id, logprob) alternatives there."""

    token_logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]]]


class _Batch:
    """The running rows: their requests, decoding state, key/value cache and attention mask."""

    def __init__(self) -> None:
        self.requests: list[_Request] = []
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (B, T) over the cached positions
        self.next_ids: list[int] = []  # the token each row feeds next (not yet in the cache)

    def __len__(self) -> int:
        return len(self.rows)


class BatchedGenerator:
    """Runs requests from any number of threads, up to `max_batch` decoded together at a time.

    A failed step fails only the requests it was running. `close()` fails waiting requests and
    aborts running ones with `GeneratorClosed`.
    """

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.max_batch = model, max_batch
        self.eos_ids = eos_ids_of(model, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)
        accepts = inspect.signature(model.forward).parameters
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}
        self._cache_arg = "cache" if "cache" in accepts else "past_key_values"  # transformers 5.x name
        self._joinable: bool | None = None  # known after the first prefill
        self._held: list[_Request] = []  # taken from the queue, waiting for the batch to end
        self._running = 0
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._worker = threading.Thread(target=self._run, name="distill-generation", daemon=True)
        self._worker.start()

    def submit(self, prompt_ids: list[int], params: GenerationParams,
               on_token: Callable[[int], None] | None = None) -> Job:
        """Queue one request; `on_token(token_id)` is called from the worker thread for each new token."""
        if not prompt_ids:
            raise ValueError("prompt_ids is empty: a prompt needs at least one token")
        job = Job()
        with self._lock:  # nothing is queued behind the stop marker
            if self._closed.is_set():
                raise GeneratorClosed("The generation engine is closed; create a new one.")
            self._queue.put(_Request(list(prompt_ids), params, on_token, job))
        return job

    def score(self, prompt_ids: list[int], top_k: int = 0) -> Job:
        """Queue the scoring of a prompt (a `Scored` result): one forward pass on the worker thread,
        between two decode steps of the running batch."""
        if len(prompt_ids) < 1:
            raise ValueError("prompt_ids is empty: a prompt needs at least one token")
        job = Job()
        with self._lock:
            if self._closed.is_set():
                raise GeneratorClosed("The generation engine is closed; create a new one.")
            self._queue.put(_Request(list(prompt_ids), None, None, job, score_k=top_k))
        return job

    @property
    def running(self) -> int:
        """How many requests are being decoded now (a snapshot)."""
        return self._running

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the worker: queued requests fail, running ones are aborted at their next step."""
        with self._lock:
            if not self._closed.is_set():
                self._closed.set()
                self._queue.put(_STOP)
        if self._worker is not threading.current_thread():
            self._worker.join(timeout)

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        batch = _Batch()
        while not self._closed.is_set():
            try:
                self._turn(batch)
            except Exception as exc:  # a failed step fails the rows it ran, not the engine
                log.exception("generation step failed")
                _fail(batch.requests, exc)
                batch = _Batch()
        closed = GeneratorClosed("The generation engine was closed before this request finished.")
        _fail(batch.requests + self._held, closed)
        leftovers = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not _STOP and item.job.set_running_or_notify_cancel():
                leftovers.append(item)
        _fail(leftovers, closed)

    def _turn(self, batch: _Batch) -> None:
        """Admit what is waiting (if it may join), else run one decode step; then retire finished rows."""
        admitted = self._waiting(block=not batch, room=self.max_batch - len(batch))
        if admitted and batch and self._joinable is False:
            self._held += admitted  # this model's cache cannot take rows: they wait for the batch to end
            admitted = []
        self._running = len(batch) + len(admitted)
        if admitted:
            try:
                new = self._prefill(admitted)
            except Exception as exc:  # fails the new requests only; the running batch goes on
                log.exception("prefill failed")
                _fail(admitted, exc)
                self._running = len(batch)
                return
            try:
                self._join(batch, new)
            except Exception:  # e.g. out of memory while stacking: every row it touched fails (in _run)
                batch.requests = batch.requests + [r for r in new.requests if r not in batch.requests]
                raise
        elif batch:
            self._decode(batch)
        self._retire(batch)
        self._running = len(batch)

    def _waiting(self, block: bool, room: int) -> list[_Request]:
        """Requests waiting in the queue (blocking for the first one when nothing runs)."""
        out: list[_Request] = []
        scores: list[_Request] = []  # prompts to score: one forward pass for all, never joining the batch
        if self._held and not (self._joinable is False and room < self.max_batch):
            out, self._held = self._held[:room], self._held[room:]
        while len(out) < room and len(scores) < self.max_batch:
            try:
                wait = block and not out and not scores
                item = self._queue.get() if wait else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # seen again by the loop's exit check
                break
            if not item.job.set_running_or_notify_cancel():
                continue
            (scores if item.params is None else out).append(item)
        if scores:
            self._score(scores)
        for request in [r for r in out if r.job.aborted]:  # left while waiting: no prefill spent on it
            out.remove(request)
            request.job.set_result(Generated([], "abort", len(request.prompt_ids)))
        return out

    def _score(self, requests: list[_Request]) -> None:
        """Score the prompts of `requests` in one forward pass (right-padded); a failure fails them only."""
        try:
            device = next(self.model.parameters()).device
            width = max(len(r.prompt_ids) for r in requests)
            ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(requests):
                ids[i, :len(r.prompt_ids)], mask[i, :len(r.prompt_ids)] = torch.tensor(r.prompt_ids), 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for i, r in enumerate(requests):
                r.job.set_result(_scored(logits[i, :len(r.prompt_ids) - 1].float(), ids[i, 1:len(r.prompt_ids)],
                                         r.score_k))
        except Exception as exc:
            log.exception("scoring failed")
            _fail(requests, exc)

    def _prefill(self, requests: list[_Request]) -> _Batch:
        """A batch of the new requests, their prompts run through the model and first tokens chosen."""
        new = _Batch()
        new.requests = requests
        device = next(self.model.parameters()).device
        new.rows = [_Row(r.params, len(r.prompt_ids), _generator(r.params, device)) for r in requests]
        for row in new.rows:
            if row.params.max_new_tokens == 0:
                row.finish = "length"
        ids, mask = _left_pad([r.prompt_ids for r in requests], self.pad_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        new.cache, logits = self._forward(ids, mask, positions, None)
        new.mask = mask
        new.next_ids = self._choose(new, logits)
        if self._joinable is None:
            self._joinable = _mergeable(new.cache)
            if not self._joinable:
                log.info("this model's cache cannot take new rows mid-batch; requests wait for the batch")
        return new

    def _decode(self, batch: _Batch) -> None:
        device = batch.mask.device
        ids = torch.tensor(batch.next_ids, device=device).unsqueeze(1)  # (B, 1)
        positions = batch.mask.sum(-1, keepdim=True)  # the real tokens before this one
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=1)
        batch.cache, logits = self._forward(ids, mask, positions, batch.cache)
        batch.mask = mask
        batch.next_ids = self._choose(batch, logits)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: Any) -> tuple[Any, torch.Tensor]:
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             **{self._cache_arg: cache}, **self._extra)
        cache = out.cache if self._cache_arg == "cache" else out.past_key_values
        return cache, out.logits[:, -1, :].float()

    def _choose(self, batch: _Batch, logits: torch.Tensor) -> list[int]:
        """Each row's next token; the callers' `on_token` runs here, and aborts are noticed."""
        def on_token(i: int, token: int) -> None:
            request = batch.requests[i]
            if request.on_token is not None:
                try:
                    request.on_token(token)
                except Exception:  # one caller's broken callback must not fail the others' rows
                    log.exception("on_token callback failed; no more tokens are sent to it")
                    request.on_token = None

        for request, row in zip(batch.requests, batch.rows):
            if request.job.aborted and row.finish is None:
                row.finish = "abort"
        return _step(batch.rows, logits, self.pad_id, self.eos_ids, on_token)

    def _join(self, batch: _Batch, new: _Batch) -> None:
        """Stack `new` under `batch`, left-padding the shorter cache so both end at the same column."""
        if not batch:
            batch.requests, batch.rows, batch.cache = new.requests, new.rows, new.cache
            batch.mask, batch.next_ids = new.mask, new.next_ids
            return
        width = max(batch.mask.shape[1], new.mask.shape[1])
        for old_layer, new_layer in zip(batch.cache.layers, new.cache.layers):
            old_layer.keys = torch.cat([_pad_left(old_layer.keys, width), _pad_left(new_layer.keys, width)])
            old_layer.values = torch.cat([_pad_left(old_layer.values, width),
                                          _pad_left(new_layer.values, width)])
        batch.mask = torch.cat([_pad_left(batch.mask, width, dim=1), _pad_left(new.mask, width, dim=1)])
        batch.requests += new.requests
        batch.rows += new.rows
        batch.next_ids += new.next_ids

    def _retire(self, batch: _Batch) -> None:
        """Finish rows that are done or aborted; shrink the cache to the rows and columns still in use.

        A cache that cannot drop rows (recurrent or sliding-window layers) keeps finished rows,
        fed padding as `generate_batch` does, until the whole batch is done.
        """
        for request, row in zip(batch.requests, batch.rows):
            if request.job.aborted and row.finish is None:
                row.finish = "abort"
            if row.finish is not None and not request.job.done():
                request.job.set_result(row.result())
        keep = [i for i, row in enumerate(batch.rows) if row.finish is None]
        if not keep:
            batch.__init__()
            return
        if len(keep) == len(batch) or self._closed.is_set() or not self._joinable:
            return  # nothing to drop; or closing (the loop's exit fails the rest); or rows cannot be dropped
        index = torch.tensor(keep, device=batch.mask.device)
        batch.cache.batch_select_indices(index)
        batch.mask = batch.mask[index]
        batch.requests = [batch.requests[i] for i in keep]
        batch.rows = [batch.rows[i] for i in keep]
        batch.next_ids = [batch.next_ids[i] for i in keep]
        start = int((batch.mask.sum(0) > 0).nonzero()[0])  # leading columns no row uses any more
        if start:
            batch.mask = batch.mask[:, start:]
            for layer in batch.cache.layers:
                layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]


def _scored(logits: torch.Tensor, next_ids: torch.Tensor, k: int) -> Scored:
    """A prompt's `Scored` from its logits (T-1, V), position t predicting token t+1 (`next_ids`)."""
    logprobs = torch.log_softmax(logits, dim=-1)
    chosen = logprobs.gather(-1, next_ids.to(logprobs.device)[:, None])[:, 0].tolist()
    top: list[list[tuple[int, float]]] = [[] for _ in chosen]
    if k:
        values, indices = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        top = [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]
    return Scored([None, *chosen], [[], *top])  # nothing predicts the first token


def _pad_left(x: torch.Tensor, width: int, dim: int = -2) -> torch.Tensor:
    """`x` with zeros before its entries along `dim`, up to `width`."""
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _mergeable(cache: Any) -> bool:
    """Whether `cache` is a per-layer key/value cache whose rows can be stacked and padded."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def _fail(requests: list[_Request], exc: BaseException) -> None:
    for request in requests:
        if not request.job.done():
            request.job.set_exception(exc)
