"""`tollbooth billing invoice --customer ID --month YYYY-MM [--format table|json] [-o FILE]`.

Builds one customer's invoice for one UTC calendar month from the stored usage events: the
plan of the tier the month is billed under (storage.reports.invoice_queries.billing_tier: the tier
of
the customer's last event of the month, else the current one), its base fee and metered
dimensions, the usage charges (sum of the events' `price_usd`), the tax rate of
`billing.tax` (the customer's, else the default) and `billing.currency`. The arithmetic and
the rounding are pricing.invoice's. `--format json` prints `Invoice.to_json()` (money as
decimal strings). Nothing is stored: running it twice prints the same invoice, unless events
were added or re-rated in between.

Exit 2 for bad usage (a malformed id or month), 1 for an unknown customer, a tier that
config.yaml does not define, or a database error.
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from typing import Any

from gateway.cli.main import add_config_option
from gateway.cli.runtime import (
    OUTPUT_FORMATS,
    CommandError,
    Runtime,
    add_format_option,
    render_table,
    run_command,
    usage_error,
    write_output,
)
from gateway.runtime import plans_of
from pricing.invoice import Invoice, InvoiceLine, build_invoice, cents_str, decimal_str
from pricing.months import BillingMonth
from storage.accounts import CUSTOMER_ID_PATTERN
from storage.reports.invoice_queries import billing_tier, month_usage


def add_commands(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "invoice",
        help="one customer's itemized invoice for a month",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--customer", metavar="ID", required=True)
    parser.add_argument("--month", metavar="YYYY-MM", required=True, help="UTC calendar month")
    add_format_option(parser, OUTPUT_FORMATS)
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE, not stdout")
    add_config_option(parser)
    parser.set_defaults(func=_invoice)


def _invoice(args: argparse.Namespace) -> int:
    if not CUSTOMER_ID_PATTERN.fullmatch(args.customer):
        return usage_error(f"invalid customer id {args.customer!r}")
    try:
        month = BillingMonth.parse(args.month)
    except ValueError as exc:
        return usage_error(str(exc))

    async def body(runtime: Runtime) -> int:
        settings = runtime.settings
        tier = await billing_tier(runtime.pool, args.customer, month)
        if tier is None:
            raise CommandError(f"unknown customer {args.customer!r}")
        if tier not in settings.tiers:
            raise CommandError(
                f"customer {args.customer!r} is billed on tier {tier!r} for {month}, which "
                f"{settings.source_name()} does not define; add it (and its plan) under tiers:"
            )
        invoice = build_invoice(
            customer_id=args.customer,
            month=month,
            tier=tier,
            plan=plans_of(settings).get(tier),
            usage=await month_usage(runtime.pool, args.customer, month),
            tax_percent=settings.billing.tax.rate_for(args.customer),
            currency=settings.billing.currency,
        )
        write_output(render_invoice(invoice, args.format), args.output)
        return 0

    return run_command(args, body)


def render_invoice(invoice: Invoice, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(invoice.to_json(), indent=2) + "\n"
    month = invoice.month
    head = (
        f"invoice for {invoice.customer_id}, {month} "
        f"({month.start:%Y-%m-%d} to {month.end:%Y-%m-%d}, UTC)\n"
        f"tier {invoice.tier}, plan {invoice.plan or 'none (usage charges only)'}, "
        f"currency {invoice.currency.upper()}\n\n"
    )
    rows: list[list[object]] = []
    for line in invoice.lines:
        rows.extend(_rows(line))
    blank = ["", "", "", ""]
    rows.append(["SUBTOTAL", *blank, cents_str(invoice.subtotal)])
    rows.append([f"TAX ({decimal_str(invoice.tax_percent)}%)", *blank, cents_str(invoice.tax)])
    rows.append([f"TOTAL {invoice.currency.upper()}", *blank, cents_str(invoice.total)])
    headers = ["ITEM", "QUANTITY", "INCLUDED", "BILLABLE", "UNIT PRICE", "AMOUNT"]
    text = head + render_table(headers, rows)
    if invoice.usage.unpriced_requests:
        text += (
            f"\nnote: {invoice.usage.unpriced_requests} request(s) of unpriced models "
            f"are not charged (see `tollbooth pricing rerate`)\n"
        )
    return text


def _rows(line: InvoiceLine) -> list[list[object]]:
    charge = line.charge
    if charge is None:
        return [[line.description, "", "", "", "", cents_str(line.amount)]]
    included = "unlimited" if charge.included is None else decimal_str(charge.included)
    rows: list[list[object]] = [
        [
            line.description,
            decimal_str(charge.quantity),
            included,
            decimal_str(charge.billable),
            "tiered"
            if charge.unit_price_usd is None
            else _unit(charge.unit_price_usd, charge.per_units),
            cents_str(line.amount),
        ]
    ]
    if len(charge.tiers) > 1 or (charge.tiers and charge.mode == "volume"):
        for tier in charge.tiers:
            bound = "" if tier.up_to is None else f" up to {decimal_str(tier.up_to)}"
            rows.append(
                [
                    f"  {charge.mode} tier above {decimal_str(tier.above)}{bound}",
                    "",
                    "",
                    decimal_str(tier.quantity),
                    _unit(tier.unit_price_usd, charge.per_units),
                    decimal_str(tier.amount_usd),
                ]
            )
    return rows


def _unit(price: Decimal, per_units: int) -> str:
    return decimal_str(price) if per_units == 1 else f"{decimal_str(price)}/{per_units:,}"
