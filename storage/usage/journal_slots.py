"""Journal slots on disk: the directory lock, slot ownership, and what startup replay needs.

A journal directory holds one slot per open journal (storage.usage.journal). Creating, adopting and
removing slots happen under `locked_dir` (flock on the directory itself). A slot is owned by
the process holding the flock on its `owner.lock` (`try_lock`); the kernel releases it when
the process exits or is killed, which is how `adopt_orphans` tells a dead owner from a live
one; it moves both kinds of file a slot holds, segments (`*.seg`) and open-record files
(`*.open`, storage.usage.journal_open). `scan` checks an adopted segment: its header, its event
count, and a torn last line (a write cut short by a crash or a power loss), which it cuts off
with a WARNING.

Failure semantics: everything here raises OSError as the file system does; a segment whose
header this version cannot read is moved to `unreadable/` and logged at ERROR, never deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from storage.usage.journal_format import JournalFormatError, parse_header

log = logging.getLogger("storage.usage.journal")

OWNER_LOCK = "owner.lock"
UNREADABLE_DIR = "unreadable"
SEGMENT_SUFFIX = ".seg"
OPEN_SUFFIX = ".open"
_SCAN_CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Scanned:
    columns: tuple[str, ...]
    start: int  # offset of the first event, just past the header
    end: int  # offset just past the last complete line
    events: int


@contextlib.contextmanager
def locked_dir(path: Path) -> Iterator[None]:
    """Hold flock on the directory itself, creating it if needed. A journal that closes last
    removes the empty directory; a process that was waiting for the lock then sees its
    directory gone and starts over with a new one."""
    while True:
        path.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                continue
            if os.fstat(fd).st_ino != current.st_ino:
                continue  # removed (and maybe recreated) while we waited
            yield
            return
        finally:
            os.close(fd)


def try_lock(path: Path) -> int | None:
    """An fd holding the exclusive lock on `path`, or None when a live process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data`; a short write means the disk is (nearly) full."""
    written = os.write(fd, data)
    while written < len(data):
        more = os.write(fd, data[written:])
        if more == 0:
            raise OSError(28, "No space left on device")
        written += more


class AppendFiles:
    """The write side of an append-only series of files: the active file's fd, the fds of
    the files rotated away from (fsynced, then closed, by the next `sync`), and whether a sync
    has data or a new directory entry to flush. `append` and `start` run on the appending
    thread; `sync` may run in another at the same time (the lock covers the hand-over)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active_fd: int | None = None
        self._retired: list[int] = []
        self._dirty = False
        self._dir_dirty = False

    def create(self, path: Path, head: bytes) -> None:
        """Create `path` (it must not exist), write `head`, and make it the active file.
        On OSError nothing changes (the half-made file is removed)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, head)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        with self._lock:
            if self._active_fd is not None:
                self._retired.append(self._active_fd)
            self._active_fd = fd
            self._dir_dirty = True

    def append(self, data: bytes, size_before: int) -> None:
        """Append `data` to the active file (one write, page cache only). On OSError the file
        is cut back to `size_before`, its last complete line, and the error raised."""
        fd = self._active_fd
        if fd is None:
            raise RuntimeError("no active file")
        try:
            write_all(fd, data)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size_before)
            raise
        self._dirty = True

    def sync(self) -> bool:
        """fsync (and close) the retired files, then the active one if written to; True when
        a file was created since the last sync, so the directory needs an fsync too."""
        with self._lock:
            retired, self._retired = self._retired, []
            fd = self._active_fd
            dirty, self._dirty = self._dirty, False
            dir_dirty, self._dir_dirty = self._dir_dirty, False
        for old in retired:
            try:
                os.fsync(old)
            finally:
                os.close(old)
        if dirty and fd is not None:
            os.fsync(fd)  # only a later sync() closes it (once retired): still open here
        return dir_dirty

    def close(self) -> None:
        """Close every fd (after a final `sync`, for durability)."""
        with self._lock:
            fds = [*self._retired, *([self._active_fd] if self._active_fd is not None else [])]
            self._retired, self._active_fd = [], None
        for fd in fds:
            os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def adopt_orphans(directory: Path, slot: Path) -> tuple[list[tuple[int, Path]], list[Path]]:
    """Move the segments and open-record files (storage.usage.journal_open) of slots with no live
    owner into `slot`: (segments as (new seq, path), open-record files), each in order. Runs
    under the directory lock."""
    moved: list[tuple[int, Path]] = []
    opened: list[Path] = []
    for other in sorted(directory.iterdir()):
        if other == slot or not other.is_dir() or other.name == UNREADABLE_DIR:
            continue
        lock_fd = try_lock(other / OWNER_LOCK)
        if lock_fd is None:
            continue  # a live process owns it
        try:
            for old in sorted(other.glob("*" + SEGMENT_SUFFIX)):
                seq = len(moved) + 1
                new = slot / f"{seq:012d}{SEGMENT_SUFFIX}"
                os.rename(old, new)
                moved.append((seq, new))
            for old in sorted(other.glob("*" + OPEN_SUFFIX)):
                new = slot / f"{len(opened) + 1:012d}{OPEN_SUFFIX}"
                os.rename(old, new)
                opened.append(new)
            (other / OWNER_LOCK).unlink(missing_ok=True)
            try:
                other.rmdir()
            except OSError as exc:
                log.warning("usage journal: left %s in place (%s)", other, exc)
        finally:
            os.close(lock_fd)
    if moved or opened:
        fsync_dir(slot)
    return moved, opened


def set_aside(path: Path, reason: Exception) -> None:
    """Move a file of a slot this version cannot read to `unreadable/`, logged at ERROR."""
    aside = path.parent.parent / UNREADABLE_DIR
    aside.mkdir(exist_ok=True)
    target = aside / f"{path.parent.name}-{path.name}"
    os.rename(path, target)
    log.error("usage journal: %s cannot be replayed (%s); moved to %s", path, reason, target)


def scan(path: Path) -> Scanned | None:
    """What an adopted segment holds, its torn last line cut off; None (and the file
    removed) when it holds no events."""
    with open(path, "r+b") as f:
        first = f.readline()
        try:
            columns = parse_header(first[:-1]) if first.endswith(b"\n") else None
        except (JournalFormatError, UnicodeDecodeError) as exc:
            set_aside(path, exc)
            return None
        start = position = len(first)
        events, end = 0, start
        while columns is not None and (chunk := f.read(_SCAN_CHUNK_BYTES)):
            newlines = chunk.count(b"\n")
            if newlines:
                events += newlines
                end = position + chunk.rfind(b"\n") + 1
            position += len(chunk)
        if position > end:
            log.warning(
                "usage journal: %s ends with a torn line (%d bytes), cut off", path, position - end
            )
            f.truncate(end)
    if columns is None or not events:  # died before the first complete event
        path.unlink()
        return None
    return Scanned(columns, start, end, events)
