"""`Journal`: usage events on local disk, from the moment a request completes until Postgres
has them.

Layout of one journal directory (the writer keeps one per database, see usage_writer). The
directory itself is the lock (flock on it, held for a moment to create, adopt or remove a
slot); the last journal to close with nothing pending removes it.

    p<pid>-<hex>/          one slot per open journal (one per writer process)
        owner.lock         flock held by the owning process for as long as it runs
        000000000001.seg   segments, in append order; the last one is being appended to
        000000000001.open  provisional events of exchanges in flight (storage.usage.journal_open)
    unreadable/            files this version cannot read (moved aside, logged at ERROR)

A segment is a header line, then one event per line (storage.usage.journal_format). `append` is
one os.write of a whole line to the active segment: when it returns, the line is in the
kernel's page cache, so a process killed with SIGKILL loses nothing it appended. `sync`
(the writer runs it every `journal_fsync_interval_s`, in a thread) fsyncs the segment and
new directory entries: a power loss loses at most the lines appended since the last sync.
Segments rotate at `segment_bytes`, and early (at 1 MiB) once everything in them is
committed; a segment is deleted only after every line in it was committed (`commit`).
`open_log` (storage.usage.journal_open) keeps, in the same slot, the provisional event of each
exchange in flight until its real event is appended here; its files are deleted on their own
schedule, so they never hold a segment back, and `sync` fsyncs them with the segments.

Startup replay: opening a journal creates a fresh slot and adopts every slot whose owner is
gone (its lock is free: the process exited or was killed). Their segments move into the new
slot ahead of anything new, so the writer reads them first and writes them again; the write
is idempotent, so events already committed are not doubled. A torn last line (a write cut
short by a crash or a power loss) is cut off with a WARNING: it was never completely
appended, so nobody was told that event was recorded. Their open-record files move too; the
writer resolves them once the adopted segments are committed (`replaying` turns False).

Failure semantics: `append` raises OSError when the disk refuses the line (full, I/O error);
the segment is cut back to its last complete line (nothing half-written stays to corrupt the
next line) and the next append starts a new segment. `read` raises OSError when a segment
cannot be read; `sync` raises OSError when fsync fails (logged by the writer: lines since the
last good sync may not survive a power loss, though they are still written to Postgres).
Deleting a committed segment that fails is logged and forgotten: at worst it is replayed,
idempotently, at the next start. The journal is used from one thread (the event loop), except
`sync`, which may run in another thread at the same time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from storage.usage.journal_format import header, parse_header
from storage.usage.journal_open import OpenLog, read_orphans
from storage.usage.journal_slots import (
    OWNER_LOCK,
    SEGMENT_SUFFIX,
    AppendFiles,
    adopt_orphans,
    fsync_dir,
    locked_dir,
    scan,
    try_lock,
)

log = logging.getLogger(__name__)

ROTATE_COMMITTED_BYTES = 1024 * 1024
_MIN_READ_BYTES = 64 * 1024


@dataclass(eq=False, slots=True)
class _Segment:
    seq: int
    path: Path
    columns: tuple[str, ...]
    size: int  # end of the last complete line: nothing past it is ever read
    read_offset: int
    committed_offset: int
    read_fd: int | None = None


@dataclass(frozen=True, slots=True)
class JournalBatch:
    """Consecutive complete lines of one segment, in the columns its header names."""

    segment: _Segment
    columns: tuple[str, ...]
    data: bytes  # each line ends with "\n"
    events: int
    end: int  # offset just past the last line

    def lines(self) -> list[bytes]:
        return self.data.split(b"\n")[:-1]


class Journal:
    def __init__(
        self,
        directory: Path,
        slot: Path,
        owner_fd: int,
        adopted: list[_Segment],
        adopted_events: int,
        open_log: OpenLog,
        *,
        segment_bytes: int,
        max_bytes: int,
    ) -> None:
        """Use `Journal.open`."""
        self.directory = directory
        self.slot = slot
        self.open_log = open_log
        self._owner_fd: int | None = owner_fd
        self._segments = adopted
        self._last_adopted_seq = max((s.seq for s in adopted), default=0)
        self._segment_bytes = segment_bytes
        self._max_bytes = max_bytes
        self._next_seq = max((s.seq for s in adopted), default=0) + 1
        self._active: _Segment | None = None
        self._broken = False  # the last append failed: start a new segment
        self._line_bytes = 512.0  # average line length seen by read()
        self._pending = adopted_events  # appended or adopted, not committed
        self._unread = adopted_events
        self._size_bytes = sum(s.size for s in adopted)
        # The segments' write fds, shared with sync() running in another thread; _sync_lock
        # keeps close() from closing an fd that a sync() still running is fsyncing.
        self._out = AppendFiles()
        self._sync_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        segment_bytes: int = 64 * 1024 * 1024,
        max_bytes: int = 4096 * 1024 * 1024,
    ) -> Journal:
        """A new slot in `directory`, holding the segments of every slot whose owner is gone.

        Blocking file I/O (it reads adopted segments to count them): call it in a thread.
        """
        if segment_bytes < 1 or max_bytes < 1:
            raise ValueError("segment_bytes and max_bytes must be >= 1")
        with locked_dir(directory):
            slot = directory / f"p{os.getpid()}-{secrets.token_hex(4)}"
            slot.mkdir()
            owner_fd = try_lock(slot / OWNER_LOCK)
            if owner_fd is None:  # impossible: the slot is new and we hold the directory lock
                raise RuntimeError(f"cannot lock the new journal slot {slot}")
            moved, opened = adopt_orphans(directory, slot)
        adopted, events = [], 0
        for seq, path in moved:
            found = scan(path)
            if found is not None:
                adopted.append(
                    _Segment(seq, path, found.columns, found.end, found.start, found.start)
                )
                events += found.events
        if events:
            log.warning(
                "usage journal: replaying %d events left by a stopped process (%d segments) in %s",
                events,
                len(adopted),
                slot,
            )
        records, open_files = read_orphans(opened)
        if records:
            log.warning(
                "usage journal: %d provisional events left by a stopped process; "
                "those with no event in Postgres are recorded as interrupted",
                len(records),
            )
        journal = cls(
            directory,
            slot,
            owner_fd,
            adopted,
            events,
            OpenLog(slot, records, open_files),
            segment_bytes=segment_bytes,
            max_bytes=max_bytes,
        )
        journal._rotate()
        return journal

    @property
    def pending(self) -> int:
        """Events appended (or adopted) and not yet committed."""
        return self._pending

    @property
    def unread(self) -> int:
        """Events not yet handed out by `read`."""
        return self._unread

    @property
    def size_bytes(self) -> int:
        """Bytes on disk in this slot's live segments."""
        return self._size_bytes

    @property
    def replaying(self) -> bool:
        """Some event adopted from a stopped process is not committed yet."""
        return any(s.seq <= self._last_adopted_seq for s in self._segments)

    @property
    def over_budget(self) -> bool:
        return self._size_bytes > self._max_bytes

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def append(self, line: bytes) -> None:
        """Append one complete line (ending in "\\n") with one write; see the module doc."""
        if self._owner_fd is None:
            raise RuntimeError("the journal is closed")
        segment = self._active
        if segment is None or self._broken or segment.size >= self._segment_bytes:
            segment = self._rotate()
        try:
            self._out.append(line, segment.size)
        except OSError:
            self._broken = True
            raise
        segment.size += len(line)
        self._size_bytes += len(line)
        self._pending += 1
        self._unread += 1

    def read(self, max_events: int) -> JournalBatch | None:
        """Up to `max_events` unread lines of the oldest segment that has some, or None."""
        segment = next((s for s in self._segments if s.read_offset < s.size), None)
        if segment is None:
            return None
        if segment.read_fd is None:
            segment.read_fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
        available = segment.size - segment.read_offset
        # Read about what max_events lines take (from the lines read so far), not more.
        want = min(available, max(_MIN_READ_BYTES, int(max_events * self._line_bytes * 1.25)))
        while True:
            data = os.pread(segment.read_fd, want, segment.read_offset)
            end, events = _cut(data, max_events)
            if end or want >= available:
                break
            want = min(available, want * 2)  # one line longer than all we read
        if not end:
            raise OSError(5, f"usage journal segment {segment.path} is shorter than written")
        self._line_bytes = end / events
        batch = JournalBatch(
            segment, segment.columns, data[:end], events, segment.read_offset + end
        )
        segment.read_offset += end
        self._unread -= events
        return batch

    def commit(self, batch: JournalBatch) -> None:
        """Every line of `batch` (and of every batch read before it) is in Postgres."""
        segment = batch.segment
        segment.committed_offset = batch.end
        self._pending -= batch.events
        if segment is not self._active:
            self._delete_if_done(segment)
        elif batch.end == segment.size and (
            segment.size >= ROTATE_COMMITTED_BYTES or self.over_budget
        ):
            try:
                self._rotate()  # so a crash replays little that is already committed
            except OSError as exc:
                log.warning("usage journal: cannot start a new segment (%s); will retry", exc)

    def sync(self) -> None:
        """fsync what was appended since the last sync; safe to run in another thread."""
        with self._sync_lock:
            self._sync()

    def _sync(self) -> None:
        dir_dirty = self._out.sync()
        if self.open_log.sync() or dir_dirty:
            fsync_dir(self.slot)

    def close(self) -> None:
        """fsync and let go. Segments with uncommitted lines stay for the next start to
        replay, and so do the open-record files of unsettled exchanges; with neither, the
        slot is removed."""
        if self._owner_fd is None:
            return
        with self._sync_lock:
            try:
                self._sync()
            except OSError as exc:
                log.error("usage journal: fsync at close failed: %s", exc)
            self._out.close()
            open_kept = self.open_log.close()
        for segment in self._segments:
            if segment.read_fd is not None:
                os.close(segment.read_fd)
                segment.read_fd = None
        with locked_dir(self.directory):
            if self._pending == 0:
                for segment in self._segments:
                    with contextlib.suppress(FileNotFoundError):
                        segment.path.unlink()
                if not open_kept:
                    (self.slot / OWNER_LOCK).unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        self.slot.rmdir()
                        self.directory.rmdir()  # the last one out; fails if anything is left
            os.close(self._owner_fd)
            self._owner_fd = None
        if self._pending:
            log.warning(
                "usage journal: %d events not yet in Postgres stay in %s; the next "
                "start writes them",
                self._pending,
                self.slot,
            )
        if open_kept:
            log.warning(
                "usage journal: %d exchanges unfinished at close (and %d left by a "
                "stopped process) stay in %s; the next start records them as "
                "interrupted",
                self.open_log.live,
                len(self.open_log.orphans),
                self.slot,
            )

    def _rotate(self) -> _Segment:
        seq = self._next_seq
        path = self.slot / f"{seq:012d}{SEGMENT_SUFFIX}"
        head = header()
        self._out.create(path, head)
        self._next_seq += 1
        segment = _Segment(seq, path, parse_header(head[:-1]), len(head), len(head), len(head))
        old = self._active
        self._active = segment
        self._segments.append(segment)
        self._size_bytes += len(head)
        self._broken = False
        if old is not None:
            self._delete_if_done(old)
        return segment

    def _delete_if_done(self, segment: _Segment) -> None:
        if segment is self._active or segment.committed_offset < segment.size:
            return
        self._segments.remove(segment)
        self._size_bytes -= segment.size
        if segment.read_fd is not None:
            os.close(segment.read_fd)
            segment.read_fd = None
        try:
            segment.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # replayed (idempotently) at the next start
            log.warning("usage journal: cannot delete committed segment %s: %s", segment.path, exc)


def _cut(data: bytes, max_events: int) -> tuple[int, int]:
    """(offset just past the last whole line to take, lines taken)."""
    count = data.count(b"\n")
    if count <= max_events:
        return data.rfind(b"\n") + 1, count
    pos = -1
    for _ in range(max_events):
        pos = data.find(b"\n", pos + 1)
    return pos + 1, max_events
