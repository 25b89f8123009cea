"""Rate limits, budgets and token caps through a real Envoy, with counters in a real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from tests.integration.harness import running_stack, wait_until
from tests.integration.tcp_proxy import CuttableProxy

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"
CHAT = "/v1/chat/completions"


def _chat(text: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own, deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:  # pragma: no cover - CI starts Redis
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    name = f"extproc-test-{uuid.uuid4().hex[:12]}:"
    yield name
    keys = list(client.scan_iter(match=name + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def _rate(prefix: str, rps: float, burst: int, url: str = REDIS_URL) -> dict[str, Any]:
    return {
        "storage.redis_url": url,
        "storage.redis_key_prefix": prefix,
        "rate_limiting.enabled": True,
        "rate_limiting.requests_per_second": rps,
        "rate_limiting.burst_size": burst,
    }


def test_burst_then_steady_rate_gives_the_expected_split(prefix: str) -> None:
    with running_stack(_rate(prefix, rps=2, burst=3)) as stack:
        headers = {"x-llmtrace-tenant-id": "team-a"}
        statuses = [stack.post(CHAT, _chat(), headers=headers).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        refused = stack.post(CHAT, _chat(), headers=headers)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["code"] == "rate_limit_exceeded"
        assert error["type"] == "rate_limit_error" or "rate" in error["type"]
        assert len(stack.upstream.requests) == 3
        # Another tenant has its own bucket.
        other = stack.post(CHAT, _chat(), headers={"x-llmtrace-tenant-id": "team-b"})
        assert other.status_code == 200
        # Steady state: 2 requests per second refill; the wait *is* the behaviour under test.
        time.sleep(0.55)
        assert stack.post(CHAT, _chat(), headers=headers).status_code == 200
        assert stack.post(CHAT, _chat(), headers=headers).status_code == 429
        assert 'extproc_requests_total{decision="rate_limited"' in stack.metrics()


def test_anthropic_clients_get_their_own_error_shape(prefix: str) -> None:
    with running_stack(_rate(prefix, rps=0.01, burst=1)) as stack:
        body = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi"}],
        }
        assert stack.post("/v1/messages", body, headers={"x-api-key": "k1"}).status_code == 200
        refused = stack.post("/v1/messages", body, headers={"x-api-key": "k1"})
        assert refused.status_code == 429
        assert refused.json()["type"] == "error"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert int(refused.headers["retry-after"]) >= 1


def test_two_extproc_replicas_share_one_bucket(prefix: str) -> None:
    settings = _rate(prefix, rps=0.01, burst=4)
    with running_stack(settings) as one, running_stack(settings) as two:
        headers = {"x-llmtrace-tenant-id": "shared"}
        got = [s.post(CHAT, _chat(), headers=headers).status_code for s in (one, two, one, two)]
        assert got == [200, 200, 200, 200]
        assert one.post(CHAT, _chat(), headers=headers).status_code == 429
        assert two.post(CHAT, _chat(), headers=headers).status_code == 429


def test_redis_down_falls_back_to_local_buckets_without_5xx(prefix: str) -> None:
    proxy = CuttableProxy("127.0.0.1", 6379)
    url = f"redis://127.0.0.1:{proxy.port}/0"
    try:
        with running_stack(_rate(prefix, rps=0.01, burst=2, url=url)) as stack:
            headers = {"x-llmtrace-tenant-id": "t"}
            assert stack.post(CHAT, _chat(), headers=headers).status_code == 200
            proxy.cut()
            statuses = [stack.post(CHAT, _chat(), headers=headers).status_code for _ in range(4)]
            # The local bucket starts full: limits keep working per process, nothing fails.
            assert statuses == [200, 200, 429, 429]
            assert "extproc_cache_fallbacks_total" in stack.metrics() or "fallback" in (
                stack.metrics()
            )
    finally:
        proxy.cut()


def _budget(prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "storage.redis_url": REDIS_URL,
        "storage.redis_key_prefix": prefix,
        "cost_caps.enabled": True,
        # 1000 USD per 1M tokens: one demo request costs cents, so one crosses the caps.
        "cost_estimation.custom_models": {
            "gpt-4o": {"input_per_million": 1000.0, "output_per_million": 1000.0}
        },
        "cost_caps.default_budget_caps": [
            {"window": "hourly", "hard_limit_usd": 0.002, "soft_limit_usd": 0.001}
        ],
        **extra,
    }


def test_hard_budget_refuses_before_the_upstream_and_soft_raises_an_alert(prefix: str) -> None:
    with running_stack(_budget(prefix)) as stack:
        headers = {"x-llmtrace-tenant-id": "spender"}
        first = stack.post(CHAT, _chat(), headers=headers)
        assert first.status_code == 200

        def refused() -> bool:
            return stack.post(CHAT, _chat(), headers=headers).status_code == 429

        wait_until(refused, "the hard budget to refuse")  # spend is recorded off the path
        before = len(stack.upstream.requests)
        again = stack.post(CHAT, _chat(), headers=headers)
        assert again.status_code == 429
        assert again.json()["error"]["code"] == "budget_exceeded"
        assert "hourly" in again.json()["error"]["message"]
        assert len(stack.upstream.requests) == before  # the upstream was not called
        assert (
            stack.post(CHAT, _chat(), headers={"x-llmtrace-tenant-id": "other"}).status_code == 200
        )
        assert stack.extproc is not None
        metadata = stack.extproc.handle.metadata
        assert metadata is not None
        wait_until(lambda: metadata.list("alert_event"), "the budget alert events")
        kinds = {(e["type"], e["tenant_id"]) for e in metadata.list("alert_event")}
        assert ("budget_soft_limit", "spender") in kinds


def test_spend_is_stored_on_the_span(prefix: str) -> None:
    with running_stack(_budget(prefix, **{"cost_caps.enabled": False})) as stack:
        resp = stack.post(CHAT, _chat())
        assert resp.status_code == 200
        assert stack.extproc is not None
        engine = stack.extproc.handle.engine
        wait_until(lambda: engine.records.snapshot(), "the record")
        record = engine.records.snapshot()[-1]
        assert record.cost_usd is not None and record.cost_usd > 0
        expected = (record.prompt_tokens + record.completion_tokens) * 1000 / 1_000_000
        assert record.cost_usd == pytest.approx(expected)


def _caps(**extra: Any) -> dict[str, Any]:
    return {"cost_caps.enabled": True, **extra}


def test_prompt_over_the_token_cap_is_rejected_in_dialect() -> None:
    caps = _caps(
        **{
            "cost_caps.default_token_cap": {"max_prompt_tokens": 20},
            "cost_caps.agents": [
                {"agent_id": "research", "token_cap": {"max_prompt_tokens": 5000}}
            ],
        }
    )
    long_text = "Please summarise the following meeting notes for me. " * 10
    with running_stack(caps) as stack:
        resp = stack.post(CHAT, _chat(long_text))
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "prompt_too_long"
        assert stack.upstream.requests == []
        body = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": long_text}],
        }
        anthropic = stack.post("/v1/messages", body)
        assert anthropic.status_code == 413
        assert anthropic.json()["type"] == "error"
        # The agent override raises the cap for that agent only.
        ok = stack.post(CHAT, _chat(long_text), headers={"x-llmtrace-agent-id": "research"})
        assert ok.status_code == 200
        assert stack.post(CHAT, _chat("short question")).status_code == 200


def test_max_tokens_is_clamped_in_the_forwarded_body() -> None:
    caps = _caps(**{"cost_caps.default_token_cap": {"max_completion_tokens": 64}})
    with running_stack(caps) as stack:
        resp = stack.post(CHAT, _chat(max_tokens=4000))
        assert resp.status_code == 200, resp.text
        unset = stack.post(CHAT, _chat())
        assert unset.status_code == 200
        under = stack.post(CHAT, _chat(max_tokens=10))
        assert under.status_code == 200
        sent = [r for r in stack.upstream.requests]
        bodies = [orjson.loads(r.body) for r in sent]
        assert bodies[0]["max_tokens"] == 64
        assert bodies[1]["max_tokens"] == 64
        assert bodies[2]["max_tokens"] == 10
        for r in sent:
            assert int(r.headers["content-length"]) == len(r.body)
