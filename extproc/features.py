"""Runtime feature flags: named switches over config settings, persisted in an overlay file.

The admin API (`/api/v1/config/features`) writes `config.runtime.yaml`; configuration is
resolved as defaults → config file → this overlay → EXTPROC_* environment → CLI flags, so
an operator's environment still wins over a runtime toggle (as in LLMTrace).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("extproc.features")

# Feature name -> the setting it switches.
FEATURES: dict[str, str] = {
    "security_analysis": "enable_security_analysis",
    "ml": "security_analysis.ml_enabled",
    "jailbreak": "security_analysis.jailbreak_enabled",
    "rate_limiting": "rate_limiting.enabled",
    "cost_caps": "cost_caps.enabled",
    "streaming_analysis": "streaming_analysis.enabled",
}
OVERLAY_NAME = "config.runtime.yaml"


class OverlayError(Exception):
    """The overlay file cannot be read or written."""


def read_overlay(path: Path) -> dict[str, bool]:
    """The flags stored in an overlay file ({} when it does not exist)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise OverlayError(f"{path}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        raise OverlayError(f"{path}: invalid YAML: {exc}") from None
    flags = data.get("features", {}) if isinstance(data, dict) else None
    if not isinstance(flags, dict):
        raise OverlayError(f"{path}: expected a mapping under `features`")
    out: dict[str, bool] = {}
    for name, value in flags.items():
        if name not in FEATURES or not isinstance(value, bool):
            raise OverlayError(
                f"{path}: features.{name}: expected a known feature set to true/false"
            )
        out[name] = value
    return out


def overlay_settings(path: Path | None) -> list[tuple[str, Any]]:
    """The overlay as (dotted setting, value) pairs; a broken file is logged and ignored."""
    if path is None:
        return []
    try:
        flags = read_overlay(path)
    except OverlayError as exc:
        log.error("runtime feature overlay ignored: %s", exc)
        return []
    return [(FEATURES[name], value) for name, value in flags.items()]


def write_overlay(path: Path, flags: Mapping[str, bool]) -> None:
    """Replace the overlay atomically (a crash leaves the old or the new file, never half)."""
    document = {
        "# written by": "extproc admin API (/api/v1/config/features); edit with care",
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "features": dict(sorted(flags.items())),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config.runtime.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.safe_dump(document, handle, sort_keys=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OverlayError(f"{path}: cannot write: {exc}") from None


def feature_values(config: Any) -> dict[str, bool]:
    """Each feature's value in a resolved Config."""
    out = {}
    for name, dotted in FEATURES.items():
        node = config
        for part in dotted.split("."):
            node = getattr(node, part)
        out[name] = bool(node)
    return out


def default_overlay_path(config_path: Path | None) -> Path | None:
    """`config.runtime.yaml` beside the config file, or None (flags kept in memory only)."""
    return config_path.parent / OVERLAY_NAME if config_path is not None else None
