"""`tollbooth maintenance partitions|retention|rollups`: the usage_events housekeeping by hand.

`serve` does the first two by itself at start and once a day (storage.usage.partitions
`maintain_partitions`); these commands run them now, or show what they would do.

    partitions [--months-ahead N] [--dry-run]
        create the month partitions of usage_events up to N months ahead (default:
        retention.partitions_ahead_months) and move any row of the default partition into
        its month; prints every partition and how many rows were in the default partition
    retention [--days N] [--dry-run]
        drop the month partitions that ended N days ago or earlier (default:
        retention.raw_events_days) and older rows of the default partition; rollups stay
    rollups [--days N] [--rebuild]
        compare the hourly rollups of the last N days (default 7) with the raw events and
        list the differences (exit 1 if any); --rebuild recomputes them from the raw events.
        Only hours whose raw events are all still stored are covered: from the retention
        horizon on (the end of what `retention` removed), never the rollups before it, which
        are then the only record; the output says which hours were covered

`--format table|json`. Exit 2 for bad usage, 1 for a database error or a lock not obtained
within storage.usage.partitions.LOCK_TIMEOUT_S (nothing half-done: run it again).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.cli.main import add_config_option
from gateway.cli.runtime import (
    OUTPUT_FORMATS,
    Runtime,
    add_format_option,
    render_table,
    run_command,
    short_time,
    usage_error,
)
from storage.reports.rollups import RollupWindow, rebuild_rollups, verify_rollups
from storage.reports.usage_queries import MAX_DAYS, decimal_str, report_window
from storage.usage.partitions import apply_retention, ensure_partitions


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "maintenance",
        help="usage_events partitions, retention and rollups",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    partitions = tasks.add_parser("partitions", help="create month partitions ahead")
    partitions.add_argument(
        "--months-ahead",
        type=int,
        metavar="N",
        help="months after the current one (default: from config)",
    )
    partitions.add_argument("--dry-run", action="store_true", help="change nothing")
    partitions.set_defaults(func=_partitions)

    retention = tasks.add_parser("retention", help="drop raw events older than N days")
    retention.add_argument(
        "--days", type=int, metavar="N", help="keep N days of raw events (default: from config)"
    )
    retention.add_argument("--dry-run", action="store_true", help="change nothing")
    retention.set_defaults(func=_retention)

    rollups = tasks.add_parser("rollups", help="check the hourly rollups against raw events")
    rollups.add_argument(
        "--days",
        type=int,
        default=7,
        metavar="N",
        help="hours of the last N days (default: %(default)s)",
    )
    rollups.add_argument(
        "--rebuild", action="store_true", help="recompute them from the raw events"
    )
    rollups.set_defaults(func=_rollups)

    for sub in (partitions, retention, rollups):
        add_format_option(sub, OUTPUT_FORMATS)
        add_config_option(sub)


def _print(body: dict[str, Any], fmt: str, table: str) -> None:
    if fmt == "json":
        print(json.dumps(body, indent=2))
    else:
        print(table, end="")


def _partitions(args: argparse.Namespace) -> int:
    if args.months_ahead is not None and not 0 <= args.months_ahead <= 24:
        return usage_error(f"--months-ahead must be between 0 and 24, got {args.months_ahead}")

    async def body(runtime: Runtime) -> int:
        ahead = args.months_ahead
        if ahead is None:
            ahead = runtime.settings.retention.partitions_ahead_months
        report = await ensure_partitions(runtime.pool, months_ahead=ahead, dry_run=args.dry_run)
        created = set(report.created)
        verb = "would create" if args.dry_run else "created"
        rows = [
            [p.name, short_time(p.start), short_time(p.end), verb if p in created else ""]
            for p in report.partitions
        ]
        text = render_table(["PARTITION", "FROM", "TO", ""], rows) + (
            f"default partition: {report.default_rows} rows"
            + (f" ({report.moved_rows} moved to their month)" if report.moved_rows else "")
            + "\n"
        )
        _print(report.to_json(), args.format, text)
        return 0

    return run_command(args, body)


def _retention(args: argparse.Namespace) -> int:
    if args.days is not None and not 1 <= args.days <= MAX_DAYS:
        return usage_error(f"--days must be between 1 and {MAX_DAYS}, got {args.days}")

    async def body(runtime: Runtime) -> int:
        days = args.days if args.days is not None else runtime.settings.retention.raw_events_days
        if days is None:
            print("retention is off (retention.raw_events_days: null); pass --days N")
            return 0
        report = await apply_retention(runtime.pool, days=days, dry_run=args.dry_run)
        verb = "would drop" if args.dry_run else "dropped"
        names = ", ".join(p.name for p in report.dropped) or "no partition"
        text = (
            f"raw events before {short_time(report.cutoff)} ({days} days): {verb} {names}; "
            f"{report.default_rows_deleted} rows of the default partition"
            f"{' would be' if args.dry_run else ''} deleted\n"
        )
        if report.horizon is not None:
            text += (
                f"retention horizon{' would be' if args.dry_run else ''}: "
                f"{short_time(report.horizon)} (rollups before it are kept as they are)\n"
            )
        _print(report.to_json(), args.format, text)
        return 0

    return run_command(args, body)


def _rollups(args: argparse.Namespace) -> int:
    if not 1 <= args.days <= MAX_DAYS:
        return usage_error(f"--days must be between 1 and {MAX_DAYS}, got {args.days}")

    async def body(runtime: Runtime) -> int:
        since, until = report_window(args.days, None)
        if args.rebuild:
            rebuilt = await rebuild_rollups(runtime.pool, since=since, until=until)
            _print(
                {"rebuilt_rows": rebuilt.rows, "window": rebuilt.window.to_json()},
                args.format,
                _covered(rebuilt.window, "rebuilt")
                + f"{rebuilt.rows} rollup rows written from the raw events\n",
            )
            return 0
        check = await verify_rollups(runtime.pool, since=since, until=until)
        found = [
            {
                "hour": m.hour.isoformat(),
                "customer_id": m.customer_id,
                "project_id": m.project_id,
                "model": m.model,
                "column": m.column,
                "rollup": _number(m.rollup),
                "raw": _number(m.raw),
            }
            for m in check.mismatches
        ]
        rows = [
            [
                f["hour"],
                f["customer_id"],
                f["project_id"],
                f["model"],
                f["column"],
                f["rollup"],
                f["raw"],
            ]
            for f in found
        ]
        text = _covered(check.window, "checked") + (
            render_table(["HOUR", "CUSTOMER", "PROJECT", "MODEL", "COLUMN", "ROLLUP", "RAW"], rows)
            if rows
            else "rollups match the raw events\n"
        )
        _print({"mismatches": found, "window": check.window.to_json()}, args.format, text)
        return 1 if found else 0

    return run_command(args, body)


def _covered(window: RollupWindow, verb: str) -> str:
    """Which hours a check or rebuild covered, and why fewer than asked for, if so."""
    line = f"{verb} the hours from {short_time(window.start)} to {short_time(window.end)}"
    if window.clamped:
        line += (
            f" (asked from {short_time(window.requested_start)}; raw events before "
            f"{short_time(window.horizon)} were removed by retention, their rollups "
            "are left as they are)"
        )
    return line + "\n"


def _number(value: Any) -> Any:
    return value if isinstance(value, int) else decimal_str(value)
