"""Every catalog field priced by hand, and the rates on top: customer > tier > global.

The test catalog's model `all` uses every field (USD per 1M tokens unless said):
input 3.00, cached 0.30, 5-minute write 3.75, 1-hour write 6.00, output 15.00,
per request $0.002, per second $0.0001; past 1000 prompt tokens: input 6.00, cached 0.60,
write 7.50, 1-hour write 12.00, output 22.50.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing.catalog import Catalog
from pricing.cost import cost_of
from pricing.models import Charge, ModelPrice, Usage
from pricing.rules import PricingRules, RateOverride, Rates

D = Decimal
CATALOG = Catalog.from_mapping(
    {
        "version": "t-2",
        "models": {
            "all": {
                "provider": "anthropic",
                "input_per_mtok": "3.00",
                "cached_input_per_mtok": "0.30",
                "cache_write_per_mtok": "3.75",
                "cache_write_1h_per_mtok": "6.00",
                "output_per_mtok": "15.00",
                "per_request_usd": "0.002",
                "per_second_usd": "0.0001",
                "long_context": {
                    "above_input_tokens": 1000,
                    "input_per_mtok": "6.00",
                    "cached_input_per_mtok": "0.60",
                    "cache_write_per_mtok": "7.50",
                    "cache_write_1h_per_mtok": "12.00",
                    "output_per_mtok": "22.50",
                },
            },
            "five-minute-only": {
                "provider": "anthropic",
                "input_per_mtok": "1",
                "cache_write_per_mtok": "1.25",
                "output_per_mtok": "2",
            },
            "bare": {"provider": "x", "input_per_mtok": "1", "output_per_mtok": "2"},
        },
    }
)


def _price(model: str) -> ModelPrice:
    price = CATALOG.lookup(model)
    assert price is not None
    return price


@pytest.mark.parametrize(
    ("case", "model", "usage", "duration_ms", "succeeded", "expected"),
    [
        # 1000 x 3 = 3000 -> 0.003, + 0.002 per request. 1000 is the threshold: base prices.
        ("input", "all", Usage(input_tokens=1000), 0, True, "0.005"),
        # 200 x 15 = 3000 -> 0.003 + 0.002
        ("output", "all", Usage(output_tokens=200), 0, True, "0.005"),
        # reasoning is inside output_tokens: the same 0.005
        ("reasoning", "all", Usage(output_tokens=200, reasoning_tokens=150), 0, True, "0.005"),
        # 600 x 3 + 400 x 0.30 = 1920 -> 0.00192 + 0.002
        (
            "cache read",
            "all",
            Usage(input_tokens=1000, cached_input_tokens=400),
            0,
            True,
            "0.00392",
        ),
        # 600 x 3 + 400 x 3.75 = 3300 -> 0.0033 + 0.002
        (
            "5-minute write",
            "all",
            Usage(input_tokens=1000, cache_write_tokens=400),
            0,
            True,
            "0.0053",
        ),
        # 600 x 3 + 400 x 6 = 4200 -> 0.0042 + 0.002
        (
            "1-hour write",
            "all",
            Usage(input_tokens=1000, cache_write_tokens=400, cache_write_1h_tokens=400),
            0,
            True,
            "0.0062",
        ),
        # 600 x 3 + 300 x 3.75 + 100 x 6 = 3525 -> 0.003525 + 0.002
        (
            "both writes",
            "all",
            Usage(input_tokens=1000, cache_write_tokens=400, cache_write_1h_tokens=100),
            0,
            True,
            "0.005525",
        ),
        # no tokens: 0.002 per request + 1.5 s x 0.0001
        ("per second", "all", Usage(), 1500, True, "0.00215"),
        # 1000 x 6 + 1 x 0.60 + 10 x 22.50 = 6225.6 -> 0.0062256 + 0.002
        (
            "long context",
            "all",
            Usage(input_tokens=1001, cached_input_tokens=1, output_tokens=10),
            0,
            True,
            "0.0082256",
        ),
        # 1000 x 6 + 1000 x 12 = 18000 -> 0.018 + 0.002
        (
            "long context 1-hour write",
            "all",
            Usage(input_tokens=2000, cache_write_tokens=1000, cache_write_1h_tokens=1000),
            0,
            True,
            "0.020",
        ),
        # a failed request pays its tokens only: 0.003, no per-request or per-second price
        ("failed", "all", Usage(input_tokens=1000), 5000, False, "0.003"),
        # 1-hour writes fall back to the 5-minute price: 40 x 1.25 + 60 x 1.25 = 125
        (
            "1-hour fallback",
            "five-minute-only",
            Usage(input_tokens=100, cache_write_tokens=100, cache_write_1h_tokens=60),
            0,
            True,
            "0.000125",
        ),
        # every prompt token at the input price: 100 x 1
        (
            "all fallbacks",
            "bare",
            Usage(
                input_tokens=100,
                cached_input_tokens=10,
                cache_write_tokens=20,
                cache_write_1h_tokens=5,
            ),
            0,
            True,
            "0.0001",
        ),
    ],
)
def test_cost_of_every_catalog_field(
    case: str, model: str, usage: Usage, duration_ms: int, succeeded: bool, expected: str
) -> None:
    cost = cost_of(_price(model), usage, succeeded=succeeded, duration_ms=duration_ms)
    assert cost == D(expected), case


def test_one_hour_writes_beyond_all_writes_are_refused() -> None:
    with pytest.raises(ValueError, match="cache_write_1h_tokens"):
        cost_of(
            _price("all"), Usage(input_tokens=10, cache_write_tokens=1, cache_write_1h_tokens=2)
        )


# ----------------------------------------------------------------------------- precedence

RULES = PricingRules(
    CATALOG,
    D("20"),
    D("0.01"),
    per_compute_minute_usd=D("0.06"),
    tiers={"pro": RateOverride(markup_percent=D("10")), "team": RateOverride(per_request_usd=D(0))},
    customers={
        "acme": RateOverride(markup_percent=D("5"), per_compute_minute_usd=D(0)),
        "zed": RateOverride(per_request_usd=D("0.5")),
    },
)


@pytest.mark.parametrize(
    ("customer", "tier", "expected"),
    [
        (None, None, ("20", "0.01", "0.06")),
        ("x", "free", ("20", "0.01", "0.06")),  # a tier without overrides
        ("x", "pro", ("10", "0.01", "0.06")),  # the tier's markup
        ("x", "team", ("20", "0", "0.06")),  # the tier's fee
        ("acme", "pro", ("5", "0.01", "0")),  # the customer's markup beats the tier's
        ("zed", "pro", ("10", "0.5", "0.06")),  # each rate resolved on its own
        ("acme", None, ("5", "0.01", "0")),
    ],
)
def test_rates_resolve_customer_then_tier_then_global(
    customer: str | None, tier: str | None, expected: tuple[str, str, str]
) -> None:
    assert RULES.rates_for(customer, tier) == Rates(*(D(v) for v in expected))


def test_charge_applies_the_resolved_rates_and_the_compute_fee() -> None:
    # cost: 1000 x 3 -> 0.003 + 0.002 per request + 30 s x 0.0001 = 0.008
    # price (tier pro): 0.008 x 1.10 + 0.01 fee + 0.5 min x 0.06 = 0.0088 + 0.04 = 0.0488
    charge = RULES.charge(
        "all", Usage(input_tokens=1000), customer_id="x", tier="pro", duration_ms=30_000
    )
    assert charge == Charge(D("0.008"), D("0.0488"), RULES.version)
    # acme on pro: 0.008 x 1.05 + 0.01 + 0 = 0.0184
    acme = RULES.charge(
        "all", Usage(input_tokens=1000), customer_id="acme", tier="pro", duration_ms=30_000
    )
    assert acme is not None and acme.price_usd == D("0.0184")


def test_compute_fee_is_rounded_once_with_the_price() -> None:
    # 1 ms at $0.06/min = 0.000001 exactly; 7 ms = 0.000007. bare: 1 input token = 0.000001.
    charge = RULES.charge(
        "bare", Usage(input_tokens=1), customer_id="x", tier="team", duration_ms=7
    )
    # 0.000001 x 1.2 + 0 fee + 0.000007 = 0.0000082
    assert charge is not None and charge.price_usd == D("0.0000082")
    # $0.01/min for 1 ms is 1/6,000,000 of a dollar: 0.0000001666... -> 0.0000001667
    odd = PricingRules(CATALOG, per_compute_minute_usd=D("0.01")).charge(
        "bare", Usage(), duration_ms=1
    )
    assert odd is not None and odd.price_usd == D("0.0000001667")


def test_failed_request_pays_marked_up_tokens_and_no_fees() -> None:
    charge = RULES.charge(
        "all",
        Usage(input_tokens=1000),
        customer_id="x",
        tier="pro",
        duration_ms=30_000,
        succeeded=False,
    )
    assert charge == Charge(D("0.003"), D("0.0033"), RULES.version)


def test_failed_request_without_tokens_costs_nothing_even_if_unpriced() -> None:
    for model in ("all", "not-in-the-catalog"):
        charge = RULES.charge(model, Usage(), duration_ms=9_000, succeeded=False)
        assert charge == Charge(D(0), D(0), RULES.version)


def test_charge_prices_with_the_period_at_the_event_time() -> None:
    catalog = Catalog.load_default()
    rules = PricingRules(catalog)
    usage = Usage(input_tokens=1_000_000)
    before = rules.charge("o3", usage, at=datetime(2025, 5, 1, tzinfo=UTC))
    after = rules.charge("o3", usage, at=datetime(2025, 7, 1, tzinfo=UTC))
    assert before is not None and after is not None
    assert (before.cost_usd, after.cost_usd) == (D(10), D(2))


def test_max_charge_uses_the_customer_rates_and_the_per_request_price() -> None:
    # 100 x 6.00 (1-hour write, the dearest input) + 10 x 15 = 750 -> 0.00075 + 0.002 = 0.00275
    # acme: x 1.05 + 0.01 = 0.0128875
    worst = RULES.max_charge("all", 100, 10, customer_id="acme", tier="pro")
    assert worst == D("0.0128875")


def test_version_identifies_catalog_overrides_and_rates() -> None:
    def version(**changes: object) -> str:
        args: dict[str, object] = {
            "tiers": {"pro": RateOverride(markup_percent=D("10"))},
            "customers": {"acme": RateOverride(markup_percent=D("5"))},
        }
        args.update(changes)
        return PricingRules(CATALOG, D("20"), D(0), **args).version  # type: ignore[arg-type]

    base = version()
    assert base.startswith("t-2+")
    assert version(tiers={"pro": RateOverride(markup_percent=D("10.0"))}) == base
    variants = {
        version(tiers={"pro": RateOverride(markup_percent=D("11"))}),
        version(tiers={}),
        version(customers={"acme": RateOverride(markup_percent=D("6"))}),
        version(customers={"acme": RateOverride(per_request_usd=D("5"))}),
        version(customers={"other": RateOverride(markup_percent=D("5"))}),
        version(per_compute_minute_usd=D("0.01")),
    }
    assert base not in variants and len(variants) == 6


@pytest.mark.parametrize(
    "override",
    [
        {"markup_percent": D("-100.01")},
        {"per_request_usd": D("-0.01")},
        {"per_compute_minute_usd": D("NaN")},
        {"markup_percent": 5.0},
    ],
)
def test_bad_overrides_are_refused(override: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RateOverride(**override)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- properties

rates = st.builds(
    RateOverride,
    markup_percent=st.one_of(st.none(), st.decimals(0, 500, places=2)),
    per_request_usd=st.one_of(st.none(), st.decimals(0, 2, places=4)),
    per_compute_minute_usd=st.one_of(st.none(), st.decimals(0, 1, places=4)),
)
usages = st.builds(
    Usage,
    input_tokens=st.integers(0, 300_000),
    output_tokens=st.integers(0, 100_000),
).flatmap(
    lambda u: st.integers(0, u.input_tokens).flatmap(
        lambda writes: st.integers(0, writes).map(
            lambda hour: Usage(u.input_tokens, u.output_tokens, 0, writes, 0, "provider", hour)
        )
    )
)


@settings(max_examples=300, deadline=None)
@given(
    tier=rates,
    customer=rates,
    usage=usages,
    duration_ms=st.integers(0, 3_600_000),
    succeeded=st.booleans(),
    model=st.sampled_from(["all", "five-minute-only", "bare"]),
)
def test_charges_with_any_rates_are_ten_place_decimals_never_below_cost(
    tier: RateOverride,
    customer: RateOverride,
    usage: Usage,
    duration_ms: int,
    succeeded: bool,
    model: str,
) -> None:
    rules = PricingRules(
        CATALOG,
        D("20"),
        D("0.01"),
        per_compute_minute_usd=D("0.01"),
        tiers={"t": tier},
        customers={"c": customer},
    )
    charge = rules.charge(
        model, usage, customer_id="c", tier="t", duration_ms=duration_ms, succeeded=succeeded
    )
    assert charge is not None
    for amount in (charge.cost_usd, charge.price_usd):
        assert isinstance(amount, Decimal)
        exponent = amount.as_tuple().exponent
        assert isinstance(exponent, int) and exponent >= -10
    assert charge.price_usd >= charge.cost_usd >= 0
