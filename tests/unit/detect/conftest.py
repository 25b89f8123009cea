"""Shared fixtures for the detection tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.detect.scanner import Scanner

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def scanner() -> Scanner:
    """The bundled rule packs, compiled once per test session."""
    return Scanner.load()
