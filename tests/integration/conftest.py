"""Fixtures that run a real Envoy in front of extproc and the demo upstream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import Stack, running_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """A stack with the default policy (block at high severity, PII alert only)."""
    with running_stack() as s:
        yield s


@pytest.fixture(autouse=True)
def _clear_upstream(request: pytest.FixtureRequest) -> None:
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").upstream.clear()
