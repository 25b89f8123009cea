"""Open the storage a config asks for: the store, the spill journal and the writer."""

from __future__ import annotations

from dataclasses import dataclass

from extproc.config import Config
from extproc.policy.breaker import CircuitBreaker
from extproc.storage.cache import (
    CounterCache,
    FallbackCounterCache,
    LocalCounterCache,
    RedisCounterCache,
)
from extproc.storage.journal import Journal
from extproc.storage.metadata import MemoryMetadataStore, MetadataStore, SqliteMetadataStore
from extproc.storage.stores import MemoryTraceStore, SqliteTraceStore, TraceStore
from extproc.storage.writer import TraceWriter
from extproc.telemetry.metrics import Metrics


@dataclass
class Storage:
    """The storage of one server process."""

    store: TraceStore
    journal: Journal | None
    writer: TraceWriter

    def close(self, timeout: float) -> bool:
        """Drain the writer (bounded by `timeout`) and release files; True when drained."""
        drained = self.writer.stop(timeout)
        if self.journal is not None:
            self.journal.close()
        self.store.close()
        return drained


def open_store(config: Config) -> TraceStore:
    """The trace store of `storage.profile` (migrated when `storage.auto_migrate`)."""
    settings = config.storage
    if settings.profile == "memory":
        return MemoryTraceStore()
    if settings.profile == "production":
        from extproc.storage.postgres import PostgresTraceStore

        assert settings.postgres_url is not None  # checked by the config
        return PostgresTraceStore(settings.postgres_url, migrate=settings.migrate_at_start)
    return SqliteTraceStore(settings.database_path, migrate=settings.migrate_at_start)


def open_storage(config: Config, metrics: Metrics, *, instance: str) -> Storage:
    """Store, journal and a started writer; `instance` keeps worker processes' journals apart."""
    settings = config.storage
    store = open_store(config)
    journal = None
    if settings.profile != "memory":  # the memory store cannot fail, so nothing to spill
        journal = Journal(settings.journal_dir / instance)
    writer = TraceWriter(
        store,
        journal,
        metrics,
        queue_size=settings.queue_size,
        batch_size=settings.batch_size,
        flush_interval=settings.flush_interval_ms / 1000,
        retention_seconds=(
            None if settings.retention_days is None else settings.retention_days * 86400
        ),
        breaker=CircuitBreaker("storage", config.circuit_breaker, metrics),
    )
    writer.start()
    return Storage(store, journal, writer)


def open_counter_cache(config: Config, metrics: Metrics) -> CounterCache:
    """Redis with a local fallback when `storage.redis_url` is set, else local counters."""
    settings = config.storage
    if not settings.redis_url:
        return LocalCounterCache()
    primary = RedisCounterCache(settings.redis_url, prefix=settings.redis_key_prefix)
    return FallbackCounterCache(primary, metrics)


def open_metadata(config: Config) -> MetadataStore:
    """The metadata store of `storage.profile` (same database as the traces)."""
    settings = config.storage
    if settings.profile == "memory":
        return MemoryMetadataStore()
    if settings.profile == "production":
        from extproc.storage.postgres import PostgresMetadataStore

        assert settings.postgres_url is not None
        return PostgresMetadataStore(settings.postgres_url, migrate=settings.migrate_at_start)
    return SqliteMetadataStore(settings.database_path, migrate=settings.migrate_at_start)
