"""The vocabulary every detector speaks: severities, categories and findings."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class Severity(IntEnum):
    """Ordered severity; comparisons (>=) are what policy thresholds use."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, value: str | int | Severity) -> Severity:
        """Accept `"high"`, `"HIGH"`, `3` or a Severity."""
        if isinstance(value, Severity):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[value.strip().upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in cls)
            raise ValueError(f"unknown severity {value!r}; expected one of {names}") from None

    def __str__(self) -> str:
        return self.name.lower()


class Category(StrEnum):
    """Rule categories; policy can set an action per category."""

    PROMPT_INJECTION = "prompt_injection"
    ROLE_INJECTION = "role_injection"
    JAILBREAK = "jailbreak"
    DELIMITER_INJECTION = "delimiter_injection"
    ENCODING_ATTACK = "encoding_attack"
    DATA_LEAKAGE = "data_leakage"
    AGENT_ACTION = "agent_action"
    SECRET = "secret"
    PII = "pii"
    TOXICITY = "toxicity"
    ANOMALY = "anomaly"  # per-tenant statistical outliers (cost, tokens, velocity, latency)


class Role(StrEnum):
    """Who wrote a piece of text; some rules only apply to some roles."""

    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL_CALL = "tool_call"  # arguments the model asked a tool to run with
    TOOL_RESULT = "tool_result"  # what a tool returned, fed back to the model
    OUTPUT = "output"  # text the upstream model produced in a response


@dataclass(frozen=True, slots=True)
class Finding:
    """One detection. Offsets index the original (not normalised) text that was scanned."""

    type: str  # specific kind, e.g. "prompt_injection", "email", "aws_access_key"
    category: Category
    severity: Severity
    confidence: float
    start: int
    end: int
    rule_id: str
    detector: str = "regex"
    segment: int | None = None  # index of the Segment the text came from, set by the caller

    @property
    def agreement(self) -> int:
        """How many detectors reported this finding (`ensemble_agreement`): regex+ml:x is 2."""
        return self.detector.count("+") + 1

    @property
    def redaction_tag(self) -> str:
        """The placeholder that replaces this finding's text when it is redacted."""
        kind = "PII" if self.category is Category.PII else "SECRET"
        if self.category not in (Category.PII, Category.SECRET):
            kind = "REDACTED"
        return f"[{kind}:{self.type.upper()}]"
