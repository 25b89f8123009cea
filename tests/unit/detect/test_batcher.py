"""The micro-batcher: each caller its own result, batching under load, shedding, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from extproc.detect.batcher import MicroBatcher, Overloaded


def _doubler(calls: list[list[int]], delay: float = 0.0):  # type: ignore[no-untyped-def]
    main = threading.get_ident()

    def fn(items: list[int]) -> list[int]:
        assert threading.get_ident() != main, "the model must not run on the event loop thread"
        calls.append(list(items))
        time.sleep(delay)
        return [i * 2 for i in items]

    return fn


async def test_every_caller_gets_its_own_results_under_concurrency() -> None:
    calls: list[list[int]] = []
    batcher: MicroBatcher[int, int] = MicroBatcher("t", _doubler(calls, 0.01), max_batch=8)
    try:
        jobs = [batcher.submit([n, n + 1000]) for n in range(40)]
        results = await asyncio.gather(*jobs)
    finally:
        batcher.close()
    assert results == [[2 * n, 2 * (n + 1000)] for n in range(40)]
    assert len(calls) < 40, "concurrent callers should have shared model calls"
    assert max(len(c) for c in calls) > 2


async def test_a_lone_caller_is_not_held_back() -> None:
    calls: list[list[int]] = []
    batcher: MicroBatcher[int, int] = MicroBatcher("t", _doubler(calls), max_wait_us=1000)
    try:
        started = time.perf_counter()
        assert await batcher.submit([3]) == [6]
        assert time.perf_counter() - started < 0.5
    finally:
        batcher.close()


async def test_overload_is_shed_instead_of_queued() -> None:
    calls: list[list[int]] = []
    batcher: MicroBatcher[int, int] = MicroBatcher("t", _doubler(calls, 0.05), max_batch=1)
    try:
        await batcher.submit([1])  # teaches it that an item costs ~50 ms
        running = [asyncio.ensure_future(batcher.submit([n])) for n in range(5)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.submit([99], budget_s=0.1)
        assert await asyncio.gather(*running) == [[0], [2], [4], [6], [8]]
    finally:
        batcher.close()


async def test_a_failing_model_fails_its_callers_and_the_batcher_goes_on() -> None:
    state = {"fail": True}

    def fn(items: list[int]) -> list[int]:
        if state["fail"]:
            raise RuntimeError("model exploded")
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher("t", fn)
    try:
        with pytest.raises(RuntimeError, match="exploded"):
            await batcher.submit([1])
        state["fail"] = False
        assert await batcher.submit([5]) == [5]
    finally:
        batcher.close()


async def test_a_caller_that_gave_up_is_skipped() -> None:
    calls: list[list[int]] = []
    batcher: MicroBatcher[int, int] = MicroBatcher("t", _doubler(calls, 0.05), max_batch=1)
    try:
        first = asyncio.ensure_future(batcher.submit([1]))
        abandoned = asyncio.ensure_future(batcher.submit([2]))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        assert await first == [2]
        assert await batcher.submit([3]) == [6]
        assert [2] not in calls
    finally:
        batcher.close()
