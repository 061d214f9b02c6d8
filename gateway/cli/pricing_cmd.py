"""`tollbooth pricing list|show MODEL|check|rerate`: the prices the gateway charges, and fixes.

- `list [--at DATE] [--format table|json]`: every priced model at a date (default now), the
  packaged catalog with config.yaml's `pricing.models` overrides laid over it; SOURCE says
  `catalog`, `override` (a catalog model the config changes) or `config` (a model it adds).
- `show MODEL [--format table|json]`: how a name resolves, every price period of its model,
  long-context prices, and the rates (global, per tier, per customer) applied on top.
- `check`: validates the catalog and the config's pricing (overrides, rates, plans, tax), and
  warns about a plan that bills requests twice; exit 1 with every error on stderr.
- `rerate --since DATE [--model M] [--dry-run] [--batch-size N] [--format table|json]`:
  prices stored events again with the current catalog and config (storage.reports.invoice_queries)
  and prints the money difference per customer. DATE is YYYY-MM-DD (midnight UTC) or an ISO
  time (UTC if it has no offset).
`list`, `show` and `check` need no database; without a config file at the default path they
use the catalog alone. Exit codes: 0 ok, 1 a failure or failed check, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from gateway.cli.main import add_config_option
from gateway.cli.runtime import (
    OUTPUT_FORMATS,
    Runtime,
    add_format_option,
    render_table,
    run_command,
    usage_error,
    write_output,
)
from gateway.config import ConfigError, Settings, load_settings
from gateway.runtime import build_pricing, plans_of
from pricing.catalog import Catalog, CatalogError
from pricing.invoice import decimal_str
from pricing.models import ModelPrice
from pricing.rules import PricingRules
from storage.accounts import CUSTOMER_ID_PATTERN
from storage.reports.invoice_queries import DEFAULT_BATCH_SIZE, RerateReport, rerate_events

DEFAULT_CONFIG = "config.yaml"
PRICE_COLUMNS = (
    "input_per_mtok",
    "cached_input_per_mtok",
    "cache_write_per_mtok",
    "cache_write_1h_per_mtok",
    "output_per_mtok",
    "per_request_usd",
    "per_second_usd",
)
PRICE_HEADERS = (
    "INPUT",
    "CACHED IN",
    "CACHE WRITE",
    "CACHE WRITE 1H",
    "OUTPUT",
    "PER REQUEST",
    "PER SECOND",
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "pricing",
        help="model prices, config checks and re-rating",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="every priced model (USD per 1M tokens)")
    listing.add_argument("--at", metavar="DATE", help="prices in force at DATE (default: now)")
    add_format_option(listing, OUTPUT_FORMATS)
    add_config_option(listing)
    listing.set_defaults(func=_list)

    show = actions.add_parser("show", help="one model's price periods and rates")
    show.add_argument("model", metavar="MODEL")
    add_format_option(show, OUTPUT_FORMATS)
    add_config_option(show)
    show.set_defaults(func=_show)

    check = actions.add_parser("check", help="validate the catalog and config.yaml's pricing")
    add_config_option(check)
    check.set_defaults(func=_check)

    rerate = actions.add_parser("rerate", help="price stored events again")
    rerate.add_argument("--since", metavar="DATE", required=True, help="events from DATE on")
    rerate.add_argument("--model", metavar="M", help="only this model (aliases included)")
    rerate.add_argument("--dry-run", action="store_true", help="report, write nothing")
    rerate.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="events per transaction (default: %(default)s)",
    )
    add_format_option(rerate, OUTPUT_FORMATS)
    add_config_option(rerate)
    rerate.set_defaults(func=_rerate)


def parse_moment(text: str) -> datetime:
    """YYYY-MM-DD (midnight UTC) or an ISO time (UTC unless it has an offset)."""
    try:
        if len(text) == len("YYYY-MM-DD"):
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid date {text!r}; write YYYY-MM-DD or an ISO time") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _rules(config: str) -> tuple[Settings | None, PricingRules]:
    catalog = Catalog.load_default()
    if config == DEFAULT_CONFIG and not Path(config).exists():
        print("tollbooth: no config.yaml here; showing the catalog alone", file=sys.stderr)
        return None, PricingRules(catalog)
    settings = load_settings(config)
    return settings, build_pricing(settings, catalog)


def _source(base: Catalog, price: ModelPrice, at: datetime | None) -> str:
    listed = base.lookup(price.model, at)
    if listed is None or listed.model != price.model:
        return "config"
    return "catalog" if listed == price else "override"


def _price_json(price: ModelPrice) -> dict[str, Any]:
    body: dict[str, Any] = {
        "effective_from": price.effective_from.isoformat() if price.effective_from else None,
    }
    for column in PRICE_COLUMNS:
        value = getattr(price, column)
        body[column] = None if value is None else decimal_str(value)
    lc = price.long_context
    body["long_context"] = (
        None
        if lc is None
        else {
            "above_input_tokens": lc.above_input_tokens,
            **{
                c: None if getattr(lc, c) is None else decimal_str(getattr(lc, c))
                for c in PRICE_COLUMNS
                if hasattr(lc, c)
            },
        }
    )
    return body


def _cells(price: ModelPrice) -> list[str | None]:
    return [
        None if getattr(price, c) is None else decimal_str(getattr(price, c)) for c in PRICE_COLUMNS
    ]


def _list(args: argparse.Namespace) -> int:
    try:
        at = parse_moment(args.at) if args.at else None
    except ValueError as exc:
        return usage_error(str(exc))
    _, rules = _rules(args.config)
    base = Catalog.load_default()
    prices = rules.catalog.models(at)
    if args.format == "json":
        body = [
            {
                "model": p.model,
                "provider": p.provider,
                "source": _source(base, p, at),
                "aliases": rules.catalog.aliases(p.model),
                **_price_json(p),
            }
            for p in prices
        ]
        write_output(json.dumps(body, indent=2) + "\n", None)
        return 0
    rows = [
        [p.model, p.provider, *_cells(p), _day(p.effective_from), _source(base, p, at)]
        for p in prices
    ]
    headers = ["MODEL", "PROVIDER", *PRICE_HEADERS, "SINCE", "SOURCE"]
    write_output(
        "USD per 1M tokens (per request / per second: USD)\n\n" + render_table(headers, rows), None
    )
    return 0


def _day(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d}"


def _show(args: argparse.Namespace) -> int:
    settings, rules = _rules(args.config)
    current = rules.price(args.model)
    if current is None:
        print(
            f"tollbooth: unknown model {args.model!r}: not in the catalog or pricing.models",
            file=sys.stderr,
        )
        return 1
    periods = rules.catalog.history(args.model)
    rates = _rates_json(settings, rules)
    if args.format == "json":
        body = {
            "requested": args.model,
            "model": current.model,
            "provider": current.provider,
            "aliases": rules.catalog.aliases(current.model),
            "source": _source(Catalog.load_default(), current, None),
            "periods": [_price_json(p) for p in periods],
            "rates": rates,
            "price_version": rules.version,
        }
        write_output(json.dumps(body, indent=2) + "\n", None)
        return 0
    aliases = ", ".join(rules.catalog.aliases(current.model)) or "-"
    text = (
        f"{args.model} -> {current.model} ({current.provider}); aliases: {aliases}\n"
        f"price version: {rules.version}\n\nprice periods (USD per 1M tokens):\n"
    )
    text += render_table(
        ["FROM", *PRICE_HEADERS], [[_day(p.effective_from), *_cells(p)] for p in periods]
    )
    lc = current.long_context
    if lc is not None:
        text += (
            f"\nlong context (prompts above {lc.above_input_tokens} tokens): input "
            f"{lc.input_per_mtok}, output {lc.output_per_mtok}, cached in "
            f"{lc.cached_input_per_mtok}, cache write {lc.cache_write_per_mtok}, "
            f"cache write 1h {lc.cache_write_1h_per_mtok}\n"
        )
    text += "\nrates (customer > tier > global):\n" + render_table(
        ["SCOPE", "MARKUP %", "PER REQUEST", "PER COMPUTE MINUTE"],
        [
            [r["scope"], r["markup_percent"], r["per_request_usd"], r["per_compute_minute_usd"]]
            for r in rates
        ],
    )
    write_output(text, None)
    return 0


def _rates_json(settings: Settings | None, rules: PricingRules) -> list[dict[str, Any]]:
    scopes: list[tuple[str, str | None, str | None]] = [("global", None, None)]
    if settings is not None:
        scopes += [(f"tier {t}", None, t) for t, c in settings.tiers.items() if c.pricing]
        scopes += [(f"customer {c}", c, None) for c in settings.pricing.customers]
    out = []
    for scope, customer, tier in scopes:
        rates = rules.rates_for(customer, tier)
        out.append(
            {
                "scope": scope,
                "markup_percent": decimal_str(rates.markup_percent),
                "per_request_usd": decimal_str(rates.per_request_usd),
                "per_compute_minute_usd": decimal_str(rates.per_compute_minute_usd),
            }
        )
    return out


def _check(args: argparse.Namespace) -> int:
    try:
        catalog = Catalog.load_default()
        settings = load_settings(args.config)
        rules = build_pricing(settings, catalog)
        plans = plans_of(settings)
    except (CatalogError, ConfigError) as exc:
        print(f"tollbooth: {exc}", file=sys.stderr)
        return 1
    errors = [
        f"{where}.{customer}: {customer!r} can never match a customer id "
        f"(letters, digits, _ . -, at most 64)"
        for where, ids in (
            ("pricing.customers", settings.pricing.customers),
            ("billing.tax.customers", settings.billing.tax.customers),
        )
        for customer in ids
        if not CUSTOMER_ID_PATTERN.fullmatch(customer)
    ]
    for line in errors:
        print(f"tollbooth: {line}", file=sys.stderr)
    for name, plan in plans.items():
        fee = rules.rates_for(None, name).per_request_usd
        if "requests" in plan.dimensions() and fee > 0:
            print(
                f"warning: tiers.{name}: the plan meters requests, and every request is "
                f"also charged per_request_usd ({fee}) in its usage charges; set "
                f'tiers.{name}.pricing.per_request_usd: "0" unless that is meant',
                file=sys.stderr,
            )
    if errors:
        return 1
    print(f"{settings.source_path}: pricing OK")
    print(
        f"catalog {catalog.version}: {len(catalog.models())} models; "
        f"{len(settings.pricing.models)} override(s); "
        f"{len(rules.catalog.models())} priced models in all"
    )
    print(f"price version: {rules.version}")
    print(
        f"plans: {', '.join(plans) or 'none'}; customer rates: "
        f"{len(settings.pricing.customers)}; tax {settings.billing.tax.rate_percent}%"
    )
    return 0


def _rerate(args: argparse.Namespace) -> int:
    try:
        since = parse_moment(args.since)
    except ValueError as exc:
        return usage_error(str(exc))
    if args.batch_size < 1:
        return usage_error(f"--batch-size must be >= 1, got {args.batch_size}")

    async def body(runtime: Runtime) -> int:
        rules = build_pricing(runtime.settings, Catalog.load_default())
        report = await rerate_events(
            runtime.pool,
            rules,
            since=since,
            model=args.model,
            dry_run=args.dry_run,
            batch_size=args.batch_size,
        )
        write_output(render_rerate(report, args.format), None)
        return 0

    return run_command(args, body)


def render_rerate(report: RerateReport, fmt: str) -> str:
    body = report.to_json()
    if fmt == "json":
        return json.dumps(body, indent=2) + "\n"
    scope = f"model {report.model}" if report.model else "all models"
    head = (
        f"{'dry run, nothing written: ' if report.dry_run else ''}re-rated "
        f"{report.events_changed} of {report.events_seen} events of {scope} since "
        f"{report.since:%Y-%m-%d %H:%M}Z with price version {report.price_version}\n"
        f"kept (model no longer priced): {report.kept_unpriceable}; "
        f"still unpriced: {report.still_unpriced}\n\n"
    )
    rows = [
        [
            c["customer_id"],
            c["events_changed"],
            c["newly_priced"],
            c["price_before"],
            c["price_after"],
            c["price_delta"],
            c["cost_delta"],
        ]
        for c in body["customers"]
    ]
    rows.append(
        ["TOTAL", report.events_changed, "", "", "", body["price_delta"], body["cost_delta"]]
    )
    headers = [
        "CUSTOMER",
        "EVENTS",
        "NEWLY PRICED",
        "PRICE BEFORE",
        "PRICE AFTER",
        "PRICE DIFF",
        "COST DIFF",
    ]
    return head + render_table(headers, rows)
