"""The one shape of every list answer: `{items, total, limit, offset}`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def page(items: Sequence[Any], limit: int, offset: int) -> dict[str, Any]:
    """One page of `items` (all of them, already filtered and ordered)."""
    return {
        "items": list(items[offset : offset + limit]),
        "total": len(items),
        "limit": limit,
        "offset": offset,
    }
