"""A batch of an import: records read, checked, priced or marked, and encoded as COPY lines.

`BatchBuilder.prepare(records)` takes the next `batch_size` records of a file
(storage.imports.read) and turns each into the COPY line of its event (storage.usage.journal_format,
the usage journal's own encoding): through storage.imports.fast when the row is already in
the form Tollbooth's export writes, else through storage.imports.rows (Tollbooth's columns) or
storage.imports.litellm (LiteLLM's spend logs), then the customer's tier, `--reprice`
(`PricingRules.charge` at the row's created_at, its customer and tier, as `pricing rerate`
prices stored events; a model with no price keeps the file's money) or the import marks
(storage.imports.rows.mark_imported). A row whose customer is not known yet waits for
`resolve`, which creates the customer (`create_customers`) or refuses the row. A refused row
becomes a `Refusal` with its line and the reason; nothing here raises for a row. Pure but for
`resolve`, which writes customers through storage.accounts (asyncpg errors pass through).
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from pricing.models import Usage
from pricing.rules import PricingRules
from storage.accounts import AccountStore, CustomerExistsError
from storage.imports.fast import fast_line
from storage.imports.litellm import litellm_values
from storage.imports.read import SourceRecord
from storage.imports.rows import mark_imported, tollbooth_values
from storage.imports.values import RowError
from storage.usage.event import UsageEvent
from storage.usage.journal_format import encode_event

DEFAULT_BATCH_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """What an import reads and how (the command's options); `now` bounds created_at."""

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
    """A row not imported: its line in the file and why."""

    line: int
    reason: str


@dataclass(slots=True)
class ImportBatch:
    """One batch of rows, read and checked: COPY lines ready, and what became of the rest."""

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


class BatchBuilder:
    """Turns records into ImportBatches; `prepare` runs in a worker thread, `resolve` on
    the event loop between batches (the only time the customers it knows change)."""

    def __init__(
        self, pool: asyncpg.Pool, options: ImportOptions, customers: dict[str, str]
    ) -> None:
        self._pool = pool
        self._options = options
        self._customers = customers  # id -> tier; grows only between batches
        self._csv = options.fmt == "csv"
        # Tollbooth's own CSV with its money kept: most rows take storage.imports.fast.
        self._fast = self._csv and options.source == "tollbooth" and options.pricing is None
        self._expire_before = (
            options.now - timedelta(days=options.retention_days)
            if options.retention_days is not None
            else None
        )

    def convert(self, record: SourceRecord) -> dict[str, Any]:
        if record.error is not None:
            raise RowError(record.error)
        options = self._options
        if options.source == "litellm":
            return litellm_values(
                record.fields, customer_from=options.customer_from, now=options.now
            )
        return tollbooth_values(record.fields, csv=self._csv, now=options.now)

    def prepare(self, records: Iterator[SourceRecord]) -> ImportBatch:
        """Read, check and encode the next batch (runs in a worker thread)."""
        batch = ImportBatch()
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

    def finish(self, batch: ImportBatch, line: int, values: dict[str, Any]) -> None:
        """Fill the tier, price or mark, encode; the customer is known."""
        tier = values["tier"] = values["tier"] or self._customers[values["customer_id"]]
        money_kept = True
        pricing = self._options.pricing
        if pricing is not None:
            charge = pricing.charge(
                values["model"],
                _usage(values),
                at=values["created_at"],
                customer_id=values["customer_id"],
                tier=tier,
                duration_ms=max(0, values["latency_ms"]),
                succeeded=values["status_code"] < 400,
            )
            if charge is None:
                batch.unpriceable += 1
            else:
                money_kept = False
                batch.repriced += 1
                values.update(
                    cost_usd=charge.cost_usd,
                    price_usd=charge.price_usd,
                    price_version=charge.price_version,
                )
        mark_imported(values, self._options.source, money_kept=money_kept)
        event = UsageEvent(**values)
        encoded = encode_event(event)
        try:
            encoded.decode("utf-8")
        except UnicodeDecodeError:
            batch.refusals.append(Refusal(line, "holds text that is not valid UTF-8"))
            return
        self.append(batch, line, encoded, event.created_at, event.id)

    def append(
        self, batch: ImportBatch, line: int, encoded: bytes, at: datetime, event_id: uuid.UUID | str
    ) -> None:
        batch.lines.append(encoded)
        batch.line_numbers.append(line)
        batch.ids.append(event_id)
        batch.times.append(at)
        batch.months.add((at.year, at.month))
        if self._expire_before is not None and at < self._expire_before:
            batch.expiring += 1

    async def resolve(self, batch: ImportBatch) -> list[str]:
        """The rows whose customer was unknown when read: created, or refused; returns the
        customers created (or, in a dry run, that would be)."""
        created: list[str] = []
        options = self._options
        accounts = AccountStore(self._pool)
        for line, values in batch.waiting:
            customer = values["customer_id"]
            if customer not in self._customers:
                if not options.create_customers:
                    batch.refusals.append(
                        Refusal(
                            line,
                            (
                                f"customer {customer!r} does not exist; create it first or pass "
                                "--create-customers"
                            ),
                        )
                    )
                    continue
                if not options.dry_run:
                    with contextlib.suppress(CustomerExistsError):  # made meanwhile
                        await accounts.create_customer(customer, options.default_tier)
                self._customers[customer] = options.default_tier
                created.append(customer)
            self.finish(batch, line, values)
        batch.waiting.clear()
        return created


def _usage(values: dict[str, Any]) -> Usage:
    """The row's usage, as storage.reports.invoice_queries reads a stored event's for re-rating."""
    hour_writes = values["metadata"].get("cache_write_1h_tokens")
    one_hour = hour_writes if isinstance(hour_writes, int) else 0
    return Usage(
        input_tokens=values["input_tokens"],
        output_tokens=values["output_tokens"],
        cached_input_tokens=values["cached_input_tokens"],
        cache_write_tokens=values["cache_write_tokens"],
        reasoning_tokens=values["reasoning_tokens"],
        cache_write_1h_tokens=min(max(one_hour, 0), values["cache_write_tokens"]),
    )
