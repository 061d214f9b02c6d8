"""pricing/invoice.py: the rounding rule, the JSON shape, and properties over random plans:
an invoice adds up (subtotal = sum of lines, total = subtotal + tax) and no float enters it."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing.cost import quantize_cents
from pricing.invoice import Invoice, ModelUsage, MonthUsage, build_invoice
from pricing.months import BillingMonth
from pricing.plans import DIMENSIONS, Mode, OveragePrice, Plan, PriceTier

D = Decimal
MODES: tuple[Mode, ...] = ("graduated", "volume")
MONTH = BillingMonth(2026, 2)


def test_month_bounds_are_utc_and_half_open() -> None:
    assert str(MONTH) == "2026-02"
    assert MONTH.start.isoformat() == "2026-02-01T00:00:00+00:00"
    assert MONTH.end.isoformat() == "2026-03-01T00:00:00+00:00"
    assert BillingMonth.parse("2026-12").end.isoformat() == "2027-01-01T00:00:00+00:00"
    for bad in ("2026-13", "2026-1", "26-01", "2026-01-01", ""):
        with pytest.raises(ValueError, match="YYYY-MM"):
            BillingMonth.parse(bad)


def test_lines_round_to_cents_half_even_and_tax_is_on_the_rounded_subtotal() -> None:
    plan = Plan(
        "pro",
        base_price_usd=D("10.005"),
        included={"requests": D(1)},
        overage={"requests": OveragePrice.flat(D("0.0125"))},
    )
    usage = MonthUsage(requests=3, price_usd=D("0.015"))
    inv = build_invoice(
        customer_id="acme",
        month=MONTH,
        tier="pro",
        plan=plan,
        usage=usage,
        tax_percent=D("12.5"),
        currency="usd",
    )
    # base 10.005 -> 10.00 (half even); 2 x 0.0125 = 0.025 -> 0.02; usage 0.015 -> 0.02
    assert [line.amount for line in inv.lines] == [D("10.00"), D("0.02"), D("0.02")]
    assert [line.exact_amount for line in inv.lines] == [D("10.005"), D("0.025"), D("0.015")]
    # subtotal 10.04; tax 12.5% = 1.255 -> 1.26 (half even: 5 -> 6); total 11.30
    assert (inv.subtotal, inv.tax, inv.total) == (D("10.04"), D("1.26"), D("11.30"))


def test_invoice_json_shape() -> None:
    plan = Plan(
        "pro",
        base_price_usd=D("29"),
        included={"requests": D(100)},
        overage={"requests": OveragePrice.flat(D("1.00"))},
    )
    usage = MonthUsage(
        requests=101,
        failed_requests=2,
        input_tokens=5,
        output_tokens=6,
        compute_ms=10,
        price_usd=D("0.5"),
        cost_usd=D("0.4"),
        unpriced_requests=1,
        by_model=(ModelUsage("gpt-4o", 101, 2, 5, 6, D("0.5")),),
    )
    inv = build_invoice(
        customer_id="acme",
        month=MONTH,
        tier="pro",
        plan=plan,
        usage=usage,
        tax_percent=D("8"),
        currency="usd",
    )
    body = json.loads(json.dumps(inv.to_json()))
    assert body == {
        "customer_id": "acme",
        "month": "2026-02",
        "period_start": "2026-02-01T00:00:00+00:00",
        "period_end": "2026-03-01T00:00:00+00:00",
        "tier": "pro",
        "plan": "pro",
        "currency": "usd",
        "lines": [
            {
                "kind": "base_fee",
                "description": "pro plan, 2026-02",
                "amount": "29.00",
                "exact_amount": "29",
            },
            {
                "kind": "metered",
                "description": "requests (tasks)",
                "amount": "1.00",
                "exact_amount": "1",
                "dimension": "requests",
                "quantity": "101",
                "included": "100",
                "billable": "1",
                "unit_price": "1",
                "per_units": 1,
                "mode": "graduated",
                "tiers": [
                    {"above": "0", "up_to": None, "quantity": "1", "unit_price": "1", "amount": "1"}
                ],
            },
            {
                "kind": "usage",
                "description": "usage charges",
                "amount": "0.50",
                "exact_amount": "0.5",
                "by_model": [
                    {
                        "model": "gpt-4o",
                        "requests": 101,
                        "failed_requests": 2,
                        "input_tokens": 5,
                        "output_tokens": 6,
                        "price_usd": "0.5",
                    }
                ],
            },
        ],
        "subtotal": "30.50",
        "tax_percent": "8",
        "tax": "2.44",
        "total": "32.94",
        "requests": 101,
        "failed_requests": 2,
        "unpriced_requests": 1,
    }


def test_an_empty_month_without_a_plan_has_no_lines() -> None:
    inv = build_invoice(
        customer_id="acme",
        month=MONTH,
        tier="payg",
        plan=None,
        usage=MonthUsage(),
        tax_percent=D(0),
        currency="usd",
    )
    assert inv.lines == () and inv.total == 0


def test_a_float_tax_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="tax_percent"):
        build_invoice(
            customer_id="a",
            month=MONTH,
            tier=None,
            plan=None,
            usage=MonthUsage(),
            tax_percent=8.0,
            currency="usd",
        )  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- properties

money = st.decimals(min_value=0, max_value=10_000, places=4, allow_nan=False, allow_infinity=False)
unit_prices = st.decimals(
    min_value=0, max_value=50, places=6, allow_nan=False, allow_infinity=False
)


@st.composite
def overages(draw: st.DrawFn) -> OveragePrice:
    bounds = sorted(set(draw(st.lists(st.integers(1, 5_000_000), max_size=3))))
    prices = [draw(unit_prices) for _ in range(len(bounds) + 1)]
    tiers = tuple(PriceTier(D(b), p) for b, p in zip(bounds, prices, strict=False))
    tiers += (PriceTier(None, prices[-1]),)
    mode = draw(st.sampled_from(MODES))
    return OveragePrice(tiers, mode, draw(st.sampled_from([1, 1000, 1_000_000])))


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    dims = draw(st.lists(st.sampled_from(DIMENSIONS), unique=True, max_size=6))
    included: dict[str, Decimal | None] = {
        d: draw(st.one_of(st.none(), money)) for d in dims if draw(st.booleans())
    }
    overage: dict[str, OveragePrice] = {d: draw(overages()) for d in dims if draw(st.booleans())}
    return Plan("p", base_price_usd=draw(money), included=included, overage=overage)


usages = st.builds(
    MonthUsage,
    requests=st.integers(0, 10**7),
    failed_requests=st.integers(0, 1000),
    input_tokens=st.integers(0, 10**10),
    output_tokens=st.integers(0, 10**10),
    compute_ms=st.integers(0, 10**10),
    price_usd=st.decimals(
        min_value=0, max_value=10**6, places=10, allow_nan=False, allow_infinity=False
    ),
)
taxes = st.decimals(min_value=0, max_value=100, places=3, allow_nan=False, allow_infinity=False)


@settings(max_examples=400, deadline=None)
@given(plan=st.one_of(st.none(), plans()), usage=usages, tax=taxes)
def test_an_invoice_total_is_the_sum_of_its_lines(
    plan: Plan | None, usage: MonthUsage, tax: Decimal
) -> None:
    inv = build_invoice(
        customer_id="c",
        month=MONTH,
        tier="t",
        plan=plan,
        usage=usage,
        tax_percent=tax,
        currency="usd",
    )
    assert inv.subtotal == sum((line.amount for line in inv.lines), D(0))
    assert inv.tax == quantize_cents(inv.subtotal * tax / 100)
    assert inv.total == inv.subtotal + inv.tax
    for line in inv.lines:
        assert line.amount == quantize_cents(line.exact_amount)
        assert abs(line.amount - line.exact_amount) <= D("0.005")
    body = inv.to_json()
    assert D(body["total"]) == sum((D(line["amount"]) for line in body["lines"]), D(0)) + D(
        body["tax"]
    )


def _floats(value: Any, path: str = "invoice") -> list[str]:
    if isinstance(value, float):
        return [path]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [
            p
            for f in dataclasses.fields(value)
            for p in _floats(getattr(value, f.name), f"{path}.{f.name}")
        ]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _floats(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in _floats(v, f"{path}[{i}]")]
    return []


def _no_float(text: str) -> Any:
    raise AssertionError(f"a float in the invoice JSON: {text}")


@settings(max_examples=200, deadline=None)
@given(plan=st.one_of(st.none(), plans()), usage=usages, tax=taxes)
def test_no_float_enters_an_invoice(plan: Plan | None, usage: MonthUsage, tax: Decimal) -> None:
    inv: Invoice = build_invoice(
        customer_id="c",
        month=MONTH,
        tier="t",
        plan=plan,
        usage=usage,
        tax_percent=tax,
        currency="usd",
    )
    assert _floats(inv) == []
    assert isinstance(inv.total, Decimal) and inv.total.as_tuple().exponent == -2
    json.loads(json.dumps(inv.to_json()), parse_float=_no_float)
