"""Model prices (USD per 1M tokens) and the cost of a request from its token usage.

Three layers, later ones winning entry by entry: the built-in list prices shipped in
`policies/pricing.yaml`, the operator's `cost_estimation.pricing_file`, and the inline
`cost_estimation.custom_models`. A model name is looked up exactly, else by the longest
known prefix, so dated snapshots ("gpt-4o-2024-08-06") and provider-qualified ids
("openai/gpt-4o", "anthropic.claude-3-5-sonnet-20241022-v2:0") find their family's price.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import ValidationError

from extproc.config import CostEstimationConfig, ModelPrice
from extproc.resources import data_dir

PriceTable = Mapping[str, ModelPrice]

# A prefix only counts when the name goes on with one of these: "gpt-4o-2024-08-06" is
# gpt-4o, but "gpt-4.5-preview" must not be priced as gpt-4 (nor "gpt-4o" as gpt-4, which
# the longest-match rule already prevents).
_BOUNDARIES = frozenset("-@:_")
# Model names come from client bodies; real ones are short, and the prefix scan is
# quadratic in the length, so a longer name is simply unknown.
_MAX_NAME_CHARS = 256
# Bedrock ids carry the vendor (and a cross-region scope) before a dot:
# "us.anthropic.claude-3-5-sonnet-20241022-v2:0". Letters only, so "gpt-4.1" is left alone.
_VENDOR_DOTS = re.compile(r"^(?:[a-z]+\.)+")


class PricingError(Exception):
    """A pricing file that cannot be read or has an invalid entry (the message names both)."""


def _entries(path: Path, data: Any) -> Mapping[Any, Any]:
    """The model → price mapping of a parsed file: the document itself or its `models:`."""
    if data is None:  # an empty file prices nothing
        return {}
    if not isinstance(data, dict):
        raise PricingError(f"{path}: expected a mapping of model name to prices")
    if "models" in data:
        # The wrapped form lets a file carry metadata (as_of, source) beside the prices.
        models = data["models"]
        if models is None:
            return {}
        if not isinstance(models, dict):
            raise PricingError(f"{path}: 'models' must be a mapping of model name to prices")
        return models
    return data


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def load_pricing_file(path: Path) -> dict[str, ModelPrice]:
    """Parse and validate a pricing YAML file; raise PricingError naming the file and entry."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PricingError(f"{path}: cannot read pricing file: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PricingError(f"{path}: not valid YAML: {exc}") from exc
    prices: dict[str, ModelPrice] = {}
    for name, entry in _entries(path, data).items():
        key = str(name).strip().lower()
        if not key:
            raise PricingError(f"{path}: entry {name!r}: empty model name")
        try:
            prices[key] = ModelPrice.model_validate(entry)
        except ValidationError as exc:
            raise PricingError(f"{path}: entry {name!r}: {_describe(exc)}") from exc
    return prices


def builtin_pricing_file() -> Path:
    """Where the built-in list prices live (checkout or installed wheel)."""
    return data_dir("policies") / "pricing.yaml"


@functools.cache
def _builtin_prices() -> PriceTable:
    # Read once per process: the shipped file never changes under a running server.
    try:
        path = builtin_pricing_file()
    except FileNotFoundError as exc:
        raise PricingError(f"built-in pricing: {exc}") from exc
    return MappingProxyType(load_pricing_file(path))


def _candidates(model: str) -> Iterator[str]:
    """The spellings of a model name to look up, most specific first."""
    name = model.strip().lower()
    yield name
    # "openai/gpt-4o" (OpenRouter, LiteLLM), "models/gemini-1.5-pro" (Google's REST names).
    tail = name.rsplit("/", 1)[-1]
    if tail != name:
        yield tail
    bare = _VENDOR_DOTS.sub("", tail)
    if bare != tail:
        yield bare


def _lookup(table: PriceTable, name: str) -> ModelPrice | None:
    price = table.get(name)
    if price is not None:
        return price
    # Longest prefix first: scan the boundaries from the right.
    for i in range(len(name) - 1, 0, -1):
        if name[i] in _BOUNDARIES:
            price = table.get(name[:i])
            if price is not None:
                return price
    return None


class PriceBook:
    """Prices by model name: built-ins < pricing_file < custom_models, reloadable."""

    def __init__(
        self,
        *,
        pricing_file: Path | None = None,
        custom_models: Mapping[str, ModelPrice] | None = None,
    ) -> None:
        self._pricing_file = pricing_file
        self._custom = {k.strip().lower(): v for k, v in (custom_models or {}).items()}
        self._table: PriceTable = self._build()

    @classmethod
    def from_config(cls, config: CostEstimationConfig) -> PriceBook:
        """Build from config; raises PricingError on a bad or missing pricing file."""
        return cls(pricing_file=config.pricing_file, custom_models=config.custom_models)

    def _build(self) -> PriceTable:
        table = dict(_builtin_prices())
        if self._pricing_file is not None:
            table.update(load_pricing_file(self._pricing_file))
        table.update(self._custom)
        return MappingProxyType(table)

    def reload(self) -> None:
        """Re-read pricing_file (SIGHUP); on error raise PricingError and keep the old prices."""
        # Build the whole new table before swapping: readers on other threads see either
        # the old table or the new one, never a half-loaded file.
        self._table = self._build()

    @property
    def models(self) -> PriceTable:
        """Every priced model name (lower-cased) and its price."""
        return self._table

    def price(self, model: str | None) -> ModelPrice | None:
        """Price of a model: exact name, else the longest known prefix; None when unknown."""
        if not isinstance(model, str) or not model or len(model) > _MAX_NAME_CHARS:
            return None
        table = self._table
        for name in _candidates(model):
            price = _lookup(table, name)
            if price is not None:
                return price
        return None

    def cost(
        self, model: str | None, prompt_tokens: int | None, completion_tokens: int | None
    ) -> float | None:
        """USD for this usage; None when the model is unknown or no token count is known."""
        if prompt_tokens is None and completion_tokens is None:
            return None
        price = self.price(model)
        if price is None:
            return None
        prompt = max(prompt_tokens or 0, 0)
        completion = max(completion_tokens or 0, 0)
        return (
            prompt * price.input_per_million + completion * price.output_per_million
        ) / 1_000_000
