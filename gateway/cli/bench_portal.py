"""`tollbooth bench portal`: seed usage events into a fresh database and time the usage pages.

    tollbooth bench portal [--events 5000000] [--customers 1000] [--days 90] [--runs 20]
                           [--database-url URL] [--redis-url URL] [--workdir DIR]
                           [--keep-database | --reuse-database URL] [--json]

Seeds `--events` events over `--customers` customers across the last `--days` days into a
new database on the Postgres server `--database-url` names (else `TOLLBOOTH_DATABASE_URL`,
else an embedded server under the work dir), checks the rollups and the totals against the
raw rows, then times the customer portal's and the operator dashboard's views by their
functions and over HTTP (gateway.bench.portal_views) and prints a table (or `--json`).
Valkey likewise (`--redis-url`, `TOLLBOOTH_REDIS_URL`, else embedded). Exit 0 when it ran and
every check held, 1 when a check failed or it could not run, 2 for bad options.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import orjson

from gateway.bench.portal_report import render_text
from gateway.bench.portal_run import PortalBenchError, PortalBenchOptions, run_portal_bench


def register_portal(kinds: Any) -> None:
    parser: argparse.ArgumentParser = kinds.add_parser(
        "portal",
        help="seed usage events and time the portal and dashboard pages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=5_000_000, help="events to seed")
    parser.add_argument("--customers", type=int, default=1000, help="customers to seed")
    parser.add_argument("--days", type=int, default=90, help="days the events spread over")
    parser.add_argument("--runs", type=int, default=20, help="measured runs per view")
    parser.add_argument(
        "--batch-size", type=int, default=250_000, help="events per INSERT statement while seeding"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TOLLBOOTH_DATABASE_URL"),
        help="a Postgres server to create the bench database on",
    )
    parser.add_argument("--redis-url", default=os.environ.get("TOLLBOOTH_REDIS_URL"))
    parser.add_argument(
        "--workdir",
        type=Path,
        help="embedded servers' data and the gateway's journal (default: a temp dir)",
    )
    parser.add_argument(
        "--keep-database",
        action="store_true",
        help="keep the seeded database (its name is printed)",
    )
    parser.add_argument(
        "--reuse-database",
        metavar="URL",
        help="skip seeding: check and time a database a --keep-database run left (its URL)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_portal)


def run_portal(args: argparse.Namespace) -> int:
    if min(args.events, args.customers, args.days, args.runs, args.batch_size) < 1:
        print(
            "tollbooth: bench portal: --events, --customers, --days, --runs and "
            "--batch-size must be >= 1",
            file=sys.stderr,
        )
        return 2
    options = PortalBenchOptions(
        events=args.events,
        customers=args.customers,
        days=args.days,
        runs=args.runs,
        batch_size=args.batch_size,
        database_url=args.database_url,
        redis_url=args.redis_url,
        workdir=args.workdir,
        keep_database=args.keep_database,
        reuse_database=args.reuse_database,
    )
    argv = sys.argv[1:] if sys.argv[1:2] == ["bench"] else ["bench", "portal", "..."]
    command = "tollbooth " + " ".join(shlex.quote(a) for a in argv)
    try:
        report = run_portal_bench(options, command)
    except PortalBenchError as exc:
        print(f"tollbooth: bench portal: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        sys.stdout.write(render_text(report))
    return 0 if report.ok else 1
