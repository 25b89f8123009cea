"""Webhook delivery off the request path: a bounded queue drained by a few worker tasks.

The request path only calls `submit()`, which never waits and never raises: when the queue
is full the event is dropped and counted, because a slow or dead receiver must not slow
down or fail requests. Workers POST each payload as JSON, retrying connection errors,
timeouts, 5xx and 429 with a short exponential backoff; other 4xx mean the receiver
rejected the payload and a retry would be rejected too.

Other senders (alert channels) pass `on_outcome` to receive the outcomes themselves instead
of having them counted in the shared `extproc_webhook_*` metrics, which belong to the
action-router webhook, and `name` so that logs do not print URLs that carry secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import httpx

from extproc.telemetry.metrics import Metrics

log = logging.getLogger("extproc.webhooks")

BACKOFF_BASE_S = 0.2  # first retry waits this long, then doubles
BACKOFF_CAP_S = 2.0  # keeps a retrying payload from holding a worker for long


def backoff_delay(retry: int) -> float:
    """Seconds to wait before retry number `retry` (1, 2, ...): doubling, capped."""
    return float(min(BACKOFF_BASE_S * 2 ** (retry - 1), BACKOFF_CAP_S))


# (event, detail): "delivered", "failed" (detail: the last problem), "dropped" (detail: why)
# or "retry" (detail: the problem that caused it).
OutcomeHook = Callable[[str, str], None]


def _retryable(status: int) -> bool:
    """5xx and 429 are the receiver's momentary trouble; other codes will not change."""
    return status >= 500 or status == 429


class WebhookSender:
    """POSTs JSON payloads to one URL from a bounded queue; delivery outcomes are metered."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        max_retries: int,
        queue_size: int,
        metrics: Metrics,
        workers: int = 2,
        on_outcome: OutcomeHook | None = None,
        name: str | None = None,
    ) -> None:
        self.url = url
        self.name = name
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.metrics = metrics
        self._workers_wanted = max(1, workers)
        # asyncio.Queue binds to a loop on first use, not here, so building the sender
        # outside the loop (at config time) is fine.
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self._on_outcome = on_outcome

    def update(self, *, url: str, timeout_s: float, max_retries: int) -> None:
        """Apply reloaded settings to later attempts (the queue size stays until restart)."""
        self.url = url
        self.timeout_s = timeout_s
        self.max_retries = max_retries

    @property
    def pending(self) -> int:
        """Payloads waiting in the queue (not counting ones being delivered)."""
        return self._queue.qsize()

    def submit(self, payload: dict[str, Any]) -> bool:
        """Queue a payload without waiting; False (counted as dropped) when full or closed."""
        if self._closed:
            self._count("dropped", "closed")
            return False
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            self._count("dropped", "queue full")
            log.warning(
                "webhook %s queue full (%d): event dropped", self._label, self._queue.maxsize
            )
            return False
        self._depth()
        self._ensure_started()
        return True

    async def start(self) -> None:
        """Start the workers on the running loop (submit() also starts them lazily)."""
        if not self._closed:
            self._ensure_started()

    def _ensure_started(self) -> None:
        if self._workers:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on a loop yet: start() or the next submit() on the loop will do it
        self._client = httpx.AsyncClient(
            headers={"user-agent": "extproc-webhook"}, follow_redirects=False
        )
        self._workers = [
            loop.create_task(self._work(), name=f"webhook-sender-{self.name or ''}{i}")
            for i in range(self._workers_wanted)
        ]

    # The bound is the API (shutdown passes its remaining budget), hence a parameter.
    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Stop accepting, deliver what can be delivered within `timeout`, drop the rest."""
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._shut_down(timeout))
        # A second caller waits for the same shutdown; a cancelled caller does not stop it.
        await asyncio.shield(self._closing)

    async def _shut_down(self, drain_s: float) -> None:
        if not self._queue.empty() and not self._workers:
            self._ensure_started()  # payloads submitted before the loop ran get their chance
        if self._workers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), drain_s)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            self._count("dropped", "shutdown")
        self._depth()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _work(self) -> None:
        while True:
            payload = await self._queue.get()
            self._depth()
            try:
                await self._deliver(payload)
            except asyncio.CancelledError:
                self._count("dropped", "shutdown")  # close() gave up on it mid-delivery
                raise
            except Exception as exc:  # a bug here must not kill the worker and stall the queue
                log.exception("webhook %s delivery crashed", self._label)
                self._count("failed", f"{type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()

    async def _deliver(self, payload: dict[str, Any]) -> None:
        assert self._client is not None  # created together with the workers
        attempts = 1 + self.max_retries
        problem = ""
        for attempt in range(attempts):
            if attempt:
                if self._on_outcome is None:
                    self.metrics.webhook_retries.inc()
                else:
                    self._report("retry", problem)
                await asyncio.sleep(backoff_delay(attempt))
            try:
                # A hard bound per attempt: httpx's timeout applies per phase (connect,
                # write, each read), so a trickling receiver could exceed it otherwise.
                async with asyncio.timeout(self.timeout_s):
                    response = await self._client.post(
                        self.url, json=payload, timeout=self.timeout_s
                    )
            except (TimeoutError, httpx.TimeoutException):
                problem = f"no answer within {self.timeout_s:g}s"
                continue
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.is_success:
                self._count("delivered")
                return
            problem = f"HTTP {response.status_code}"
            if not _retryable(response.status_code):
                break
        self._count("failed", problem)
        log.warning("webhook %s failed: %s", self._label, problem)

    @property
    def _label(self) -> str:
        return self.name or f"to {self.url}"

    def _count(self, outcome: str, detail: str = "") -> None:
        if self._on_outcome is None:
            self.metrics.inc(self.metrics.webhook_deliveries, outcome)
        else:
            self._report(outcome, detail)

    def _report(self, event: str, detail: str) -> None:
        assert self._on_outcome is not None
        try:
            self._on_outcome(event, detail)
        except Exception:  # the hook's bug must not kill a worker and stall the queue
            log.exception("webhook %s outcome hook failed", self._label)

    def _depth(self) -> None:
        # With a hook the sender is one of several; a shared gauge set by each would flip
        # between their depths, so only the action-router sender (no hook) sets it.
        if self._on_outcome is None:
            self.metrics.webhook_queue_depth.set(self._queue.qsize())
