"""`UsageWriter`: every usage event the gateway accepts reaches Postgres once, however the
process or the database fails.

`submit(event)` appends the event to a local journal (storage.usage.journal) and returns: one
encoded line, one os.write, no fsync, no await and no Postgres on the request path. A
background task reads the journal back in batches (up to `batch_size` lines, or what arrived
within `flush_interval_s` of the first) and hands each to storage.usage.batches, which writes
it in one transaction, idempotently on the event id (a batch written twice, after a lost
commit acknowledgement or in a replay, is stored once). Under a backlog up to
`parallel_batches` full batches are in flight on their own connections; they are committed
to the journal in the order they were read. A journal segment is deleted only after every
event in it is in Postgres. Another task fsyncs the journal every `fsync_interval_s`. Memory
holds the batches in flight; the backlog is on disk.

Exchanges in flight: `provisional(event_id, line)` journals the event an exchange would have
if the process died now (storage.usage.journal_open; called before a request goes upstream and as a
stream progresses: one os.write, never Postgres). `submit` of the exchange's real event
settles it. At `start()`, the provisional events a stopped process left unsettled are
resolved once the events adopted with them are in Postgres: each exchange with no event
there gets its provisional one (estimated, flagged interrupted), priced by the `reprice`
callable given at construction (NULL money without it, logged at ERROR); one that has an
event keeps it (storage.usage.interrupted).

Failure semantics:
- The process is killed (SIGKILL, OOM): nothing `submit` returned for is lost (the line is in
  the page cache). The next writer on the same journal directory and database replays it at
  `start()`. A power loss loses at most the events of the last `fsync_interval_s`. Requests
  in flight at the kill are recorded at that start from their provisional events, never in
  addition to a real event.
- Postgres is down, slow or drops the connection: `submit` is unaffected; the batch is
  retried with exponential backoff (0.1 s doubling to `retry_max_s`), logged at WARNING, and
  events accumulate in the journal. When Postgres is back the backlog drains at full speed.
- The journal grows past `max_bytes`: logged at ERROR (at most once a minute) and shown as
  `journal_over_budget`. Policy `serve`: nothing else changes (the disk is the limit).
  Policy `refuse`: `check_accepting()` raises `JournalFullError`, for the gateway to answer
  503 before forwarding a new request. `submit` itself never refuses: the request it records
  has already been served, and its event is journaled whatever the policy.
- The disk refuses a journal write (full, I/O error): the event is kept in memory (up to
  `memory_max_events`) and written to Postgres from there, logged at ERROR. Past that bound,
  or if the process dies before Postgres has them, those events are lost; each lost event
  is logged at ERROR with its id and counted in `events_lost`. Their exchanges stay unsettled
  (a provisional event on disk, if the disk took it), so a later start records them as
  interrupted unless Postgres has their real event by then. A provisional event the disk
  refuses is logged at ERROR (at most once a minute); its request goes on unprotected.
- Postgres refuses a batch for what a row holds (SQLSTATE class 22 or 23, e.g. a value out
  of range, a NUL character, a constraint): the batch is bisected until the refused rows are
  isolated; they go to `usage_dead_letters` with the error (storage.usage.dead_letters, logged at
  ERROR, counted in `dead_lettered`) and every other row is written.
- Postgres refuses a batch for another reason (a missing table, a trigger that raises): kept
  and retried with backoff, logged at ERROR; the writer stalls and `backlog` shows it.
- `close()` drains for up to `close_timeout_s` (or the time it is given), then stops;
  whatever Postgres has not taken stays in the journal for the next start (logged at WARNING,
  with how many). Nothing is lost either way.

Where the journal lives: `<journal_dir>/<database>@<system identifier>/`, so a data dir used
with several databases never replays one database's events into another.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg

from storage.usage.batches import BatchWriter, database_key, is_connection_error
from storage.usage.event import UsageEvent
from storage.usage.interrupted import Reprice, already_recorded, interrupted_events
from storage.usage.journal import Journal, JournalBatch
from storage.usage.journal_format import encode_event

log = logging.getLogger(__name__)

RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 10.0
ATTEMPT_TIMEOUT_S = 120.0  # one batch; a hung connection is dropped and the batch retried
ALERT_INTERVAL_S = 60.0
_MB = 1024 * 1024

FullPolicy = Literal["serve", "refuse"]


class JournalFullError(Exception):
    """The journal is over its disk budget and `journal_full_policy` is `refuse`: refuse new
    requests (503) until Postgres takes the backlog. Raised by `check_accepting()` only."""


@dataclass(frozen=True, slots=True)
class _Work:
    columns: tuple[str, ...]
    data: bytes
    events: int
    batch: JournalBatch | None  # None: lines the disk refused, kept in memory


class UsageWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        journal_dir: Path,
        batch_size: int = 5000,
        flush_interval_s: float = 0.2,
        parallel_batches: int = 2,
        retry_max_s: float = RETRY_MAX_S,
        fsync_interval_s: float = 0.05,
        segment_bytes: int = 64 * _MB,
        max_bytes: int = 4096 * _MB,
        full_policy: FullPolicy = "serve",
        memory_max_events: int = 100_000,
        close_timeout_s: float = 10.0,
        reprice: Reprice | None = None,
    ) -> None:
        """`journal_dir` holds one journal directory per database (see the module doc).
        `reprice` prices an interrupted exchange's event (built with NULL money) at replay."""
        if batch_size < 1 or memory_max_events < 1 or flush_interval_s <= 0:
            raise ValueError("batch_size and memory_max_events must be >= 1, flush_interval_s > 0")
        if fsync_interval_s <= 0 or full_policy not in ("serve", "refuse"):
            raise ValueError("fsync_interval_s must be > 0, full_policy serve or refuse")
        self._pool = pool
        self._batches = BatchWriter(pool)
        self._journal_root = journal_dir
        self._batch_size = batch_size
        self._parallel = max(1, parallel_batches)
        self._flush_interval_s = flush_interval_s
        self._retry_max_s = retry_max_s
        self._fsync_interval_s = fsync_interval_s
        self._segment_bytes = segment_bytes
        self._max_bytes = max_bytes
        self._full_policy = full_policy
        self._close_timeout_s = close_timeout_s
        self._reprice = reprice
        self._journal: Journal | None = None
        self._memory: collections.deque[bytes] = collections.deque()  # lines the disk refused
        self._memory_max = memory_max_events
        self._wake = asyncio.Event()  # something to write, or closing
        self._full = asyncio.Event()  # a whole batch is waiting, or closing
        self._task: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._resolve_task: asyncio.Task[None] | None = None
        self._replayed = asyncio.Event()  # every adopted event is committed
        self._closing = False
        self._closed = False
        self._written = 0
        self._dead_lettered = 0
        self._lost = 0
        self._journal_errors = 0
        self._interrupted = 0
        self._last_alert = {
            "budget": -ALERT_INTERVAL_S,
            "disk": -ALERT_INTERVAL_S,
            "fsync": -ALERT_INTERVAL_S,
            "open": -ALERT_INTERVAL_S,
        }

    # -- what /health and /metrics show ------------------------------------------------

    @property
    def backlog(self) -> int:
        """Events accepted and not yet committed to Postgres (journal and memory), and
        exchanges a stopped process left in flight that are not resolved yet."""
        journal = self._journal
        if journal is None:
            return len(self._memory)
        return journal.pending + len(self._memory) + len(journal.open_log.orphans)

    @property
    def open_exchanges(self) -> int:
        """Exchanges with a provisional event journaled and no real event yet."""
        return self._journal.open_log.live if self._journal is not None else 0

    @property
    def interrupted_recorded(self) -> int:
        """Events this writer made from provisional events a stopped process left."""
        return self._interrupted

    @property
    def written(self) -> int:
        """Events committed by this writer (a replayed event already stored counts too)."""
        return self._written

    @property
    def journal_bytes(self) -> int:
        return self._journal.size_bytes if self._journal is not None else 0

    @property
    def journal_over_budget(self) -> bool:
        return self._journal is not None and self._journal.over_budget

    @property
    def dead_lettered(self) -> int:
        """Events this writer moved to usage_dead_letters."""
        return self._dead_lettered

    @property
    def journal_errors(self) -> int:
        """Events the journal could not take (kept in memory instead)."""
        return self._journal_errors

    @property
    def events_lost(self) -> int:
        """Events neither the journal nor the memory fallback could keep (logged at ERROR)."""
        return self._lost

    @property
    def journal_path(self) -> Path | None:
        return self._journal.slot if self._journal is not None else None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open this database's journal (adopting what stopped writers left: the replay) and
        start writing. Raises what asyncpg raises if the database cannot be identified."""
        if self._task is not None:
            raise RuntimeError("UsageWriter already started")
        directory = self._journal_root / await database_key(self._pool)
        self._journal = await asyncio.to_thread(
            Journal.open,
            directory,
            segment_bytes=self._segment_bytes,
            max_bytes=self._max_bytes,
        )
        _warn_about_other_journals(self._journal_root, directory)
        if not self._journal.replaying:
            self._replayed.set()
        self._task = asyncio.create_task(self._run(), name="usage-writer")
        self._sync_task = asyncio.create_task(self._sync_loop(), name="usage-journal-fsync")
        if self._journal.open_log.orphans:
            self._resolve_task = asyncio.create_task(
                self._resolve_interrupted(self._journal), name="usage-interrupted-replay"
            )
        self._wake.set()

    def check_accepting(self) -> None:
        """Raise `JournalFullError` when policy `refuse` applies; call before forwarding."""
        if self._full_policy == "refuse" and self.journal_over_budget:
            raise JournalFullError(
                f"the usage journal holds {self.journal_bytes} bytes, over its budget of "
                f"{self._max_bytes}; Postgres is not taking usage events"
            )

    def provisional(self, event_id: uuid.UUID, line: bytes) -> None:
        """Journal the event exchange `event_id` would have if the process died now: `line`
        from `journal_format.encode_provisional` (one os.write; a later call for the same id
        replaces it). `submit` of the exchange's real event settles it. Never raises: before
        `start()` or after `close()` it does nothing, and a disk that refuses the line is
        logged (the request goes on without that protection)."""
        self.provisional_many([(event_id, line)])

    def provisional_many(self, records: list[tuple[uuid.UUID, bytes]]) -> None:
        """`provisional` for several exchanges, in one os.write."""
        journal = self._journal
        if journal is None or self._closed:
            return
        try:
            journal.open_log.record_many(records)
        except OSError as exc:
            self._alert(
                "open",
                "usage journal: cannot record %d exchanges in flight, %s first (%s); "
                "if the gateway is killed before they end, they are not billed",
                len(records),
                records[0][0],
                exc,
            )

    async def submit(self, event: UsageEvent) -> None:
        """Record one event; see `submit_nowait` (this never waits)."""
        self.submit_nowait(event)

    def submit_nowait(self, event: UsageEvent) -> None:
        """Append the event to the journal and return. Never waits and never refuses an
        event; raises RuntimeError only before `start()` or once `close()` has returned (an
        event submitted while close() drains is journaled, and written now or at the next
        start)."""
        journal = self._journal
        if journal is None or self._closed:
            raise RuntimeError(f"UsageWriter is not running; event {event.id} not accepted")
        line = encode_event(event)
        try:
            journal.append(line)
        except OSError as exc:
            # Not settled: its provisional event stays on disk until a later start finds the
            # real one in Postgres (or, should this one be lost, records it as interrupted).
            self._keep_in_memory(event, line, exc)
        else:
            journal.open_log.settle(event.id)
            if journal.over_budget:
                self._alert(
                    "budget",
                    "usage journal over budget: %d bytes > %d (policy %s); is Postgres down?",
                    journal.size_bytes,
                    self._max_bytes,
                    self._full_policy,
                )
        self._wake.set()
        if journal.unread + len(self._memory) >= self._batch_size:
            self._full.set()

    async def close(self, timeout_s: float | None = None) -> None:
        """Write what is pending (for up to `timeout_s`, default `close_timeout_s`), then
        stop; see module doc."""
        if self._closed:
            return
        timeout_s = self._close_timeout_s if timeout_s is None else timeout_s
        self._closing = True
        self._wake.set()
        self._full.set()
        try:
            if self._task is not None:
                done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
                if not done:
                    log.warning(
                        "usage writer: Postgres did not take %d events within %.1fs; "
                        "they stay in the journal",
                        self.backlog,
                        timeout_s,
                    )
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._closed = True
        for task in (self._task, self._sync_task, self._resolve_task):
            if task is not None:
                task.cancel()
        journal = self._journal
        if journal is None:
            return
        for line in self._memory:  # one last chance for events the disk refused earlier
            try:
                journal.append(line)
            except OSError:
                self._lost += 1
        if self._lost:
            log.error(
                "usage writer: %d events lost in total (disk and Postgres both refused)", self._lost
            )
        self._memory.clear()
        journal.close()

    # -- the background tasks ------------------------------------------------------------

    async def _run(self) -> None:
        """Batches go to Postgres up to `parallel_batches` at a time (full ones; a partial
        batch only when nothing is in flight) and are committed to the journal in the order
        they were read, so a segment is never deleted ahead of an earlier line."""
        journal = self._journal
        assert journal is not None
        inflight: collections.deque[tuple[_Work, asyncio.Task[None]]] = collections.deque()
        try:
            while True:
                while len(inflight) < self._parallel and (
                    journal.unread >= self._batch_size or (self._closing and journal.unread)
                ):
                    work = await self._next_from_journal(journal)
                    if work is None:
                        break
                    inflight.append((work, asyncio.create_task(self._persist(work))))
                if inflight:
                    await asyncio.wait({inflight[0][1]})
                    while inflight and inflight[0][1].done():
                        work, task = inflight.popleft()
                        task.result()  # _persist only returns once Postgres has the batch
                        self._commit(journal, work)
                    continue
                waiting = journal.unread + len(self._memory)
                if not waiting:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if not self._closing and waiting < self._batch_size:
                    # A batch is what arrives within flush_interval_s, or batch_size events.
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self._flush_interval_s)
                work = await self._next_from_journal(journal) or self._next_from_memory()
                if work is not None:
                    inflight.append((work, asyncio.create_task(self._persist(work))))
        finally:
            for _, task in inflight:
                task.cancel()

    async def _next_from_journal(self, journal: Journal) -> _Work | None:
        delay = RETRY_INITIAL_S
        while True:
            try:
                batch = journal.read(self._batch_size)
            except OSError as exc:
                log.error("usage journal unreadable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            if batch is None:
                return None
            return _Work(batch.columns, batch.data, batch.events, batch)

    def _next_from_memory(self) -> _Work | None:
        # Lines stay in the deque until committed (one memory batch in flight at a time).
        lines = list(itertools.islice(self._memory, self._batch_size))
        if not lines:
            return None
        return _Work(UsageEvent.COLUMNS, b"".join(lines), len(lines), None)

    def _commit(self, journal: Journal, work: _Work) -> None:
        if work.batch is not None:
            journal.commit(work.batch)
            if not self._replayed.is_set() and not journal.replaying:
                self._replayed.set()
            return
        for _ in range(work.events):
            self._memory.popleft()

    async def _persist(self, work: _Work) -> None:
        """Write the batch, retrying until Postgres has it. Only cancellation stops this."""
        delay = RETRY_INITIAL_S
        while True:
            try:
                async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                    refused = await self._batches.write(work.columns, work.data)
            except Exception as exc:
                if is_connection_error(exc):
                    log.warning(
                        "writing %d usage events failed (%s: %s); retrying in %.1fs",
                        work.events,
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                else:
                    log.error(
                        "writing %d usage events failed; retrying in %.1fs",
                        work.events,
                        delay,
                        exc_info=True,
                    )
            else:
                self._written += work.events - refused
                self._dead_lettered += refused
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_s)

    async def _resolve_interrupted(self, journal: Journal) -> None:
        """Record the exchanges a stopped process left in flight (see storage.usage.interrupted):
        after every adopted event is in Postgres, so a real event always wins."""
        await self._replayed.wait()
        records = journal.open_log.orphans
        delay = RETRY_INITIAL_S
        while True:
            try:
                async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                    recorded = await already_recorded(self._pool, [r.event_id for r in records])
                break
            except Exception as exc:
                if is_connection_error(exc):
                    log.warning(
                        "checking %d interrupted exchanges against Postgres failed "
                        "(%s: %s); retrying in %.1fs",
                        len(records),
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                else:
                    log.error(
                        "checking %d interrupted exchanges against Postgres failed; "
                        "retrying in %.1fs",
                        len(records),
                        delay,
                        exc_info=True,
                    )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max_s)
        missing = [r for r in records if r.event_id not in recorded]
        events, unreadable = interrupted_events(missing, self._reprice)
        self._lost += unreadable
        for event in events:
            self.submit_nowait(event)
        self._interrupted += len(events)
        try:
            # Their events must be on disk before the records that stand for them go.
            await asyncio.to_thread(journal.sync)
        except OSError as exc:
            log.error(
                "usage journal fsync failed (%s); the records of interrupted exchanges "
                "stay until the next start",
                exc,
            )
            return
        journal.open_log.release_orphans()
        log.warning(
            "usage journal: %d exchanges in flight when a gateway stopped recorded as "
            "interrupted (estimated); %d had finished",
            len(events),
            len(recorded),
        )

    async def _sync_loop(self) -> None:
        journal = self._journal
        assert journal is not None
        while True:
            await asyncio.sleep(self._fsync_interval_s)
            try:
                await asyncio.to_thread(journal.sync)
            except OSError as exc:
                self._alert(
                    "fsync",
                    "usage journal fsync failed (%s): the latest events may "
                    "not survive a power loss",
                    exc,
                )

    # -- helpers -------------------------------------------------------------------------

    def _keep_in_memory(self, event: UsageEvent, line: bytes, exc: OSError) -> None:
        self._journal_errors += 1
        if len(self._memory) < self._memory_max:
            self._memory.append(line)
            self._alert(
                "disk",
                "usage journal write failed (%s); events are kept in memory "
                "(%d) until Postgres has them",
                exc,
                len(self._memory),
            )
            return
        self._lost += 1
        log.error(
            "usage event %s LOST: the journal refused it (%s) and %d events already wait in memory",
            event.id,
            exc,
            len(self._memory),
        )

    def _alert(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_alert[kind] >= ALERT_INTERVAL_S:
            self._last_alert[kind] = now
            log.error(message, *args)


def _warn_about_other_journals(root: Path, mine: Path) -> None:
    """Events journaled for another database (a changed database URL) are never replayed
    here; say so once at start, so an operator can point a gateway at them."""
    with contextlib.suppress(OSError):
        for other in root.iterdir():
            if other != mine and other.is_dir() and any(other.glob("*/*.seg")):
                log.warning(
                    "usage journal %s holds events for another database; they are "
                    "written only by a gateway connected to that database",
                    other,
                )
