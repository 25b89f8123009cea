"""Counters shared by every replica (Redis), with a local fallback when Redis is away.

Later issues count requests, tokens and spend here. The hot path calls these coroutines, so
Redis is given short timeouts; when it fails, counting continues locally (per process,
logged once and metered) and Redis is tried again after `retry_seconds`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from extproc.resources import data_dir
from extproc.telemetry.metrics import Metrics

log = logging.getLogger("extproc.cache")


class CounterCache(Protocol):
    """Integer counters with a lifetime."""

    async def incr(self, key: str, amount: int, ttl_seconds: int) -> int:
        """Add `amount`; a new counter lives `ttl_seconds`. Returns the new value."""
        ...

    async def get(self, key: str) -> int:
        """The current value (0 when absent or expired)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class LocalCounterCache:
    """Per-process counters: the fallback, and the cache when no Redis is configured."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[int, float]] = {}  # key -> (value, expires monotonic)

    async def incr(self, key: str, amount: int, ttl_seconds: int) -> int:
        """Add to the counter; expired counters start again at 0."""
        now = time.monotonic()
        value, expires = self._values.get(key, (0, 0.0))
        if expires <= now:
            value, expires = 0, now + ttl_seconds
        value += amount
        self._values[key] = (value, expires)
        if len(self._values) > 100_000:  # bound memory: drop expired entries now and then
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
        return value

    async def get(self, key: str) -> int:
        """The counter's value, 0 once expired."""
        value, expires = self._values.get(key, (0, 0.0))
        return value if expires > time.monotonic() else 0

    async def close(self) -> None:
        """Nothing to release."""


class RedisCounterCache:
    """Counters in Redis, updated by the Lua script in `storage/redis/incr_with_ttl.lua`."""

    def __init__(self, url: str, *, prefix: str = "extproc:", timeout: float = 0.25) -> None:
        self.prefix = prefix
        self._redis: Any = redis_asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        script = data_dir("storage").joinpath("redis", "incr_with_ttl.lua").read_text()
        self._incr: Any = self._redis.register_script(script)

    async def incr(self, key: str, amount: int, ttl_seconds: int) -> int:
        """Atomic add-and-expire in one round trip."""
        return int(await self._incr(keys=[self.prefix + key], args=[amount, ttl_seconds]))

    async def get(self, key: str) -> int:
        """The counter's value (0 when absent)."""
        value = await self._redis.get(self.prefix + key)
        return int(value) if value is not None else 0

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()


class FallbackCounterCache:
    """Redis first; on a Redis error, the local counters (degraded, logged, metered)."""

    def __init__(
        self,
        primary: CounterCache,
        metrics: Metrics,
        *,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.clock = clock
        self.local = LocalCounterCache()
        self.metrics = metrics
        self.retry_seconds = retry_seconds
        self._down_until = 0.0

    @property
    def degraded(self) -> bool:
        """True while counting locally because Redis failed."""
        return self.clock() < self._down_until

    async def incr(self, key: str, amount: int, ttl_seconds: int) -> int:
        """Add in Redis, or locally while Redis is away."""
        if not self.degraded:
            try:
                return await self.primary.incr(key, amount, ttl_seconds)
            except (RedisError, OSError) as exc:
                self._fail(exc)
        return await self.local.incr(key, amount, ttl_seconds)

    async def get(self, key: str) -> int:
        """Read from Redis, or locally while Redis is away."""
        if not self.degraded:
            try:
                return await self.primary.get(key)
            except (RedisError, OSError) as exc:
                self._fail(exc)
        return await self.local.get(key)

    def _fail(self, exc: Exception) -> None:
        log.warning(
            "Redis unreachable (%s): counting locally for %.0fs; limits are per process now",
            exc,
            self.retry_seconds,
        )
        self._down_until = self.clock() + self.retry_seconds
        self.metrics.cache_fallbacks.inc()

    async def close(self) -> None:
        """Close Redis."""
        await self.primary.close()
