"""Refuse a converted model whose outputs disagree with its source package's own."""

from __future__ import annotations

from typing import Any

import numpy as np

from extproc.models.manifest import ModelError


def assert_close(
    name: str, got: Any, want: Any, atol: float, same_argmax: bool = True
) -> dict[str, Any]:
    """Compare converted (`got`) and source (`want`) outputs row by row.

    Raises ModelError when any value differs by more than `atol`, or when `same_argmax` and a
    row's top label differs. Returns the figures to record in the manifest's `verification`.
    """
    a = np.asarray(got, dtype=np.float64)
    b = np.asarray(want, dtype=np.float64)
    if a.shape != b.shape:
        raise ModelError(f"{name}: output shape {a.shape} differs from the source's {b.shape}")
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if not np.isfinite(diff) or diff > atol:
        raise ModelError(f"{name}: converted model differs from its source by {diff:.3g} > {atol}")
    if same_argmax and a.ndim >= 2:
        mismatched = int(np.sum(np.argmax(a, axis=-1) != np.argmax(b, axis=-1)))
        if mismatched:
            raise ModelError(
                f"{name}: {mismatched} inputs get a different top label than the source"
            )
    return {"inputs": int(a.shape[0]) if a.ndim else 1, "max_abs_diff": diff, "atol": atol}
