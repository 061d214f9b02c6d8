"""`tollbooth bench portal` at a small size: it seeds, checks the rollups and the totals
against the raw rows, times every view by its functions and over HTTP, and prints the table."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from gateway.bench.portal_report import percentile
from gateway.bench.portal_run import with_database

VIEWS = (
    "portal: month view (both pages)",
    "portal: overview page",
    "portal: events, first page",
    "portal: events, deep page (cursor)",
    "dashboard: all customers",
    "dashboard: system",
    "dashboard: customer drill-down",
)


def test_percentile_is_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 21)]
    assert percentile(samples, 0.5) == 10.0
    assert percentile(samples, 0.95) == 20.0
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([], 0.5) == 0.0


def test_with_database_swaps_only_the_name() -> None:
    assert (
        with_database("postgresql://u:p@h:5432/db?sslmode=require", "x")
        == "postgresql://u:p@h:5432/x?sslmode=require"
    )
    assert (
        with_database("postgresql://postgres:@/tollbooth?host=/tmp/pg", "x")
        == "postgresql://postgres:@/x?host=/tmp/pg"
    )


@pytest.mark.slow
def test_small_run_prints_the_table_and_its_numbers_equal_the_rows(
    postgres_url: str, redis_url: str
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli.main",
            "bench",
            "portal",
            "--events",
            "20000",
            "--customers",
            "20",
            "--runs",
            "2",
            "--database-url",
            postgres_url,
            "--redis-url",
            redis_url,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("$ tollbooth bench portal --events 20000 --customers 20")
    assert "FAILED" not in out
    assert re.search(r"events in usage_events\s+20,000\n", out)
    assert re.search(r"all-customer requests, seeded range\s+20,000\n", out)
    assert "== rows in usage_events (20,000) == events seeded (20,000): ok" in out
    assert "hourly rollups equal the raw events" in out and "daily rollups equal" in out
    for view in VIEWS:
        row = next(line for line in out.splitlines() if line.startswith(view))
        numbers = [float(n) for n in re.findall(r"\d+\.\d", row)]
        assert len(numbers) == 7 and all(n > 0 for n in numbers), row
