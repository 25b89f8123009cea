"""LLM wire formats: what text a request carries, and how errors look to each client."""

from extproc.dialects.anthropic import AnthropicDialect
from extproc.dialects.base import Dialect, DialectError, JsonPath, Segment
from extproc.dialects.jsonbody import parse_json
from extproc.dialects.jsonpath import format_path, get_at, set_at
from extproc.dialects.openai import OpenAIDialect
from extproc.dialects.routing import ANTHROPIC, OPENAI, default_dialect_for_path, dialect_for_path

__all__ = [
    "ANTHROPIC",
    "OPENAI",
    "AnthropicDialect",
    "Dialect",
    "DialectError",
    "JsonPath",
    "OpenAIDialect",
    "Segment",
    "default_dialect_for_path",
    "dialect_for_path",
    "format_path",
    "get_at",
    "parse_json",
    "set_at",
]
