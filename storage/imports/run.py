"""`import_usage`: a file of past usage events into `usage_events`, once, however often it runs.

Records are read (storage.imports.read), checked, marked as imported and encoded
`batch_size` at a time (storage.imports.batch), and each batch is written by the usage
writer's batch code (storage.usage.batches.BatchWriter.insert: COPY, and on a conflict COPY
into a staging table and one INSERT ... ON CONFLICT DO NOTHING): one transaction per batch,
through the rollup triggers (the hourly rollups stay exact), skipping every event already
stored. Before a batch is written, the month partitions its rows need are created
(storage.usage.partitions.ensure_months). Reading and checking the next batch (a worker thread)
overlaps writing the current one.

Each row's fate is counted: `added`, `skipped` (its id, with its created_at, is already
stored, or came earlier in the file) or `refused` (with its line and the reason: a bad
value, an unknown customer without `create_customers`, or PostgreSQL refusing it). A bad
row never stops the others. With `pricing` (--reprice), rows are priced as `pricing rerate`
prices stored events; a row whose model has no price keeps the file's money (counted
`unpriceable`).

Failure semantics: batches commit independently. An import that dies (killed, the database
gone) keeps the batches committed before; running it again skips them and adds the rest.
Database errors other than a row's value propagate unchanged (asyncpg's), after the
batches already written. `dry_run` writes nothing (no customers, partitions or rows) and
reports what a real run would do, reading which events are already stored.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import asyncpg

from storage.imports.batch import BatchBuilder, ImportBatch, ImportOptions, Refusal
from storage.imports.read import read_records
from storage.usage.batches import BatchWriter
from storage.usage.event import UsageEvent
from storage.usage.partitions import MonthPartition, ensure_months, list_partitions

SOURCES = ("tollbooth", "litellm")
MAX_REFUSALS_KEPT = 10_000
__all__ = ["SOURCES", "ImportOptions", "ImportReport", "Refusal", "import_usage"]

_PRESENT = """
SELECT count(*) FROM usage_events e
JOIN unnest($1::uuid[], $2::timestamptz[]) AS v(id, created_at) USING (id, created_at)
"""


@dataclass(slots=True)
class ImportReport:
    source: str
    dry_run: bool
    rows: int = 0
    added: int = 0
    skipped: int = 0
    refused: int = 0
    refusals: list[Refusal] = field(default_factory=list)  # the first MAX_REFUSALS_KEPT
    customers_created: list[str] = field(default_factory=list)
    partitions_created: list[str] = field(default_factory=list)
    repriced: int = 0
    unpriceable: int = 0
    expiring: int = 0  # older than retention: the next maintenance removes the raw rows
    oldest: datetime | None = None
    newest: datetime | None = None

    def refuse(self, line: int, reason: str) -> None:
        self.refused += 1
        if len(self.refusals) < MAX_REFUSALS_KEPT:
            self.refusals.append(Refusal(line, reason))

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "rows": self.rows,
            "added": self.added,
            "skipped": self.skipped,
            "refused": self.refused,
            "refusals": [
                {"line": r.line, "reason": r.reason}
                for r in sorted(self.refusals, key=lambda r: r.line)
            ],
            "customers_created": self.customers_created,
            "partitions_created": self.partitions_created,
            "repriced": self.repriced,
            "unpriceable": self.unpriceable,
            "expiring": self.expiring,
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "newest": self.newest.isoformat() if self.newest else None,
        }


async def _write(
    pool: asyncpg.Pool, writer: BatchWriter, batch: ImportBatch, dry_run: bool
) -> tuple[int, list[Refusal]]:
    """Add the batch's rows; returns how many were added and the rows PostgreSQL refused."""
    if not batch.lines:
        return 0, []
    if dry_run:
        present: int = await pool.fetchval(_PRESENT, batch.ids, batch.times)
        return len(batch.lines) - present, []
    added, refused = await writer.insert(UsageEvent.COLUMNS, b"".join(batch.lines))
    if not refused:
        return added, []
    where = dict(zip(batch.lines, batch.line_numbers, strict=True))
    return added, [
        Refusal(where.get(line + b"\n", 0), f"refused by PostgreSQL: {exc}")
        for line, exc in refused
    ]


async def import_usage(pool: asyncpg.Pool, handle: TextIO, options: ImportOptions) -> ImportReport:
    """Import every record of `handle`; see the module docstring."""
    if options.source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}")
    if options.batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    report = ImportReport(source=options.source, dry_run=options.dry_run)
    customers = {r["id"]: r["tier"] for r in await pool.fetch("SELECT id, tier FROM customers")}
    builder = BatchBuilder(pool, options, customers)
    writer = BatchWriter(pool)
    months = {p.start for p in await list_partitions(pool)}
    records = read_records(handle, options.fmt)
    writing: asyncio.Task[tuple[int, list[Refusal]]] | None = None
    in_flight: ImportBatch | None = None
    while True:
        try:
            batch = await asyncio.to_thread(builder.prepare, records)
        finally:  # the batch being written commits (or fails) before anything is raised
            if writing is not None and in_flight is not None:
                await _settle(writing, in_flight, report)
                writing = None
        if batch.rows == 0:
            break
        report.customers_created += await builder.resolve(batch)
        new_months = {datetime(y, m, 1, tzinfo=UTC) for y, m in batch.months} - months
        if new_months:
            if options.dry_run:
                report.partitions_created += [MonthPartition.of(m).name for m in new_months]
            else:
                created = await ensure_months(pool, new_months)
                report.partitions_created += [p.name for p in created]
            months |= new_months
        report.rows += batch.rows
        for refusal in batch.refusals:
            report.refuse(refusal.line, refusal.reason)
        report.repriced += batch.repriced
        report.unpriceable += batch.unpriceable
        report.expiring += batch.expiring
        if batch.times:
            low, high = min(batch.times), max(batch.times)
            report.oldest = min(report.oldest or low, low)
            report.newest = max(report.newest or high, high)
        writing = asyncio.create_task(_write(pool, writer, batch, options.dry_run))
        in_flight = batch
    report.partitions_created.sort()
    return report


async def _settle(
    writing: asyncio.Task[tuple[int, list[Refusal]]], batch: ImportBatch, report: ImportReport
) -> None:
    added, refused = await writing
    report.added += added
    report.skipped += len(batch.lines) - added - len(refused)
    for refusal in refused:
        report.refuse(refusal.line, refusal.reason)
