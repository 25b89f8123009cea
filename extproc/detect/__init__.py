"""Detection: text in, findings out. Knows nothing of gRPC or Envoy."""

from extproc.detect.errors import RulePackError, ScanError
from extproc.detect.findings import Category, Finding, Role, Severity
from extproc.detect.redact import redact
from extproc.detect.scanner import Scanner

__all__ = [
    "Category",
    "Finding",
    "Role",
    "RulePackError",
    "ScanError",
    "Scanner",
    "Severity",
    "redact",
]
