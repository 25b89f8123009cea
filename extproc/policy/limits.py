"""Per-tenant rate limits (token buckets) and rolling-window spend budgets, shared in Redis.

Every replica reads and updates the same Redis keys, and each decision is one Lua script
call, so replicas agree and a decision costs one round trip. When Redis fails the decision
is made from this process's own state instead (`degraded`: logged once per retry period and
counted in `cache_fallbacks`), and Redis is tried again after `RETRY_SECONDS`. Nothing here
raises into the request path.

Time is the caller's clock, passed to the scripts, not Redis TIME: the local fallback and
the tests (injected clocks) then run on the same time as Redis decisions, and replicas are
NTP-synchronised. Skew cannot mint tokens: the bucket script never lets time run backwards.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import quote

from redis.exceptions import RedisError

from extproc.config import BUDGET_WINDOW_SECONDS, BudgetCap, CostCapsConfig, RateLimitingConfig
from extproc.resources import data_dir
from extproc.telemetry.metrics import Metrics

log = logging.getLogger("extproc.limits")

RETRY_SECONDS = 5.0  # after a Redis failure, decide locally this long before trying again
BUCKETS_PER_WINDOW = 60  # sub-buckets per budget window: the window rolls in 1/60 steps
MICRO = 1_000_000  # budgets are stored as integer micro-dollars: no float drift in sums
MAX_LOCAL_KEYS = 10_000  # bound on per-process fallback state (least recently used goes)
ANONYMOUS = "anonymous"  # the tenant of requests without one
_EPSILON = 1e-9  # float error in refills: (t + 1/rate - t) * rate can land just under 1
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)


@cache
def _script_text(name: str) -> str:
    return data_dir("storage").joinpath("redis", name).read_text()


def _key_part(value: str) -> str:
    """A key segment that no other id maps to: percent-escaped, or hashed when long."""
    raw = value.encode("utf-8", "surrogatepass")
    escaped = quote(raw, safe="")  # escapes ':' '{' '}' '%': no collisions, no hash tags
    if len(escaped) > 128:
        return "#" + hashlib.sha256(raw).hexdigest()  # '#' is always escaped above
    return escaped


class _RedisGuard:
    """Whether to use Redis now: not for RETRY_SECONDS after a failure."""

    def __init__(
        self, redis: Any | None, metrics: Metrics, clock: Callable[[], float], what: str
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        self.clock = clock
        self.what = what
        self._down_until = 0.0
        self._down = False

    @property
    def falling_back(self) -> bool:
        """True while a Redis failure has this process counting on its own."""
        return self.redis is not None and self.clock() < self._down_until

    def usable(self) -> bool:
        """True when there is a Redis and it is not in its retry pause."""
        return self.redis is not None and self.clock() >= self._down_until

    def failed(self, exc: BaseException) -> None:
        """Start a retry pause; concurrent failures of the same outage count once."""
        now = self.clock()
        if now < self._down_until:
            return
        self._down_until = now + RETRY_SECONDS
        self._down = True
        self.metrics.cache_fallbacks.inc()
        log.warning(
            "Redis failed (%s): %s are decided per process for %.0fs",
            str(exc) or type(exc).__name__,
            self.what,
            RETRY_SECONDS,
        )

    def succeeded(self) -> None:
        """Note a working call (logs the recovery once)."""
        if self._down:
            self._down = False
            log.info("Redis is back: %s are shared again", self.what)


# -- rate limits ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateVerdict:
    """The outcome of one rate-limit check."""

    allowed: bool
    retry_after_s: float  # seconds until one request would be allowed (0 when allowed)
    remaining: int  # whole tokens left after this request
    limit: int  # burst size in force
    degraded: bool  # decided by the local fallback because Redis failed


def _take(
    tokens: float | None, ts: float, now: float, rate: float, burst: int
) -> tuple[bool, float, float]:
    """Refill then take one token: (allowed, tokens, ts). Mirrors token_bucket.lua."""
    if tokens is None:
        tokens, ts = float(burst), now
    if now > ts:
        tokens += (now - ts) * rate
        ts = now
    tokens = min(tokens, float(burst))
    if tokens >= 1 - _EPSILON:
        return True, max(tokens - 1, 0.0), ts
    return False, tokens, ts


class _LocalBuckets:
    """Per-process token buckets: the fallback, and the limiter when there is no Redis."""

    def __init__(self, max_keys: int = MAX_LOCAL_KEYS) -> None:
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float, float]] = OrderedDict()

    def take(
        self, key: str, now: float, rate: float, burst: int, ttl_s: float
    ) -> tuple[bool, float]:
        """Take one token from the key's bucket: (allowed, tokens left)."""
        state = self._buckets.pop(key, None)
        tokens: float | None = None
        ts = now
        if state is not None and now < state[2]:  # expired buckets are full again
            tokens, ts = state[0], state[1]
        allowed, tokens, ts = _take(tokens, ts, now, rate, burst)
        self._buckets[key] = (tokens, ts, now + ttl_s)
        if len(self._buckets) > self.max_keys:
            # The least recently used bucket goes; it comes back full (errs on allowing).
            self._buckets.popitem(last=False)
        return allowed, tokens


class _RedisBacked:
    """What both counters share: a Lua script on Redis, a guard that falls back locally."""

    def __init__(
        self,
        redis: Any | None,
        metrics: Metrics,
        *,
        prefix: str,
        clock: Callable[[], float],
        what: str,
        script: str,
    ) -> None:
        self.prefix = prefix
        self.clock = clock
        self._guard = _RedisGuard(redis, metrics, clock, what)
        self._script: Any = (
            redis.register_script(_script_text(script)) if redis is not None else None
        )

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and this process counts locally."""
        return self._guard.falling_back


class RateLimiter(_RedisBacked):
    """A token bucket per tenant: `burst_size` at once, `requests_per_second` sustained."""

    def __init__(
        self,
        config: RateLimitingConfig,
        redis: Any | None,
        metrics: Metrics,
        *,
        prefix: str = "extproc:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            redis,
            metrics,
            prefix=prefix,
            clock=clock,
            what="rate limits",
            script="token_bucket.lua",
        )
        self.config = config
        self._local = _LocalBuckets()

    def reconfigure(self, config: RateLimitingConfig) -> None:
        """Apply new rates from the next check on (buckets carry over, clamped to burst)."""
        self.config = config

    def key(self, tenant: str | None) -> str:
        """The Redis key of a tenant's bucket."""
        return f"{self.prefix}rl:{_key_part(ANONYMOUS if tenant is None else tenant)}"

    async def check(self, tenant: str | None) -> RateVerdict:
        """Take one token from the tenant's bucket if it has one."""
        config = self.config
        rate, burst = config.for_tenant(tenant)
        key = self.key(tenant)
        now = self.clock()
        # Forget the bucket after `window_seconds` idle, but never before it could be full
        # again: an expired bucket restarts full.
        ttl_s = max(float(config.window_seconds), burst / rate)
        if self._guard.usable():
            try:
                allowed, left = await self._script(
                    keys=[key], args=[repr(float(now)), repr(rate), burst, math.ceil(ttl_s * 1000)]
                )
            except _REDIS_ERRORS as exc:
                self._guard.failed(exc)
            else:
                self._guard.succeeded()
                return _rate_verdict(bool(int(allowed)), float(left), rate, burst, False)
        ok, tokens = self._local.take(key, now, rate, burst, ttl_s)
        return _rate_verdict(ok, tokens, rate, burst, self._guard.redis is not None)


def _rate_verdict(
    allowed: bool, tokens: float, rate: float, burst: int, degraded: bool
) -> RateVerdict:
    retry = 0.0 if allowed else max(1 - tokens, 0.0) / rate
    return RateVerdict(allowed, retry, math.floor(tokens + _EPSILON), burst, degraded)


# -- budgets -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetVerdict:
    """The outcome of a budget check before the upstream."""

    allowed: bool
    scope: str | None  # "tenant" or "agent" of the exceeded cap
    window: str | None  # the exceeded window ("hourly", ...)
    spent_usd: float  # spend in that window
    limit_usd: float | None  # its hard limit
    retry_after_s: float  # when enough spend will have rolled out of the window (>= 1)
    degraded: bool = False  # decided by the local fallback because Redis failed


@dataclass(frozen=True, slots=True)
class BudgetEvent:
    """A soft or hard cap crossed by a recorded spend."""

    scope: str  # "tenant" | "agent"
    tenant_id: str | None
    agent_id: str | None  # set for agent scope only
    window: str
    kind: str  # "soft" | "hard"
    spent_usd: float
    limit_usd: float


@dataclass(frozen=True, slots=True)
class _Slot:
    """One (scope, window) hash in a script call, with the cap that applies to it."""

    key: str
    scope: str
    window: str
    cap: BudgetCap | None

    @property
    def bucket_s(self) -> int:
        return BUDGET_WINDOW_SECONDS[self.window] // BUCKETS_PER_WINDOW

    @property
    def hard_micro(self) -> int:
        hard = self.cap.hard_limit_usd if self.cap is not None else None
        return _micro(hard) if hard is not None else 0


def _micro(usd: float) -> int:
    return round(usd * MICRO)


def _window_sum(
    buckets: dict[int, int], now: float, size: int, amount: int, limit: int
) -> tuple[int, int]:
    """Add to the current bucket, prune, sum: (sum, free_at). Mirrors budget_window.lua."""
    current = math.floor(now / size)
    oldest = current - BUCKETS_PER_WINDOW + 1
    for index in [i for i in buckets if i < oldest]:
        del buckets[index]
    if amount > 0:
        buckets[current] = buckets.get(current, 0) + amount
    total = sum(buckets.values())
    free_at = -1
    if limit > 0 and total >= limit:
        left = total
        for index in sorted(buckets):
            left -= buckets[index]
            if left < limit:
                free_at = index
                break
    return total, free_at


class BudgetTracker(_RedisBacked):
    """Spend per tenant and per capped agent over rolling windows; hard caps deny, soft alert."""

    def __init__(
        self,
        config: CostCapsConfig,
        redis: Any | None,
        metrics: Metrics,
        *,
        prefix: str = "extproc:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            redis, metrics, prefix=prefix, clock=clock, what="budgets", script="budget_window.lua"
        )
        self.config = config
        self._local: OrderedDict[str, dict[int, int]] = OrderedDict()

    def reconfigure(self, config: CostCapsConfig) -> None:
        """Apply new caps from the next call on (recorded spend carries over)."""
        self.config = config

    def key(self, tenant: str | None, agent: str | None, window: str) -> str:
        """The Redis hash of one scope and window (agent None: the tenant's own)."""
        # The tenant is the hash tag: every key of one call sits in one Redis Cluster slot.
        base = f"{self.prefix}budget:{{t:{_key_part(ANONYMOUS if tenant is None else tenant)}}}"
        if agent is None:
            return f"{base}:tenant:{window}"
        return f"{base}:agent:{_key_part(agent)}:{window}"

    def _hard_slots(self, tenant: str | None, agent: str | None) -> list[_Slot]:
        """The windows with a hard cap, tenant's then agent's: what `check` reads."""
        config = self.config
        slots = [
            _Slot(self.key(tenant, None, cap.window), "tenant", cap.window, cap)
            for cap in config.default_budget_caps
            if cap.hard_limit_usd is not None
        ]
        if agent is not None:
            slots += [
                _Slot(self.key(tenant, agent, cap.window), "agent", cap.window, cap)
                for cap in config.agent_budget_caps(agent)
                if cap.hard_limit_usd is not None
            ]
        return slots

    def _all_slots(self, tenant: str | None, agent: str | None, *, any_agent: bool) -> list[_Slot]:
        """Every window of the tenant, and of the agent when it has caps (or `any_agent`)."""
        config = self.config
        scopes: list[tuple[str, str | None, list[BudgetCap]]] = [
            ("tenant", None, config.default_budget_caps)
        ]
        agent_caps = config.agent_budget_caps(agent)
        if agent is not None and (agent_caps or any_agent):
            scopes.append(("agent", agent, agent_caps))
        slots: list[_Slot] = []
        for scope, agent_id, caps in scopes:
            by_window: dict[str, BudgetCap] = {cap.window: cap for cap in caps}
            slots += [
                _Slot(self.key(tenant, agent_id, window), scope, window, by_window.get(window))
                for window in BUDGET_WINDOW_SECONDS
            ]
        return slots

    async def _run(
        self, slots: Sequence[_Slot], amount: int, now: float
    ) -> tuple[list[tuple[int, int]], bool]:
        """(sum, free_at) per slot, and whether they came from this process (degraded)."""
        if self._guard.usable():
            args: list[Any] = [repr(float(now)), amount, BUCKETS_PER_WINDOW]
            for slot in slots:
                args += [slot.bucket_s, slot.hard_micro]
            try:
                flat = await self._script(keys=[s.key for s in slots], args=args)
            except _REDIS_ERRORS as exc:
                self._guard.failed(exc)
            else:
                self._guard.succeeded()
                return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)], False
        results = []
        for slot in slots:
            buckets = self._local.pop(slot.key, None)
            if buckets is None:
                buckets = {}
            results.append(_window_sum(buckets, now, slot.bucket_s, amount, slot.hard_micro))
            if buckets:
                self._local[slot.key] = buckets
                if len(self._local) > MAX_LOCAL_KEYS:
                    self._local.popitem(last=False)  # least recently used: errs on allowing
        return results, self._guard.redis is not None

    async def check(self, tenant: str | None, agent: str | None) -> BudgetVerdict:
        """Before the upstream: deny when any hard cap of the tenant or agent is reached."""
        slots = self._hard_slots(tenant, agent)
        if not slots:
            return BudgetVerdict(True, None, None, 0.0, None, 0.0)
        now = self.clock()
        results, degraded = await self._run(slots, 0, now)
        worst: BudgetVerdict | None = None
        for slot, (total, free_at) in zip(slots, results, strict=True):
            if total < slot.hard_micro:
                continue
            if free_at >= 0:
                retry = (free_at + BUCKETS_PER_WINDOW) * slot.bucket_s - now
            else:  # cannot happen with a consistent reply; one bucket step is a fair guess
                retry = float(slot.bucket_s)
            verdict = BudgetVerdict(
                False,
                slot.scope,
                slot.window,
                total / MICRO,
                slot.hard_micro / MICRO,
                max(1.0, retry),
                degraded,
            )
            # The request goes through only once every cap allows it: report the longest wait.
            if worst is None or verdict.retry_after_s > worst.retry_after_s:
                worst = verdict
        return worst or BudgetVerdict(True, None, None, 0.0, None, 0.0, degraded)

    async def record(
        self, tenant: str | None, agent: str | None, cost_usd: float
    ) -> list[BudgetEvent]:
        """Add a finished request's cost; returns the caps this spend crossed (once each)."""
        amount = _micro(cost_usd) if math.isfinite(cost_usd) else 0
        if amount <= 0:
            return []
        # Every window is kept (for `spent`, and for caps added by a reload); an agent's only
        # while it has caps, so arbitrary agent ids cannot grow Redis.
        slots = self._all_slots(tenant, agent, any_agent=False)
        results, _ = await self._run(slots, amount, self.clock())
        events: list[BudgetEvent] = []
        for slot, (after, _) in zip(slots, results, strict=True):
            if slot.cap is None:
                continue
            # The script's sum includes exactly this amount, so before < limit <= after holds
            # for one request only, whichever replica recorded it.
            before = after - amount
            limits = (("soft", slot.cap.soft_limit_usd), ("hard", slot.cap.hard_limit_usd))
            for kind, limit in limits:
                if limit is not None and before < _micro(limit) <= after:
                    events.append(
                        BudgetEvent(
                            slot.scope,
                            tenant,
                            agent if slot.scope == "agent" else None,
                            slot.window,
                            kind,
                            after / MICRO,
                            limit,
                        )
                    )
        return events

    async def spent(self, tenant: str | None, agent: str | None) -> dict[str, float]:
        """USD per window for the tenant, and under "agent:<window>" for the agent if given."""
        slots = self._all_slots(tenant, agent, any_agent=True)
        results, _ = await self._run(slots, 0, self.clock())
        return {
            (slot.window if slot.scope == "tenant" else f"agent:{slot.window}"): total / MICRO
            for slot, (total, _) in zip(slots, results, strict=True)
        }
