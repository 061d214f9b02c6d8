"""Operator overrides: `pricing.models` over the catalog (pricing/overrides.py), and the whole
`pricing:` / `tiers.<name>.pricing` section of config.yaml turned into rules (gateway/runtime.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, Settings, parse_settings
from gateway.runtime import build_pricing, build_snapshot, plans_of
from pricing.catalog import Catalog, CatalogError
from pricing.models import Usage
from pricing.overrides import apply_overrides

D = Decimal
CATALOG = Catalog.load_default()


def test_an_override_replaces_only_the_fields_it_names_at_every_date() -> None:
    priced = apply_overrides(CATALOG, {"o3": {"input_per_mtok": "1.50"}})
    for price in priced.history("o3"):
        assert price.input_per_mtok == D("1.50")
    old, new = priced.history("o3")
    assert (old.output_per_mtok, new.output_per_mtok) == (D("40.00"), D("8.00"))
    assert new.cached_input_per_mtok == D("0.50")
    unchanged = CATALOG.lookup("o3")
    assert unchanged is not None and unchanged.input_per_mtok == D("2.00")
    assert priced.version == CATALOG.version
    assert priced.fingerprint != CATALOG.fingerprint


def test_an_override_by_alias_changes_the_model_it_names() -> None:
    priced = apply_overrides(CATALOG, {"claude-opus-4-0": {"output_per_mtok": "70"}})
    price = priced.lookup("claude-opus-4-20250514")
    assert price is not None and price.model == "claude-opus-4"
    assert price.output_per_mtok == D("70")


def test_base_overrides_leave_long_context_prices_alone_unless_given() -> None:
    priced = apply_overrides(CATALOG, {"claude-sonnet-4-5": {"input_per_mtok": "2.00"}})
    price = priced.lookup("claude-sonnet-4-5")
    assert price is not None and price.long_context is not None
    assert price.input_per_mtok == D("2.00")
    assert price.long_context.input_per_mtok == D("6.00")
    lc = {"above_input_tokens": 100000, "input_per_mtok": "4", "output_per_mtok": "20"}
    priced = apply_overrides(CATALOG, {"claude-sonnet-4-5": {"long_context": lc}})
    price = priced.lookup("claude-sonnet-4-5")
    assert price is not None and price.long_context is not None
    assert price.long_context.above_input_tokens == 100000
    assert price.long_context.cache_write_per_mtok is None


def test_an_override_can_add_a_model_and_a_differently_priced_snapshot() -> None:
    priced = apply_overrides(
        CATALOG,
        {
            "llama-3.1-70b": {
                "provider": "vllm",
                "input_per_mtok": "0.40",
                "output_per_mtok": "0.40",
                "aliases": ["llama-70b"],
                "per_second_usd": "0.0002",
            },
            "gpt-4o-2024-08-06": {
                "provider": "openai",
                "input_per_mtok": "2.00",
                "output_per_mtok": "9.00",
            },
        },
    )
    llama = priced.lookup("llama-70b")
    assert llama is not None and llama.model == "llama-3.1-70b"
    assert llama.per_second_usd == D("0.0002")
    snapshot = priced.lookup("gpt-4o-2024-08-06")
    family = priced.lookup("gpt-4o-2024-11-20")
    assert snapshot is not None and snapshot.output_per_mtok == D("9.00")
    assert family is not None and family.model == "gpt-4o"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"my-model": {"input_per_mtok": "1"}},
            "pricing.models.my-model: it is not in the catalog, so the override adds a model; "
            "add provider, output_per_mtok",
        ),
        (
            {"gpt-4o-2024-08-06": {"input_per_mtok": "2"}},
            "would resolve to 'gpt-4o': override 'gpt-4o' instead",
        ),
        (
            {"gpt-4o": {"input_per_mtok": 2.5}},
            "pricing.models.gpt-4o.input_per_mtok: got the float",
        ),
        ({"gpt-4o": {"input_per_mtok": "0.0000025"}}, "looks like a per-token price"),
        ({"gpt-4o": {"cache_read_per_mtok": "1"}}, "pricing.models.gpt-4o: unknown field(s)"),
        ({"gpt-4o": {"effective_from": "2026-01-01"}}, "unknown field(s) effective_from"),
        ({"gpt-4o": {"aliases": ["gpt-5-mini"]}}, "already used by model 'gpt-5-mini'"),
        ({"gpt-4o": "cheap"}, "must be a mapping"),
    ],
)
def test_bad_overrides_are_refused_naming_model_and_field(
    overrides: dict[str, Any], expected: str
) -> None:
    with pytest.raises(CatalogError) as info:
        apply_overrides(CATALOG, overrides)
    assert expected in str(info.value)


# ----------------------------------------------------------------------------- config.yaml

BASE: dict[str, Any] = {"providers": {"openai": {"kind": "openai", "base_url": "http://x/v1"}}}


def settings(**sections: Any) -> Settings:
    return parse_settings(yaml.safe_dump({**BASE, **sections}).encode(), "test.yaml")


def test_config_sections_become_rules_with_customer_over_tier_over_global() -> None:
    config = settings(
        pricing={
            "markup_percent": "20",
            "per_request_usd": "1.00",
            "per_compute_minute_usd": "0.01",
            "models": {"gpt-4o": {"input_per_mtok": "2.00"}},
            "customers": {"acme": {"markup_percent": "5"}},
        },
        tiers={"free": {}, "pro": {"pricing": {"per_request_usd": "0", "markup_percent": "10"}}},
    )
    rules = build_pricing(config, CATALOG)
    assert rules.rates_for("acme", "pro").markup_percent == D("5")
    assert rules.rates_for("acme", "pro").per_request_usd == D("0")
    assert rules.rates_for("bob", "free").per_request_usd == D("1.00")
    assert rules.rates_for("bob", "pro").per_compute_minute_usd == D("0.01")
    # gpt-4o at the override: 1M input tokens x 2.00 = 2; pro: x 1.10 + 0 + 1 min x 0.01
    charge = rules.charge(
        "gpt-4o",
        Usage(input_tokens=1_000_000),
        customer_id="bob",
        tier="pro",
        duration_ms=60_000,
        at=datetime.now(UTC),
    )
    assert charge is not None
    assert (charge.cost_usd, charge.price_usd) == (D(2), D("2.21"))
    assert build_snapshot(config, CATALOG).pricing.version == rules.version


def test_a_config_that_changes_pricing_changes_the_version() -> None:
    one = build_pricing(settings(pricing={"customers": {"a": {"markup_percent": "5"}}}), CATALOG)
    two = build_pricing(settings(pricing={"customers": {"a": {"markup_percent": "6"}}}), CATALOG)
    three = build_pricing(settings(pricing={"models": {"o3": {"input_per_mtok": "2.01"}}}), CATALOG)
    assert len({one.version, two.version, three.version}) == 3


def test_an_override_the_catalog_cannot_take_is_a_config_error() -> None:
    config = settings(pricing={"models": {"my-model": {"input_per_mtok": "1"}}})
    with pytest.raises(ConfigError) as info:
        build_snapshot(config, CATALOG)
    assert "test.yaml is invalid" in str(info.value)
    assert "pricing.models.my-model" in str(info.value)


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"pricing": {"markup_percent": "-101"}}, "pricing.markup_percent"),
        (
            {"pricing": {"per_compute_minute_usd": 0.01}},
            "pricing.per_compute_minute_usd: got the float",
        ),
        (
            {"pricing": {"customers": {"acme": {"per_request_usd": "-1"}}}},
            "pricing.customers.acme.per_request_usd",
        ),
        (
            {"pricing": {"models": {"gpt-4o": {"output_per_mtok": "0.00001"}}}},
            "pricing.models.gpt-4o.output_per_mtok: '0.00001' looks like a per-token price",
        ),
        ({"tiers": {"pro": {"pricing": {"markup": "5"}}}}, "tiers.pro.pricing.markup"),
        ({"billing": {"tax": {"rate_percent": "101"}}}, "billing.tax.rate_percent"),
        ({"billing": {"tax": {"customers": {"acme": "-1"}}}}, "billing.tax.customers.acme"),
    ],
)
def test_config_refuses_bad_pricing_naming_the_yaml_path(
    sections: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        settings(**sections)
    assert expected in str(info.value)


def test_tax_rate_is_the_customers_else_the_default() -> None:
    config = settings(billing={"tax": {"rate_percent": "8", "customers": {"acme": "0"}}})
    assert config.billing.tax.rate_for("acme") == D(0)
    assert config.billing.tax.rate_for("bob") == D(8)
    assert settings().billing.tax.rate_for("bob") == D(0)


def test_plans_of_gives_each_planned_tier_its_plan() -> None:
    config = settings(
        tiers={
            "free": {"plan": {"included": {"requests": 10}}},
            "pro": {
                "plan": {
                    "base_price_usd": "29.00",
                    "included": {"requests": 100},
                    "overage": {"requests": "1.00"},
                }
            },
            "payg": {},
        }
    )
    plans = plans_of(config)
    assert sorted(plans) == ["free", "pro"]
    assert plans["pro"].base_price_usd == D("29.00")
    assert plans["pro"].included == {"requests": D(100)}
