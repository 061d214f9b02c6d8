"""`OpenLog`: the provisional usage event of every exchange in flight, on local disk, so a
gateway killed mid-request (SIGKILL, OOM) still records what the provider bills for it.

The records live in the journal slot (storage.usage.journal) beside the segments, in files of their
own, `<seq>.open`: a header line like a segment's (storage.usage.journal_format), then one record
per line. A record is the usage event the gateway would write if it stopped at that moment
(`journal_format.encode_provisional`: estimated, the interruption in its metadata, no money
yet). Two kinds of record, one shape: the *provisional* record, appended when an exchange is
admitted, just before it goes upstream, and *progress* records (streams, about once a second),
the same event again with the output produced so far. The last record of an id wins.
Records never go to Postgres as they are.

An exchange is *settled* once its real event is journaled (UsageWriter.submit): `settle(id)`
forgets it, in memory only. Nothing is written for that: whether a record left on disk was
settled is decided at replay, against Postgres. Each unsettled exchange pins the file holding
its latest record; a file other than the active one is deleted as soon as nothing pins it, and
the active one rotates at `rotate_bytes`. Segments are not held back by any of this: a segment
is deleted once every event in it is in Postgres, an open-record file once every exchange
recorded in it is settled or recorded again in a later file.

`record` is one os.write of a whole line, no fsync (the journal's `sync` fsyncs these files
with its segments): a SIGKILL loses nothing recorded, a power loss what came since the last
sync.

Replay: a journal adopting a dead process's slot (storage.usage.journal_slots) hands over its
`.open` files; `read_orphans` keeps the last record of each id (a torn last line is ignored
with a WARNING, a file of a format this version cannot read is set aside at ERROR). The
writer turns those with no event into events, then calls `release_orphans()`, which deletes
the files; until then they stay, and a crash before that resolves them again at the next
start (skipping, again, every record whose exchange has an event).

Failure semantics: `record` raises OSError when the disk refuses the line; the file is cut
back to its last whole line and the next record starts a new file; the exchange keeps its
previous record, if any. Deleting a file that fails is logged and forgotten (at worst its
records are resolved again at the next start). Used from the event loop's thread, except
`sync`, which may run in another thread at the same time.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from storage.usage.journal_format import JournalFormatError, header, line_event_id, parse_header
from storage.usage.journal_slots import OPEN_SUFFIX, AppendFiles, set_aside

log = logging.getLogger("storage.usage.journal")

ROTATE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class OpenRecord:
    """The last record a stopped process left for one exchange."""

    event_id: uuid.UUID
    columns: tuple[str, ...]
    line: bytes  # without its newline


@dataclass(eq=False, slots=True)
class _File:
    path: Path
    size: int
    pins: int = 0  # exchanges whose latest record is in this file


def read_orphans(paths: list[Path]) -> tuple[list[OpenRecord], list[Path]]:
    """The last record of each id in these adopted files (in order), and the files to delete
    once those records are resolved. Blocking file I/O."""
    latest: dict[uuid.UUID, OpenRecord] = {}
    kept: list[Path] = []
    for path in paths:
        data = path.read_bytes()
        head, newline, body = data.partition(b"\n")
        if not newline:  # killed before its header was whole: it holds nothing
            kept.append(path)
            continue
        try:
            columns = parse_header(head)
        except (JournalFormatError, UnicodeDecodeError) as exc:
            set_aside(path, exc)
            continue
        kept.append(path)
        lines = body.split(b"\n")
        torn = lines.pop()  # the bytes after the last newline: a write cut short
        if torn:
            log.warning(
                "usage journal: %s ends with a torn line (%d bytes), ignored", path, len(torn)
            )
        for line in lines:
            if line:
                event_id = line_event_id(columns, line)
                latest[event_id] = OpenRecord(event_id, columns, line)
    return list(latest.values()), kept


class OpenLog:
    def __init__(
        self,
        slot: Path,
        orphans: list[OpenRecord],
        orphan_files: list[Path],
        *,
        rotate_bytes: int = ROTATE_BYTES,
    ) -> None:
        """`orphans` and `orphan_files` come from `read_orphans` (empty for a fresh slot)."""
        if rotate_bytes < 1:
            raise ValueError("rotate_bytes must be >= 1")
        self.slot = slot
        self._rotate_bytes = rotate_bytes
        self._orphans = orphans
        self._orphan_files = orphan_files
        self._next_seq = max((int(p.stem) for p in orphan_files if p.stem.isdigit()), default=0) + 1
        self._pins: dict[uuid.UUID, _File] = {}
        self._files: list[_File] = []
        self._active: _File | None = None
        self._broken = False
        self._closed = False
        self._out = AppendFiles()  # the write fds, shared with sync() in another thread

    @property
    def live(self) -> int:
        """Exchanges recorded here and not settled."""
        return len(self._pins)

    @property
    def orphans(self) -> list[OpenRecord]:
        """Records adopted from stopped processes, not yet released."""
        return self._orphans

    def record(self, event_id: uuid.UUID, line: bytes) -> None:
        """Append the exchange's latest provisional event (a line ending in "\\n")."""
        self.record_many([(event_id, line)])

    def record_many(self, records: list[tuple[uuid.UUID, bytes]]) -> None:
        """`record` for several exchanges, in one write."""
        if self._closed:
            raise RuntimeError("the open-record log is closed")
        active = self._active
        if active is None or self._broken or active.size >= self._rotate_bytes:
            active = self._rotate()
        data = records[0][1] if len(records) == 1 else b"".join(line for _, line in records)
        try:
            self._out.append(data, active.size)
        except OSError:
            self._broken = True
            raise
        active.size += len(data)
        for event_id, _ in records:
            active.pins += 1
            previous = self._pins.get(event_id)
            self._pins[event_id] = active
            if previous is not None:
                self._unpin(previous)

    def settle(self, event_id: uuid.UUID) -> None:
        """The exchange's real event is journaled: its records are no longer needed."""
        pinned = self._pins.pop(event_id, None)
        if pinned is not None:
            self._unpin(pinned)

    def release_orphans(self) -> None:
        """Every adopted record is resolved (its event journaled, or already stored)."""
        for path in self._orphan_files:
            _unlink(path)
        self._orphan_files = []
        self._orphans = []

    def sync(self) -> bool:
        """fsync what was recorded since the last sync; True when the slot directory changed
        (a file created) and needs an fsync too. Safe to run in another thread."""
        return self._out.sync()

    def close(self) -> bool:
        """Let go (after a final `sync`); True when files stay for the next start: records of
        unsettled exchanges, or adopted ones not yet released."""
        if self._closed:
            return bool(self._pins or self._orphan_files)
        self._closed = True
        self._out.close()
        if not self._pins:
            for file in self._files:
                _unlink(file.path)
            self._files = []
        return bool(self._pins or self._orphan_files)

    def _unpin(self, file: _File) -> None:
        file.pins -= 1
        if file.pins == 0 and file is not self._active:
            self._files.remove(file)
            _unlink(file.path)

    def _rotate(self) -> _File:
        path = self.slot / f"{self._next_seq:012d}{OPEN_SUFFIX}"
        head = header()
        self._out.create(path, head)
        self._next_seq += 1
        new = _File(path, len(head))
        old = self._active
        self._active = new
        self._files.append(new)
        self._broken = False
        if old is not None and old.pins == 0:
            self._files.remove(old)
            _unlink(old.path)
        return new


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # resolved again (idempotently) at the next start
        log.warning("usage journal: cannot delete %s: %s", path, exc)
