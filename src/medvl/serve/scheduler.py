"""Batch concurrent chat requests through medvl's one inference path on one worker thread.

Why not transformers' own serving stack: ``transformers serve`` and its continuous batching
(``ContinuousBatchingManager`` / ``generate_batch``) schedule *token id* prompts over a paged KV cache;
a medvl prompt is not just ids: its ``<image>`` / ``<volume>`` placeholders are replaced by encoder
features inside ``MedVLForConditionalGeneration.forward`` (``pixel_values`` / ``volume_values`` spliced
with ``masked_scatter``), and volumes go through medvl's volume processor, neither of which that
stack knows. Reimplementing its paged-attention path for spliced embeddings would fork medvl's
inference in two. So requests are grouped here and every group goes through
``medvl.inference.generate_detailed`` -- the function ``medvl infer`` uses -- which makes the server's
greedy answers equal ``medvl infer``'s by construction.

Scheduling: requests wait in a FIFO queue. When the worker is free it takes the oldest request and
every queued request whose generation settings are compatible (same greedy/sampling parameters;
a request with a ``seed`` runs alone so that its sampling is reproducible), up to
``max_batch_size``, and generates them as one left-padded batch (static batching: a batch runs until
its longest row ends; requests arriving meanwhile form the next batch). Per-request
``max_tokens`` are per-row limits of that batch; ``stop`` strings and client disconnects end a row
early through ``should_stop``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from medvl.data.records import Record
from medvl.errors import MedVLDataError
from medvl.inference import Generation, generate_detailed

if TYPE_CHECKING:
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingSettings:
    """Generation settings that must agree within one batch.

    Args:
        do_sample: sample (True) or greedy decoding (False).
        temperature: sampling temperature (sampling only).
        top_p: nucleus sampling (sampling only).
        seed: torch seed for a reproducible sampled answer (such a request runs alone).
    """

    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``generate`` (greedy ignores temperature/top_p)."""
        if not self.do_sample:
            return {"do_sample": False}
        out: dict[str, Any] = {"do_sample": True}
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.top_p is not None:
            out["top_p"] = self.top_p
        return out


@dataclass
class Job:
    """One request in the scheduler: its record, limits and the hooks that report its progress.

    The hooks are called on the worker thread; the server turns them into asyncio events.

    Args:
        record: the conversation and its decoded media.
        max_tokens: completion limit of this request.
        settings: its generation settings.
        stop: strings that end the answer (excluded from it).
        on_delta: ``on_delta(text)`` for each new piece of the answer (stop strings already cut).
        on_done: ``on_done(text, generation)`` once, with the final answer and its accounting.
        on_error: ``on_error(exception)`` once, instead of ``on_done``.
    """

    record: Record
    max_tokens: int
    settings: SamplingSettings
    stop: list[str]
    on_delta: Callable[[str], None]
    on_done: Callable[[str, Generation], None]
    on_error: Callable[[BaseException], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)
    # streaming state (worker thread only)
    _text: str = ""
    _emitted: int = 0
    _stopped: bool = False
    _finished: bool = False

    def cancel(self) -> None:
        """The client went away: stop generating this row after the current step."""
        self.cancelled.set()

    def batch_key(self) -> tuple:
        """Jobs with equal keys may share a batch (a seeded job's key is unique)."""
        if self.settings.seed is not None:
            return ("seeded", id(self))
        return (self.settings.do_sample, self.settings.temperature, self.settings.top_p)

    def should_stop(self) -> bool:
        return self._stopped or self.cancelled.is_set()

    def feed(self, delta: str) -> None:
        """A new piece of decoded text: cut at a stop string, hold back a possible stop-string prefix."""
        if self._stopped:
            return
        self._text += delta
        end = len(self._text)
        for s in self.stop:
            at = self._text.find(s, max(0, self._emitted - len(s) + 1))
            if at != -1 and at < end:
                end = at
                self._stopped = True
        if not self._stopped:
            end = len(self._text) - self._held_back()
        self._emit(end)

    def _held_back(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self._text)), 0, -1):
                if self._text.endswith(s[:n]):
                    longest = max(longest, n)
                    break
        return longest

    def _emit(self, end: int) -> None:
        if end > self._emitted:
            piece = self._text[self._emitted : end]
            self._emitted = end
            self.on_delta(piece)

    def finish(self, generation: Generation) -> None:
        """The row ended: flush the held-back text and report the final answer."""
        if self._finished:
            return
        self._finished = True
        if not self._stopped:
            self._text = generation.text  # the deltas concatenate to it; this guards the final bytes
            self._emit(len(self._text))
        answer = self._text[: self._emitted]
        if self._stopped:
            generation = Generation(answer, generation.prompt_tokens, generation.completion_tokens, "stop")
        self.on_done(answer, generation)

    def fail(self, err: BaseException) -> None:
        if not self._finished:
            self._finished = True
            self.on_error(err)


class Scheduler:
    """Collects jobs and runs compatible ones together through ``generate_detailed`` on one thread.

    Args:
        model: the loaded ``MedVLForConditionalGeneration``.
        processor: its ``MedVLProcessor`` (used by the worker thread only).
        max_batch_size: most requests generated together.
        batch_wait_s: after taking a first request, wait this long for more to join its batch.
        on_batch: optional ``on_batch(size)`` hook (metrics).
    """

    def __init__(
        self,
        model: MedVLForConditionalGeneration,
        processor: MedVLProcessor,
        *,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.005,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.processor = processor
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.on_batch = on_batch
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._running = 0
        self._thread = threading.Thread(target=self._loop, name="medvl-serve-scheduler", daemon=True)
        self._thread.start()

    @property
    def queue_length(self) -> int:
        """Jobs waiting for a batch."""
        return len(self._pending)

    @property
    def running(self) -> int:
        """Jobs in the batch being generated."""
        return self._running

    def submit(self, job: Job) -> None:
        """Queue a job (thread-safe).

        Args:
            job: the request.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is shut down")
            self._pending.append(job)
            self._cond.notify()

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the worker after its current batch; jobs still queued fail.

        Args:
            timeout: seconds to wait for the worker thread.
        """
        with self._cond:
            self._closed = True
            left = list(self._pending)
            self._pending.clear()
            self._cond.notify()
        for job in left:
            job.fail(RuntimeError("the server is shutting down"))
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
        if self.batch_wait_s > 0 and self.max_batch_size > 1:
            time.sleep(self.batch_wait_s)  # let requests sent together arrive together
        with self._cond:
            while self._pending and self._pending[0].cancelled.is_set():
                self._pending.popleft().fail(ConnectionAbortedError("client disconnected"))
            if not self._pending:
                return []
            first = self._pending.popleft()
            batch, key = [first], first.batch_key()
            keep: deque[Job] = deque()
            while self._pending and len(batch) < self.max_batch_size:
                job = self._pending.popleft()
                if job.cancelled.is_set():
                    job.fail(ConnectionAbortedError("client disconnected"))
                elif job.batch_key() == key:
                    batch.append(job)
                else:
                    keep.append(job)
            keep.extend(self._pending)
            self._pending = keep
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            self._running = len(batch)
            try:
                self._run(batch)
            except BaseException as err:  # never let the worker die: fail the batch, go on
                logger.exception("generation batch of %d failed", len(batch))
                for job in batch:
                    job.fail(err)
            finally:
                self._running = 0

    def _run(self, batch: list[Job]) -> None:
        if self.on_batch is not None:
            self.on_batch(len(batch))
        settings = batch[0].settings
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        try:
            results = generate_detailed(
                self.model,
                self.processor,
                [j.record for j in batch],
                batch_size=len(batch),
                max_new_tokens=[j.max_tokens for j in batch],
                progress=False,
                on_text=lambda i, delta: batch[i].feed(delta),
                should_stop=lambda i: batch[i].should_stop(),
                **settings.generate_kwargs(),
            )
        except (MedVLDataError, ValueError) as err:
            if len(batch) == 1:
                batch[0].fail(err)
                return
            # One request's bad input must not fail its batch mates: retry them one by one.
            logger.info(
                "a batch of %d failed on input (%s); retrying its requests one by one", len(batch), type(err).__name__
            )
            for job in batch:
                if job._emitted:  # already streamed part of an answer: it cannot restart cleanly
                    job.fail(err)
                else:
                    self._run([job])
            return
        for job, result in zip(batch, results):
            job.finish(result)


__all__ = ["Job", "SamplingSettings", "Scheduler"]
