"""The integer fast path of PricingRules (pricing.tariff) gives the Decimal path's answer.

`reference_charge` / `reference_max_charge` are the general path written out with
pricing.cost's functions (what PricingRules did before the fast path existed); thousands of
random prices, rates and usages, with odd exponents, long-context tables, per-request and
per-second prices, negative markups and fees, must give the same Decimals, digit for digit
and exponent for exponent.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from pricing.catalog import Catalog
from pricing.cost import apply_markup, compute_fee, cost_of, max_cost_of, quantize_usd
from pricing.models import Charge, LongContextPrice, ModelPrice, Usage
from pricing.rules import PricingRules, RateOverride, Rates
from pricing.tariff import quantize_scaled

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def reference_charge(
    price: ModelPrice,
    rates: Rates,
    usage: Usage,
    version: str,
    *,
    duration_ms: int,
    succeeded: bool,
) -> Charge:
    if not succeeded and usage.total_tokens == 0:
        return Charge(Decimal(0), Decimal(0), version)
    cost = cost_of(price, usage, succeeded=succeeded, duration_ms=duration_ms)
    fees = (
        rates.per_request_usd + compute_fee(rates.per_compute_minute_usd, duration_ms)
        if succeeded
        else Decimal(0)
    )
    return Charge(
        quantize_usd(cost), quantize_usd(apply_markup(cost, rates.markup_percent, fees)), version
    )


def reference_max_charge(
    price: ModelPrice, rates: Rates, input_tokens: int, max_output: int
) -> Decimal:
    worst = max_cost_of(price, input_tokens, max_output)
    return quantize_usd(apply_markup(worst, rates.markup_percent, rates.per_request_usd))


def _amount(rng: random.Random, *, zero_ok: bool = True) -> Decimal:
    if zero_ok and rng.random() < 0.2:
        return Decimal(rng.choice(["0", "0.00", "0E-7", "0E+2"]))
    digits = rng.randint(1, 12)
    coefficient = rng.randint(1, 10**digits)
    return Decimal(f"{coefficient}E{rng.randint(-14, 3)}")


def _per_mtok(rng: random.Random) -> Decimal:
    return Decimal(f"{rng.randint(1, 10 ** rng.randint(1, 9))}E{rng.randint(-8, 2)}")


def _maybe(rng: random.Random) -> Decimal | None:
    return None if rng.random() < 0.4 else _per_mtok(rng)


def _price(rng: random.Random) -> ModelPrice:
    long = None
    if rng.random() < 0.3:
        long = LongContextPrice(
            rng.randint(0, 3000),
            _per_mtok(rng),
            _per_mtok(rng),
            _maybe(rng),
            _maybe(rng),
            _maybe(rng),
        )
    return ModelPrice(
        "m",
        "p",
        _per_mtok(rng),
        _per_mtok(rng),
        _maybe(rng),
        _maybe(rng),
        long,
        _maybe(rng),
        per_request_usd=_amount(rng) if rng.random() < 0.3 else Decimal(0),
        per_second_usd=_amount(rng) if rng.random() < 0.3 else Decimal(0),
    )


def _usage(rng: random.Random) -> Usage:
    def n() -> int:
        return rng.choice([0, rng.randint(0, 50), rng.randint(0, 5000), rng.randint(0, 10**7)])

    write = n()
    return Usage(
        input_tokens=n(),
        output_tokens=n(),
        cached_input_tokens=n(),
        cache_write_tokens=write,
        reasoning_tokens=0,
        cache_write_1h_tokens=rng.randint(0, write),
    )


def _rules(price: ModelPrice, rng: random.Random) -> PricingRules:
    catalog = Catalog("v1", {"m": (price,)}, {"m": "m"})
    markup = Decimal(
        rng.choice(["0", "20", "-100", "-37.5", "12.3456789", "300", "1E+1", "0.000001"])
    )
    fee = _amount(rng) if rng.random() < 0.4 else Decimal(0)
    per_minute = Decimal(rng.choice(["0", "0", "0.001", "0.0"]))
    return PricingRules(
        catalog,
        markup,
        fee,
        per_compute_minute_usd=per_minute,
        tiers={"pro": RateOverride(markup_percent=Decimal("15"))},
    )


def _same(a: Decimal | None, b: Decimal | None) -> bool:
    # Equal values and the same representation (exponent, sign), not just ==.
    if a is None or b is None:
        return a is None and b is None
    return a.as_tuple() == b.as_tuple()


@pytest.mark.parametrize("seed", range(8))
def test_fast_charge_equals_the_decimal_path(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(400):
        price = _price(rng)
        rules = _rules(price, rng)
        tier = rng.choice([None, "pro"])
        rates = rules.rates_for("c", tier)
        for _ in range(5):
            usage = _usage(rng)
            duration = rng.choice([0, rng.randint(0, 100_000)])
            succeeded = rng.random() < 0.7
            got = rules.charge(
                "m",
                usage,
                at=NOW,
                customer_id="c",
                tier=tier,
                duration_ms=duration,
                succeeded=succeeded,
            )
            want = reference_charge(
                price, rates, usage, rules.version, duration_ms=duration, succeeded=succeeded
            )
            assert got is not None
            assert got == want
            assert _same(got.cost_usd, want.cost_usd), (price, usage, duration)
            assert _same(got.price_usd, want.price_usd), (price, usage, rates)


@pytest.mark.parametrize("seed", range(4))
def test_fast_max_charge_equals_the_decimal_path(seed: int) -> None:
    rng = random.Random(100 + seed)
    for _ in range(500):
        price = _price(rng)
        rules = _rules(price, rng)
        tier = rng.choice([None, "pro"])
        input_tokens, max_output = rng.randint(0, 400_000), rng.randint(0, 200_000)
        got = rules.max_charge("m", input_tokens, max_output, at=NOW, customer_id="c", tier=tier)
        want = reference_max_charge(price, rules.rates_for("c", tier), input_tokens, max_output)
        assert _same(got, want), (price, input_tokens, max_output)


def test_amounts_past_the_bound_take_the_decimal_path_and_agree() -> None:
    # 27 significant digits in a price: token counts push past 10^28, where the fast
    # path steps aside.
    rate = Decimal("123456789012345678901234567E-20")
    price = ModelPrice("m", "p", rate, rate)
    rules = PricingRules(Catalog("v1", {"m": (price,)}, {"m": "m"}), Decimal("20"))
    usage = Usage(input_tokens=10**9, output_tokens=10**9)
    got = rules.charge("m", usage, at=NOW)
    want = reference_charge(
        price, rules.rates_for(), usage, rules.version, duration_ms=0, succeeded=True
    )
    assert got == want and got is not None
    assert _same(got.price_usd, want.price_usd)


def test_bad_usage_still_raises_as_before() -> None:
    rules = PricingRules(Catalog.load_default())
    with pytest.raises(ValueError, match="negative"):
        rules.charge("gpt-4o-mini", Usage(input_tokens=-1, output_tokens=3), at=NOW)
    with pytest.raises(ValueError, match="exceeds"):
        rules.charge(
            "gpt-4o-mini",
            Usage(input_tokens=9, cache_write_tokens=1, cache_write_1h_tokens=2),
            at=NOW,
        )
    with pytest.raises(ValueError, match="duration_ms"):
        rules.charge("gpt-4o-mini", Usage(input_tokens=9), at=NOW, duration_ms=-1)
    with pytest.raises(ValueError, match="token counts"):
        rules.max_charge("gpt-4o-mini", -1, 10)
    with pytest.raises(ValueError, match="timezone-aware"):
        rules.charge("gpt-4o-mini", Usage(input_tokens=9), at=datetime(2026, 1, 1))


@pytest.mark.parametrize("seed", range(3))
def test_quantize_scaled_rounds_like_quantize_usd(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(5000):
        numerator = rng.randint(0, 10 ** rng.randint(1, 27))
        exponent = rng.randint(-30, 5)
        if rng.random() < 0.2:  # an exact tie at the 11th place
            numerator = (numerator * 10 + 5) * 10 ** max(0, -11 - exponent)
        want = quantize_usd(Decimal(f"{numerator}E{exponent}"))
        assert quantize_scaled(numerator, exponent).as_tuple() == want.as_tuple()
