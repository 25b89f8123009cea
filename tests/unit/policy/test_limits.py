"""Rate limits and budgets: shared through real Redis, local fallback, rolling windows."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from redis.exceptions import ConnectionError as RedisConnectionError

from extproc.config import CostCapsConfig, RateLimitingConfig
from extproc.policy.limits import (
    RETRY_SECONDS,
    BudgetEvent,
    BudgetTracker,
    RateLimiter,
)
from extproc.telemetry.metrics import Metrics

REDIS = os.environ.get("EXTPROC_TEST_REDIS", "redis://127.0.0.1:6379/0")
T0 = 1_000_020.0  # on a minute boundary: an hourly budget bucket starts here
HOUR_BUCKET = 60.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Shared:
    """Redis clients on one random key prefix; everything under it is deleted afterwards."""

    def __init__(self) -> None:
        self.prefix = f"extproc-test-{uuid.uuid4().hex[:8]}:"
        self.clients: list[Any] = []

    def client(self, url: str = REDIS) -> Any:
        client = redis_asyncio.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self.clients.append(client)
        return client

    async def keys(self) -> list[bytes]:
        return [key async for key in self.clients[0].scan_iter(match=f"{self.prefix}*")]


@pytest.fixture
async def shared() -> AsyncIterator[Shared]:
    state = Shared()
    probe = state.client()
    try:
        await probe.ping()
    except (OSError, RedisConnectionError) as exc:
        await probe.aclose()
        pytest.skip(f"Redis is not reachable at {REDIS}: {exc}")
    yield state
    keys = await state.keys()
    if keys:
        await probe.delete(*keys)
    for client in state.clients:
        await client.aclose()


@pytest.fixture(params=["redis", "local"])
async def backend(request: pytest.FixtureRequest, shared: Shared) -> Any:
    """A Redis client, or None for the per-process implementation: both must agree."""
    return shared.client() if request.param == "redis" else None


def rate_config(**settings: Any) -> RateLimitingConfig:
    return RateLimitingConfig.model_validate({"enabled": True, **settings})


def caps(**settings: Any) -> CostCapsConfig:
    return CostCapsConfig.model_validate({"enabled": True, **settings})


def fallbacks(metrics: Metrics) -> str:
    for line in metrics.render().decode().splitlines():
        if line.startswith("extproc_cache_fallbacks_total "):
            return line.split()[1]
    raise AssertionError("no fallback metric")


# -- rate limits ---------------------------------------------------------------------------


async def test_burst_then_steady(backend: Any, shared: Shared) -> None:
    clock = Clock()
    limiter = RateLimiter(
        rate_config(requests_per_second=3, burst_size=5),
        backend,
        Metrics(),
        prefix=shared.prefix,
        clock=clock,
    )
    burst = [await limiter.check("acme") for _ in range(8)]
    assert [v.allowed for v in burst] == [True] * 5 + [False] * 3
    assert [v.remaining for v in burst[:5]] == [4, 3, 2, 1, 0]
    assert all(v.limit == 5 and not v.degraded for v in burst)
    # Steady state: one request per 1/rate seconds, no more.
    steady = []
    for _ in range(12):
        clock.now += 1 / 3  # not exact in binary: refills land a hair under one token
        steady += [(await limiter.check("acme")).allowed, (await limiter.check("acme")).allowed]
    assert steady == [True, False] * 12


async def test_retry_after_is_time_to_one_token(backend: Any, shared: Shared) -> None:
    clock = Clock()
    limiter = RateLimiter(
        rate_config(requests_per_second=0.25, burst_size=1),
        backend,
        Metrics(),
        prefix=shared.prefix,
        clock=clock,
    )
    assert (await limiter.check(None)).retry_after_s == 0
    denied = await limiter.check(None)
    assert not denied.allowed
    assert denied.retry_after_s == pytest.approx(4.0)
    clock.now += 2.5  # 0.625 of a token back
    assert (await limiter.check(None)).retry_after_s == pytest.approx(1.5)
    clock.now += 1.5
    assert (await limiter.check(None)).allowed


async def test_tenant_override_and_reload(backend: Any, shared: Shared) -> None:
    clock = Clock()
    config = rate_config(
        requests_per_second=1,
        burst_size=2,
        tenant_overrides={"big": {"requests_per_second": 10, "burst_size": 6}},
    )
    limiter = RateLimiter(config, backend, Metrics(), prefix=shared.prefix, clock=clock)
    big = [(await limiter.check("big")).allowed for _ in range(8)]
    small = [(await limiter.check("small")).allowed for _ in range(4)]
    assert big.count(True) == 6
    assert small.count(True) == 2
    assert (await limiter.check("big")).limit == 6
    # A reload that lowers the burst clamps the full bucket at once.
    limiter.reconfigure(rate_config(requests_per_second=1, burst_size=2))
    clock.now += 60
    assert [(await limiter.check("big")).allowed for _ in range(3)] == [True, True, False]


async def test_two_replicas_share_one_bucket(shared: Shared) -> None:
    clock = Clock()
    config = rate_config(requests_per_second=1, burst_size=10)
    replicas = [
        RateLimiter(config, shared.client(), Metrics(), prefix=shared.prefix, clock=clock)
        for _ in range(2)
    ]
    verdicts = await asyncio.gather(*(replicas[i % 2].check("acme") for i in range(40)))
    assert sum(v.allowed for v in verdicts) == 10  # atomic across clients, not 10 each
    clock.now += 1
    assert (await replicas[1].check("acme")).allowed
    assert not (await replicas[0].check("acme")).allowed


async def test_bucket_key_expires_after_idle_window(shared: Shared) -> None:
    probe = shared.client()
    limiter = RateLimiter(
        rate_config(requests_per_second=1, burst_size=200, window_seconds=60),
        probe,
        Metrics(),
        prefix=shared.prefix,
    )
    await limiter.check("acme")
    # 200 tokens at 1/s take 200 s to refill: the key must outlive that, not just 60 s.
    assert 199_000 < await probe.pttl(limiter.key("acme")) <= 200_000


def test_tenant_ids_cannot_collide_keys() -> None:
    limiter = RateLimiter(rate_config(), None, Metrics(), prefix="p:")
    keys = {limiter.key(t) for t in ["a:b", "a%3Ab", "a/b", "{a}", "", "x" * 300, "x" * 301]}
    assert len(keys) == 7
    assert all("{" not in k and k.count(":") == 2 for k in keys)
    assert limiter.key(None) == "p:rl:anonymous"
    assert len(limiter.key("x" * 5000)) < 100


async def test_unreachable_redis_falls_back_locally(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    metrics = Metrics()
    broken = redis_asyncio.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    limiter = RateLimiter(
        rate_config(requests_per_second=1, burst_size=3), broken, metrics, clock=clock
    )
    with caplog.at_level(logging.WARNING, logger="extproc.limits"):
        verdicts = [await limiter.check("acme") for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert all(v.degraded for v in verdicts)
    assert fallbacks(metrics) == "1.0"  # one outage, not one per request
    assert len([r for r in caplog.records if "Redis failed" in r.message]) == 1
    clock.now += RETRY_SECONDS  # tried again after the pause: still down, counted again
    assert (await limiter.check("acme")).degraded
    assert fallbacks(metrics) == "2.0"
    await broken.aclose()


class FlakyScript:
    """A registered script that raises while `down` is set."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.down = True

    async def __call__(self, **kwargs: Any) -> Any:
        if self.down:
            raise RedisConnectionError("connection reset")
        return await self.script(**kwargs)


async def test_back_to_shared_bucket_after_retry_pause(shared: Shared) -> None:
    clock = Clock()
    limiter = RateLimiter(
        rate_config(requests_per_second=1, burst_size=3),
        shared.client(),
        Metrics(),
        prefix=shared.prefix,
        clock=clock,
    )
    flaky = FlakyScript(limiter._script)
    limiter._script = flaky
    assert (await limiter.check("acme")).degraded
    flaky.down = False
    clock.now += RETRY_SECONDS - 1
    assert (await limiter.check("acme")).degraded  # still in the pause: no Redis call
    clock.now += 1
    verdict = await limiter.check("acme")
    assert not verdict.degraded
    assert verdict.remaining == 2  # Redis's own bucket, untouched by the local decisions


# -- budgets -------------------------------------------------------------------------------


def hourly_daily() -> CostCapsConfig:
    return caps(
        default_budget_caps=[
            {"window": "hourly", "hard_limit_usd": 1.0, "soft_limit_usd": 0.5},
            {"window": "daily", "hard_limit_usd": 5.0},
        ]
    )


async def test_hard_limit_denies_with_window_and_retry(backend: Any, shared: Shared) -> None:
    clock = Clock()
    budgets = BudgetTracker(hourly_daily(), backend, Metrics(), prefix=shared.prefix, clock=clock)
    assert (await budgets.check("acme", None)).allowed
    assert await budgets.record("acme", None, 0.4) == []
    clock.now += 600  # ten minutes later, a later bucket
    events = await budgets.record("acme", None, 0.7)
    assert [(e.kind, e.window) for e in events] == [("soft", "hourly"), ("hard", "hourly")]
    assert events[1] == BudgetEvent("tenant", "acme", None, "hourly", "hard", 1.1, 1.0)
    verdict = await budgets.check("acme", None)
    assert not verdict.allowed
    assert (verdict.scope, verdict.window) == ("tenant", "hourly")
    assert verdict.spent_usd == pytest.approx(1.1)
    assert verdict.limit_usd == 1.0
    # Dropping the first 0.4 brings 1.1 under 1.0: when its bucket leaves the hour.
    assert verdict.retry_after_s == pytest.approx(3600 - 600)
    assert not verdict.degraded
    assert (await budgets.check("other", None)).allowed


async def test_each_crossing_reported_once(backend: Any, shared: Shared) -> None:
    clock = Clock()
    budgets = BudgetTracker(hourly_daily(), backend, Metrics(), prefix=shared.prefix, clock=clock)
    kinds = []
    for _ in range(12):
        kinds += [e.kind for e in await budgets.record("acme", None, 0.1)]
    assert kinds == ["soft", "hard"]


async def test_concurrent_replicas_report_a_crossing_once(shared: Shared) -> None:
    clock = Clock()
    replicas = [
        BudgetTracker(hourly_daily(), shared.client(), Metrics(), prefix=shared.prefix, clock=clock)
        for _ in range(2)
    ]
    results = await asyncio.gather(*(replicas[i % 2].record("acme", None, 0.1) for i in range(30)))
    events = [e.kind for batch in results for e in batch]
    assert sorted(events) == ["hard", "soft"]
    assert (await replicas[0].spent("acme", None))["hourly"] == pytest.approx(3.0)


async def test_rolling_window_forgets_old_spend(backend: Any, shared: Shared) -> None:
    clock = Clock()
    budgets = BudgetTracker(hourly_daily(), backend, Metrics(), prefix=shared.prefix, clock=clock)
    await budgets.record("acme", None, 1.0)
    assert not (await budgets.check("acme", None)).allowed
    clock.now += 3600 - HOUR_BUCKET  # the spend's minute is still inside the hour
    assert not (await budgets.check("acme", None)).allowed
    clock.now += HOUR_BUCKET
    assert (await budgets.check("acme", None)).allowed
    spent = await budgets.spent("acme", None)
    assert spent["hourly"] == 0.0
    assert spent["daily"] == pytest.approx(1.0)
    assert set(spent) == {"hourly", "daily", "weekly", "monthly"}


async def test_agent_caps_are_independent_of_tenant_caps(backend: Any, shared: Shared) -> None:
    clock = Clock()
    config = caps(
        default_budget_caps=[{"window": "hourly", "hard_limit_usd": 10.0}],
        agents=[{"agent_id": "bot", "budget_caps": [{"window": "daily", "hard_limit_usd": 0.5}]}],
    )
    budgets = BudgetTracker(config, backend, Metrics(), prefix=shared.prefix, clock=clock)
    events = await budgets.record("acme", "bot", 0.5)
    assert events == [BudgetEvent("agent", "acme", "bot", "daily", "hard", 0.5, 0.5)]
    denied = await budgets.check("acme", "bot")
    assert (denied.allowed, denied.scope, denied.window) == (False, "agent", "daily")
    assert (await budgets.check("acme", "helper")).allowed  # same tenant, another agent
    assert (await budgets.check("acme", None)).allowed
    assert (await budgets.check("other", "bot")).allowed  # the cap is per tenant's agent
    spent = await budgets.spent("acme", "bot")
    assert spent["hourly"] == pytest.approx(0.5)
    assert spent["agent:daily"] == pytest.approx(0.5)


async def test_agent_spend_counts_toward_tenant(backend: Any, shared: Shared) -> None:
    clock = Clock()
    config = caps(
        default_budget_caps=[{"window": "hourly", "hard_limit_usd": 1.0}],
        agents=[{"agent_id": "bot", "budget_caps": [{"window": "daily", "hard_limit_usd": 100}]}],
    )
    budgets = BudgetTracker(config, backend, Metrics(), prefix=shared.prefix, clock=clock)
    await budgets.record("acme", "bot", 0.6)
    events = await budgets.record("acme", "unlisted", 0.4)
    assert events == [BudgetEvent("tenant", "acme", None, "hourly", "hard", 1.0, 1.0)]
    denied = await budgets.check("acme", "bot")
    assert (denied.allowed, denied.scope) == (False, "tenant")
    spent = await budgets.spent("acme", "unlisted")
    assert spent["hourly"] == pytest.approx(1.0)
    assert spent["agent:hourly"] == 0.0  # an agent without caps is not tracked on its own


async def test_budget_keys_are_per_tenant_slot_and_expire(shared: Shared) -> None:
    probe = shared.client()
    budgets = BudgetTracker(hourly_daily(), probe, Metrics(), prefix=shared.prefix)
    await budgets.record("a:b", None, 0.25)
    keys = sorted(k.decode() for k in await shared.keys())
    assert keys == sorted(
        budgets.key("a:b", None, w) for w in ["hourly", "daily", "weekly", "monthly"]
    )
    assert all("{t:a%3Ab}" in k for k in keys)
    assert 0 < await probe.ttl(budgets.key("a:b", None, "hourly")) <= 3600
    assert await probe.hvals(budgets.key("a:b", None, "hourly")) == [b"250000"]  # micro-USD


async def test_budgets_fall_back_locally_when_redis_is_unreachable() -> None:
    clock = Clock()
    metrics = Metrics()
    broken = redis_asyncio.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    budgets = BudgetTracker(hourly_daily(), broken, metrics, clock=clock)
    assert (await budgets.record("acme", None, 1.0))[-1].kind == "hard"
    verdict = await budgets.check("acme", None)
    assert (verdict.allowed, verdict.window, verdict.degraded) == (False, "hourly", True)
    assert fallbacks(metrics) == "1.0"
    await broken.aclose()


async def test_no_caps_no_redis_call() -> None:
    broken = redis_asyncio.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    metrics = Metrics()
    budgets = BudgetTracker(caps(), broken, metrics)
    verdict = await budgets.check("acme", "bot")
    assert verdict.allowed and not verdict.degraded
    assert fallbacks(metrics) == "0.0"
    assert await budgets.record("acme", None, 0.0) == []
    await broken.aclose()
