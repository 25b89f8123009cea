"""Admission scenario: what rate limits, budgets and token caps add to each request.

Run `python -m bench.admission [--count 2000] [--redis redis://127.0.0.1:6379/0]`. Times
`Gate.admit` (header-time checks) with everything off, with the rate limit, and with rate
limit + budgets, on local counters and on Redis, side by side in one run; and the exact
prompt-token count of a 2 KB prompt. Keys go under a random prefix that is deleted after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import redis.asyncio as redis_asyncio

from extproc.config import load_config
from extproc.dialects.tokens import count_tokens, tokenizer_name
from extproc.policy.admission import Gate
from extproc.policy.gate import Caller
from extproc.telemetry.metrics import Metrics

PROMPT_2KB = (
    "Our quarterly review covered billing migration, on-call coverage and data retention. "
    * 24
)[:2048]


def _settings(prefix: str, rate: bool, budgets: bool) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [
        ("storage.redis_key_prefix", prefix),
        ("rate_limiting.enabled", rate),
        ("rate_limiting.requests_per_second", 1e9),  # never refuse: time the allowed path
        ("rate_limiting.burst_size", 1_000_000_000),
        ("cost_caps.enabled", budgets),
    ]
    if budgets:
        caps = [
            {"window": w, "hard_limit_usd": 1e9, "soft_limit_usd": 1e8}
            for w in ("hourly", "daily", "weekly", "monthly")
        ]
        out.append(("cost_caps.default_budget_caps", caps))
    return out


async def _time_admit(gate: Gate, count: int) -> dict[str, float]:
    caller = Caller("tenant-bench", "agent-bench", "203.0.113.7", "/v1/chat/completions")
    for _ in range(100):
        await gate.admit(caller)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        denial = await gate.admit(caller)
        samples.append(time.perf_counter() - started)
        assert denial is None
    ordered = sorted(samples)
    return {
        "p50_us": round(statistics.median(ordered) * 1e6, 1),
        "p99_us": round(ordered[int(0.99 * (len(ordered) - 1))] * 1e6, 1),
    }


async def _run(count: int, url: str) -> dict[str, Any]:
    prefix = f"extproc-bench-{uuid.uuid4().hex[:8]}:"
    results: dict[str, Any] = {}
    client = redis_asyncio.Redis.from_url(url)
    try:
        for backend in ("local", "redis"):
            for name, rate, budgets in (
                ("off", False, False),
                ("rate_limit", True, False),
                ("rate_limit+budgets", True, True),
            ):
                config = load_config(environ={}, overrides=_settings(prefix, rate, budgets))
                gate = Gate(config, Metrics(), redis=client if backend == "redis" else None)
                results[f"{backend}/{name}"] = await _time_admit(gate, count)
        tokenizer_name()  # load the encoder outside the timing
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            count_tokens(PROMPT_2KB)
            samples.append(time.perf_counter() - started)
        results["count_tokens_2KB"] = {
            "tokenizer": tokenizer_name(),
            "tokens": count_tokens(PROMPT_2KB),
            "p50_us": round(statistics.median(samples) * 1e6, 1),
        }
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    return results


def main() -> None:
    """Print the admission timings as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args.count, args.redis)), indent=2))


if __name__ == "__main__":
    main()
