"""`tollbooth usage summary`: what was used and what it cost, from `usage_events` (SPEC §8).

`--days N` (default 30) counts back from now; `--customer ID` narrows to one customer.
Formats: `table` (for people), `json` (one object, `UsageSummary.to_json()`: `customer_id`,
`period_days`, `since`, `until`, `requests`, the token counts, `cost_usd` and `price_usd` as
decimal strings, `unpriced_requests`, and `by_model`, a list of the same fields per model), and
`csv` (a header row, then one row per model; the totals are the column sums). `-o FILE` writes
the report to FILE instead of stdout. Exit 2 for bad usage, 1 for a database error.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from typing import Any

from gateway.cli.main import add_config_option
from gateway.cli.runtime import (
    Runtime,
    add_format_option,
    render_table,
    run_command,
    usage_error,
    write_output,
)
from storage.accounts import CUSTOMER_ID_PATTERN
from storage.usage_queries import MAX_DAYS, UsageSummary, UsageTotals, decimal_str, usage_summary

REPORT_FORMATS = ("table", "json", "csv")
CSV_COLUMNS = (
    "model", "requests", "input_tokens", "output_tokens", "cached_input_tokens",
    "cache_write_tokens", "reasoning_tokens", "cost_usd", "price_usd", "unpriced_requests",
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "usage", help="usage reports", description=__doc__
    )
    reports = parser.add_subparsers(dest="report", metavar="REPORT", required=True)

    summary = reports.add_parser("summary", help="totals and per-model usage for a period")
    summary.add_argument("--days", type=int, default=30, help="period in days (default: 30)")
    summary.add_argument("--customer", metavar="ID", help="one customer (default: all)")
    add_format_option(summary, REPORT_FORMATS)
    summary.add_argument("-o", "--output", metavar="FILE", help="write to FILE, not stdout")
    add_config_option(summary)
    summary.set_defaults(func=_summary)


def _summary(args: argparse.Namespace) -> int:
    if not 1 <= args.days <= MAX_DAYS:
        return usage_error(f"--days must be between 1 and {MAX_DAYS}, got {args.days}")
    if args.customer is not None and not CUSTOMER_ID_PATTERN.fullmatch(args.customer):
        return usage_error(f"invalid customer id {args.customer!r}")

    async def body(runtime: Runtime) -> int:
        summary = await usage_summary(runtime.pool, days=args.days, customer_id=args.customer)
        write_output(render_summary(summary, args.format), args.output)
        return 0

    return run_command(args, body)


def render_summary(summary: UsageSummary, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(summary.to_json(), indent=2) + "\n"
    if fmt == "csv":
        return _csv(summary)
    return _table(summary)


def _row(model: str, totals: UsageTotals) -> list[Any]:
    return [
        model,
        totals.requests,
        totals.input_tokens,
        totals.output_tokens,
        totals.cached_input_tokens,
        totals.cache_write_tokens,
        totals.reasoning_tokens,
        decimal_str(totals.cost_usd),
        decimal_str(totals.price_usd),
        totals.unpriced_requests,
    ]


def _csv(summary: UsageSummary) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for model in summary.by_model:
        writer.writerow(_row(model.model, model.totals))
    return buffer.getvalue()


def _table(summary: UsageSummary) -> str:
    who = f"customer {summary.customer_id}" if summary.customer_id else "all customers"
    header = (
        f"usage of {who}, last {summary.period_days} days "
        f"({summary.since:%Y-%m-%d %H:%M}Z to {summary.until:%Y-%m-%d %H:%M}Z)\n\n"
    )
    headers = [
        "MODEL", "REQUESTS", "INPUT", "OUTPUT", "CACHED IN", "CACHE WRITE", "REASONING",
        "COST USD", "PRICE USD", "UNPRICED",
    ]
    rows = [_row(m.model, m.totals) for m in summary.by_model]
    rows.append(_row("TOTAL", summary.totals))
    return header + render_table(headers, rows)
