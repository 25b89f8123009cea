"""Counters: atomic in real Redis, local fallback when Redis is away, and back again."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio

from extproc.config import load_config
from extproc.storage.cache import FallbackCounterCache, LocalCounterCache, RedisCounterCache
from extproc.storage.factory import open_counter_cache
from extproc.telemetry.metrics import Metrics

REDIS = os.environ.get("EXTPROC_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_cache() -> AsyncIterator[RedisCounterCache]:
    prefix = f"extproc-test-{uuid.uuid4().hex[:8]}:"
    client = redis_asyncio.Redis.from_url(REDIS, socket_connect_timeout=1)
    try:
        await client.ping()
    except OSError as exc:
        pytest.skip(f"Redis is not reachable at {REDIS}: {exc}")
    cache = RedisCounterCache(REDIS, prefix=prefix)
    yield cache
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    await cache.close()


async def test_redis_counters_are_atomic_and_expire(redis_cache: RedisCounterCache) -> None:
    import asyncio

    results = await asyncio.gather(*(redis_cache.incr("req", 1, 60) for _ in range(50)))
    assert sorted(results) == list(range(1, 51))  # every increment seen exactly once
    assert await redis_cache.get("req") == 50
    client = redis_asyncio.Redis.from_url(REDIS)
    assert 0 < await client.ttl(f"{redis_cache.prefix}req") <= 60
    await client.aclose()
    assert await redis_cache.get("missing") == 0


async def test_local_counters_expire() -> None:
    cache = LocalCounterCache()
    assert await cache.incr("k", 5, 60) == 5
    assert await cache.incr("k", 2, 60) == 7
    assert await cache.incr("gone", 1, 0) == 1
    assert await cache.get("gone") == 0


async def test_fallback_counts_locally_then_returns_to_redis(
    redis_cache: RedisCounterCache,
) -> None:
    metrics = Metrics()
    broken = RedisCounterCache("redis://127.0.0.1:1/0", prefix=redis_cache.prefix, timeout=0.2)
    now = [100.0]
    cache = FallbackCounterCache(broken, metrics, retry_seconds=5, clock=lambda: now[0])
    assert await cache.incr("k", 3, 60) == 3  # served locally, no exception
    assert cache.degraded
    assert "extproc_cache_fallbacks_total 1.0" in metrics.render().decode()
    assert await cache.incr("k", 1, 60) == 4  # still local inside the retry window
    cache.primary = redis_cache  # Redis is back
    now[0] += 5.1  # the retry window has passed
    assert await cache.incr("k", 1, 60) == 1  # counted in Redis again
    assert not cache.degraded
    await broken.close()


def test_factory_picks_local_without_redis_url() -> None:
    assert isinstance(open_counter_cache(load_config(environ={}), Metrics()), LocalCounterCache)
