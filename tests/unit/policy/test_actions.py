"""Action router: client IP resolution, rule matching, offense counting and IP blocks."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from extproc.config import ActionRouterConfig
from extproc.detect.findings import Category, Finding, Severity
from extproc.policy.actions import ActionPlan, ActionRouter, client_ip
from extproc.telemetry.metrics import Metrics
from extproc.telemetry.webhooks import WebhookSender

REDIS = os.environ.get("EXTPROC_TEST_REDIS", "redis://127.0.0.1:6379/0")
IP = "203.0.113.7"


def finding(
    type_: str = "prompt_injection",
    severity: Severity = Severity.HIGH,
    confidence: float = 0.9,
    category: Category = Category.PROMPT_INJECTION,
) -> Finding:
    return Finding(type_, category, severity, confidence, 0, 6, "pi.1", "regex")


def router_config(**overrides: Any) -> ActionRouterConfig:
    """The seed's first scenario: prompt_injection >= medium blocks after 1 offense for 1 s."""
    data: dict[str, Any] = {
        "enabled": True,
        "rules": [
            {"finding_type": "prompt_injection", "min_severity": "medium", "actions": ["block_ip"]}
        ],
        "ip_block": {"ttl_seconds": 1, "max_offenses": 1},
    }
    data.update(overrides)
    return ActionRouterConfig.model_validate(data)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def redis_client() -> AsyncIterator[tuple[Any, str]]:
    prefix = f"extproc-test-{uuid.uuid4().hex[:8]}:"
    client = redis_asyncio.Redis.from_url(REDIS, socket_connect_timeout=1)
    try:
        await client.ping()
    except OSError as exc:
        pytest.skip(f"Redis is not reachable at {REDIS}: {exc}")
    yield client, prefix
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


# -- client_ip ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xff", "peer", "hops", "expected"),
    [
        # hops 0: Envoy's peer, whatever the header says (port stripped)
        ("198.51.100.1", "10.0.0.5:41234", 0, "10.0.0.5"),
        (None, "10.0.0.5", 0, "10.0.0.5"),
        (None, None, 0, None),
        # hops 1: the last entry; Envoy without use_remote_address does not append
        (IP, "10.0.0.5", 1, IP),
        (f"1.1.1.1, 2.2.2.2 ,  {IP} ", "10.0.0.5", 1, IP),
        # hops 2: one more proxy in front; the client's own entries are further left
        (f"6.6.6.6, {IP}, 10.1.1.1", "10.0.0.5", 2, IP),
        # fewer entries than hops: the leftmost
        (IP, "10.0.0.5", 2, IP),
        (f"{IP}, 10.1.1.1", "10.0.0.5", 3, IP),
        # garbage where we look: the peer; garbage elsewhere does not matter
        ("203.0.113.7, unknown", "10.0.0.5", 1, "10.0.0.5"),
        ("not-an-ip, 203.0.113.7", "10.0.0.5", 1, IP),
        ("203.0.113.7,", "10.0.0.5", 1, "10.0.0.5"),
        ("1.2.3.4:abc", "10.0.0.5", 1, "10.0.0.5"),
        ("999.1.1.1", None, 1, None),
        ("", "10.0.0.5", 1, "10.0.0.5"),
        # ports and IPv6 forms
        ("203.0.113.7:8443", None, 1, IP),
        ("2001:DB8::1", None, 1, "2001:db8::1"),
        ("[2001:db8::1]:443", None, 1, "2001:db8::1"),
        ("[2001:db8::1]", None, 1, "2001:db8::1"),
        ("[2001:db8::1]x", "10.0.0.5", 1, "10.0.0.5"),
        ("[2001:db8::1", "10.0.0.5", 1, "10.0.0.5"),
        ("::ffff:203.0.113.7", None, 1, IP),
        (None, "[::1]:5000", 0, "::1"),
        (None, "garbage", 0, None),
    ],
)
def test_client_ip_table(
    xff: str | None, peer: str | None, hops: int, expected: str | None
) -> None:
    assert client_ip(xff, peer, hops) == expected


# -- plan() -------------------------------------------------------------------------------


def test_plan_matches_type_severity_and_confidence() -> None:
    config = router_config(
        rules=[
            {
                "finding_type": "prompt_injection",
                "min_severity": "high",
                "min_confidence": 0.8,
                "actions": ["block_ip"],
            },
            {"finding_type": None, "min_severity": "critical", "actions": ["webhook"]},
        ],
        webhook={"url": "http://127.0.0.1:9/hook"},
    )
    router = ActionRouter(config, None, Metrics(), None)
    hit = finding()
    assert router.plan([hit]) == ActionPlan(True, False, (hit,))
    assert router.plan([finding(severity=Severity.MEDIUM)]) == ActionPlan(False, False, ())
    assert router.plan([finding(confidence=0.5)]) == ActionPlan(False, False, ())
    assert router.plan([finding("jailbreak")]) == ActionPlan(False, False, ())
    # The second rule has no type filter: any critical finding, and the rules add up.
    critical = finding(severity=Severity.CRITICAL)
    other = finding("email", Severity.CRITICAL, 1.0, Category.PII)
    assert router.plan([critical]) == ActionPlan(True, True, (critical,))
    assert router.plan([other, finding("jailbreak")]) == ActionPlan(False, True, (other,))


def test_plan_default_actions_cover_unmatched_findings_only() -> None:
    config = router_config(default_actions=["webhook"], webhook={"url": "http://127.0.0.1:9/h"})
    router = ActionRouter(config, None, Metrics(), None)
    injection, pii = finding(), finding("email", Severity.LOW, 1.0, Category.PII)
    assert router.plan([injection]) == ActionPlan(True, False, (injection,))
    assert router.plan([pii]) == ActionPlan(False, True, (pii,))
    assert router.plan([injection, pii]) == ActionPlan(True, True, (injection, pii))
    assert router.plan([]) == ActionPlan(False, False, ())


def test_plan_is_empty_when_disabled() -> None:
    router = ActionRouter(router_config(enabled=False), None, Metrics(), None)
    assert router.plan([finding()]) == ActionPlan(False, False, ())


# -- IP blocks, local store ----------------------------------------------------------------


async def test_local_block_after_max_offenses_within_ttl_then_expiry() -> None:
    clock = Clock()
    metrics = Metrics()
    config = router_config(ip_block={"ttl_seconds": 10, "max_offenses": 3})
    router = ActionRouter(config, None, metrics, None, clock=clock)

    async def offend() -> None:
        await router.handle(source_ip=IP, tenant_id="t", trace_id="x", findings=[finding()])

    await offend()
    await offend()
    assert await router.is_blocked(IP) is None
    clock.now += 10.5  # the offense window has passed: counting starts again
    await offend()
    await offend()
    assert await router.is_blocked(IP) is None
    await offend()  # third within the window
    assert await router.is_blocked(IP) == pytest.approx(10.0)
    assert await router.is_blocked("198.51.100.9") is None
    clock.now += 9.5
    assert await router.is_blocked(IP) == pytest.approx(0.5)
    clock.now += 0.6
    assert await router.is_blocked(IP) is None
    assert sample(metrics, "extproc_action_router_events_total", event="offense") == 5
    assert sample(metrics, "extproc_action_router_events_total", event="ip_blocked") == 1


async def test_one_offense_per_request_not_per_finding() -> None:
    config = router_config(ip_block={"ttl_seconds": 60, "max_offenses": 2})
    router = ActionRouter(config, None, Metrics(), None, clock=Clock())
    many = [finding(), finding(severity=Severity.CRITICAL), finding(confidence=1.0)]
    await router.handle(source_ip=IP, tenant_id=None, trace_id="x", findings=many)
    assert await router.is_blocked(IP) is None
    await router.handle(source_ip=IP, tenant_id=None, trace_id="y", findings=many)
    assert await router.is_blocked(IP) is not None


async def test_no_offense_without_ip_or_matching_finding() -> None:
    router = ActionRouter(router_config(), None, Metrics(), None, clock=Clock())
    await router.handle(source_ip=None, tenant_id=None, trace_id="x", findings=[finding()])
    await router.handle(
        source_ip=IP, tenant_id=None, trace_id="x", findings=[finding(severity=Severity.LOW)]
    )
    assert await router.is_blocked(IP) is None
    assert await router.is_blocked(None) is None


# -- IP blocks, Redis ----------------------------------------------------------------------


async def test_redis_seed_scenario_blocks_next_request_until_ttl(
    redis_client: tuple[Any, str],
) -> None:
    """Seed: first offending request allowed, the second refused, allowed again after 1 s."""
    client, prefix = redis_client
    clock = Clock(time.time())
    router = ActionRouter(router_config(), client, Metrics(), None, prefix=prefix, clock=clock)
    assert await router.is_blocked(IP) is None  # request 1 passes the header check...
    await router.handle(source_ip=IP, tenant_id="t", trace_id="1", findings=[finding()])
    left = await router.is_blocked(IP)  # ...and request 2 does not
    assert left == pytest.approx(1, abs=0.01)  # the clock has not moved
    assert 0 < await client.ttl(f"{prefix}ipblock:{{{IP}}}:blocked") <= 1
    assert await client.exists(f"{prefix}ipblock:{{{IP}}}:offenses") == 0  # reset at block
    clock.now += 1.05  # the stored block-until is compared with the router's clock
    assert await router.is_blocked(IP) is None
    # And Redis drops the key itself (EX), whatever the clock says.
    clock.now -= 1.05
    deadline = time.monotonic() + 5
    while await router.is_blocked(IP) is not None:
        assert time.monotonic() < deadline, "the block key never expired in Redis"
        await asyncio.sleep(0.05)


async def test_redis_offenses_are_shared_and_atomic(redis_client: tuple[Any, str]) -> None:
    client, prefix = redis_client
    config = router_config(ip_block={"ttl_seconds": 60, "max_offenses": 5})
    metrics_a, metrics_b = Metrics(), Metrics()
    a = ActionRouter(config, client, metrics_a, None, prefix=prefix)
    b = ActionRouter(config, client, metrics_b, None, prefix=prefix)  # another replica

    async def offend(router: ActionRouter) -> None:
        await router.handle(source_ip=IP, tenant_id="t", trace_id="x", findings=[finding()])

    await asyncio.gather(*(offend(r) for r in [a, b, a, b]))
    assert await a.is_blocked(IP) is None
    assert await client.get(f"{prefix}ipblock:{{{IP}}}:offenses") == b"4"
    assert 0 < await client.ttl(f"{prefix}ipblock:{{{IP}}}:offenses") <= 60
    await offend(a)
    left = await b.is_blocked(IP)
    assert left is not None and 59 < left <= 60
    blocked = sum(
        sample(m, "extproc_action_router_events_total", event="ip_blocked")
        for m in (metrics_a, metrics_b)
    )
    assert blocked == 1


async def test_redis_unreachable_falls_back_locally() -> None:
    broken = redis_asyncio.Redis.from_url(
        "redis://127.0.0.1:1/0", socket_timeout=0.2, socket_connect_timeout=0.2
    )
    clock = Clock()
    metrics = Metrics()
    config = router_config(ip_block={"ttl_seconds": 30, "max_offenses": 1})
    router = ActionRouter(config, broken, metrics, None, clock=clock, retry_seconds=5)
    assert await router.is_blocked(IP) is None  # fails open, no exception
    assert sample(metrics, "extproc_cache_fallbacks_total") == 1
    await router.handle(source_ip=IP, tenant_id="t", trace_id="x", findings=[finding()])
    assert await router.is_blocked(IP) == pytest.approx(30)  # blocked in this process
    assert sample(metrics, "extproc_cache_fallbacks_total") == 1  # Redis not retried yet
    clock.now += 6  # the retry period is over: Redis is tried (and fails) again
    assert await router.is_blocked("198.51.100.2") is None
    assert sample(metrics, "extproc_cache_fallbacks_total") == 2
    assert await router.is_blocked(IP) == pytest.approx(24)  # the local block still holds
    await broken.aclose()


async def test_no_redis_read_when_no_rule_blocks() -> None:
    broken = redis_asyncio.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    metrics = Metrics()
    config = router_config(
        rules=[{"actions": ["webhook"]}], webhook={"url": "http://127.0.0.1:9/hook"}
    )
    router = ActionRouter(config, broken, metrics, None)
    assert await router.is_blocked(IP) is None
    assert sample(metrics, "extproc_cache_fallbacks_total") == 0  # Redis never asked
    await router.close()
    await broken.aclose()


# -- webhook --------------------------------------------------------------------------------


class CapturingSender(WebhookSender):
    def __init__(self, metrics: Metrics) -> None:
        super().__init__("http://unused", timeout_s=1, max_retries=0, queue_size=1, metrics=metrics)
        self.payloads: list[dict[str, Any]] = []

    def submit(self, payload: dict[str, Any]) -> bool:
        self.payloads.append(payload)
        return True


async def test_webhook_payload_has_matched_findings_and_no_text() -> None:
    metrics = Metrics()
    sender = CapturingSender(metrics)
    config = router_config(
        rules=[{"finding_type": "prompt_injection", "actions": ["webhook"]}],
        webhook={"url": "http://127.0.0.1:9/hook"},
    )
    router = ActionRouter(config, None, metrics, sender, clock=lambda: 1_700_000_000.25)
    ignored = finding("email", Severity.LOW, 1.0, Category.PII)
    plan = await router.handle(
        source_ip="198.51.100.10",
        tenant_id="acme",
        trace_id="trace-1",
        findings=[finding(), ignored],
    )
    assert plan.webhook and not plan.block_ip
    assert sender.payloads == [
        {
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
    ]
    assert sample(metrics, "extproc_action_router_events_total", event="webhook_queued") == 1


async def test_reconfigure_builds_or_updates_the_sender() -> None:
    metrics = Metrics()
    router = ActionRouter(router_config(), None, metrics, None)
    hooked = router_config(
        rules=[{"actions": ["webhook"]}],
        webhook={"url": "http://127.0.0.1:9/a", "timeout_ms": 300, "max_retries": 1},
    )
    router.reconfigure(hooked)
    sender = router._sender
    assert sender is not None and sender.url == "http://127.0.0.1:9/a"
    assert sender.timeout_s == pytest.approx(0.3)
    router.reconfigure(
        router_config(rules=[{"actions": ["webhook"]}], webhook={"url": "http://127.0.0.1:9/b"})
    )
    assert router._sender is sender and sender.url == "http://127.0.0.1:9/b"
    assert sender.max_retries == 3
    await router.close()  # built by the router, so closed by it
    assert not sender.submit({})
