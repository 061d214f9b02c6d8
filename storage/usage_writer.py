"""`UsageWriter`: usage events go to Postgres in batches, off the request path, exactly once.

The gateway `submit()`s one `UsageEvent` per forwarded request into a bounded in-memory queue.
A background task takes events in batches (up to `batch_size`, or whatever arrived within
`flush_interval_s` of the batch's first event) and writes each batch in one transaction:
binary COPY into a temporary staging table, then
`INSERT INTO usage_events ... SELECT ... FROM staging ON CONFLICT (id) DO NOTHING`.
Because the insert is idempotent on the event id, a batch written twice (a retry after a
commit whose acknowledgement was lost, or a replay) never doubles a row.

Failure semantics:
- Postgres unreachable or the connection drops mid-batch: the batch is kept and retried with
  exponential backoff (0.1 s doubling up to `retry_max_s`, default 10 s), logged at WARNING on
  each failure; events keep queueing behind it. Nothing is dropped and nothing is doubled.
- Postgres refuses the batch for another reason (a bug: the schema has no constraints an event
  can violate): the same retry loop, logged at ERROR, so the problem is loud and the events are
  kept. The writer then stalls; `backlog` (on /health) shows it.
- The queue is full (`queue_max`): `submit()` waits for room rather than drop the event, and
  logs a WARNING at most once per second. Back-pressure reaches the request path, on purpose.
- `close()` (graceful shutdown) writes everything queued, then stops. If close() is cancelled
  (e.g. a shutdown deadline), the events still in memory are counted and logged at ERROR:
  those are lost, since this writer keeps no on-disk journal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import asyncpg

from storage.usage_event import UsageEvent

log = logging.getLogger(__name__)

STAGING_TABLE = "usage_events_staging"
RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 10.0
FULL_QUEUE_WARNING_INTERVAL_S = 1.0

_COLUMN_LIST = ", ".join(UsageEvent.COLUMNS)
# ON COMMIT DELETE ROWS: the staging table lives as long as the pooled connection and is
# empty at the start of every batch's transaction.
_CREATE_STAGING = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} "
    "(LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_INSERT_FROM_STAGING = (
    f"INSERT INTO usage_events ({_COLUMN_LIST}) "
    f"SELECT {_COLUMN_LIST} FROM {STAGING_TABLE} "
    "ON CONFLICT (id) DO NOTHING"
)

# Errors that mean "the database or the connection to it is not there right now".
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes TimeoutError
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # admin shutdown, crash shutdown, cannot connect now
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,  # "connection is closed"
    # The pool failing to reset a connection the server just dropped ("another operation is
    # in progress"), possibly after the batch committed: the retry is idempotent.
    asyncpg.InternalClientError,
)


def _is_connection_error(exc: BaseException) -> bool:
    """True when `exc`, or an error it was raised while handling, is a connection failure.

    The chain matters: an error raised while cleaning up after a dropped connection carries
    the drop as its context.
    """
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        # asyncpg's client-side DataError (a value it cannot encode) is an InterfaceError
        # too, and a ValueError: that one is a bug, not an outage.
        if isinstance(seen, _CONNECTION_ERRORS) and not isinstance(seen, ValueError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _record(event: UsageEvent) -> tuple[object, ...]:
    return tuple(getattr(event, column) for column in UsageEvent.COLUMNS)


class UsageWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        queue_max: int = 100_000,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        if batch_size < 1 or queue_max < 1 or flush_interval_s <= 0:
            raise ValueError("batch_size and queue_max must be >= 1, flush_interval_s > 0")
        self._pool = pool
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retry_max_s = retry_max_s
        # None is the stop marker close() enqueues behind every event already submitted.
        self._queue: asyncio.Queue[UsageEvent | None] = asyncio.Queue(maxsize=queue_max)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._submitted = 0
        self._written = 0
        self._last_full_warning = 0.0

    @property
    def backlog(self) -> int:
        """Events submitted and not yet committed to Postgres."""
        return self._submitted - self._written

    @property
    def written(self) -> int:
        """Events committed so far (a replayed duplicate counts; it is stored once)."""
        return self._written

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("UsageWriter already started")
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def submit(self, event: UsageEvent) -> None:
        """Queue one event; waits for room when the queue is full, never drops."""
        if self._closing:
            raise RuntimeError("UsageWriter is closed; the event was not accepted")
        self._submitted += 1
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            now = time.monotonic()
            if now - self._last_full_warning >= FULL_QUEUE_WARNING_INTERVAL_S:
                self._last_full_warning = now
                log.warning(
                    "usage writer queue is full (%d events); requests wait for Postgres",
                    self._queue.maxsize,
                )
            try:
                await self._queue.put(event)
            except asyncio.CancelledError:
                self._submitted -= 1
                log.error("usage event %s was not recorded: its submit was cancelled", event.id)
                raise

    async def close(self) -> None:
        """Write everything submitted so far, then stop the background task."""
        if self._closing:
            if self._task is not None:
                await self._task
            return
        self._closing = True
        if self._task is None:  # never started: still write what was submitted
            self._task = asyncio.create_task(self._run(), name="usage-writer")
        try:
            await self._queue.put(None)
            await self._task
        except asyncio.CancelledError:
            lost = self.backlog
            if lost:
                log.error("usage writer stopped with %d events not written to Postgres", lost)
            self._task.cancel()
            raise

    async def _run(self) -> None:
        while True:
            batch, stop = await self._next_batch()
            if batch:
                await self._persist(batch)
            if stop:
                return

    async def _next_batch(self) -> tuple[list[UsageEvent], bool]:
        """Up to batch_size events, or what arrived within flush_interval_s of the first one."""
        first = await self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._flush_interval_s
        while len(batch) < self._batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    async def _persist(self, batch: Sequence[UsageEvent]) -> None:
        """Write the batch, retrying until Postgres has it. Only cancellation stops this."""
        delay = RETRY_INITIAL_S
        while True:
            try:
                await self._write_batch(batch)
            except Exception as exc:
                # Whatever went wrong, the batch is kept and retried: losing it is never an option.
                if _is_connection_error(exc):
                    log.warning(
                        "writing %d usage events failed (%s: %s); retrying in %.1fs",
                        len(batch), type(exc).__name__, exc, delay,
                    )
                else:
                    log.error(
                        "writing %d usage events failed; retrying in %.1fs",
                        len(batch), delay, exc_info=True,
                    )
            else:
                self._written += len(batch)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_s)

    async def _write_batch(self, batch: Sequence[UsageEvent]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_CREATE_STAGING)
            await conn.copy_records_to_table(
                STAGING_TABLE,
                records=[_record(event) for event in batch],
                columns=UsageEvent.COLUMNS,
            )
            await conn.execute(_INSERT_FROM_STAGING)
