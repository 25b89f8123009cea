"""The action router (LLMTrace's): findings trigger IP blocks and webhooks.

`plan()` maps a request's findings to actions. `handle()` runs after the request's verdict
(off the request path): it counts one offense per offending request against the client IP
and, at `max_offenses` within `ttl_seconds`, blocks the IP for `ttl_seconds`; it also
queues the webhook. `is_blocked()` is the request-headers check, so the request that
triggers a block still gets its normal answer and the block applies from the next one.

Redis keys (shared by replicas; the `{ip}` hash tag keeps both keys in one cluster slot,
which the Lua script needs):

    <prefix>ipblock:{<ip>}:offenses  integer, EXPIRE ttl_seconds from the first offense
    <prefix>ipblock:{<ip>}:blocked   block-until Unix time (seconds), SET EX ttl_seconds

The block value holds its own expiry so that readers compare it with their clock: tests
inject one, and a replica never honours a block past its end even if Redis expiry lags.
When Redis fails, offenses and blocks go to a per-process store for `retry_seconds`
(logged once per period and counted in `extproc_cache_fallbacks`).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

from extproc.config import ActionRouterConfig
from extproc.detect.findings import Finding
from extproc.telemetry.metrics import Metrics
from extproc.telemetry.webhooks import WebhookSender

log = logging.getLogger("extproc.actions")

# One round trip, atomic across replicas: count the offense, start its window when new,
# and at the threshold set the block and restart the count (the next block needs
# max_offenses fresh offenses).
# KEYS[1] offenses, KEYS[2] blocked; ARGV[1] ttl seconds, ARGV[2] max offenses,
# ARGV[3] block-until timestamp. Returns the offense count including this one.
_OFFEND_LUA = """
local n = redis.call('INCR', KEYS[1])
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[1])
  redis.call('DEL', KEYS[1])
end
return n
"""

_LOCAL_MAX_ENTRIES = 100_000  # bound the fallback store under an address-spraying attack


def _parse_ip(text: str) -> str | None:
    """Canonical address of "v4", "v6", "v4:port", "[v6]" or "[v6]:port"; None if invalid."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
    elif text.count(":") == 1:  # bare IPv6 has at least two colons
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
    else:
        host = text
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # dual-stack listeners report v4 clients as ::ffff:a.b.c.d
    return str(addr)


def client_ip(xff: str | None, peer: str | None, trusted_hops: int) -> str | None:
    """The client address: Envoy's peer, or an X-Forwarded-For entry past trusted proxies.

    `trusted_hops` is how many proxies in front of Envoy append to X-Forwarded-For.
    0: the peer address Envoy saw. N > 0: the entry N places from the right (1 = the last
    entry, written by the proxy nearest Envoy); entries further left are whatever the
    client sent and cannot be trusted. If the header has fewer than N entries the leftmost
    is used. An entry that is not an IP address (after stripping "[v6]:port" / "v4:port"
    forms) falls back to the peer. The peer is normalised the same way; None if unusable.

    Envoy with `use_remote_address: false` does not append to the header, so a client
    talking to Envoy directly with "x-forwarded-for: 203.0.113.7" and trusted_hops 1 is
    203.0.113.7 (spoofable: use 0 unless a proxy really sits in front). With
    `use_remote_address: true` Envoy appends the peer itself, so count Envoy as a hop.
    """
    peer_ip = _parse_ip(peer) if peer else None
    if trusted_hops <= 0 or not xff:
        return peer_ip
    entries = xff.split(",")
    chosen = entries[-trusted_hops] if len(entries) >= trusted_hops else entries[0]
    return _parse_ip(chosen) or peer_ip


@dataclass(frozen=True, slots=True)
class ActionPlan:
    """The actions a request's findings call for."""

    block_ip: bool
    webhook: bool
    findings: tuple[Finding, ...]  # the findings that matched


_NOTHING = ActionPlan(False, False, ())


class _LocalBlocks:
    """Per-process offenses and blocks: the fallback, and the store when there is no Redis."""

    def __init__(self) -> None:
        self.offenses: dict[str, tuple[int, float]] = {}  # ip -> (count, window end)
        self.blocks: dict[str, float] = {}  # ip -> blocked until

    def blocked(self, ip: str, now: float) -> float | None:
        """Seconds left on the IP's block, or None."""
        until = self.blocks.get(ip)
        if until is None:
            return None
        if until <= now:
            del self.blocks[ip]
            return None
        return until - now

    def offend(self, ip: str, ttl: int, max_offenses: int, now: float) -> int:
        """Count an offense (blocking at the threshold); returns the count including it."""
        count, window_end = self.offenses.get(ip, (0, 0.0))
        if window_end <= now:
            count, window_end = 0, now + ttl
        count += 1
        if count >= max_offenses:
            self.blocks[ip] = now + ttl
            self.offenses.pop(ip, None)
        else:
            self.offenses[ip] = (count, window_end)
        if len(self.offenses) + len(self.blocks) > _LOCAL_MAX_ENTRIES:
            self.offenses = {k: v for k, v in self.offenses.items() if v[1] > now}
            self.blocks = {k: v for k, v in self.blocks.items() if v > now}
        return count


class ActionRouter:
    """Matches findings to actions, counts offenses per IP, keeps IP blocks, sends webhooks."""

    def __init__(
        self,
        config: ActionRouterConfig,
        redis: Any | None,
        metrics: Metrics,
        sender: WebhookSender | None,
        *,
        prefix: str = "extproc:",
        clock: Callable[[], float] = time.time,
        retry_seconds: float = 5.0,
    ) -> None:
        # `redis` is a redis.asyncio client; give it short timeouts, is_blocked is hot.
        self.redis = redis
        self.metrics = metrics
        self.prefix = prefix
        self.clock = clock
        self.retry_seconds = retry_seconds
        self.local = _LocalBlocks()
        self._offend_script: Any = redis.register_script(_OFFEND_LUA) if redis else None
        self._down_until = 0.0
        self._sender = sender
        self._owned_sender: WebhookSender | None = None  # built here, so closed here
        self.config = config
        self.reconfigure(config)

    def reconfigure(self, config: ActionRouterConfig) -> None:
        """Apply new rules; offenses and blocks carry over, webhook settings apply next send."""
        self.config = config
        used = set(config.default_actions).union(*(r.actions for r in config.rules))
        self._uses_block = config.enabled and "block_ip" in used
        hook = config.webhook
        if not (config.enabled and "webhook" in used and hook.url):
            return
        if self._sender is None:
            self._sender = self._owned_sender = WebhookSender(
                hook.url,
                timeout_s=hook.timeout_ms / 1000,
                max_retries=hook.max_retries,
                queue_size=hook.queue_size,
                metrics=self.metrics,
            )
        else:
            self._sender.update(
                url=hook.url, timeout_s=hook.timeout_ms / 1000, max_retries=hook.max_retries
            )

    def plan(self, findings: Sequence[Finding]) -> ActionPlan:
        """Actions for these findings: every matching rule's, default_actions for the rest."""
        config = self.config
        if not config.enabled or not findings:
            return _NOTHING
        actions: set[str] = set()
        matched: list[Finding] = []
        for finding in findings:
            hit = False
            for rule in config.rules:
                if (
                    (rule.finding_type is None or rule.finding_type == finding.type)
                    and finding.severity >= rule.min_severity
                    and finding.confidence >= rule.min_confidence
                ):
                    actions.update(rule.actions)
                    hit = True
            if not hit and config.default_actions:
                actions.update(config.default_actions)
                hit = True
            if hit:
                matched.append(finding)
        if not matched:
            return _NOTHING
        return ActionPlan("block_ip" in actions, "webhook" in actions, tuple(matched))

    async def is_blocked(self, ip: str | None) -> float | None:
        """Seconds left on the IP's block, None when not blocked; one Redis GET, never raises."""
        if ip is None or not self._uses_block:
            return None
        now = self.clock()
        # Blocks set while Redis was away keep applying after it returns.
        left = self.local.blocked(ip, now)
        if left is not None or self.redis is None or self._degraded(now):
            return left
        try:
            value = await self.redis.get(self._key(ip, "blocked"))
        except (RedisError, OSError) as exc:
            self._fail(exc, now)
            return None
        if value is None:
            return None
        try:
            left = float(value) - now
        except ValueError:  # not written by us: honour it for the configured time
            return float(self.config.ip_block.ttl_seconds)
        return left if left > 0 else None

    async def handle(
        self,
        *,
        source_ip: str | None,
        tenant_id: str | None,
        trace_id: str,
        findings: Sequence[Finding],
    ) -> ActionPlan:
        """Run the plan for a finished request's findings: count the offense, queue the webhook."""
        plan = self.plan(findings)
        if plan.block_ip and source_ip:
            try:
                await self._offend(source_ip)
            except Exception:  # off the request path: a bug must not surface in the caller
                log.exception("counting an offense for %s failed", source_ip)
        if plan.webhook:
            if self._sender is None:
                log.warning("webhook action without action_router.webhook.url: not sent")
            elif self._sender.submit(self._payload(source_ip, tenant_id, trace_id, plan)):
                self.metrics.inc(self.metrics.action_events, "webhook_queued")
        return plan

    async def _offend(self, ip: str) -> None:
        settings = self.config.ip_block
        ttl, max_offenses = settings.ttl_seconds, settings.max_offenses
        now = self.clock()
        count: int | None = None
        if self._offend_script is not None and not self._degraded(now):
            try:
                count = int(
                    await self._offend_script(
                        keys=[self._key(ip, "offenses"), self._key(ip, "blocked")],
                        args=[ttl, max_offenses, f"{now + ttl:.3f}"],
                    )
                )
            except (RedisError, OSError) as exc:
                self._fail(exc, now)
        if count is None:
            count = self.local.offend(ip, ttl, max_offenses, now)
        self.metrics.inc(self.metrics.action_events, "offense")
        if count >= max_offenses:
            self.metrics.inc(self.metrics.action_events, "ip_blocked")
            log.warning(
                "blocking %s for %ds after %d offense(s) within %ds",
                ip,
                ttl,
                count,
                ttl,
            )

    def _payload(
        self, source_ip: str | None, tenant_id: str | None, trace_id: str, plan: ActionPlan
    ) -> dict[str, Any]:
        # Only what identifies a finding: never the matched text (it may be a secret).
        return {
            "source_ip": source_ip,
            "tenant_id": tenant_id,
            "trace_id": trace_id,
            "findings": [
                {
                    "finding_type": f.type,
                    "severity": str(f.severity),
                    "confidence": f.confidence,
                    "category": str(f.category),
                    "rule_id": f.rule_id,
                    "detector": f.detector,
                }
                for f in plan.findings
            ],
            "timestamp": datetime.fromtimestamp(self.clock(), UTC).isoformat(
                timespec="milliseconds"
            ),
        }

    def _key(self, ip: str, kind: str) -> str:
        return f"{self.prefix}ipblock:{{{ip}}}:{kind}"

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and IP blocks are kept in this process."""
        return self.redis is not None and self._degraded(self.clock())

    def _degraded(self, now: float) -> bool:
        return now < self._down_until

    def _fail(self, exc: Exception, now: float) -> None:
        log.warning(
            "Redis unreachable (%s): IP blocks are per process for %.0fs", exc, self.retry_seconds
        )
        self._down_until = now + self.retry_seconds
        self.metrics.cache_fallbacks.inc()

    async def close(self) -> None:
        """Flush a webhook sender this router built itself (a given one is its owner's)."""
        if self._owned_sender is not None:
            await self._owned_sender.close()
