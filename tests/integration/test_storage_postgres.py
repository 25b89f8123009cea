"""PostgreSQL goes away while traffic flows: every trace still lands, exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.harness import running_stack, wait_until
from tests.integration.tcp_proxy import CuttableProxy
from tests.unit.storage.pg import new_database, sql  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def count(dsn: str, trace_ids: list[str]) -> int:
    rows = sql(dsn, "SELECT count(*) FROM spans WHERE span_id = ANY($1)", trace_ids)
    return int(rows[0][0])


def test_outage_loses_nothing_and_duplicates_nothing(
    new_database: Callable[[], str],  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    dsn = new_database()
    url = urlsplit(dsn)
    proxy = CuttableProxy(url.hostname or "127.0.0.1", url.port or 5432)
    via_proxy = dsn.replace(f"{url.hostname}:{url.port}", f"127.0.0.1:{proxy.port}")
    settings = {
        "storage.profile": "production",
        "storage.postgres_url": via_proxy,
        "storage.auto_migrate": True,
        "storage.journal_dir": str(tmp_path / "journal"),
        "storage.flush_interval_ms": 20,
    }
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
    trace_ids: list[str] = []
    try:
        with running_stack(settings) as s:

            def send(n: int) -> None:
                for _ in range(n):
                    resp = s.post("/v1/chat/completions", body)
                    assert resp.status_code == 200
                    trace_ids.append(resp.headers["x-llmtrace-trace-id"])

            send(10)
            wait_until(lambda: count(dsn, trace_ids) == 10, "the first traces")
            proxy.cut()  # PostgreSQL unreachable: live connections dropped, new ones refused
            started = time.monotonic()
            send(40)
            assert time.monotonic() - started < 20  # requests were not held up by storage
            wait_until(lambda: 'outcome="spilled"' in s.metrics(), "records to spill")
            proxy.restore()
            send(10)
            wait_until(lambda: count(dsn, trace_ids) == 60, "every trace stored", timeout=60)
            metrics = s.metrics()
            assert 'extproc_storage_records_total{outcome="dropped"}' not in metrics
            assert 'extproc_storage_records_total{outcome="replayed"}' in metrics
        rows = sql(dsn, "SELECT span_id, count(*) FROM spans GROUP BY span_id HAVING count(*) > 1")
        assert rows == []  # exactly once
        assert count(dsn, trace_ids) == len(set(trace_ids)) == 60
    finally:
        proxy.close()
