"""pricing/cost.py and pricing/rules.py: exact costs, the one rounding rule, markup and fee.

Expected amounts are worked by hand from the catalog's list prices (USD per 1M tokens).
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing.catalog import Catalog
from pricing.cost import cost_of, micros_floor, quantize_usd, usd_to_micros_ceil
from pricing.models import Charge, ModelPrice, Usage
from pricing.rules import PricingRules

D = Decimal
CATALOG = Catalog.load_default()
MODEL_NAMES = [price.model for price in CATALOG.models()]


def _price(model: str) -> ModelPrice:
    price = CATALOG.lookup(model)
    assert price is not None
    return price


# ----------------------------------------------------------------------------- cost_of


@pytest.mark.parametrize(
    ("case", "model", "usage", "expected"),
    [
        # 1000 x 2.50 + 500 x 10.00 = 7500 -> /1M
        ("plain", "gpt-4o", Usage(input_tokens=1000, output_tokens=500), "0.0075"),
        # 6000 uncached x 2.50 + 4000 cached x 1.25 + 200 x 10.00 = 22000
        (
            "openai cached",
            "gpt-4o",
            Usage(input_tokens=10_000, cached_input_tokens=4_000, output_tokens=200),
            "0.022",
        ),
        # 4 x 0.05 + 3 x 0.005 + 1 x 0.40 = 0.615
        (
            "openai cached, tiny",
            "gpt-5-nano",
            Usage(input_tokens=7, cached_input_tokens=3, output_tokens=1),
            "0.000000615",
        ),
        # 100 uncached x 3 + 2000 read x 0.30 + 500 write x 3.75 + 300 x 15 = 7275
        (
            "anthropic read + write",
            "claude-sonnet-4-5",
            Usage(
                input_tokens=2_600,
                cached_input_tokens=2_000,
                cache_write_tokens=500,
                output_tokens=300,
            ),
            "0.007275",
        ),
        # 100 x 0.80 + 800 x 0.08 + 100 x 1.00 + 50 x 4.00 = 444
        (
            "anthropic haiku 3.5",
            "claude-3-5-haiku-20241022",
            Usage(
                input_tokens=1_000,
                cached_input_tokens=800,
                cache_write_tokens=100,
                output_tokens=50,
            ),
            "0.000444",
        ),
        # 1000 x 2 + 3000 x 8 = 26000; the 2500 reasoning tokens are inside output_tokens.
        (
            "reasoning counted once",
            "o3",
            Usage(input_tokens=1_000, output_tokens=3_000, reasoning_tokens=2_500),
            "0.026",
        ),
        # 12345 x 0.02 = 246.9
        ("embeddings", "text-embedding-3-small", Usage(input_tokens=12_345), "0.0002469"),
        ("embeddings ada", "text-embedding-ada-002", Usage(input_tokens=1_000_000), "0.10"),
        # No cached price: cached tokens are charged at the input price. 1000 x 0.50 = 500
        (
            "no cached price",
            "gpt-3.5-turbo",
            Usage(input_tokens=1_000, cached_input_tokens=400),
            "0.0005",
        ),
        # Exactly at the threshold: base prices. 200000 x 3 + 1000 x 15 = 615000
        (
            "long context threshold",
            "claude-sonnet-4-5",
            Usage(input_tokens=200_000, output_tokens=1_000),
            "0.615",
        ),
        # Past it: every token at long-context prices.
        # 200000 x 6 + 50000 read x 0.60 + 1000 x 22.50 = 1252500
        (
            "long context",
            "claude-sonnet-4-5",
            Usage(input_tokens=250_000, cached_input_tokens=50_000, output_tokens=1_000),
            "1.2525",
        ),
        ("nothing used", "gpt-4o", Usage(), "0"),
    ],
)
def test_cost_of(case: str, model: str, usage: Usage, expected: str) -> None:
    assert cost_of(_price(model), usage) == D(expected), case


def test_cost_of_does_not_add_reasoning_tokens_to_output() -> None:
    price = _price("o3")
    with_reasoning = Usage(input_tokens=10, output_tokens=100, reasoning_tokens=90)
    without = Usage(input_tokens=10, output_tokens=100)
    assert cost_of(price, with_reasoning) == cost_of(price, without)


def test_cost_of_refuses_negative_token_counts() -> None:
    with pytest.raises(ValueError, match="output_tokens"):
        cost_of(_price("gpt-4o"), Usage(input_tokens=1, output_tokens=-1))


# ----------------------------------------------------------------------------- rounding


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("0.00000000005", "0.0000000000"),  # tie -> even (0)
        ("0.00000000015", "0.0000000002"),  # tie -> even (2)
        ("0.00000000025", "0.0000000002"),  # tie -> even (2)
        ("0.000000000251", "0.0000000003"),
        ("1.23456789014999", "1.2345678901"),
        ("7", "7.0000000000"),
    ],
)
def test_quantize_usd_is_ten_places_half_even(amount: str, expected: str) -> None:
    result = quantize_usd(D(amount))
    assert result == D(expected)
    assert result.as_tuple().exponent == -10


def test_quantize_usd_refuses_floats() -> None:
    with pytest.raises(ValueError, match="never a float"):
        quantize_usd(0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "micros"),
    [("0", 0), ("0.000001", 1), ("0.0000010001", 2), ("0.0000000001", 1), ("1.5", 1_500_000)],
)
def test_usd_to_micros_rounds_up(amount: str, micros: int) -> None:
    assert usd_to_micros_ceil(D(amount)) == micros


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=-(10**40), max_value=10**40), st.integers(min_value=-60, max_value=20))
def test_usd_to_micros_equals_the_ceiling_at_80_digits(coefficient: int, exponent: int) -> None:
    # The integer shortcut must answer what the 80-digit Decimal ceiling answers.
    from decimal import ROUND_CEILING, localcontext

    from pricing.cost import _EXACT

    amount = D(f"{coefficient}E{exponent}")
    with localcontext(_EXACT):
        want = int((amount * 1_000_000).to_integral_value(rounding=ROUND_CEILING))
    assert usd_to_micros_ceil(amount) == want


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=0, max_value=10**40), st.integers(min_value=-60, max_value=20))
def test_micros_floor_equals_the_floor_at_80_digits(coefficient: int, exponent: int) -> None:
    # A spend cap in micro-dollars: never more than the cap, whatever its digits.
    from decimal import ROUND_FLOOR, localcontext

    from pricing.cost import _EXACT

    amount = D(f"{coefficient}E{exponent}")
    with localcontext(_EXACT):
        want = int((amount * 1_000_000).to_integral_value(rounding=ROUND_FLOOR))
    assert micros_floor(amount) == want


# ----------------------------------------------------------------------------- PricingRules


def _rules(markup: str = "20", fee: str = "0") -> PricingRules:
    return PricingRules(CATALOG, markup_percent=D(markup), per_request_usd=D(fee))


def test_charge_applies_markup_and_fee() -> None:
    rules = _rules("20", "0.001")
    charge = rules.charge("gpt-4o-2024-08-06", Usage(input_tokens=1000, output_tokens=500))
    # cost 0.0075; price 0.0075 x 1.2 + 0.001 = 0.01
    assert charge == Charge(D("0.0075"), D("0.01"), rules.version)
    assert charge.cost_usd.as_tuple().exponent == -10
    assert charge.price_usd.as_tuple().exponent == -10


@pytest.mark.parametrize(("markup", "expected"), [("1", "0.0000000050"), ("3", "0.0000000052")])
def test_charge_rounds_the_price_half_even(markup: str, expected: str) -> None:
    # One cached gpt-5-nano token costs 0.005/1M = 0.000000005. A 1% markup makes it
    # 0.00000000505 (a tie at 10 places -> even, down); 3% makes 0.00000000515 (-> even, up).
    charge = _rules(markup).charge("gpt-5-nano", Usage(input_tokens=1, cached_input_tokens=1))
    assert charge is not None
    assert charge.cost_usd == D("0.0000000050")
    assert charge.price_usd == D(expected)


def test_charge_of_unknown_model_is_none() -> None:
    rules = _rules()
    assert rules.charge("gpt-9", Usage(input_tokens=1)) is None
    assert rules.price("gpt-9") is None
    assert rules.max_charge("gpt-9", 1, 1) is None


def test_per_request_fee_is_charged_on_an_empty_request() -> None:
    charge = _rules("0", "0.002").charge("gpt-4o", Usage())
    assert charge is not None
    assert (charge.cost_usd, charge.price_usd) == (D(0), D("0.002"))


def test_max_charge_prices_every_input_token_uncached() -> None:
    # 1000 x 2.50 + 500 x 10 = 0.0075; x 1.2 + 0.001 = 0.01
    assert _rules("20", "0.001").max_charge("gpt-4o", 1000, 500) == D("0.01")


def test_max_charge_covers_a_prompt_written_to_cache() -> None:
    # Anthropic cache writes cost more than input (3.00): 3.75 for 5 minutes, 6.00 for 1 hour.
    # The worst case writes the whole prompt to the 1-hour cache.
    # 1000 x 6.00 + 100 x 15 = 7500 -> 0.0075; x 1.2 = 0.009
    assert _rules("20").max_charge("claude-sonnet-4-5", 1000, 100) == D("0.009")


def test_max_charge_uses_long_context_prices_past_the_threshold() -> None:
    # 250000 x 12.00 (long-context 1-hour write) + 1000 x 22.50 = 3022500 -> 3.0225
    assert _rules("0").max_charge("claude-sonnet-4-5", 250_000, 1_000) == D("3.0225")


def test_rules_version_is_stable_and_names_the_catalog() -> None:
    version = _rules("20", "0").version
    head, _, digest = version.partition("+")
    assert head == CATALOG.version
    assert len(digest) == 8 and int(digest, 16) >= 0
    assert _rules("20", "0").version == version
    assert _rules("20.00", "0.000").version == version
    assert PricingRules(CATALOG, D("2E+1"), D("0")).version == version


def test_rules_version_changes_with_markup_or_fee() -> None:
    versions = {
        _rules("20", "0").version,
        _rules("21", "0").version,
        _rules("20", "0.01").version,
        _rules("0", "20").version,
    }
    assert len(versions) == 4


@pytest.mark.parametrize(
    ("markup", "fee"),
    [(20.0, D(0)), (D(20), 0.0), (D("-101"), D(0)), (D(0), D("-0.01")), (D("NaN"), D(0))],
)
def test_rules_refuse_floats_and_impossible_values(markup: object, fee: object) -> None:
    with pytest.raises(ValueError):
        PricingRules(CATALOG, markup, fee)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- properties

usages = (
    st.integers(0, 2_000_000)
    .flatmap(
        lambda total: st.tuples(
            st.just(total),
            st.integers(0, total),
            st.integers(0, 1_000_000),
            st.integers(0, 200_000),
        )
    )
    .flatmap(
        lambda t: st.integers(0, t[0] - t[1]).map(
            lambda write: Usage(
                input_tokens=t[0],
                cached_input_tokens=t[1],
                cache_write_tokens=write,
                output_tokens=t[2],
                reasoning_tokens=min(t[3], t[2]),
            )
        )
    )
)
markups = st.decimals(min_value=0, max_value=1000, places=3, allow_nan=False)
fees = st.decimals(min_value=0, max_value=5, places=6, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(model=st.sampled_from(MODEL_NAMES), usage=usages, markup=markups, fee=fees)
def test_charges_are_exact_decimals_and_never_below_cost(
    model: str, usage: Usage, markup: Decimal, fee: Decimal
) -> None:
    charge = PricingRules(CATALOG, markup, fee).charge(model, usage)
    assert charge is not None
    for amount in (charge.cost_usd, charge.price_usd):
        assert isinstance(amount, Decimal)
        exponent = amount.as_tuple().exponent
        assert isinstance(exponent, int) and exponent >= -10
    assert charge.cost_usd >= 0
    assert charge.price_usd >= charge.cost_usd


@settings(max_examples=300, deadline=None)
@given(model=st.sampled_from(MODEL_NAMES), usage=usages, markup=markups, fee=fees)
def test_max_charge_is_never_below_the_actual_charge(
    model: str, usage: Usage, markup: Decimal, fee: Decimal
) -> None:
    rules = PricingRules(CATALOG, markup, fee)
    charge = rules.charge(model, usage)
    worst = rules.max_charge(model, usage.input_tokens, usage.output_tokens)
    assert charge is not None and worst is not None
    assert worst >= charge.price_usd
