"""Trace writer throughput: how many records per second reach SQLite / PostgreSQL.

    python -m bench.storage [--records 20000] [--batch-size 200] [--postgres URL]

Bounded in count. Submits `--records` realistic spans (with findings and redacted content)
to a TraceWriter as fast as the caller can, then measures how long the writer takes to
drain them into the store; also reports the slowest `submit()` (the request path's cost).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

from extproc.storage.journal import Journal
from extproc.storage.model import SpanRecord, StoredFinding
from extproc.storage.stores import SqliteTraceStore, TraceStore
from extproc.storage.writer import TraceWriter
from extproc.telemetry.metrics import Metrics

FINDING = StoredFinding(
    "email", "pii", 2, 0.9, "request:messages[0].content:10-30", "pii.email", "regex"
)


def span(n: int) -> SpanRecord:
    """A typical stored request."""
    return SpanRecord(
        trace_id=uuid.uuid4().hex,
        span_id=uuid.uuid4().hex,
        tenant_id="tenant-a",
        agent_id="agent-1",
        created_at=time.time(),
        operation_name="chat_completion",
        decision="allowed",
        security_score=45,
        model_name="gpt-4o",
        dialect="openai",
        prompt="user: please summarise the attached report for [PII:EMAIL] " * 4,
        response="output: here is a short summary of the report " * 6,
        status_code=200,
        prompt_tokens=120,
        completion_tokens=80,
        usage_source="usage",
        latency_ms=850.0,
        findings=(FINDING,),
    )


def run(store: TraceStore, journal_dir: Path, records: int, batch_size: int) -> tuple[float, float]:
    """Records per second drained, and the slowest submit in microseconds."""
    metrics = Metrics()
    writer = TraceWriter(
        store,
        Journal(journal_dir),
        metrics,
        queue_size=records,
        batch_size=batch_size,
        flush_interval=0.05,
    )
    spans = [span(n) for n in range(records)]
    writer.start()
    slowest = 0.0
    started = time.perf_counter()
    for s in spans:
        t = time.perf_counter()
        writer.submit(s)
        slowest = max(slowest, time.perf_counter() - t)
    writer.stop(600)
    elapsed = time.perf_counter() - started
    return records / elapsed, slowest * 1e6


def main() -> int:
    """Run against SQLite (and PostgreSQL when given) and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--postgres", help="postgresql://... of an EMPTY scratch database")
    args = parser.parse_args()
    if not 1 <= args.records <= 1_000_000:
        parser.error("--records must be 1..1000000")
    print("| store | records | batch | records/s | slowest submit µs |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="extproc-bench-storage-") as tmp:
        work = Path(tmp)
        stores: list[tuple[str, TraceStore]] = [("sqlite", SqliteTraceStore(work / "t.db"))]
        if args.postgres:
            from extproc.storage.postgres import PostgresTraceStore

            stores.append(("postgres", PostgresTraceStore(args.postgres)))
        for name, store in stores:
            rate, slowest = run(store, work / f"j-{name}", args.records, args.batch_size)
            store.close()
            print(f"| {name} | {args.records} | {args.batch_size} | {rate:.0f} | {slowest:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
