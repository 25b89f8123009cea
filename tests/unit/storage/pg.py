"""PostgreSQL for tests: a throwaway database per use, dropped at the end of the session."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest

ALL_MIGRATIONS = ["001_traces.sql", "002_metadata.sql"]
SERVER = os.environ.get("EXTPROC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def sql(dsn: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement on a short-lived connection of its own."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=3)
        try:
            return list(await conn.fetch(statement, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture(scope="session")
def new_database() -> Iterator[Callable[[], str]]:
    """Creates empty databases on demand; drops them all at the end of the session."""
    admin = f"{SERVER}/postgres"
    try:
        sql(admin, "SELECT 1")
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL is not reachable at {SERVER}: {exc}")
    created: list[str] = []

    def create() -> str:
        name = f"extproc_test_{uuid.uuid4().hex[:12]}"
        sql(admin, f'CREATE DATABASE "{name}"')
        created.append(name)
        return f"{SERVER}/{name}"

    yield create
    for name in created:
        sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
