"""Metadata: small JSON documents by kind and id (tenants, API keys, reports, audit events).

One interface, an in-memory, an SQLite and a PostgreSQL implementation; the admin API issue
builds its tenants, keys and reports on it. Synchronous, like the trace stores: callers on
the event loop run it in a thread.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from extproc.storage.migrations import migrate_sqlite

Document = dict[str, Any]


class MetadataStore(Protocol):
    """Documents keyed by (kind, id), optionally owned by a tenant."""

    def put(self, kind: str, id: str, document: Document, tenant_id: str | None = None) -> None:
        """Insert or replace."""
        ...

    def get(self, kind: str, id: str) -> Document | None:
        """The document, or None."""
        ...

    def list(self, kind: str, tenant_id: str | None = None) -> list[Document]:
        """Documents of a kind (of one tenant if given), most recently updated first."""
        ...

    def delete(self, kind: str, id: str) -> bool:
        """Remove; True if it existed."""
        ...


class MemoryMetadataStore:
    """The `memory` profile."""

    def __init__(self) -> None:
        self._docs: dict[tuple[str, str], tuple[str | None, float, Document]] = {}
        self._lock = threading.Lock()

    def put(self, kind: str, id: str, document: Document, tenant_id: str | None = None) -> None:
        """Insert or replace."""
        with self._lock:
            self._docs[(kind, id)] = (tenant_id, time.time(), dict(document))

    def get(self, kind: str, id: str) -> Document | None:
        """The document, or None."""
        found = self._docs.get((kind, id))
        return dict(found[2]) if found else None

    def list(self, kind: str, tenant_id: str | None = None) -> list[Document]:
        """Newest first."""
        with self._lock:
            rows = [
                (updated, doc)
                for (k, _), (tenant, updated, doc) in self._docs.items()
                if k == kind and (tenant_id is None or tenant == tenant_id)
            ]
        return [dict(doc) for _, doc in sorted(rows, key=lambda r: r[0], reverse=True)]

    def delete(self, kind: str, id: str) -> bool:
        """Remove; True if it existed."""
        with self._lock:
            return self._docs.pop((kind, id), None) is not None


class SqliteMetadataStore:
    """The `lite` profile (same file as the traces)."""

    def __init__(self, path: Path | str, *, migrate: bool = True) -> None:
        self._conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        if migrate:
            migrate_sqlite(self._conn)

    def put(self, kind: str, id: str, document: Document, tenant_id: str | None = None) -> None:
        """Insert or replace."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO metadata VALUES (?, ?, ?, ?, ?)",
                (kind, id, tenant_id, orjson.dumps(document).decode(), time.time()),
            )

    def get(self, kind: str, id: str) -> Document | None:
        """The document, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT document FROM metadata WHERE kind = ? AND id = ?", (kind, id)
            ).fetchone()
        return orjson.loads(row[0]) if row else None

    def list(self, kind: str, tenant_id: str | None = None) -> list[Document]:
        """Newest first."""
        sql = "SELECT document FROM metadata WHERE kind = ?"
        args: list[Any] = [kind]
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            args.append(tenant_id)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY updated_at DESC", args).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    def delete(self, kind: str, id: str) -> bool:
        """Remove; True if it existed."""
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM metadata WHERE kind = ? AND id = ?", (kind, id)
            )
            return cursor.rowcount > 0

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
