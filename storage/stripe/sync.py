"""`MeterSync`: sends closed usage windows to Stripe Billing Meters, exactly once each.

One run: aggregate usage per (customer, window) for windows that closed `settle_delay_s`
before `until` (storage.reports.usage_windows), compare each (customer, dimension, window) with what
billing_sync already recorded for it, write the difference as new rows in status 'pending'
(one transaction), then send every open row ('pending' or 'failed') in (window, customer,
dimension, seq) order and record Stripe's answer on it. So:

- A second run sends nothing new: everything it would send is already recorded.
- A run killed anywhere resumes without gaps or duplicates: rows written before the kill are
  resent with the same identifier (Stripe answers "already exists" for those it had, which
  counts as delivered); rows never written are planned again with the same identifiers.
- Usage written into a window after it was sent (late events) is sent as a correction: a row
  with the next `seq`, its own identifier and the delta as value, timestamped in the same
  window. `settle_delay_s` makes corrections rare; they keep the sum exact when they happen.
- The identifier is `tb{version}:{dimension}:{window start, unix}:{seq}:{customer}` (the
  customer part hashed when the whole would pass Stripe's 100 characters). Stripe enforces
  identifier uniqueness for at least 24 hours; billing_sync is what makes it exact beyond.

Imported usage (`tollbooth usage import`: events marked `metadata.imported`) was billed by
the system it came from: it is left out, except events from `import_since` on
(`billing.stripe.import_since`; None, the default: never).

Stripe's rules: a meter event's timestamp (the window start) must be within the past 35 days
and not in the future; `until` is never later than now, and windows older than 35 days less an
hour are recorded 'skipped' and reported, never sent. Customers without a stripe_customer_id
are listed and left unrecorded, so their windows go once they have one (if still in range).

Failure semantics: 429, 409, 5xx and timeouts are retried up to `max_retries` times with
exponential backoff and jitter (at least Retry-After), as Stripe-Should-Retry allows; if they
persist, the row stays 'pending', the run stops and reports it (the next run resumes there).
A refusal marks the row 'failed' with Stripe's answer and the run goes on. A bad API key
stops the run. Only one run at a time per database (a Postgres advisory lock).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg

from storage.reports.usage_windows import DIMENSIONS, window_floor, window_usage
from storage.stripe.client import (
    MeterEventAnswer,
    MeterEventRequest,
    StripeAuthError,
    StripeRejectedError,
    StripeRetryableError,
)

log = logging.getLogger(__name__)

# Stripe takes meter events "within the past 35 calendar days"; an hour's margin keeps a
# retried or slow request inside that.
MAX_EVENT_AGE = timedelta(days=35) - timedelta(hours=1)
# Windows up to this much older than Stripe takes are still scanned, to be reported as skipped.
REPORT_HORIZON = timedelta(days=7)
SYNC_LOCK_KEY = 0x7B_0071_5713
V2_BATCH_SIZE = 100
MAX_IDENTIFIER_CHARS = 100


class SyncBusyError(Exception):
    """Another sync holds the lock on this database."""


class MeterSender(Protocol):
    async def create_meter_event(self, event: MeterEventRequest) -> MeterEventAnswer: ...

    async def stream_meter_events(
        self, events: Sequence[MeterEventRequest]
    ) -> MeterEventAnswer: ...


@dataclass(frozen=True, slots=True)
class SyncPolicy:
    meters: Mapping[str, str]  # dimension -> Stripe meter event_name
    window_s: int = 3600
    settle_delay_s: int = 900
    version: int = 1
    max_retries: int = 5
    use_v2_stream: bool = False
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # Imported events (metadata.imported) are sent from this instant on; None: never.
    import_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class SyncRow:
    """One billing_sync row: one meter event, sent or to be sent."""

    identifier: str
    customer_id: str
    stripe_customer_id: str
    dimension: str
    event_name: str
    window_start: datetime
    window_end: datetime
    seq: int
    value: int
    status: str
    error: str | None = None

    def request(self) -> MeterEventRequest:
        return MeterEventRequest(
            event_name=self.event_name,
            stripe_customer_id=self.stripe_customer_id,
            value=self.value,
            identifier=self.identifier,
            timestamp=self.window_start,
        )


@dataclass
class SyncReport:
    until: datetime  # windows ending at or before this were considered
    dry_run: bool
    planned: list[SyncRow] = field(default_factory=list)  # rows this run recorded (or would)
    sent: list[SyncRow] = field(default_factory=list)
    duplicates: int = 0  # of `sent`, those Stripe already held
    failed: list[SyncRow] = field(default_factory=list)
    pending: list[SyncRow] = field(default_factory=list)  # still to send when the run ended
    skipped: list[SyncRow] = field(default_factory=list)  # too old, or a decrease
    missing_stripe_customer: dict[str, int] = field(default_factory=dict)  # id -> windows
    stopped_by: str | None = None  # why the run ended before sending everything

    @property
    def ok(self) -> bool:
        """Everything due was delivered (a dry run's `pending` is what it would send)."""
        return not self.failed and self.stopped_by is None and (self.dry_run or not self.pending)


def meter_identifier(
    customer_id: str, dimension: str, window_start: datetime, version: int, seq: int
) -> str:
    """Deterministic and unambiguous: no field but the last may contain ':'."""
    head = f"tb{version}:{dimension}:{int(window_start.timestamp())}:{seq}:"
    if len(head) + len(customer_id) > MAX_IDENTIFIER_CHARS:
        # '#' cannot occur in a customer id, so a hashed id never equals a real one.
        return head + "#" + hashlib.sha256(customer_id.encode()).hexdigest()[:40]
    return head + customer_id


_ROW_COLUMNS = (
    "identifier, customer_id, stripe_customer_id, dimension, event_name, window_start, "
    "window_end, seq, value, status, error"
)


def _send_order(row: SyncRow) -> tuple[datetime, str, str, int]:
    return (row.window_start, row.customer_id, row.dimension, row.seq)


def _row(record: asyncpg.Record) -> SyncRow:
    return SyncRow(**dict(record.items()))


class MeterSync:
    def __init__(
        self,
        pool: asyncpg.Pool,
        sender: MeterSender | None,
        policy: SyncPolicy,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        unknown = set(policy.meters) - set(DIMENSIONS)
        if unknown:
            raise ValueError(f"unknown meter dimension(s): {', '.join(sorted(unknown))}")
        self._pool = pool
        self._sender = sender
        self._policy = policy
        self._clock = clock
        self._sleep = sleep

    async def run(
        self,
        *,
        until: datetime | None = None,
        dry_run: bool = False,
        stop: asyncio.Event | None = None,
    ) -> SyncReport:
        """Plan and send everything closed before `until` (default and at most: now).

        `dry_run` records and sends nothing. `stop`, once set, ends the run after the event
        being sent. Raises `SyncBusyError` while another run holds the lock, and
        `StripeAuthError` when Stripe refuses the key.
        """
        if not dry_run and self._sender is None:
            raise ValueError("a sync that sends needs a Stripe sender")
        now = self._clock()
        until = min(until or now, now)
        policy = self._policy
        closed_until = window_floor(
            until - timedelta(seconds=policy.settle_delay_s), policy.window_s
        )
        report = SyncReport(until=closed_until, dry_run=dry_run)
        # A transaction-level lock, held by a transaction open for the whole run: it ends
        # with that transaction whatever happens, also through PgBouncer in transaction
        # pooling mode (where a session lock and its unlock may reach different servers).
        async with self._pool.acquire() as lock_conn, lock_conn.transaction():
            if not await lock_conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SYNC_LOCK_KEY):
                raise SyncBusyError("another `billing sync` is running on this database")
            oldest = now - MAX_EVENT_AGE
            planned = await self._plan(closed_until, oldest, report)
            report.planned = planned
            if dry_run:
                open_rows = await self._open_rows() + [r for r in planned if r.status == "pending"]
                open_rows.sort(key=_send_order)
                report.skipped = [r for r in planned if r.status == "skipped"]
                report.pending = [r for r in open_rows if r.window_start >= oldest]
                return report
            await self._record(planned)
            report.skipped = [r for r in planned if r.status == "skipped"]
            await self._send_open(oldest, report, stop)
        return report

    # -- planning ------------------------------------------------------------------------

    async def _plan(
        self, closed_until: datetime, oldest: datetime, report: SyncReport
    ) -> list[SyncRow]:
        policy = self._policy
        scan_from = window_floor(oldest - REPORT_HORIZON, policy.window_s)
        usage = await window_usage(
            self._pool,
            start=scan_from,
            end=closed_until,
            window_s=policy.window_s,
            imported="billable",
            import_since=policy.import_since,
        )
        links: dict[str, str | None] = {
            r["id"]: r["stripe_customer_id"]
            for r in await self._pool.fetch("SELECT id, stripe_customer_id FROM customers")
        }
        recorded = {
            (r["customer_id"], r["dimension"], r["window_start"]): (int(r["total"]), r["next_seq"])
            for r in await self._pool.fetch(
                """
                SELECT customer_id, dimension, window_start,
                       sum(value) AS total, max(seq) + 1 AS next_seq
                FROM billing_sync
                WHERE version = $1 AND window_start >= $2 AND window_start < $3
                GROUP BY customer_id, dimension, window_start
                """,
                policy.version,
                scan_from,
                closed_until,
            )
        }
        totals: dict[tuple[str, str, datetime], int] = {}
        for w in usage:
            for dimension in policy.meters:
                totals[(w.customer_id, dimension, w.window_start)] = w.values[dimension]
        for key in recorded:  # windows whose events are gone: a decrease to zero
            if key[1] in policy.meters:  # a meter taken out of the config is left alone
                totals.setdefault(key, 0)
        planned: list[SyncRow] = []
        missing: dict[str, set[datetime]] = {}
        # The order rows are sent in (_open_rows, _send_order): window, customer, dimension.
        for key in sorted(totals, key=lambda k: (k[2], k[0], k[1])):
            customer_id, dimension, window_start = key
            so_far, next_seq = recorded.get(key, (0, 0))
            delta = totals[key] - so_far
            if delta == 0:
                continue
            stripe_customer_id = links.get(customer_id)
            if not stripe_customer_id:
                missing.setdefault(customer_id, set()).add(window_start)
                continue
            status, error = "pending", None
            if window_start < oldest:
                status, error = "skipped", "older than Stripe accepts (35 days)"
            elif delta < 0:
                status, error = (
                    "skipped",
                    (
                        f"usage decreased by {-delta} after it was sent; Stripe meter events "
                        "cannot be negative here, adjust in Stripe"
                    ),
                )
            planned.append(
                SyncRow(
                    identifier=meter_identifier(
                        customer_id, dimension, window_start, policy.version, next_seq
                    ),
                    customer_id=customer_id,
                    stripe_customer_id=stripe_customer_id,
                    dimension=dimension,
                    event_name=policy.meters[dimension],
                    window_start=window_start,
                    window_end=window_start + timedelta(seconds=policy.window_s),
                    seq=next_seq,
                    value=delta,
                    status=status,
                    error=error,
                )
            )
        report.missing_stripe_customer = {c: len(w) for c, w in sorted(missing.items())}
        return planned

    async def _record(self, rows: Sequence[SyncRow]) -> None:
        if not rows:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                f"""
                INSERT INTO billing_sync ({_ROW_COLUMNS}, version)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                """,
                [
                    (
                        r.identifier,
                        r.customer_id,
                        r.stripe_customer_id,
                        r.dimension,
                        r.event_name,
                        r.window_start,
                        r.window_end,
                        r.seq,
                        r.value,
                        r.status,
                        r.error,
                        self._policy.version,
                    )
                    for r in rows
                ],
            )

    async def _open_rows(self) -> list[SyncRow]:
        records = await self._pool.fetch(
            f"""
            SELECT {_ROW_COLUMNS} FROM billing_sync
            WHERE version = $1 AND status IN ('pending', 'failed')
            ORDER BY window_start, customer_id COLLATE "C", dimension COLLATE "C", seq
            """,
            self._policy.version,
        )
        return [_row(r) for r in records]

    # -- sending -------------------------------------------------------------------------

    async def _send_open(
        self, oldest: datetime, report: SyncReport, stop: asyncio.Event | None
    ) -> None:
        rows = []
        for row in await self._open_rows():
            if row.window_start < oldest:
                error = "older than Stripe accepts (35 days); it was never delivered"
                await self._finish([row], "skipped", None, error, attempts=0)
                report.skipped.append(replace(row, status="skipped", error=error))
            else:
                rows.append(row)
        size = V2_BATCH_SIZE if self._policy.use_v2_stream else 1
        for i in range(0, len(rows), size):
            if stop is not None and stop.is_set():
                report.stopped_by = "stopped by a signal"
                report.pending.extend(rows[i:])
                return
            batch = rows[i : i + size]
            try:
                answer, attempts = await self._send_with_retries(batch)
            except StripeRetryableError as exc:
                await self._note_attempts(batch, str(exc), self._policy.max_retries + 1)
                report.stopped_by = f"Stripe is unavailable ({exc})"
                report.pending.extend(rows[i:])
                return
            except StripeRejectedError as exc:
                await self._finish(batch, "failed", exc.response, str(exc), attempts=1)
                report.failed.extend(replace(r, status="failed", error=str(exc)) for r in batch)
                continue
            except StripeAuthError:
                report.pending.extend(rows[i:])
                raise
            await self._finish(batch, "sent", answer.response, None, attempts=attempts)
            report.sent.extend(replace(r, status="sent", error=None) for r in batch)
            report.duplicates += len(batch) if answer.duplicate else 0

    async def _send_with_retries(self, batch: Sequence[SyncRow]) -> tuple[MeterEventAnswer, int]:
        sender = self._sender
        assert sender is not None
        policy = self._policy
        attempt = 0
        while True:
            attempt += 1
            try:
                if policy.use_v2_stream:
                    answer = await sender.stream_meter_events([r.request() for r in batch])
                else:
                    answer = await sender.create_meter_event(batch[0].request())
                return answer, attempt
            except StripeRetryableError as exc:
                if attempt > policy.max_retries:
                    raise
                delay = self._backoff_s(attempt, exc.retry_after_s)
                log.warning(
                    "stripe meter event %s: %s; retrying in %.1fs", batch[0].identifier, exc, delay
                )
                await self._sleep(delay)

    def _backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        policy = self._policy
        ceiling = min(policy.backoff_max_s, policy.backoff_initial_s * 2.0 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)  # "equal jitter"
        return max(delay, retry_after_s or 0.0)

    async def _finish(
        self,
        rows: Sequence[SyncRow],
        status: str,
        response: dict[str, Any] | None,
        error: str | None,
        *,
        attempts: int,
    ) -> None:
        await self._pool.executemany(
            """
            UPDATE billing_sync
            SET status = $2, stripe_response = $3, error = $4, attempts = attempts + $5,
                updated_at = now(),
                sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END
            WHERE identifier = $1
            """,
            [(r.identifier, status, response, error, attempts) for r in rows],
        )

    async def _note_attempts(self, rows: Sequence[SyncRow], error: str, attempts: int) -> None:
        await self._pool.executemany(
            """
            UPDATE billing_sync SET error = $2, attempts = attempts + $3, updated_at = now()
            WHERE identifier = $1
            """,
            [(r.identifier, error, attempts) for r in rows],
        )
