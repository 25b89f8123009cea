"""Session fixtures shared by unit and integration tests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from extproc.models.manifest import ModelError, read_manifest

MODELS = ("nanoguard", "minilm-attack-bank", "rampart", "toxicity")
_SOURCES = Path(__file__).resolve().parents[1] / "extproc" / "models"


def _models_key() -> str:
    """Content hash of the install code: a change to any builder reinstalls from scratch."""
    digest = hashlib.sha256()
    for path in sorted(_SOURCES.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _complete(directory: Path) -> bool:
    try:
        for name in MODELS:
            read_manifest(directory / name, verify=True)
    except ModelError:
        return False
    return True


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Every model installed by `extproc models install`, cached by the install code's hash.

    TEST_MODELS_DIR points at an existing directory instead. The first run after a change
    to extproc/models installs from scratch into an empty directory (minutes).
    """
    given = os.environ.get("TEST_MODELS_DIR")
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    directory = cache / "extproc" / "test-models" / _models_key()
    if not _complete(directory):
        from extproc.models.install import install

        directory.mkdir(parents=True, exist_ok=True)
        install(directory)
    return directory
