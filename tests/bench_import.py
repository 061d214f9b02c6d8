"""Benchmark (run by hand, not a test): `tollbooth usage import` of a large CSV, twice.

    python -m tests.bench_import [--rows N] [--file PATH] [--batch-size B] [--database-url URL]

Writes N rows (default 1,000,000) over the last 150 days in `usage export --format csv`'s
columns (tests/import_fixtures.py; kept at --file and reused when it has N rows), then runs
`python -m gateway.cli.main usage import FILE --create-customers` against a new database,
as a user would, and again (which must add nothing). Without --database-url (or
TOLLBOOTH_DATABASE_URL) it starts a private embedded PostgreSQL in a temporary directory.
Printed: each run's wall time, rows/s, the CPU time of the command and (on the private
server) of PostgreSQL, which tell what the run costs on a machine shared with other work,
and its last line (added, skipped, refused); then whether the hourly rollups equal the raw
rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from storage.embedded.servers import start_postgres, stop_postgres
from storage.postgres import create_pool
from storage.reports.rollups import verify_rollups
from tests.helpers.databases import new_database
from tests.import_fixtures import Cli, write_usage_csv


def _child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _server_cpu_s(pid: int | None) -> float | None:
    """CPU seconds of a PostgreSQL server: the postmaster, the backends it reaped, and the
    processes still running under it. None when the server is not ours to measure."""
    if pid is None:
        return None
    postmaster = psutil.Process(pid)
    times = postmaster.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in postmaster.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
    return total


def _lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle) - 1


def bench(
    server_url: str,
    rows: int,
    path: Path,
    batch_size: int,
    workdir: Path,
    server_pid: int | None = None,
) -> None:
    now = datetime.now(UTC)
    if not path.exists() or _lines(path) != rows:
        started = time.monotonic()
        write_usage_csv(path, rows, now=now - timedelta(minutes=5))
        print(f"wrote {rows} rows to {path} in {time.monotonic() - started:.1f}s", flush=True)
    url = asyncio.run(new_database(server_url))
    cli = Cli(workdir, url)
    cli.ok("migrate")
    for attempt in ("first", "second"):
        started, cpu, server_cpu = time.monotonic(), _child_cpu_s(), _server_cpu_s(server_pid)
        out = cli.ok(
            "usage", "import", str(path), "--create-customers", "--batch-size", str(batch_size)
        )
        elapsed = time.monotonic() - started
        after = _server_cpu_s(server_pid)
        spent = (
            ""
            if after is None or server_cpu is None
            else (f", PostgreSQL {after - server_cpu:.1f}s")
        )
        print(
            f"{attempt} run: {elapsed:.1f}s wall ({rows / elapsed:,.0f} rows/s); CPU: the "
            f"command {_child_cpu_s() - cpu:.1f}s{spent}: {out.strip().splitlines()[-1]}",
            flush=True,
        )

    async def check() -> None:
        pool = await create_pool(url)
        try:
            found = await verify_rollups(pool, since=now - timedelta(days=151), until=now)
            print(f"rollups equal the raw rows: {not found.mismatches}")
        finally:
            await pool.close()

    asyncio.run(check())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--file", type=Path, default=Path(tempfile.gettempdir()) / "tollbooth-import-bench.csv"
    )
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--database-url", default=os.environ.get("TOLLBOOTH_DATABASE_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.database_url:
            bench(args.database_url, args.rows, args.file, args.batch_size, Path(tmp))
            return
        pgdata = Path(tmp) / "pg"
        instance = start_postgres(pgdata)
        try:
            bench(
                instance.url("postgres"),
                args.rows,
                args.file,
                args.batch_size,
                Path(tmp),
                instance.proc.pid,
            )
        finally:
            stop_postgres(pgdata, instance.proc)


if __name__ == "__main__":
    main()
