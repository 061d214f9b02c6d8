"""pricing/catalog.py: the packaged catalog loads, names resolve, bad catalogs are refused."""

from __future__ import annotations

import copy
from decimal import Decimal
from importlib import resources
from typing import Any

import pytest
import yaml

from pricing.catalog import Catalog, CatalogError
from pricing.models import ModelPrice

REQUIRED_MODELS = {
    "openai": [
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-4o",
        "gpt-4o-mini",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-3.5-turbo",
        "gpt-3.5-turbo-instruct",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
    ],
    "anthropic": [
        "claude-opus-4-1",
        "claude-opus-4",
        "claude-opus-4-5",
        "claude-sonnet-4-5",
        "claude-sonnet-4",
        "claude-3-7-sonnet",
        "claude-haiku-4-5",
        "claude-3-5-haiku",
        "claude-3-haiku",
    ],
    "google": [
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-2.0-flash",
        "gemini-embedding-001",
        "text-embedding-004",
    ],
}


def _minimal() -> dict[str, Any]:
    return {
        "version": "test-1",
        "models": {
            "gpt-4o": {
                "provider": "openai",
                "input_per_mtok": "2.50",
                "cached_input_per_mtok": "1.25",
                "output_per_mtok": "10.00",
            },
        },
    }


# ----------------------------------------------------------------------------- packaged data


def test_default_catalog_has_a_version_and_every_required_model() -> None:
    catalog = Catalog.load_default()
    assert catalog.version == "2026-12-04"
    for provider, names in REQUIRED_MODELS.items():
        for name in names:
            price = catalog.lookup(name)
            assert price is not None, name
            assert price.model == name
            assert price.provider == provider


def test_default_catalog_is_loaded_once() -> None:
    assert Catalog.load_default() is Catalog.load_default()


def test_packaged_yaml_writes_every_price_as_a_string() -> None:
    text = resources.files("pricing").joinpath("data", "catalog.yaml").read_text("utf-8")
    raw = yaml.safe_load(text)
    assert isinstance(raw["version"], str)
    for name, entry in raw["models"].items():
        for table in (entry, entry.get("long_context") or {}):
            for field, value in table.items():
                if field.endswith("_per_mtok"):
                    assert isinstance(value, str), f"{name}.{field} = {value!r}"


@pytest.mark.parametrize(
    ("model", "input_", "cached", "write", "output"),
    [
        ("gpt-5", "1.25", "0.125", None, "10.00"),
        ("gpt-4.1-nano", "0.10", "0.025", None, "0.40"),
        ("gpt-4o", "2.50", "1.25", None, "10.00"),
        ("o3", "2.00", "0.50", None, "8.00"),
        ("o4-mini", "1.10", "0.275", None, "4.40"),
        ("gpt-3.5-turbo", "0.50", None, None, "1.50"),
        ("text-embedding-3-large", "0.13", None, None, "0"),
        ("claude-opus-4-5", "5.00", "0.50", "6.25", "25.00"),
        ("claude-opus-4-1", "15.00", "1.50", "18.75", "75.00"),
        ("claude-sonnet-4-5", "3.00", "0.30", "3.75", "15.00"),
        ("claude-3-5-haiku", "0.80", "0.08", "1.00", "4.00"),
        ("claude-3-haiku", "0.25", "0.03", "0.30", "1.25"),
    ],
)
def test_default_catalog_list_prices(
    model: str, input_: str, cached: str | None, write: str | None, output: str
) -> None:
    price = Catalog.load_default().lookup(model)
    assert price is not None
    assert price.input_per_mtok == Decimal(input_)
    assert price.output_per_mtok == Decimal(output)
    assert price.cached_input_per_mtok == (None if cached is None else Decimal(cached))
    assert price.cache_write_per_mtok == (None if write is None else Decimal(write))


def test_anthropic_cache_prices_follow_the_published_multipliers() -> None:
    # A typo in the file shows up here: 5-minute writes are 1.25x input, reads 0.1x input.
    # Claude Haiku 3 is the one published exception ($0.30 / $0.03 on $0.25).
    for price in Catalog.load_default().models():
        if price.provider != "anthropic" or price.model == "claude-3-haiku":
            continue
        assert price.cache_write_per_mtok == price.input_per_mtok * Decimal("1.25"), price.model
        assert price.cached_input_per_mtok == price.input_per_mtok / 10, price.model


def test_openai_cached_input_is_cheaper_than_input() -> None:
    for price in Catalog.load_default().models():
        if price.provider == "openai" and price.cached_input_per_mtok is not None:
            assert price.cached_input_per_mtok < price.input_per_mtok, price.model


def test_sonnet_long_context_prices() -> None:
    for name in ("claude-sonnet-4", "claude-sonnet-4-5"):
        price = Catalog.load_default().lookup(name)
        assert price is not None and price.long_context is not None
        assert price.long_context.above_input_tokens == 200_000
        assert price.long_context.input_per_mtok == Decimal("6.00")
        assert price.long_context.output_per_mtok == Decimal("22.50")
        assert price.long_context.cache_write_per_mtok == Decimal("7.50")
        assert price.long_context.cached_input_per_mtok == Decimal("0.60")


def test_models_lists_decimal_prices() -> None:
    models = Catalog.load_default().models()
    assert len(models) == len({m.model for m in models}) >= 26
    for price in models:
        assert isinstance(price, ModelPrice)
        assert isinstance(price.input_per_mtok, Decimal)
        assert isinstance(price.output_per_mtok, Decimal)


# ----------------------------------------------------------------------------- name resolution


@pytest.mark.parametrize(
    ("requested", "resolved"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-11-20", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-5-chat-latest", "gpt-5"),
        ("o3-2025-04-16", "o3"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-opus-4-0", "claude-opus-4"),
        ("claude-sonnet-4-0", "claude-sonnet-4"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("claude-3-7-sonnet-20250219", "claude-3-7-sonnet"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        # A snapshot priced differently is its own entry and wins over stripping.
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
    ],
)
def test_snapshots_and_aliases_resolve_to_their_model(requested: str, resolved: str) -> None:
    price = Catalog.load_default().lookup(requested)
    assert price is not None
    assert price.model == resolved


@pytest.mark.parametrize(
    "requested",
    ["gpt-9", "", "openai/gpt-4o", "gpt-4o-2024-08", "gpt-4o-2024-08-06-extra", "GPT-4O-X"],
)
def test_unknown_names_resolve_to_none(requested: str) -> None:
    assert Catalog.load_default().lookup(requested) is None


def test_first_gpt4o_snapshot_keeps_its_own_price() -> None:
    price = Catalog.load_default().lookup("gpt-4o-2024-05-13")
    assert price is not None
    assert (price.input_per_mtok, price.output_per_mtok) == (Decimal("5.00"), Decimal("15.00"))


# ----------------------------------------------------------------------------- loader errors


def test_from_mapping_accepts_strings_ints_and_decimals() -> None:
    data = _minimal()
    data["models"]["gpt-4o"]["input_per_mtok"] = Decimal("2.50")
    data["models"]["gpt-4o"]["output_per_mtok"] = 10
    catalog = Catalog.from_mapping(data)
    price = catalog.lookup("gpt-4o")
    assert catalog.version == "test-1"
    assert price == ModelPrice("gpt-4o", "openai", Decimal("2.50"), Decimal(10), Decimal("1.25"))


def _broken(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(_minimal())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ("models", "gpt-4o", "input_per_mtok"),
            2.5,
            "models.gpt-4o.input_per_mtok: got the float 2.5",
        ),
        (("models", "gpt-4o", "output_per_mtok"), "0.00001", "models.gpt-4o.output_per_mtok"),
        (
            ("models", "gpt-4o", "cached_input_per_mtok"),
            "0.00000125",
            "models.gpt-4o.cached_input_per_mtok: '0.00000125' looks like a per-token price",
        ),
        (("models", "gpt-4o", "cache_read_per_mtok"), "0.30", "cache_read_per_mtok"),
        (("models", "gpt-4o", "input_per_mtok"), "-1", "models.gpt-4o.input_per_mtok"),
        (("models", "gpt-4o", "input_per_mtok"), "two", "is not a decimal number"),
        (("models", "gpt-4o", "input_per_mtok"), "NaN", "models.gpt-4o.input_per_mtok"),
        (("models", "gpt-4o", "input_per_mtok"), True, "models.gpt-4o.input_per_mtok"),
        (("models", "gpt-4o", "input_per_mtok"), None, "models.gpt-4o.input_per_mtok: required"),
        (("models", "gpt-4o", "provider"), None, "models.gpt-4o.provider: required"),
        (("models", "gpt-4o", "aliases"), "gpt-4o-x", "models.gpt-4o.aliases"),
        (
            ("models", "gpt-4o", "long_context"),
            {"above_input_tokens": 200000, "input_per_mtok": "5", "output_per_mtok": 7.5},
            "models.gpt-4o.long_context.output_per_mtok: got the float",
        ),
        (
            ("models", "gpt-4o", "long_context"),
            {"above_input_tokens": "200K", "input_per_mtok": "5", "output_per_mtok": "7"},
            "models.gpt-4o.long_context.above_input_tokens",
        ),
        (
            ("models", "gpt-4o", "long_context"),
            {"above": 1, "input_per_mtok": "5", "output_per_mtok": "7"},
            "models.gpt-4o.long_context: unknown field(s) above",
        ),
        (("version",), None, "version"),
        (("models",), {}, "models"),
        (("currency",), "USD", "unknown top-level field(s) currency"),
    ],
)
def test_loader_refuses_a_bad_catalog_naming_model_and_field(
    path: tuple[str, ...], value: Any, expected: str
) -> None:
    with pytest.raises(CatalogError) as info:
        Catalog.from_mapping(_broken(path, value))
    assert expected in str(info.value)


def test_unknown_field_error_names_model_and_field() -> None:
    data = _broken(("models", "gpt-4o", "cache_read_per_mtok"), "0.30")
    with pytest.raises(CatalogError) as info:
        Catalog.from_mapping(data)
    assert "models.gpt-4o: unknown field(s) cache_read_per_mtok" in str(info.value)


def test_unquoted_yaml_date_version_is_refused() -> None:
    data = yaml.safe_load("version: 2026-11-01\nmodels: {}\n")
    data["models"] = _minimal()["models"]
    with pytest.raises(CatalogError, match=r"version: got datetime\.date"):
        Catalog.from_mapping(data)


def test_float_read_from_yaml_text_is_refused() -> None:
    text = """
version: "v1"
models:
  claude-sonnet-4-5:
    provider: anthropic
    input_per_mtok: 3.00
    output_per_mtok: "15"
"""
    with pytest.raises(CatalogError) as info:
        Catalog.from_mapping(yaml.safe_load(text))
    assert "models.claude-sonnet-4-5.input_per_mtok: got the float 3.0" in str(info.value)


def test_an_alias_may_not_price_two_models() -> None:
    data = _minimal()
    data["models"]["gpt-4o-mini"] = {
        "provider": "openai",
        "input_per_mtok": "0.15",
        "output_per_mtok": "0.60",
        "aliases": ["gpt-4o"],
    }
    with pytest.raises(CatalogError) as info:
        Catalog.from_mapping(data)
    assert "models.gpt-4o-mini: the name 'gpt-4o' is already used" in str(info.value)
