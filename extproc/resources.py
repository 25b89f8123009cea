"""Find the data folders (`envoy/`, `policies/`) in a checkout or inside the installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
# In a checkout the data folders sit beside the package. Installed, the package's parent is
# site-packages, where `envoy/` is the protobuf package of xds-protos: never look there.
_CHECKOUT = _PACKAGE_DIR.parent if (_PACKAGE_DIR.parent / "pyproject.toml").is_file() else None


def data_dir(name: str) -> Path:
    """Path of a top-level data folder: the checkout's copy first, then the wheel's."""
    candidates = [_PACKAGE_DIR / "_data" / name]
    if _CHECKOUT is not None:
        candidates.insert(0, _CHECKOUT / name)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"data folder {name!r} is missing from this installation")
