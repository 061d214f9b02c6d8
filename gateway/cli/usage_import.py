"""`tollbooth usage import FILE`: bring past usage events in (a backfill), once.

    tollbooth usage import FILE [--format csv|json|jsonl] [--source tollbooth|litellm]
        [--customer-from metadata.KEY|user|team_id|end_user] [--create-customers]
        [--dry-run] [--reprice] [--batch-size N] [--json]

`--source tollbooth` (default) reads what `tollbooth usage export --format csv|json` writes
(every column round-trips); `--source litellm` reads a LiteLLM SpendLogs export (mapping in
storage/imports/litellm.py and docs/usage-storage.md). `--format` defaults to the file name's
extension (.csv, .json, .jsonl/.ndjson); FILE `-` is stdin. The customer of a LiteLLM row is its
`customer_id` column, or what `--customer-from` names. Rows of a customer that does not
exist are refused unless `--create-customers` (created on the config's first tier).
`--reprice` prices the rows with the catalog and config (the price period in force at each
row's created_at); otherwise the file's money is kept and price_version says `imported:...`.

Prints every refused row (line and reason; the first 1000 in text, 10000 with --json) and
what was added, skipped (already present) and refused. Safe to run again: present events are
skipped, so an interrupted import resumes. Exit 0 when no row was refused, 1 otherwise (the
good rows are written either way), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from gateway.cli.main import add_config_option
from gateway.cli.runtime import CommandError, Runtime, run_command, usage_error, write_output
from gateway.runtime import build_pricing
from pricing.catalog import Catalog
from storage.imports.batch import DEFAULT_BATCH_SIZE
from storage.imports.litellm import check_customer_from
from storage.imports.read import FORMATS, ImportFileError, guess_format
from storage.imports.run import SOURCES, ImportOptions, ImportReport, import_usage

SHOWN_REFUSALS = 1000


def add_command(reports: Any) -> None:
    sub: argparse.ArgumentParser = reports.add_parser(
        "import",
        help="bring past usage events in from a file (backfill)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("file", metavar="FILE", help="the file to import (- for stdin)")
    sub.add_argument(
        "--format",
        choices=FORMATS,
        help="the file's format (default: from its extension, else csv)",
    )
    sub.add_argument(
        "--source",
        choices=SOURCES,
        default="tollbooth",
        help="who wrote the file (default: %(default)s)",
    )
    sub.add_argument(
        "--customer-from",
        metavar="WHERE",
        help="LiteLLM rows: customer id from metadata.KEY, user, team_id or "
        "end_user (default: a customer_id column)",
    )
    sub.add_argument(
        "--create-customers",
        action="store_true",
        help="create unknown customers on the config's first tier",
    )
    sub.add_argument("--dry-run", action="store_true", help="check and count, write nothing")
    sub.add_argument(
        "--reprice", action="store_true", help="price rows with the catalog in force at their time"
    )
    sub.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="rows per transaction (default: %(default)s)",
    )
    sub.add_argument("--json", action="store_true", help="print the report as JSON")
    add_config_option(sub)
    sub.set_defaults(func=_import)


def _check(args: argparse.Namespace) -> str | None:
    if args.batch_size < 1:
        return f"--batch-size must be >= 1, got {args.batch_size}"
    if args.customer_from is not None and args.source != "litellm":
        return "--customer-from applies to --source litellm only"
    problem = check_customer_from(args.customer_from)
    if problem:
        return f"--customer-from: {problem}"
    if args.file == "-" and args.format is None:
        return "reading stdin needs --format"
    if args.file != "-" and not os.path.isfile(args.file):
        return f"{args.file}: no such file"
    return None


@contextmanager
def _open(path: str) -> Iterator[TextIO]:
    if path == "-":
        yield sys.stdin
        return
    # surrogateescape: bytes that are not UTF-8 refuse their row, not the whole file.
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        yield handle


def _import(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        return usage_error(problem)
    fmt = args.format or guess_format(args.file)

    async def body(runtime: Runtime) -> int:
        settings = runtime.settings
        options = ImportOptions(
            source=args.source,
            fmt=fmt,
            customer_from=args.customer_from,
            create_customers=args.create_customers,
            default_tier=next(iter(settings.tiers)),
            dry_run=args.dry_run,
            batch_size=args.batch_size,
            pricing=build_pricing(settings, Catalog.load_default()) if args.reprice else None,
            retention_days=settings.retention.raw_events_days,
        )
        try:
            with _open(args.file) as handle:
                report = await import_usage(runtime.pool, handle, options)
        except ImportFileError as exc:
            raise CommandError(f"{args.file}: {exc}") from exc
        text = (
            json.dumps(report.to_json(), indent=2) + "\n"
            if args.json
            else render_import(args.file, fmt, report)
        )
        write_output(text, None)
        return 1 if report.refused else 0

    return run_command(args, body)


def render_import(path: str, fmt: str, report: ImportReport) -> str:
    lines = []
    if report.dry_run:
        lines.append("dry run, nothing written; a real run would do this:")
    refusals = sorted(report.refusals, key=lambda r: r.line)
    lines += [f"refused line {r.line}: {r.reason}" for r in refusals[:SHOWN_REFUSALS]]
    if report.refused > SHOWN_REFUSALS:
        lines.append(
            f"... and {report.refused - SHOWN_REFUSALS} more refused rows "
            "(--json lists up to 10000)"
        )
    span = (
        f" from {report.oldest:%Y-%m-%d %H:%M}Z to {report.newest:%Y-%m-%d %H:%M}Z"
        if report.oldest and report.newest
        else ""
    )
    lines.append(f"{path} ({report.source}, {fmt}): {report.rows} rows{span}")
    if report.customers_created:
        lines.append(f"customers created: {', '.join(report.customers_created)}")
    if report.partitions_created:
        lines.append(f"partitions created: {', '.join(report.partitions_created)}")
    if report.repriced or report.unpriceable:
        lines.append(
            f"repriced {report.repriced}; kept the file's money for "
            f"{report.unpriceable} (model not priced)"
        )
    if report.expiring:
        lines.append(
            f"note: {report.expiring} rows are older than retention.raw_events_days;"
            " the next maintenance removes their raw events (hourly rollups and "
            "reports keep them)"
        )
    lines.append(
        f"added {report.added}, skipped {report.skipped} (already present), "
        f"refused {report.refused}"
    )
    return "\n".join(lines) + "\n"
