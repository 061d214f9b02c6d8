"""Every plan shape, invoiced and checked against a hand computation (pricing/plans.py through
pricing/invoice.py). Amounts are USD; each line is rounded to cents, half to even."""

from __future__ import annotations

from decimal import Decimal

import pytest

from pricing.invoice import Invoice, MonthUsage, build_invoice
from pricing.months import BillingMonth
from pricing.plans import OveragePrice, Plan, PlanError, PriceTier, price_dimension

D = Decimal
MONTH = BillingMonth(2026, 10)


def invoice(plan: Plan | None, usage: MonthUsage, tax: str = "0") -> Invoice:
    return build_invoice(
        customer_id="acme",
        month=MONTH,
        tier=plan.name if plan else "payg",
        plan=plan,
        usage=usage,
        tax_percent=D(tax),
        currency="usd",
    )


def lines(inv: Invoice) -> list[tuple[str, str]]:
    return [(line.description, str(line.amount)) for line in inv.lines]


def test_no_plan_bills_the_usage_charges_only() -> None:
    # Seed "usage-based": $0 base, $1/task and tokens + 20% are all inside each event's price.
    usage = MonthUsage(requests=3, price_usd=D("3.0123456789"))
    inv = invoice(None, usage, tax="8")
    assert lines(inv) == [("usage charges", "3.01")]
    # 3.01 x 8% = 0.2408 -> 0.24
    assert (inv.subtotal, inv.tax, inv.total) == (D("3.01"), D("0.24"), D("3.25"))


def test_free_seed_ten_included_tasks_bill_nothing_for_requests() -> None:
    free = Plan("free", included={"requests": D(10)})
    inv = invoice(free, MonthUsage(requests=10, price_usd=D("0.004")))
    charge = inv.lines[0].charge
    assert charge is not None
    assert (charge.quantity, charge.included, charge.billable) == (D(10), D(10), D(0))
    # No base fee line at $0; the requests line is 0.00; usage 0.004 -> 0.00.
    assert lines(inv) == [("requests (tasks)", "0.00"), ("usage charges", "0.00")]
    assert inv.total == D("0.00")


def test_pro_seed_hundred_tasks_for_29_and_overage_per_task() -> None:
    pro = Plan(
        "pro",
        base_price_usd=D("29.00"),
        included={"requests": D(100)},
        overage={"requests": OveragePrice.flat(D("1.00"))},
    )
    inv = invoice(pro, MonthUsage(requests=130, failed_requests=4, price_usd=D("12.345")))
    # 29.00 + 30 x 1.00 + 12.345 -> 12.34 (half even) = 71.34
    assert lines(inv) == [
        ("pro plan, 2026-10", "29.00"),
        ("requests (tasks)", "30.00"),
        ("usage charges", "12.34"),
    ]
    assert inv.total == D("71.34")
    charge = inv.lines[1].charge
    assert charge is not None and charge.unit_price_usd == D("1.00")


def test_team_seed_under_its_allowance_pays_the_base_fee() -> None:
    team = Plan(
        "team",
        base_price_usd=D("99.00"),
        included={"requests": D(500)},
        overage={"requests": OveragePrice.flat(D("1.00"))},
    )
    inv = invoice(team, MonthUsage(requests=420))
    assert lines(inv) == [
        ("team plan, 2026-10", "99.00"),
        ("requests (tasks)", "0.00"),
        ("usage charges", "0.00"),
    ]
    assert inv.total == D("99.00")


def test_graduated_tiers_price_each_unit_in_its_own_tier() -> None:
    # 500k tokens included; then the first 1M at $2/1M, up to 5M at $1.50/1M, the rest $1/1M.
    tiers = (
        PriceTier(D(1_000_000), D("2.00")),
        PriceTier(D(5_000_000), D("1.50")),
        PriceTier(None, D("1.00")),
    )
    plan = Plan(
        "dev",
        included={"tokens": D(500_000)},
        overage={"tokens": OveragePrice(tiers, "graduated", per_units=1_000_000)},
    )
    inv = invoice(plan, MonthUsage(requests=12, input_tokens=5_000_000, output_tokens=2_250_000))
    # 7.25M tokens, 6.75M billable: 1M x 2 + 4M x 1.5 + 1.75M x 1 = 2 + 6 + 1.75 = 9.75
    charge = inv.lines[0].charge
    assert charge is not None
    assert (charge.quantity, charge.billable, charge.unit_price_usd) == (
        D(7_250_000),
        D(6_750_000),
        None,
    )
    assert [(t.quantity, t.amount_usd) for t in charge.tiers] == [
        (D(1_000_000), D(2)),
        (D(4_000_000), D(6)),
        (D(1_750_000), D("1.75")),
    ]
    assert lines(inv) == [("tokens (input + output)", "9.75"), ("usage charges", "0.00")]


@pytest.mark.parametrize(
    ("billable", "expected_unit", "expected_amount"),
    [
        (0, "3", "0"),
        (1_000_000, "3", "3"),  # up_to is inclusive
        (1_000_001, "2", "2.000002"),  # every unit drops to the second tier's price
        (2_500_000, "2", "5"),
        (12_000_000, "1", "12"),
    ],
)
def test_volume_tiers_price_every_unit_at_the_tier_the_total_reaches(
    billable: int, expected_unit: str, expected_amount: str
) -> None:
    tiers = (PriceTier(D(1_000_000), D(3)), PriceTier(D(10_000_000), D(2)), PriceTier(None, D(1)))
    plan = Plan("bulk", overage={"output_tokens": OveragePrice(tiers, "volume", 1_000_000)})
    charge = price_dimension(plan, "output_tokens", billable)
    assert charge.unit_price_usd == D(expected_unit)
    assert charge.amount_usd == D(expected_amount)


def test_included_usage_dollars_bill_only_the_usage_beyond_them() -> None:
    # $20/month includes $25 of usage charges; beyond that, usage is billed at face value.
    plan = Plan("starter", base_price_usd=D("20"), included={"price_usd": D("25.00")})
    inv = invoice(plan, MonthUsage(requests=9, price_usd=D("31.4159265359")))
    # 31.4159265359 - 25 = 6.4159265359 -> 6.42; no separate usage line.
    assert lines(inv) == [("starter plan, 2026-10", "20.00"), ("usage charges (USD)", "6.42")]
    assert inv.total == D("26.42")


def test_unlimited_included_units_are_never_billable() -> None:
    plan = Plan(
        "max",
        base_price_usd=D("200"),
        included={"tokens": None},
        overage={"tokens": OveragePrice.flat(D("5"), 1_000_000)},
    )
    inv = invoice(plan, MonthUsage(input_tokens=10**9, output_tokens=10**9))
    charge = inv.lines[1].charge
    assert charge is not None and charge.included is None and charge.billable == 0
    assert inv.total == D("200.00")


def test_compute_minutes_are_priced_from_whole_milliseconds() -> None:
    # Seed: $0.01 per compute minute beyond 60 included minutes.
    plan = Plan(
        "gpu",
        included={"compute_minutes": D(60)},
        overage={"compute_minutes": OveragePrice.flat(D("0.01"))},
    )
    inv = invoice(plan, MonthUsage(requests=5, compute_ms=4_500_000))  # 75 minutes
    charge = inv.lines[0].charge
    assert charge is not None
    assert (charge.quantity, charge.billable, charge.amount_usd) == (D(75), D(15), D("0.15"))
    # 1 ms beyond: 0.01 / 60000 of a dollar, shown as 0.000017 minutes, billed 0.00.
    one = price_dimension(plan, "compute_minutes", 3_600_001)
    assert one.billable == D("0.000017")
    assert one.amount_usd * 60_000 == D("0.01")


def test_enterprise_style_plan_with_several_dimensions() -> None:
    # Seed "pro": $99 with 100 GPU hours, 10M tokens and 100k API calls included; overage
    # $0.05/GPU minute, $2 per 1M tokens, $0.001 per call.
    plan = Plan(
        "pro",
        base_price_usd=D("99"),
        included={"compute_minutes": D(6000), "tokens": D(10_000_000), "requests": D(100_000)},
        overage={
            "compute_minutes": OveragePrice.flat(D("0.05")),
            "tokens": OveragePrice.flat(D("2"), 1_000_000),
            "requests": OveragePrice.flat(D("0.001")),
        },
    )
    usage = MonthUsage(
        requests=123_457,
        input_tokens=9_000_000,
        output_tokens=3_333_333,
        compute_ms=6_030 * 60_000,
        price_usd=D("0"),
    )
    inv = invoice(plan, usage, tax="20")
    # requests: 23,457 x 0.001 = 23.457 -> 23.46; tokens: 2,333,333 x 2 / 1M = 4.666666 -> 4.67
    # compute: 30 min x 0.05 = 1.50. Subtotal 99 + 23.46 + 4.67 + 1.50 + 0 = 128.63;
    # tax 20% = 25.726 -> 25.73; total 154.36.
    assert lines(inv) == [
        ("pro plan, 2026-10", "99.00"),
        ("requests (tasks)", "23.46"),
        ("tokens (input + output)", "4.67"),
        ("compute minutes", "1.50"),
        ("usage charges", "0.00"),
    ]
    assert (inv.subtotal, inv.tax, inv.total) == (D("128.63"), D("25.73"), D("154.36"))


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: Plan("p", base_price_usd=D("-1")), "base_price_usd"),
        (lambda: Plan("p", base_price_usd=29.0), "base_price_usd: got 29.0"),  # type: ignore[arg-type]
        (lambda: Plan("p", included={"gpu_hours": D(1)}), "included.gpu_hours: unknown dimension"),
        (lambda: Plan("p", overage={"tokens": OveragePrice(())}), "overage.tokens.tiers"),
        (
            lambda: Plan(
                "p",
                overage={
                    "tokens": OveragePrice(
                        (PriceTier(D(10), D(1)), PriceTier(D(5), D(1)), PriceTier(None, D(1)))
                    )
                },
            ),
            "overage.tokens.tiers[1].up_to: got 5; bounds must grow",
        ),
        (
            lambda: Plan("p", overage={"tokens": OveragePrice((PriceTier(D(10), D(1)),))}),
            "the last tier must be unbounded",
        ),
        (
            lambda: Plan(
                "p",
                overage={"tokens": OveragePrice((PriceTier(None, D(1)), PriceTier(None, D(1))))},
            ),
            "only the last tier",
        ),
        (
            lambda: Plan("p", overage={"tokens": OveragePrice.flat(D(1), per_units=0)}),
            "overage.tokens.per_units",
        ),
    ],
)
def test_a_plan_that_cannot_be_priced_is_refused(make: object, expected: str) -> None:
    with pytest.raises(PlanError) as info:
        make()  # type: ignore[operator]
    assert expected in str(info.value)
