"""The price book: built-in list prices, pricing file and custom_models, lookup and cost."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.config import CostEstimationConfig, ModelPrice
from extproc.policy.pricing import (
    PriceBook,
    PricingError,
    builtin_pricing_file,
    load_pricing_file,
)


def book(
    tmp_path: Path | None = None,
    file_text: str | None = None,
    custom: dict[str, ModelPrice] | None = None,
) -> PriceBook:
    pricing_file = None
    if tmp_path is not None and file_text is not None:
        pricing_file = tmp_path / "prices.yaml"
        pricing_file.write_text(file_text)
    return PriceBook.from_config(
        CostEstimationConfig(pricing_file=pricing_file, custom_models=custom or {})
    )


def price(i: float, o: float) -> ModelPrice:
    return ModelPrice(input_per_million=i, output_per_million=o)


# -- built-ins and lookup ---------------------------------------------------------------


def test_builtin_file_is_valid_and_covers_the_common_models() -> None:
    prices = load_pricing_file(builtin_pricing_file())
    for model in [
        "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o1", "o3",
        "o3-mini", "o4-mini", "gpt-4-turbo", "gpt-4", "gpt-3.5-turbo", "claude-3-haiku",
        "claude-3-5-sonnet", "claude-3-5-haiku", "claude-3-7-sonnet", "claude-3-opus",
        "claude-sonnet-4", "claude-opus-4", "gemini-1.5-flash", "gemini-1.5-pro",
        "gemini-2.0-flash", "gemini-2.5-flash", "gemini-2.5-pro",
    ]:  # fmt: skip
        assert model in prices, model


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", (2.5, 10.0)),
        ("gpt-4o-2024-08-06", (2.5, 10.0)),  # dated snapshot → family
        ("gpt-4o-2024-05-13", (5.0, 15.0)),  # a snapshot priced differently has its own entry
        ("gpt-4o-mini-2024-07-18", (0.15, 0.6)),  # longest prefix, not gpt-4o
        ("gpt-4-turbo-2024-04-09", (10.0, 30.0)),
        ("gpt-4-0613", (30.0, 60.0)),
        ("gpt-4.1-mini-2025-04-14", (0.4, 1.6)),
        ("o3-mini-2025-01-31", (1.1, 4.4)),
        ("claude-3-5-sonnet-20241022", (3.0, 15.0)),
        ("claude-3-5-sonnet-latest", (3.0, 15.0)),
        ("claude-sonnet-4-20250514", (3.0, 15.0)),
        ("claude-opus-4-5-20251101", (5.0, 25.0)),  # not claude-opus-4's 15/75
        ("claude-3-5-sonnet-v2@20241022", (3.0, 15.0)),  # Vertex
        ("anthropic.claude-3-5-sonnet-20241022-v2:0", (3.0, 15.0)),  # Bedrock
        ("us.anthropic.claude-3-haiku-20240307-v1:0", (0.25, 1.25)),
        ("openai/gpt-4o", (2.5, 10.0)),  # provider prefix
        ("models/gemini-1.5-pro-002", (1.25, 5.0)),
        ("GPT-4o", (2.5, 10.0)),  # case-insensitive
        ("gemini-2.5-flash", (0.3, 2.5)),
    ],
)
def test_builtin_price_lookup(model: str, expected: tuple[float, float]) -> None:
    found = book().price(model)
    assert found is not None
    assert (found.input_per_million, found.output_per_million) == expected


@pytest.mark.parametrize(
    "model",
    [
        None,
        "",
        "my-private-model",
        "gpt-4.9-preview",  # "." is no prefix boundary: not priced as gpt-4
        "gpt-4oz",  # no boundary after gpt-4o
        "ft:gpt-4o-mini-2024-07-18:org::abc",  # fine-tunes price differently
        "gpt-4o-" + "x" * 1000,  # absurdly long names are not scanned
    ],
)
def test_unknown_models_have_no_price(model: str | None) -> None:
    assert book().price(model) is None


# -- layering ---------------------------------------------------------------------------


def test_custom_beats_file_beats_builtin(tmp_path: Path) -> None:
    prices = book(
        tmp_path,
        "gpt-4o: {input_per_million: 1.0, output_per_million: 2.0}\n"
        "gpt-4o-mini: {input_per_million: 0.5, output_per_million: 0.5}\n"
        "house-model: {input_per_million: 0.1, output_per_million: 0.2}\n",
        {"GPT-4o": price(9.0, 9.0)},
    )
    assert prices.price("gpt-4o") == price(9.0, 9.0)  # custom (keys case-insensitive)
    assert prices.price("gpt-4o-2024-08-06") == price(9.0, 9.0)
    assert prices.price("gpt-4o-mini") == price(0.5, 0.5)  # file
    assert prices.price("house-model-v2") == price(0.1, 0.2)  # file, by prefix
    assert prices.price("gpt-4.1") == price(2.0, 8.0)  # built-in


def test_file_with_models_key(tmp_path: Path) -> None:
    prices = book(
        tmp_path,
        "as_of: '2026-01-01'\n"
        "models:\n"
        "  house-model: {input_per_million: 1, output_per_million: 3}\n",
    )
    assert prices.price("house-model") == price(1.0, 3.0)


def test_empty_file_prices_nothing_extra(tmp_path: Path) -> None:
    assert book(tmp_path, "").price("gpt-4o") == price(2.5, 10.0)


# -- bad files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("gpt-4o: {input_per_million: -1, output_per_million: 2}\n", "'gpt-4o'"),
        ("gpt-4o: {input_per_million: 1}\n", "'gpt-4o'"),
        ("gpt-4o: {input_per_million: 1, output_per_million: 2, cached: 3}\n", "'gpt-4o'"),
        ("gpt-4o: 2.5\n", "'gpt-4o'"),
        ("models:\n  bad-one: {input_per_million: x, output_per_million: 1}\n", "'bad-one'"),
        ("models: [1, 2]\n", "models"),
        ("- a\n- b\n", "mapping"),
        ("gpt-4o: {input_per_million: 1\n", "YAML"),
    ],
)
def test_bad_pricing_file_names_file_and_entry(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(PricingError) as err:
        book(tmp_path, text)
    message = str(err.value)
    assert "prices.yaml" in message
    assert needle in message


def test_missing_pricing_file(tmp_path: Path) -> None:
    config = CostEstimationConfig(pricing_file=tmp_path / "nope.yaml")
    with pytest.raises(PricingError, match=r"nope\.yaml"):
        PriceBook.from_config(config)


# -- reload -----------------------------------------------------------------------------


def test_reload_picks_up_changes(tmp_path: Path) -> None:
    prices = book(tmp_path, "house-model: {input_per_million: 1, output_per_million: 1}\n")
    (tmp_path / "prices.yaml").write_text(
        "house-model: {input_per_million: 2, output_per_million: 4}\n"
    )
    prices.reload()
    assert prices.price("house-model") == price(2.0, 4.0)


def test_reload_with_a_broken_file_keeps_old_prices(tmp_path: Path) -> None:
    prices = book(tmp_path, "house-model: {input_per_million: 1, output_per_million: 1}\n")
    (tmp_path / "prices.yaml").write_text("house-model: {input_per_million: oops}\n")
    with pytest.raises(PricingError, match="house-model"):
        prices.reload()
    assert prices.price("house-model") == price(1.0, 1.0)
    (tmp_path / "prices.yaml").unlink()
    with pytest.raises(PricingError):
        prices.reload()
    assert prices.price("house-model") == price(1.0, 1.0)


# -- cost -------------------------------------------------------------------------------


def test_cost_arithmetic() -> None:
    prices = book(custom={"m": price(2.5, 10.0)})
    assert prices.cost("m", 1000, 500) == pytest.approx(0.0075)
    assert prices.cost("m", 1000, None) == pytest.approx(0.0025)
    assert prices.cost("m", None, 500) == pytest.approx(0.005)
    assert prices.cost("m", 0, 0) == 0.0
    assert prices.cost("gpt-4o-2024-08-06", 1_000_000, 1_000_000) == pytest.approx(12.5)


def test_cost_unknown_model_or_no_tokens_is_none() -> None:
    prices = book()
    assert prices.cost("my-private-model", 1000, 500) is None
    assert prices.cost(None, 1000, 500) is None
    assert prices.cost("gpt-4o", None, None) is None
