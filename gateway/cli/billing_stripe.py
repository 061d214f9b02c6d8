"""`tollbooth billing sync|reconcile`: usage to Stripe Billing Meters, and the monthly check.

`sync [--dry-run] [--until ISO_TIME] [--every DURATION] [--format table|json]` sends every
window closed `billing.stripe.settle_delay` before --until (default: now) that is not yet in
Stripe, and resumes what an earlier run left (storage.stripe.sync). It prints what was sent,
what failed, what is still pending, what was skipped (older than Stripe's 35 days) and the
customers skipped for having no stripe_customer_id. `--dry-run` records and sends nothing and
lists what a run would send. `--every 1h` runs a pass now and then every hour until SIGINT or
SIGTERM (which end it after the event in flight); a failed pass is reported and the loop goes
on. Exit 0 when everything due was delivered, 1 when something failed or is still pending (or
another sync holds the lock), 2 for bad usage. An ISO time without an offset is UTC.

`reconcile --month YYYY-MM [--format table|json] [--offline]` compares, per customer and
meter, our totals with what billing_sync says was sent and, unless --offline, with Stripe's
meter event summaries (storage.stripe.reconcile). JSON: {"month", "start", "end",
"differences", "lines": [{"customer_id", "stripe_customer_id", "dimension", "event_name",
"ours", "sent", "unsent", "skipped", "stripe", "difference", "stripe_difference",
"imported_unsent"}]}, where "stripe" and "stripe_difference" are decimal strings or null.
Imported usage (`usage import`) is in "ours" only from `billing.stripe.import_since` on (what
the sync sends); the rest of it is "imported_unsent", never a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway.cli.main import add_config_option
from gateway.cli.runtime import (
    OUTPUT_FORMATS,
    CommandError,
    Runtime,
    add_format_option,
    announce,
    render_table,
    run_command,
    short_time,
    usage_error,
    write_output,
)
from gateway.config import Settings, StripeConfig
from storage.accounts import AccountStore, Customer
from storage.stripe.client import StripeApi, StripeApiError
from storage.stripe.reconcile import ReconcileLine, reconcile
from storage.stripe.sync import MeterSync, SyncBusyError, SyncPolicy, SyncReport, SyncRow

_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")


def add_commands(subparsers: Any) -> None:
    sync = subparsers.add_parser(
        "sync", help="send closed usage windows to Stripe Billing Meters", description=__doc__
    )
    sync.add_argument("--dry-run", action="store_true", help="record and send nothing")
    sync.add_argument("--until", metavar="ISO_TIME", help="only windows closed before this")
    sync.add_argument("--every", metavar="DURATION", help="repeat every DURATION (e.g. 1h)")
    add_format_option(sync, OUTPUT_FORMATS)
    add_config_option(sync)
    sync.set_defaults(func=_sync)

    check = subparsers.add_parser(
        "reconcile", help="our totals vs what was sent to Stripe, for a month"
    )
    check.add_argument("--month", required=True, metavar="YYYY-MM")
    check.add_argument("--offline", action="store_true", help="do not ask Stripe")
    add_format_option(check, OUTPUT_FORMATS)
    add_config_option(check)
    check.set_defaults(func=_reconcile)


# -- shared with `customers --create-in-stripe` --------------------------------------------


def stripe_config(settings: Settings) -> StripeConfig:
    config = settings.billing.stripe
    if config is None:
        raise CommandError(
            f"billing.stripe is not configured in {settings.source_name()} (see docs/billing.md)"
        )
    return config


def require_stripe(settings: Settings) -> StripeConfig:
    """The Stripe config, once it and its API key are there; else a CommandError."""
    config = stripe_config(settings)
    if not os.environ.get(config.api_key_env):
        raise CommandError(f"set {config.api_key_env} to the Stripe secret key")
    return config


def open_stripe_api(config: StripeConfig) -> StripeApi:
    api_key = os.environ.get(config.api_key_env)
    if not api_key:
        raise CommandError(f"set {config.api_key_env} to the Stripe secret key")
    return StripeApi(api_key, api_base=config.api_base, timeout_s=config.request_timeout_s)


async def create_stripe_customer(runtime: Runtime, customer: Customer) -> Customer:
    """Create the customer in Stripe and store its id on the Tollbooth customer."""
    api = open_stripe_api(stripe_config(runtime.settings))
    try:
        stripe_customer_id = await api.create_customer(customer.id, customer.name, customer.email)
    except StripeApiError as exc:
        raise CommandError(
            f"customer {customer.id} was not created in Stripe ({exc}); retry with "
            f"`tollbooth customers update {customer.id} --create-in-stripe`"
        ) from exc
    finally:
        await api.close()
    return await AccountStore(runtime.pool).update_customer(
        customer.id, stripe_customer_id=stripe_customer_id
    )


# -- sync ------------------------------------------------------------------------------


def sync_policy(config: StripeConfig) -> SyncPolicy:
    return SyncPolicy(
        meters=dict(config.meters),
        window_s=config.window_s,
        settle_delay_s=config.settle_delay_s,
        version=config.version,
        max_retries=config.max_retries,
        use_v2_stream=config.use_v2_stream,
        import_since=config.import_since,
    )


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.strip())
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _sync(args: argparse.Namespace) -> int:
    try:
        until = parse_time(args.until) if args.until else None
        every_s = StripeConfig.parse_duration(args.every) if args.every else None
    except ValueError as exc:
        return usage_error(str(exc))
    if every_s is not None and (until is not None or every_s < 1):
        return usage_error("--every takes a duration of at least 1s and no --until")

    async def body(runtime: Runtime) -> int:
        config = stripe_config(runtime.settings)
        api = None if args.dry_run else open_stripe_api(config)
        try:
            syncer = MeterSync(runtime.pool, api, sync_policy(config))
            if every_s is None:
                report = await _pass(syncer, until=until, dry_run=args.dry_run, stop=None)
                write_output(render_sync(report, args.format), None)
                return 0 if report.ok else 1
            await _loop(syncer, every_s, args)
            return 0
        finally:
            if api is not None:
                await api.close()

    return run_command(args, body)


async def _pass(
    syncer: MeterSync, *, until: datetime | None, dry_run: bool, stop: asyncio.Event | None
) -> SyncReport:
    try:
        return await syncer.run(until=until, dry_run=dry_run, stop=stop)
    except SyncBusyError as exc:
        raise CommandError(str(exc)) from exc
    except StripeApiError as exc:
        raise CommandError(f"Stripe refused the sync: {exc}") from exc


async def _loop(syncer: MeterSync, every_s: int, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            try:
                report = await _pass(syncer, until=None, dry_run=args.dry_run, stop=stop)
                write_output(render_sync(report, args.format), None)
            except (CommandError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                announce(f"tollbooth: sync pass failed: {exc}; next pass in {every_s}s")
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    announce("tollbooth: billing sync stopped")


def _row_json(row: SyncRow) -> dict[str, Any]:
    return {
        "identifier": row.identifier,
        "customer_id": row.customer_id,
        "stripe_customer_id": row.stripe_customer_id,
        "dimension": row.dimension,
        "event_name": row.event_name,
        "window_start": row.window_start.isoformat(),
        "seq": row.seq,
        "value": row.value,
        "status": row.status,
        "error": row.error,
    }


def sync_json(report: SyncReport) -> dict[str, Any]:
    return {
        "until": report.until.isoformat(),
        "dry_run": report.dry_run,
        "ok": report.ok,
        "sent": len(report.sent),
        "already_in_stripe": report.duplicates,
        "corrections": sum(1 for r in report.sent if r.seq > 0),
        "failed": [_row_json(r) for r in report.failed],
        "pending": [_row_json(r) for r in report.pending],
        "skipped": [_row_json(r) for r in report.skipped],
        "missing_stripe_customer": [
            {"customer_id": c, "windows": n} for c, n in report.missing_stripe_customer.items()
        ],
        "stopped_by": report.stopped_by,
    }


def render_sync(report: SyncReport, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(sync_json(report), indent=2) + "\n"
    lines = [f"windows closed by {short_time(report.until)}"]
    if report.dry_run:
        lines.append(
            f"dry run: {len(report.pending)} meter event(s) would be sent, "
            f"{len(report.skipped)} skipped; nothing recorded or sent"
        )
    else:
        corrections = sum(1 for r in report.sent if r.seq > 0)
        lines.append(
            f"sent {len(report.sent)} meter event(s) ({report.duplicates} already in Stripe, "
            f"{corrections} correction(s)); {len(report.failed)} failed, "
            f"{len(report.pending)} pending, {len(report.skipped)} skipped"
        )
    if report.stopped_by:
        lines.append(f"stopped: {report.stopped_by}; the next run resumes")
    for customer_id, windows in report.missing_stripe_customer.items():
        lines.append(
            f"skipped customer {customer_id}: no stripe_customer_id ({windows} window(s) not sent)"
        )
    text = "\n".join(lines) + "\n"
    shown = report.failed + report.skipped + report.pending
    if shown:
        text += "\n" + render_table(
            ["STATUS", "CUSTOMER", "METER", "WINDOW", "SEQ", "VALUE", "IDENTIFIER", "ERROR"],
            [
                [
                    r.status,
                    r.customer_id,
                    r.event_name,
                    short_time(r.window_start),
                    r.seq,
                    r.value,
                    r.identifier,
                    r.error,
                ]
                for r in shown
            ],
        )
    return text


# -- reconcile -------------------------------------------------------------------------


def month_bounds(text: str) -> tuple[datetime, datetime]:
    match = _MONTH.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"--month takes YYYY-MM, got {text!r}")
    year, month = int(match[1]), int(match[2])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _reconcile(args: argparse.Namespace) -> int:
    try:
        start, end = month_bounds(args.month)
    except ValueError as exc:
        return usage_error(str(exc))

    async def body(runtime: Runtime) -> int:
        config = stripe_config(runtime.settings)
        api = None if args.offline else open_stripe_api(config)
        try:
            lines = await reconcile(
                runtime.pool,
                start=start,
                end=end,
                window_s=config.window_s,
                meters=config.meters,
                version=config.version,
                stripe=api,
                import_since=config.import_since,
            )
        except StripeApiError as exc:
            raise CommandError(f"Stripe's meter event summaries: {exc}; or use --offline") from exc
        finally:
            if api is not None:
                await api.close()
        write_output(render_reconcile(args.month, start, end, lines, args.format), None)
        return 0

    return run_command(args, body)


def _differs(line: ReconcileLine) -> bool:
    return line.difference != 0 or line.stripe_difference not in (None, 0)


def render_reconcile(
    month: str, start: datetime, end: datetime, lines: list[ReconcileLine], fmt: str
) -> str:
    if fmt == "json":
        data = {
            "month": month,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "differences": sum(1 for line in lines if _differs(line)),
            "lines": [
                {
                    "customer_id": ln.customer_id,
                    "stripe_customer_id": ln.stripe_customer_id,
                    "dimension": ln.dimension,
                    "event_name": ln.event_name,
                    "ours": ln.ours,
                    "sent": ln.sent,
                    "unsent": ln.unsent,
                    "skipped": ln.skipped,
                    "imported_unsent": ln.imported,
                    "stripe": None if ln.stripe is None else str(ln.stripe),
                    "difference": ln.difference,
                    "stripe_difference": (
                        None if ln.stripe_difference is None else str(ln.stripe_difference)
                    ),
                }
                for ln in lines
            ],
        }
        return json.dumps(data, indent=2) + "\n"
    table = render_table(
        [
            "CUSTOMER",
            "METER",
            "OURS",
            "SENT",
            "UNSENT",
            "SKIPPED",
            "STRIPE",
            "DIFF",
            "STRIPE DIFF",
            "IMPORTED (NOT SENT)",
        ],
        [
            [
                ln.customer_id,
                ln.dimension,
                ln.ours,
                ln.sent,
                ln.unsent,
                ln.skipped,
                ln.stripe,
                ln.difference,
                ln.stripe_difference,
                ln.imported,
            ]
            for ln in lines
        ],
    )
    differing = sum(1 for line in lines if _differs(line))
    return table + f"\n{month}: {len(lines)} line(s), {differing} with a difference\n"
