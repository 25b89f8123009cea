"""Rule packs: the YAML schema, its validation, and the loaded rule records the scanner uses.

A pack is a YAML mapping with `rules:` (a list) and optional `defaults:` merged under every
rule of that file. Unknown keys, categories, roles, severities or validators are errors that
name the file and the rule id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from extproc.detect.checksums import VALIDATORS
from extproc.detect.errors import RulePackError
from extproc.detect.findings import Category, Role, Severity
from extproc.detect.pii import ALL_SUPPRESSIONS, Suppression
from extproc.detect.spans import Extend
from extproc.resources import data_dir

# Everything that is fed to the model; OUTPUT (what the model wrote) only when a rule asks.
INPUT_ROLES: tuple[Role, ...] = tuple(role for role in Role if role is not Role.OUTPUT)

ROLE_BITS: Mapping[Role, int] = {role: 1 << index for index, role in enumerate(Role)}

SeverityField = Annotated[Severity, BeforeValidator(Severity.parse)]


class RuleDefaults(BaseModel):
    """Per-file defaults; any rule field that makes sense to share across a pack."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: Category | None = None
    severity: SeverityField | None = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    roles: tuple[Role, ...] | None = None
    case_sensitive: bool | None = None
    suppress: tuple[Suppression, ...] | None = None


class RuleSpec(BaseModel):
    """One rule exactly as written in a pack (after the pack's defaults are merged in)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=100)
    category: Category
    type: str | None = Field(default=None, pattern=r"^[a-z0-9_]+$")
    pattern: str = Field(min_length=1)
    severity: SeverityField
    confidence: float = Field(ge=0.0, le=1.0)
    description: str = Field(min_length=1)
    roles: tuple[Role, ...] | None = None
    case_sensitive: bool = False
    validator: str | None = None
    suppress: tuple[Suppression, ...] | None = None
    extend: Extend | None = None

    @field_validator("validator")
    @classmethod
    def _known_validator(cls, name: str | None) -> str | None:
        if name is not None and name not in VALIDATORS:
            raise ValueError(f"unknown validator {name!r}; expected one of {', '.join(VALIDATORS)}")
        return name


class RulePack(BaseModel):
    """The top level of a rule pack file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str | None = None
    defaults: RuleDefaults = RuleDefaults()
    rules: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Rule:
    """A validated rule, flattened into what the scanner needs per match."""

    id: str
    category: Category
    type: str
    pattern: str
    severity: Severity
    confidence: float
    description: str
    role_mask: int
    case_sensitive: bool
    validator: Callable[[str], bool] | None
    suppress: frozenset[Suppression]
    extend: Extend | None
    source: str  # file the rule came from, for error messages

    def applies_to(self, role: Role) -> bool:
        """True when this rule runs on text written by `role`."""
        return bool(self.role_mask & ROLE_BITS[role])


def _error_text(error: ValidationError) -> str:
    """A compact one-line rendering of pydantic's errors."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "rule"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _build(spec: RuleSpec, source: str) -> Rule:
    """Turn a validated spec into a Rule, applying category-dependent defaults."""
    if spec.suppress and spec.category is not Category.PII:
        raise RulePackError(
            f"{source}: rule {spec.id!r}: 'suppress' is only allowed on pii rules "
            "(injection and secret findings are never suppressed)"
        )
    if spec.suppress is not None:
        suppress = frozenset(spec.suppress)
    else:
        suppress = ALL_SUPPRESSIONS if spec.category is Category.PII else frozenset()
    roles = spec.roles if spec.roles is not None else INPUT_ROLES
    mask = 0
    for role in roles:
        mask |= ROLE_BITS[role]
    return Rule(
        id=spec.id,
        category=spec.category,
        type=spec.type or spec.category.value,
        pattern=spec.pattern,
        severity=spec.severity,
        confidence=spec.confidence,
        description=spec.description,
        role_mask=mask,
        case_sensitive=spec.case_sensitive,
        validator=VALIDATORS[spec.validator] if spec.validator else None,
        suppress=suppress,
        extend=spec.extend,
        source=source,
    )


def parse_pack(data: object, source: str) -> list[Rule]:
    """Validate one pack's parsed YAML; `source` names it in error messages."""
    if not isinstance(data, dict):
        raise RulePackError(f"{source}: a rule pack must be a mapping with a 'rules' list")
    try:
        pack = RulePack.model_validate(data)
    except ValidationError as exc:
        raise RulePackError(f"{source}: {_error_text(exc)}") from None
    defaults = pack.defaults.model_dump(exclude_none=True)
    rules: list[Rule] = []
    for index, raw in enumerate(pack.rules):
        rule_id = raw.get("id", f"#{index + 1}")
        try:
            spec = RuleSpec.model_validate({**defaults, **raw})
        except ValidationError as exc:
            raise RulePackError(f"{source}: rule {rule_id!r}: {_error_text(exc)}") from None
        rules.append(_build(spec, source))
    return rules


def load_rules(paths: Iterable[Path]) -> list[Rule]:
    """Load and validate every pack; rule ids must be unique across all of them."""
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for path in paths:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise RulePackError(f"{path}: cannot read rule pack: {exc}") from None
        except yaml.YAMLError as exc:
            raise RulePackError(f"{path}: invalid YAML: {exc}") from None
        for rule in parse_pack(data, str(path)):
            if rule.id in seen:
                raise RulePackError(
                    f"{path}: rule {rule.id!r}: duplicate id (first defined in {seen[rule.id]})"
                )
            seen[rule.id] = str(path)
            rules.append(rule)
    return rules


def default_rule_files() -> Sequence[Path]:
    """Every `*.yaml` pack under the bundled `policies/rules/`, in name order."""
    return sorted((data_dir("policies") / "rules").glob("*.yaml"))
