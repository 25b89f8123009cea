"""Metadata documents on every backend: put, get, list by tenant, delete."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from extproc.storage.metadata import MemoryMetadataStore, MetadataStore, SqliteMetadataStore


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    if request.param == "memory":
        yield MemoryMetadataStore()
        return
    if request.param == "sqlite":
        sqlite = SqliteMetadataStore(tmp_path / "m.db")
        yield sqlite
        sqlite.close()
        return
    from extproc.storage.postgres import PostgresMetadataStore

    make: Callable[[], str] = request.getfixturevalue("new_database")
    pg = PostgresMetadataStore(make())
    yield pg
    pg.close()


def test_documents_round_trip(store: MetadataStore) -> None:
    store.put("tenant", "t1", {"name": "Team A", "plan": {"rps": 10}})
    store.put("api_key", "k1", {"role": "viewer"}, tenant_id="t1")
    store.put("api_key", "k2", {"role": "admin"}, tenant_id="t2")
    store.put("api_key", "k1", {"role": "operator"}, tenant_id="t1")  # replace
    assert store.get("tenant", "t1") == {"name": "Team A", "plan": {"rps": 10}}
    assert store.get("tenant", "nope") is None
    assert store.list("api_key", tenant_id="t1") == [{"role": "operator"}]
    assert [d["role"] for d in store.list("api_key")] == ["operator", "admin"]
    assert store.delete("api_key", "k2") is True
    assert store.delete("api_key", "k2") is False
    assert store.list("api_key") == [{"role": "operator"}]
