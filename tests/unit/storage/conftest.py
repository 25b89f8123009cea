"""Fixtures shared by the storage tests."""

from tests.unit.storage.pg import new_database

__all__ = ["new_database"]
