"""`import_usage`: a file of past usage events into `usage_events`, once, however often it runs.

Records are read (storage.import_read), checked and turned into events (storage.import_rows
for Tollbooth's own export, storage.import_litellm for LiteLLM's spend logs), marked as
imported, and written `batch_size` at a time by the usage writer's batch code
(storage.usage_batches.BatchWriter.insert: COPY, and on a conflict COPY into a staging
table and one INSERT ... ON CONFLICT DO NOTHING), so each batch is one transaction, goes
through the rollup triggers (the hourly rollups stay exact) and skips every event already
stored (most rows of Tollbooth's own CSV are encoded by storage.import_fast, the same
bytes faster). Before a batch is written, the month partitions its rows need are created
(storage.partitions.ensure_months). Reading and checking the next batch (a worker thread)
overlaps writing the current one.

Each row's fate is counted: `added`, `skipped` (its id, with its created_at, is already
stored, or came earlier in the file) or `refused` (with its line and the reason: a bad
value, an unknown customer without `create_customers`, or PostgreSQL refusing it). A bad
row never stops the others. With `pricing` (--reprice), a row is priced by
`PricingRules.charge` at its created_at, its customer and tier, as `pricing rerate` prices
stored events; a row whose model has no price keeps the file's money (counted `unpriceable`).

Failure semantics: batches commit independently. An import that dies (killed, the database
gone) keeps the batches committed before; running it again skips them and adds the rest.
Database errors other than a row's value propagate unchanged (asyncpg's), after the
batches already written. `dry_run` writes nothing (no customers, partitions or rows) and
reports what a real run would do, reading which events are already stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import asyncpg

from pricing.models import Usage
from pricing.rules import PricingRules
from storage.accounts import AccountStore, CustomerExistsError
from storage.import_fast import fast_line
from storage.import_litellm import litellm_values
from storage.import_read import SourceRecord, read_records
from storage.import_rows import mark_imported, tollbooth_values
from storage.import_values import RowError
from storage.journal_format import encode_event
from storage.partitions import MonthPartition, ensure_months, list_partitions
from storage.usage_batches import BatchWriter
from storage.usage_event import UsageEvent

SOURCES = ("tollbooth", "litellm")
DEFAULT_BATCH_SIZE = 10_000
MAX_REFUSALS_KEPT = 10_000

_PRESENT = """
SELECT count(*) FROM usage_events e
JOIN unnest($1::uuid[], $2::timestamptz[]) AS v(id, created_at) USING (id, created_at)
"""


@dataclass(frozen=True, slots=True)
class ImportOptions:
    source: str = "tollbooth"
    fmt: str = "csv"
    customer_from: str | None = None
    create_customers: bool = False
    default_tier: str = "default"  # for created customers
    dry_run: bool = False
    pricing: PricingRules | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    retention_days: int | None = None  # rows older than this are counted `expiring`
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class Refusal:
    line: int
    reason: str


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
            "source": self.source, "dry_run": self.dry_run, "rows": self.rows,
            "added": self.added, "skipped": self.skipped, "refused": self.refused,
            "refusals": [{"line": r.line, "reason": r.reason}
                         for r in sorted(self.refusals, key=lambda r: r.line)],
            "customers_created": self.customers_created,
            "partitions_created": self.partitions_created,
            "repriced": self.repriced, "unpriceable": self.unpriceable,
            "expiring": self.expiring,
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "newest": self.newest.isoformat() if self.newest else None,
        }


@dataclass(slots=True)
class _Batch:
    rows: int = 0
    lines: list[bytes] = field(default_factory=list)
    line_numbers: list[int] = field(default_factory=list)
    waiting: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # new customer
    refusals: list[Refusal] = field(default_factory=list)
    months: set[tuple[int, int]] = field(default_factory=set)  # (year, month), UTC
    ids: list[uuid.UUID | str] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    repriced: int = 0
    unpriceable: int = 0
    expiring: int = 0


class _Importer:
    def __init__(self, pool: asyncpg.Pool, options: ImportOptions,
                 customers: dict[str, str]) -> None:
        self._pool = pool
        self._options = options
        self._customers = customers  # id -> tier; grows only between batches
        self._csv = options.fmt == "csv"
        # Tollbooth's own CSV with its money kept: most rows take storage.import_fast.
        self._fast = self._csv and options.source == "tollbooth" and options.pricing is None
        self._expire_before = (options.now - timedelta(days=options.retention_days)
                               if options.retention_days is not None else None)

    def convert(self, record: SourceRecord) -> dict[str, Any]:
        if record.error is not None:
            raise RowError(record.error)
        options = self._options
        if options.source == "litellm":
            return litellm_values(record.fields, customer_from=options.customer_from,
                                  now=options.now)
        return tollbooth_values(record.fields, csv=self._csv, now=options.now)

    def prepare(self, records: Iterator[SourceRecord]) -> _Batch:
        """Read, check and encode the next batch (runs in a worker thread)."""
        batch = _Batch()
        customers, now = self._customers, self._options.now
        for record in itertools.islice(records, self._options.batch_size):
            batch.rows += 1
            if self._fast and record.error is None:
                fast = fast_line(record.fields, customers, now)
                if fast is not None:
                    self.append(batch, record.line, *fast)
                    continue
            try:
                values = self.convert(record)
            except RowError as exc:
                batch.refusals.append(Refusal(record.line, str(exc)))
                continue
            if values["customer_id"] in self._customers:
                self.finish(batch, record.line, values)
            else:
                batch.waiting.append((record.line, values))
        return batch

    def finish(self, batch: _Batch, line: int, values: dict[str, Any]) -> None:
        """Fill the tier, price or mark, encode; the customer is known."""
        tier = values["tier"] = values["tier"] or self._customers[values["customer_id"]]
        money_kept = True
        pricing = self._options.pricing
        if pricing is not None:
            charge = pricing.charge(
                values["model"], _usage(values), at=values["created_at"],
                customer_id=values["customer_id"], tier=tier,
                duration_ms=max(0, values["latency_ms"]),
                succeeded=values["status_code"] < 400,
            )
            if charge is None:
                batch.unpriceable += 1
            else:
                money_kept = False
                batch.repriced += 1
                values.update(cost_usd=charge.cost_usd, price_usd=charge.price_usd,
                              price_version=charge.price_version)
        mark_imported(values, self._options.source, money_kept=money_kept)
        event = UsageEvent(**values)
        encoded = encode_event(event)
        try:
            encoded.decode("utf-8")
        except UnicodeDecodeError:
            batch.refusals.append(Refusal(line, "holds text that is not valid UTF-8"))
            return
        self.append(batch, line, encoded, event.created_at, event.id)

    def append(self, batch: _Batch, line: int, encoded: bytes, at: datetime,
               event_id: uuid.UUID | str) -> None:
        batch.lines.append(encoded)
        batch.line_numbers.append(line)
        batch.ids.append(event_id)
        batch.times.append(at)
        batch.months.add((at.year, at.month))
        if self._expire_before is not None and at < self._expire_before:
            batch.expiring += 1

    async def resolve(self, batch: _Batch, report: ImportReport) -> None:
        """The rows whose customer was unknown when read: created, or refused."""
        options = self._options
        accounts = AccountStore(self._pool)
        for line, values in batch.waiting:
            customer = values["customer_id"]
            if customer not in self._customers:
                if not options.create_customers:
                    batch.refusals.append(Refusal(line, (
                        f"customer {customer!r} does not exist; create it first or pass "
                        "--create-customers")))
                    continue
                if not options.dry_run:
                    with contextlib.suppress(CustomerExistsError):  # made meanwhile
                        await accounts.create_customer(customer, options.default_tier)
                self._customers[customer] = options.default_tier
                report.customers_created.append(customer)
            self.finish(batch, line, values)
        batch.waiting.clear()


def _usage(values: dict[str, Any]) -> Usage:
    """The row's usage, as storage.invoice_queries reads a stored event's for re-rating."""
    hour_writes = values["metadata"].get("cache_write_1h_tokens")
    one_hour = hour_writes if isinstance(hour_writes, int) else 0
    return Usage(
        input_tokens=values["input_tokens"], output_tokens=values["output_tokens"],
        cached_input_tokens=values["cached_input_tokens"],
        cache_write_tokens=values["cache_write_tokens"],
        reasoning_tokens=values["reasoning_tokens"],
        cache_write_1h_tokens=min(max(one_hour, 0), values["cache_write_tokens"]),
    )


async def _write(pool: asyncpg.Pool, writer: BatchWriter, batch: _Batch, dry_run: bool
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
    return added, [Refusal(where.get(line + b"\n", 0), f"refused by PostgreSQL: {exc}")
                   for line, exc in refused]


async def import_usage(pool: asyncpg.Pool, handle: TextIO, options: ImportOptions
                       ) -> ImportReport:
    """Import every record of `handle`; see the module docstring."""
    if options.source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}")
    if options.batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    report = ImportReport(source=options.source, dry_run=options.dry_run)
    customers = {r["id"]: r["tier"] for r in await pool.fetch("SELECT id, tier FROM customers")}
    importer = _Importer(pool, options, customers)
    writer = BatchWriter(pool)
    months = {p.start for p in await list_partitions(pool)}
    records = read_records(handle, options.fmt)
    writing: asyncio.Task[tuple[int, list[Refusal]]] | None = None
    in_flight: _Batch | None = None
    while True:
        try:
            batch = await asyncio.to_thread(importer.prepare, records)
        finally:  # the batch being written commits (or fails) before anything is raised
            if writing is not None and in_flight is not None:
                await _settle(writing, in_flight, report)
                writing = None
        if batch.rows == 0:
            break
        await importer.resolve(batch, report)
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


async def _settle(writing: asyncio.Task[tuple[int, list[Refusal]]], batch: _Batch,
                  report: ImportReport) -> None:
    added, refused = await writing
    report.added += added
    report.skipped += len(batch.lines) - added - len(refused)
    for refusal in refused:
        report.refuse(refusal.line, refusal.reason)
