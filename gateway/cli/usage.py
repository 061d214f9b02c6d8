"""`tollbooth usage summary|daily|projects|events|export`: usage reports
(docs/usage-storage.md gives every JSON shape).

Every report takes `--days N` (default 30; the window is the last N days up to now),
`--customer ID` (default: all customers), `--project P` and `--model M` (narrow to one),
`--format table|json|csv` and `-o FILE` (write there instead of stdout).

    summary   totals and one row per model
    daily     one row per UTC day the window touches (zeros included)
    projects  one row per (customer, project)
    events    the newest events (`--limit N`, default 50, at most 1000; `--cursor C` for the
              next page, printed under the table and as `next_cursor` in JSON)
    export    every event of the window, streamed; `--format csv` (default) or `json`;
              with -o the file appears only once it is complete

The JSON shapes and CSV columns are in gateway/cli/usage_render.py and docs/usage-storage.md.
Totals of every report equal the raw events. `usage replay-dead-letters` comes from usage_replay,
`usage import` (backfill) from usage_import.
Exit 2 for bad usage, 1 for a database error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing, contextmanager
from typing import Any, TextIO

from gateway.cli import usage_import, usage_replay
from gateway.cli.main import add_config_option
from gateway.cli.runtime import Runtime, add_format_option, run_command, usage_error, write_output
from gateway.cli.usage_render import (
    render_daily,
    render_events,
    render_projects,
    render_summary,
    write_export,
)
from storage.accounts import CUSTOMER_ID_PATTERN
from storage.reports.event_queries import (
    DEFAULT_EVENTS_LIMIT,
    MAX_EVENTS_LIMIT,
    EventCursor,
    export_events,
    usage_events_page,
)
from storage.reports.usage_queries import (
    MAX_DAYS,
    Period,
    daily_of,
    projects_of,
    report_period,
    summary_of,
)

REPORT_FORMATS = ("table", "json", "csv")
EXPORT_FORMATS = ("csv", "json")

Report = Callable[[Runtime, argparse.Namespace, Period], Awaitable[str]]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "usage",
        help="usage reports",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    reports = parser.add_subparsers(dest="report", metavar="REPORT", required=True)
    for name, help_text, report in (
        ("summary", "totals and per-model usage for a period", _summary),
        ("daily", "usage per UTC day", _daily),
        ("projects", "usage per customer and project", _projects),
        ("events", "the newest usage events, a page at a time", _events),
    ):
        sub = reports.add_parser(name, help=help_text)
        _add_report_options(sub, REPORT_FORMATS)
        if name == "events":
            sub.add_argument(
                "--limit",
                type=int,
                default=DEFAULT_EVENTS_LIMIT,
                help=f"events per page (default: %(default)s, at most {MAX_EVENTS_LIMIT})",
            )
            sub.add_argument("--cursor", help="continue after the page that printed it")
        sub.set_defaults(func=_command(report))
    export = reports.add_parser("export", help="every event of the period, as CSV or JSON")
    _add_report_options(export, EXPORT_FORMATS)
    export.set_defaults(func=_export)
    usage_replay.add_commands(reports)
    usage_import.add_command(reports)


def _add_report_options(parser: argparse.ArgumentParser, formats: tuple[str, ...]) -> None:
    parser.add_argument("--days", type=int, default=30, help="period in days (default: 30)")
    parser.add_argument("--customer", metavar="ID", help="one customer (default: all)")
    parser.add_argument("--project", metavar="P", help="one project (default: all)")
    parser.add_argument("--model", metavar="M", help="one model (default: all)")
    add_format_option(parser, formats)
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE, not stdout")
    add_config_option(parser)


def _check(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, before any server is started; None if fine."""
    if not 1 <= args.days <= MAX_DAYS:
        return f"--days must be between 1 and {MAX_DAYS}, got {args.days}"
    if args.customer is not None and not CUSTOMER_ID_PATTERN.fullmatch(args.customer):
        return f"invalid customer id {args.customer!r}"
    limit = getattr(args, "limit", None)
    if limit is not None and not 1 <= limit <= MAX_EVENTS_LIMIT:
        return f"--limit must be between 1 and {MAX_EVENTS_LIMIT}, got {limit}"
    cursor = getattr(args, "cursor", None)
    if cursor is not None:
        try:
            EventCursor.decode(cursor)
        except ValueError as exc:
            return f"--cursor: {exc}"
    return None


def _period(args: argparse.Namespace) -> Period:
    return report_period(args.days, args.customer, args.project, args.model)


def _command(report: Report) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        problem = _check(args)
        if problem:
            return usage_error(problem)

        async def body(runtime: Runtime) -> int:
            write_output(await report(runtime, args, _period(args)), args.output)
            return 0

        return run_command(args, body)

    return run


async def _summary(runtime: Runtime, args: argparse.Namespace, period: Period) -> str:
    summary = await summary_of(runtime.pool, period)
    return render_summary(summary, args.format)


async def _daily(runtime: Runtime, args: argparse.Namespace, period: Period) -> str:
    daily = await daily_of(runtime.pool, period)
    return render_daily(daily, args.format)


async def _projects(runtime: Runtime, args: argparse.Namespace, period: Period) -> str:
    report = await projects_of(runtime.pool, period)
    return render_projects(report, args.format)


async def _events(runtime: Runtime, args: argparse.Namespace, period: Period) -> str:
    page = await usage_events_page(runtime.pool, period, limit=args.limit, cursor=args.cursor)
    return render_events(page, args.format)


def _export(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        return usage_error(problem)

    async def body(runtime: Runtime) -> int:
        period = _period(args)
        async with aclosing(export_events(runtime.pool, period)) as events:
            with _export_target(args.output) as out:
                await write_export(out, period, events, args.format)
        return 0

    return run_command(args, body)


@contextmanager
def _export_target(path: str | None) -> Iterator[TextIO]:
    """stdout, or FILE written beside itself and renamed when complete: a failed export
    never leaves a truncated file that looks finished."""
    if path is None or path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    partial = f"{path}.partial"
    try:
        with open(partial, "w", encoding="utf-8", newline="") as out:
            yield out
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
