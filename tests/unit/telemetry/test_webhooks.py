"""Webhook sender: real local receivers for delivery, retries, timeouts and drops."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from extproc.telemetry import webhooks
from extproc.telemetry.metrics import Metrics
from extproc.telemetry.webhooks import WebhookSender, backoff_delay
from tests.receiver import Receiver

PAYLOAD = {
    "source_ip": "198.51.100.10",
    "tenant_id": "acme",
    "trace_id": "trace-1",
    "findings": [
        {
            "finding_type": "prompt_injection",
            "severity": "high",
            "confidence": 0.9,
            "category": "prompt_injection",
            "rule_id": "pi.1",
            "detector": "regex",
        }
    ],
    "timestamp": "2023-11-14T22:13:20.250+00:00",
}


def test_backoff_doubles_from_200ms_and_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the production schedule, not quick_backoff's
    assert [backoff_delay(n) for n in (1, 2, 3, 4, 5, 6)] == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "BACKOFF_BASE_S", 0.02)  # 0.2 s in production


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that accepts connections (kernel backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    sock.close()


def outcome(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value("extproc_webhook_deliveries_total", {"outcome": name})
    return value or 0.0


def sender_for(url: str, metrics: Metrics, **overrides: Any) -> WebhookSender:
    settings: dict[str, Any] = {"timeout_s": 1.0, "max_retries": 2, "queue_size": 10}
    settings.update(overrides)
    return WebhookSender(url, metrics=metrics, **settings)


async def test_delivers_the_exact_payload(receiver: Receiver) -> None:
    metrics = Metrics()
    sender = sender_for(receiver.url, metrics)
    await sender.start()
    assert sender.submit(PAYLOAD)
    await sender.close(timeout=5)  # drains the queue
    assert receiver.received == [("/action-router-webhook", "application/json", PAYLOAD)]
    assert outcome(metrics, "delivered") == 1
    assert outcome(metrics, "failed") == outcome(metrics, "dropped") == 0


async def test_retries_after_500_and_429_then_succeeds(receiver: Receiver) -> None:
    metrics = Metrics()
    receiver.statuses = [500, 429]
    sender = sender_for(receiver.url, metrics, max_retries=2)
    assert sender.submit(PAYLOAD)  # the worker starts lazily on the running loop
    await sender.close(timeout=5)
    assert [body for _, _, body in receiver.received] == [PAYLOAD] * 3
    assert outcome(metrics, "delivered") == 1
    assert metrics.registry.get_sample_value("extproc_webhook_retries_total") == 2


async def test_other_4xx_is_not_retried(receiver: Receiver) -> None:
    metrics = Metrics()
    receiver.statuses = [400]
    sender = sender_for(receiver.url, metrics, max_retries=3)
    sender.submit(PAYLOAD)
    await sender.close(timeout=5)
    assert len(receiver.received) == 1
    assert outcome(metrics, "failed") == 1
    assert outcome(metrics, "delivered") == 0


async def test_server_errors_exhaust_retries_then_fail(receiver: Receiver) -> None:
    metrics = Metrics()
    receiver.statuses = [503, 503, 503]
    sender = sender_for(receiver.url, metrics, max_retries=1)
    sender.submit(PAYLOAD)
    await sender.close(timeout=5)
    assert len(receiver.received) == 2  # first attempt + one retry
    assert outcome(metrics, "failed") == 1


async def test_connection_refused_is_retried_then_failed() -> None:
    metrics = Metrics()
    sender = sender_for("http://127.0.0.1:1/hook", metrics, max_retries=2)
    sender.submit(PAYLOAD)
    await sender.close(timeout=5)
    assert outcome(metrics, "failed") == 1
    assert metrics.registry.get_sample_value("extproc_webhook_retries_total") == 2


async def test_unanswered_attempts_time_out_and_close_is_bounded(silent_url: str) -> None:
    metrics = Metrics()
    sender = sender_for(silent_url, metrics, timeout_s=0.2, max_retries=1, workers=2)
    started = time.monotonic()
    sender.submit(PAYLOAD)
    while outcome(metrics, "failed") < 1:  # two 0.2 s attempts and a short backoff
        assert time.monotonic() - started < 5, "the attempts never timed out"
        await asyncio.sleep(0.02)
    assert time.monotonic() - started >= 0.4
    for _ in range(3):
        assert sender.submit(PAYLOAD)
    closing = time.monotonic()
    await sender.close(timeout=0.3)
    assert time.monotonic() - closing < 1.0
    assert outcome(metrics, "failed") == 1
    assert outcome(metrics, "dropped") == 3  # in flight or queued when close gave up
    assert not sender.submit(PAYLOAD)  # closed
    assert outcome(metrics, "dropped") == 4


def test_full_queue_drops_and_counts(receiver: Receiver) -> None:
    metrics = Metrics()
    sender = sender_for(receiver.url, metrics, queue_size=2)
    # No running loop: nothing drains, so the queue fills.
    assert sender.submit(PAYLOAD)
    assert sender.submit(PAYLOAD)
    assert not sender.submit(PAYLOAD)
    assert outcome(metrics, "dropped") == 1
    assert metrics.registry.get_sample_value("extproc_webhook_queue_depth") == 2
    asyncio.run(sender.close(timeout=5))  # what was queued before the loop still goes out
    assert len(receiver.received) == 2
    assert outcome(metrics, "delivered") == 2
    assert metrics.registry.get_sample_value("extproc_webhook_queue_depth") == 0


async def test_concurrent_close_calls_share_one_shutdown(receiver: Receiver) -> None:
    metrics = Metrics()
    sender = sender_for(receiver.url, metrics)
    sender.submit(PAYLOAD)
    await asyncio.gather(sender.close(timeout=5), sender.close(timeout=5))
    await sender.close()  # and later ones return at once
    assert len(receiver.received) == 1
    assert outcome(metrics, "delivered") == 1
