"""Every setting is documented in docs/configuration.md."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from extproc.config import Config

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def setting_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(setting_paths(annotation, f"{prefix}{name}."))
        else:
            paths.append(prefix + name)
    return paths


def test_every_setting_is_in_the_reference() -> None:
    text = DOC.read_text()
    missing = [p for p in setting_paths(Config) if f"`{p}`" not in text]
    assert missing == [], f"undocumented settings: {missing}"
