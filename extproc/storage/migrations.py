"""Schema migrations: numbered SQL files under `storage/<backend>/`, applied once, in order."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from extproc.resources import data_dir


def migration_files(backend: str) -> list[Path]:
    """The migration files of a backend, in order (`001_name.sql`, `002_...`)."""
    return sorted(data_dir("storage").joinpath(backend).glob("[0-9][0-9][0-9]_*.sql"))


def migrate_sqlite(conn: sqlite3.Connection) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
    )
    done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
    applied = []
    for path in migration_files("sqlite"):
        if path.name in done:
            continue
        name = path.name.replace("'", "''")
        # One transaction per file, recording itself: a failing migration leaves nothing.
        conn.executescript(
            f"BEGIN;\n{path.read_text(encoding='utf-8')}\n"
            f"INSERT INTO schema_migrations VALUES ('{name}', strftime('%s','now'));\nCOMMIT;"
        )
        applied.append(path.name)
    return applied
