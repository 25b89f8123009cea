"""Fixtures of the key and tenant route tests (modules with their own `client` override them)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from extproc.storage.metadata import MemoryMetadataStore
from tests.unit.admin.metadata_app import make_client


@pytest.fixture
def store() -> MemoryMetadataStore:
    return MemoryMetadataStore()


@pytest.fixture
def client(store: MemoryMetadataStore) -> TestClient:
    return make_client(store)
