"""Micro-batching: concurrent callers share one model call, run off the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(Exception):
    """The queue ahead is longer than the caller's budget: skip the model rather than wait."""


@dataclass(slots=True)
class _Job(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[T, R]):
    """Gathers items from concurrent `submit` calls into one `fn(items)` call at a time.

    One worker thread per batcher: the model's own intra-op threads use the cores, and while a
    batch runs the next one fills up, so batches grow with load and stay at one when idle.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[list[T]], list[R]],
        *,
        max_batch: int = 16,
        max_wait_us: int = 500,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.name = name
        self._fn = fn
        self.max_batch = max_batch
        self._max_wait = max_wait_us / 1e6
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Job[T, R]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"ml-{name}")
        self._queued_items = 0
        self._running_items = 0
        self.seconds_per_item: float | None = None  # moving average of measured batch cost

    @property
    def pending(self) -> int:
        """Items queued or running now."""
        return self._queued_items + self._running_items

    def expected_wait(self, items: int) -> float:
        """Seconds a new job of `items` would take to come back, from recent batches."""
        if self.seconds_per_item is None:
            return 0.0
        return (self.pending + items) * self.seconds_per_item

    async def submit(self, items: Sequence[T], budget_s: float | None = None) -> list[R]:
        """Results for `items`, in order; Overloaded if the queue would outlast `budget_s`."""
        if not items:
            return []
        if budget_s is not None and self.expected_wait(len(items)) > budget_s:
            raise Overloaded(self.name)
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run(), name=f"batcher-{self.name}")
        job: _Job[T, R] = _Job(items, loop.create_future())
        self._queued_items += len(items)
        self._queue.put_nowait(job)
        return await job.future

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await queue.get()]
            count = len(jobs[0].items)
            if count < self.max_batch and self._max_wait > 0 and queue.empty():
                await asyncio.sleep(self._max_wait)
            while count < self.max_batch and not queue.empty():
                job = queue.get_nowait()
                jobs.append(job)
                count += len(job.items)
            self._queued_items -= count
            live = [j for j in jobs if not j.future.done()]  # callers that gave up are skipped
            items = [item for j in live for item in j.items]
            if not items:
                continue
            self._running_items = len(items)
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._fn, items)
            except Exception as exc:
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            finally:
                self._running_items = 0
            elapsed = time.perf_counter() - started
            per_item = elapsed / len(items)
            previous = self.seconds_per_item
            self.seconds_per_item = (
                per_item if previous is None else 0.8 * previous + 0.2 * per_item
            )
            if self._on_batch is not None:
                self._on_batch(len(items), elapsed)
            at = 0
            for j in live:
                n = len(j.items)
                if not j.future.done():
                    j.future.set_result(results[at : at + n])
                at += n

    def close(self) -> None:
        """Stop the worker and its thread; pending callers get CancelledError."""
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
