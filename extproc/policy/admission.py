"""Admission before the upstream: IP blocks, rate limits, budgets and token caps.

One Gate serves both edges (ext_proc request headers/body and ext_authz Check), so a
request is judged the same way whichever filter Envoy runs. Counting that can wait
(spend after a response, offenses after findings) runs off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as redis_asyncio

from extproc.config import Config
from extproc.detect.findings import Finding
from extproc.dialects.base import Segment
from extproc.dialects.tokens import (
    clamp_completion_tokens,
    count_tokens,
    requested_completion_tokens,
    tokenizer_name,
)
from extproc.policy.actions import ActionRouter
from extproc.policy.gate import Caller, Denial, TokenCheck
from extproc.policy.limits import (
    BudgetEvent,
    BudgetTracker,
    BudgetVerdict,
    RateLimiter,
    RateVerdict,
)
from extproc.policy.pricing import PriceBook
from extproc.telemetry.metrics import Metrics
from extproc.telemetry.webhooks import WebhookSender

log = logging.getLogger("extproc.gate")

BudgetListener = Callable[[BudgetEvent], None]


def _retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class Gate:
    """The admission checks of one process, sharing Redis across replicas."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        *,
        redis: Any | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.redis = redis
        prefix = config.storage.redis_key_prefix
        self.rate = RateLimiter(config.rate_limiting, redis, metrics, prefix=prefix, clock=clock)
        self.budgets = BudgetTracker(config.cost_caps, redis, metrics, prefix=prefix, clock=clock)
        self.prices = PriceBook.from_config(config.cost_estimation)
        router = config.action_router
        self.sender: WebhookSender | None = None
        if router.webhook.url:
            self.sender = WebhookSender(
                router.webhook.url,
                timeout_s=router.webhook.timeout_ms / 1000,
                max_retries=router.webhook.max_retries,
                queue_size=router.webhook.queue_size,
                metrics=metrics,
            )
        self.actions = ActionRouter(router, redis, metrics, self.sender, prefix=prefix, clock=clock)
        self.budget_listeners: list[BudgetListener] = []

    @classmethod
    def build(cls, config: Config, metrics: Metrics) -> Gate:
        """A Gate on `storage.redis_url` (short timeouts: Redis is on the hot path), or local."""
        url = config.storage.redis_url
        client = None
        if url:
            client = redis_asyncio.Redis.from_url(
                url, socket_timeout=0.25, socket_connect_timeout=0.25
            )
        return cls(config, metrics, redis=client)

    def redis_status(self) -> dict[str, Any]:
        """For /health: Redis configured, and whether counting fell back to this process."""
        if self.redis is None:
            return {"status": "ok", "configured": False}
        local = self.rate.degraded or self.budgets.degraded or self.actions.degraded
        # Limits still hold per process while Redis is away: degraded, not down.
        return {"status": "degraded" if local else "ok", "configured": True, "fallback": local}

    def reconfigure(self, config: Config) -> None:
        """Apply new limits, prices and action rules; counters and blocks carry over."""
        prices = PriceBook.from_config(config.cost_estimation)  # raises before anything changes
        self.rate.reconfigure(config.rate_limiting)
        self.budgets.reconfigure(config.cost_caps)
        self.actions.reconfigure(config.action_router)
        self.prices = prices
        self.config = config

    def reload_prices(self) -> None:
        """Re-read the pricing file (SIGHUP); a broken file keeps the old prices and raises."""
        self.prices.reload()

    # -- before the upstream ---------------------------------------------------------------
    async def admit(self, caller: Caller) -> Denial | None:
        """Header-time checks: blocked IP, rate limit, hard budget. None = go on."""
        config = self.config
        checks: list[Awaitable[Any]] = []
        blocked = config.action_router.enabled and caller.source_ip is not None
        limited = config.rate_limiting.enabled
        budgeted = config.cost_caps.enabled and self._has_budgets(caller.agent_id)
        if blocked:
            checks.append(self.actions.is_blocked(caller.source_ip))
        if limited:
            checks.append(self.rate.check(caller.tenant_id))
        if budgeted:
            checks.append(self.budgets.check(caller.tenant_id, caller.agent_id))
        if not checks:
            return None
        # One Redis round trip of latency instead of three. A request refused for its IP or
        # budget still takes a rate token: it was a request, and a cheap one to refuse.
        results = iter(await asyncio.gather(*checks))
        left: float | None = next(results) if blocked else None
        rate: RateVerdict | None = next(results) if limited else None
        budget: BudgetVerdict | None = next(results) if budgeted else None
        if left is not None:
            return self._deny(
                Denial(
                    403,
                    "Your address is blocked for a while after repeated policy violations.",
                    "ip_blocked",
                    "ip_blocked",
                    {"retry-after": _retry_after(left)},
                )
            )
        if rate is not None and not rate.allowed:
            return self._deny(
                Denial(
                    429,
                    "Rate limit exceeded for this tenant; retry after "
                    f"{_retry_after(rate.retry_after_s)} s.",
                    "rate_limit_exceeded",
                    "rate_limited",
                    {
                        "retry-after": _retry_after(rate.retry_after_s),
                        "x-ratelimit-limit": str(rate.limit),
                        "x-ratelimit-remaining": "0",
                    },
                )
            )
        if budget is not None and not budget.allowed:
            who = "agent" if budget.scope == "agent" else "tenant"
            limit = f"{budget.limit_usd:.2f}" if budget.limit_usd is not None else "?"
            return self._deny(
                Denial(
                    429,
                    f"The {budget.window} budget of this {who} is spent "
                    f"(${budget.spent_usd:.2f} of ${limit}).",
                    "budget_exceeded",
                    "budget_exceeded",
                    {"retry-after": _retry_after(budget.retry_after_s)},
                )
            )
        return None

    def _has_budgets(self, agent_id: str | None) -> bool:
        caps = self.config.cost_caps
        return bool(caps.default_budget_caps or caps.agent_budget_caps(agent_id))

    def check_tokens(
        self,
        caller: Caller,
        parsed: Any,
        segments: Sequence[Segment],
        *,
        can_rewrite: bool = True,
    ) -> TokenCheck:
        """Prompt/total token caps (413) and the completion clamp, on a parsed body.

        ext_authz cannot rewrite a body (`can_rewrite=False`): a completion request over
        the cap is refused there instead of clamped.
        """
        caps = self.config.cost_caps
        cap = caps.token_cap_for(caller.agent_id) if caps.enabled else None
        if cap is None:
            return TokenCheck(None)
        prompt = sum(count_tokens(s.text) for s in segments if s.text)
        if cap.max_prompt_tokens is not None and prompt > cap.max_prompt_tokens:
            return TokenCheck(
                self._deny(
                    Denial(
                        413,
                        f"The prompt is {prompt} tokens; the limit is {cap.max_prompt_tokens}.",
                        "prompt_too_long",
                        "token_cap",
                    )
                ),
                prompt,
            )
        if cap.max_total_tokens is not None and prompt >= cap.max_total_tokens:
            return TokenCheck(
                self._deny(
                    Denial(
                        413,
                        f"The prompt is {prompt} tokens, leaving nothing of the "
                        f"{cap.max_total_tokens}-token total limit for the completion.",
                        "prompt_too_long",
                        "token_cap",
                    )
                ),
                prompt,
            )
        limits = [cap.max_completion_tokens]
        if cap.max_total_tokens is not None:
            limits.append(cap.max_total_tokens - prompt)
        limit = min((x for x in limits if x is not None), default=None)
        if limit is None:
            return TokenCheck(None, prompt)
        if not can_rewrite:
            asked = requested_completion_tokens(caller.path, parsed)
            if asked is None or asked > limit:
                return TokenCheck(
                    self._deny(
                        Denial(
                            413,
                            f"Set max_tokens to at most {limit} "
                            f"(asked: {'no limit' if asked is None else asked}).",
                            "max_tokens_too_large",
                            "token_cap",
                        )
                    ),
                    prompt,
                )
            return TokenCheck(None, prompt)
        clamped = clamp_completion_tokens(caller.path, parsed, limit)
        if clamped:
            self.metrics.completion_clamps.inc()
        return TokenCheck(None, prompt, clamped)

    def _deny(self, denial: Denial) -> Denial:
        self.metrics.inc(self.metrics.admission_denials, denial.reason)
        return denial

    # -- after the fact (off the request path) ---------------------------------------------
    def cost(
        self, model: str | None, prompt_tokens: int | None, completion_tokens: int | None
    ) -> float | None:
        """USD for a finished request, or None when the model's price is unknown."""
        if not self.config.cost_estimation.enabled:
            return None
        return self.prices.cost(model, prompt_tokens, completion_tokens)

    async def record_spend(self, caller: Caller, cost_usd: float | None) -> None:
        """Add a request's cost to its budgets; crossings go to the budget listeners."""
        if cost_usd is None or cost_usd <= 0:
            return
        self.metrics.spend_usd.inc(cost_usd)
        if not self.config.cost_caps.enabled:
            return
        for event in await self.budgets.record(caller.tenant_id, caller.agent_id, cost_usd):
            self.metrics.inc(self.metrics.budget_events, event.window, event.kind)
            log.warning(
                "budget %s limit crossed: %s %s %s window $%.4f of $%.2f",
                event.kind,
                event.scope,
                event.agent_id if event.scope == "agent" else event.tenant_id,
                event.window,
                event.spent_usd,
                event.limit_usd,
            )
            for listener in self.budget_listeners:
                listener(event)

    async def act_on(self, caller: Caller, trace_id: str, findings: Sequence[Finding]) -> None:
        """Action-router follow-up for a request's findings (IP block counting, webhook)."""
        if not self.config.action_router.enabled or not findings:
            return
        await self.actions.handle(
            source_ip=caller.source_ip,
            tenant_id=caller.tenant_id,
            trace_id=trace_id,
            findings=findings,
        )

    async def start(self) -> None:
        """Start background senders; load the tokenizer now if token caps may need it."""
        caps = self.config.cost_caps
        if caps.enabled and (caps.default_token_cap or any(a.token_cap for a in caps.agents)):
            # ~1 s to load: paid at startup, not by the first capped request.
            log.info("token caps count with %s", await asyncio.to_thread(tokenizer_name))
        if self.sender is not None:
            await self.sender.start()

    async def close(self) -> None:
        """Flush webhooks (bounded) and close Redis."""
        await self.actions.close()
        if self.sender is not None:
            await self.sender.close()
        if self.redis is not None:
            await self.redis.aclose()
