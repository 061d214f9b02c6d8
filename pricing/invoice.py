"""A customer's invoice for one month, computed from aggregated usage: pure arithmetic.

`build_invoice` takes what storage aggregated for the month (`MonthUsage`), the customer's
plan (or None) and tax rate, and returns an `Invoice` whose lines are, in order:
- `base_fee`: the plan's monthly `base_price_usd` (when it is above 0; no proration);
- `metered`: one per plan dimension, with quantity, included, billable, unit price and amount
  (pricing.plans); a plan that meters `price_usd` bills the usage charges here;
- `usage`: otherwise, the usage charges: the sum of the events' stored `price_usd`, with a
  per-model breakdown (exact, for information).
Each line's amount is its exact amount rounded to cents; `subtotal` is the sum of the lines,
`tax` the subtotal times the tax rate rounded to cents, `total` subtotal plus tax (the one
rounding rule, pricing.cost). `Invoice.to_json()` is the stable shape printed by `tollbooth
billing invoice --format json`: money and quantities as decimal strings.

How it fails: negative quantities or a float anywhere raise ValueError (a bug upstream).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pricing.cost import quantize_cents
from pricing.months import BillingMonth
from pricing.plans import Dimension, DimensionCharge, Plan, price_dimension

LineKind = Literal["base_fee", "metered", "usage"]
_ZERO = Decimal(0)

DIMENSION_LABELS: dict[str, str] = {
    "requests": "requests (tasks)",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
    "tokens": "tokens (input + output)",
    "price_usd": "usage charges (USD)",
    "compute_minutes": "compute minutes",
}


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """One model's share of a month, shown under the usage line (information only)."""

    model: str
    requests: int  # successful
    failed_requests: int
    input_tokens: int
    output_tokens: int
    price_usd: Decimal


@dataclass(frozen=True, slots=True)
class MonthUsage:
    """What one customer used in one month, summed from its usage events.

    `requests` and `compute_ms` count successful requests (status < 400) only: a provider
    error is not a task. Token counts and `price_usd` cover every event.
    """

    requests: int = 0
    failed_requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    compute_ms: int = 0
    price_usd: Decimal = _ZERO
    cost_usd: Decimal = _ZERO
    unpriced_requests: int = 0
    by_model: tuple[ModelUsage, ...] = ()

    def base_quantity(self, dimension: Dimension) -> Decimal:
        """The month's quantity of `dimension`, in base units (milliseconds for compute)."""
        values: dict[str, Decimal | int] = {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "tokens": self.input_tokens + self.output_tokens,
            "price_usd": self.price_usd,
            "compute_minutes": self.compute_ms,
        }
        return Decimal(values[dimension])


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    kind: LineKind
    description: str
    amount: Decimal  # rounded to cents
    exact_amount: Decimal
    charge: DimensionCharge | None = None  # metered lines
    by_model: tuple[ModelUsage, ...] = ()  # the usage line


@dataclass(frozen=True, slots=True)
class Invoice:
    customer_id: str
    month: BillingMonth
    tier: str | None
    plan: str | None
    currency: str
    lines: tuple[InvoiceLine, ...]
    subtotal: Decimal
    tax_percent: Decimal
    tax: Decimal
    total: Decimal
    usage: MonthUsage = field(default_factory=MonthUsage)

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "month": str(self.month),
            "period_start": _iso(self.month.start),
            "period_end": _iso(self.month.end),
            "tier": self.tier,
            "plan": self.plan,
            "currency": self.currency,
            "lines": [_line_json(line) for line in self.lines],
            "subtotal": cents_str(self.subtotal),
            "tax_percent": decimal_str(self.tax_percent),
            "tax": cents_str(self.tax),
            "total": cents_str(self.total),
            "requests": self.usage.requests,
            "failed_requests": self.usage.failed_requests,
            "unpriced_requests": self.usage.unpriced_requests,
        }


def build_invoice(
    *,
    customer_id: str,
    month: BillingMonth,
    tier: str | None,
    plan: Plan | None,
    usage: MonthUsage,
    tax_percent: Decimal,
    currency: str,
) -> Invoice:
    """The invoice of `usage` under `plan` (None: usage charges only), taxed at `tax_percent`."""
    if not isinstance(tax_percent, Decimal) or not tax_percent.is_finite() or tax_percent < 0:
        raise ValueError(f"tax_percent must be a finite Decimal >= 0, got {tax_percent!r}")
    lines: list[InvoiceLine] = []
    if plan is not None and plan.base_price_usd > 0:
        lines.append(_line("base_fee", f"{plan.name} plan, {month}", plan.base_price_usd))
    dimensions = plan.dimensions() if plan is not None else []
    if plan is not None:
        for dimension in dimensions:
            charge = price_dimension(plan, dimension, usage.base_quantity(dimension))
            label = DIMENSION_LABELS[dimension]
            lines.append(_line("metered", label, charge.amount_usd, charge=charge))
    if "price_usd" not in dimensions and (usage.price_usd != 0 or _has_events(usage)):
        lines.append(_line("usage", "usage charges", usage.price_usd, by_model=usage.by_model))
    subtotal = sum((line.amount for line in lines), _ZERO)
    tax = quantize_cents(subtotal * tax_percent / 100)
    return Invoice(
        customer_id=customer_id,
        month=month,
        tier=tier,
        plan=None if plan is None else plan.name,
        currency=currency,
        lines=tuple(lines),
        subtotal=subtotal,
        tax_percent=tax_percent,
        tax=tax,
        total=subtotal + tax,
        usage=usage,
    )


def _line(
    kind: LineKind,
    description: str,
    exact: Decimal,
    *,
    charge: DimensionCharge | None = None,
    by_model: tuple[ModelUsage, ...] = (),
) -> InvoiceLine:
    return InvoiceLine(kind, description, quantize_cents(exact), exact, charge, by_model)


def _has_events(usage: MonthUsage) -> bool:
    return usage.requests + usage.failed_requests > 0


def _line_json(line: InvoiceLine) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": line.kind,
        "description": line.description,
        "amount": cents_str(line.amount),
        "exact_amount": decimal_str(line.exact_amount),
    }
    charge = line.charge
    if charge is not None:
        body.update(
            dimension=charge.dimension,
            quantity=decimal_str(charge.quantity),
            included=None if charge.included is None else decimal_str(charge.included),
            billable=decimal_str(charge.billable),
            unit_price=None
            if charge.unit_price_usd is None
            else decimal_str(charge.unit_price_usd),
            per_units=charge.per_units,
            mode=charge.mode,
            tiers=[
                {
                    "above": decimal_str(t.above),
                    "up_to": None if t.up_to is None else decimal_str(t.up_to),
                    "quantity": decimal_str(t.quantity),
                    "unit_price": decimal_str(t.unit_price_usd),
                    "amount": decimal_str(t.amount_usd),
                }
                for t in charge.tiers
            ],
        )
    if line.kind == "usage":
        body["by_model"] = [
            {
                "model": m.model,
                "requests": m.requests,
                "failed_requests": m.failed_requests,
                "input_tokens": m.input_tokens,
                "output_tokens": m.output_tokens,
                "price_usd": decimal_str(m.price_usd),
            }
            for m in line.by_model
        ]
    return body


def cents_str(amount: Decimal) -> str:
    """A cents amount with exactly two places: "29.00", "-0.01"."""
    return format(quantize_cents(amount), "f")


def decimal_str(value: Decimal) -> str:
    """An exact decimal string without exponent or trailing zeros: "1.5", "0", "0.0000123"."""
    if value == 0:
        return "0"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _iso(moment: datetime) -> str:
    return moment.isoformat()
