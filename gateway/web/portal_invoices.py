"""A customer's invoices for the web pages: the current month's preview and past months.

Built exactly as `tollbooth billing invoice` builds them (storage.reports.invoice_queries for the
month's usage and billing tier, pricing.invoice for the arithmetic and rounding, the tax rate
and currency of `billing:`), and itemized in the same rows (`invoice_rows`: item, quantity,
included, billable, unit price, amount). Nothing is stored. A month billed under a tier that
config.yaml no longer defines gives `InvoiceUnavailable` with the reason, shown on the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from gateway.config import Settings
from gateway.runtime import plans_of
from pricing.invoice import Invoice, InvoiceLine, build_invoice, cents_str, decimal_str
from pricing.months import BillingMonth
from storage.reports.invoice_queries import billing_tier, month_usage


class InvoiceUnavailable(Exception):
    """The invoice cannot be built; the message says why (shown to the customer)."""


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    item: str
    quantity: str
    included: str
    billable: str
    unit_price: str
    amount: str
    detail: bool = False  # a tier breakdown row under a metered line


async def month_invoice(
    pool: asyncpg.Pool, settings: Settings, customer_id: str, month: BillingMonth
) -> Invoice:
    tier = await billing_tier(pool, customer_id, month)
    if tier is None:
        raise InvoiceUnavailable("unknown customer")
    if tier not in settings.tiers:
        raise InvoiceUnavailable(
            f"this month is billed on tier {tier!r}, which is no longer "
            "offered; contact support for this invoice"
        )
    return build_invoice(
        customer_id=customer_id,
        month=month,
        tier=tier,
        plan=plans_of(settings).get(tier),
        usage=await month_usage(pool, customer_id, month),
        tax_percent=settings.billing.tax.rate_for(customer_id),
        currency=settings.billing.currency,
    )


def _unit(price: Decimal, per_units: int) -> str:
    return decimal_str(price) if per_units == 1 else f"{decimal_str(price)}/{per_units:,}"


def _line_rows(line: InvoiceLine) -> list[InvoiceRow]:
    charge = line.charge
    if charge is None:
        return [InvoiceRow(line.description, "", "", "", "", cents_str(line.amount))]
    included = "unlimited" if charge.included is None else decimal_str(charge.included)
    unit = (
        "tiered"
        if charge.unit_price_usd is None
        else _unit(charge.unit_price_usd, charge.per_units)
    )
    rows = [
        InvoiceRow(
            line.description,
            decimal_str(charge.quantity),
            included,
            decimal_str(charge.billable),
            unit,
            cents_str(line.amount),
        )
    ]
    if len(charge.tiers) > 1 or (charge.tiers and charge.mode == "volume"):
        for tier in charge.tiers:
            bound = "" if tier.up_to is None else f" up to {decimal_str(tier.up_to)}"
            rows.append(
                InvoiceRow(
                    f"{charge.mode} tier above {decimal_str(tier.above)}{bound}",
                    "",
                    "",
                    decimal_str(tier.quantity),
                    _unit(tier.unit_price_usd, charge.per_units),
                    decimal_str(tier.amount_usd),
                    detail=True,
                )
            )
    return rows


def invoice_rows(invoice: Invoice) -> list[InvoiceRow]:
    """The invoice's rows as `tollbooth billing invoice` prints them, totals last."""
    rows = [row for line in invoice.lines for row in _line_rows(line)]
    rows.append(InvoiceRow("Subtotal", "", "", "", "", cents_str(invoice.subtotal)))
    rows.append(
        InvoiceRow(
            f"Tax ({decimal_str(invoice.tax_percent)}%)", "", "", "", "", cents_str(invoice.tax)
        )
    )
    rows.append(
        InvoiceRow(f"Total {invoice.currency.upper()}", "", "", "", "", cents_str(invoice.total))
    )
    return rows


def recent_months(current: BillingMonth, count: int) -> list[BillingMonth]:
    """`count` months before `current`, newest first."""
    months = []
    year, month = current.year, current.month
    for _ in range(count):
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
        months.append(BillingMonth(year, month))
    return months
