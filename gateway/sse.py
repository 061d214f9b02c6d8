"""Incremental server-sent-events parser that keeps every byte.

`SSEParser.feed(chunk)` returns the events completed by `chunk`; `flush()` returns whatever
the stream left unterminated. Each `SSEEvent.raw` is the exact bytes of one event, its
terminating blank line included, so joining the `raw` of every event (and of `flush()`)
reproduces the input byte for byte. That is what lets the relay forward upstream bytes
untouched while dropping exactly one event (the usage chunk the gateway asked for).

Beyond the WHATWG grammar, blocks that dispatch nothing (comment-only ": ping" blocks, stray
blank lines) are still returned, with empty `data`, so that no byte is lost; callers skip
events whose `data` is empty. LF, CRLF and CR line endings are all accepted, and a chunk may
end anywhere, including inside a multi-byte UTF-8 character or between CR and LF: a CR at
the very end of the buffer is not taken as a line end until the next byte (or `flush()`)
says whether an LF follows, so every chunking of the same bytes yields the same events.

Nothing is decoded except the `event:` name (with replacement, so it never raises); data
stays bytes. The hot path is C: `find` for boundaries, one copy per event. Streams that use
LF only (OpenAI, Anthropic) take a shorter path until a CR is ever seen, and a chunk that is
exactly one such event, with nothing held before it, is read without the splitting loop.
The parser never raises on any input.
"""

from __future__ import annotations

import re

from gateway.providers.base import SSEEvent

# Two consecutive line terminators end an event. A lone CR only counts as a terminator when
# no LF follows it, so "\r\n" is never misread as two line ends.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")
_CR = 0x0D
_LF = 0x0A
# A blank line is at most four bytes ("\r\n\r\n"), so one that a new chunk completes starts
# at most this many bytes before the old end of the buffer.
_RESCAN = 3


class SSEParser:
    """Splits one byte stream into `SSEEvent`s. One instance per stream; not thread-safe."""

    __slots__ = ("_buffer", "_cr_seen", "_scan_from")

    def __init__(self) -> None:
        # Bytes of the current, unfinished block; it always starts at a block boundary.
        self._buffer = bytearray()
        # Offset into the current block before which no blank line can end it.
        self._scan_from = 0
        # Until a CR shows up, only "\n\n" can end a block (the fast path).
        self._cr_seen = False

    @property
    def buffered(self) -> int:
        """Bytes held for an event that has not ended yet."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume `chunk` and return the events it completed, in order."""
        if not chunk:
            return []
        if not self._cr_seen:
            if b"\r" in chunk:
                self._cr_seen = True
            elif not self._buffer and 2 < len(chunk) == chunk.find(b"\n\n") + 2 and chunk[0] != _LF:
                # Exactly one event, and nothing held: a paced stream's usual chunk.
                return [_parse_block(bytes(chunk), lf_only=True)]
        if self._buffer:
            self._buffer += chunk
            if self._block_end(self._buffer, 0, len(self._buffer), final=False) < 0:
                return []  # still inside one event: no copy, nothing to do
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(chunk)
        return self._split(data, final=False)

    def flush(self) -> list[SSEEvent]:
        """End of stream: return the events still held, the unterminated tail last.

        The tail's `data` holds every data line it has, its last line included even without
        a line ending (a truncated stream still tells what was produced).
        """
        data = bytes(self._buffer)
        self._buffer.clear()
        events = self._split(data, final=True)
        if self._buffer:
            events.append(_parse_block(bytes(self._buffer), lf_only=False))
            self._buffer.clear()
        self._scan_from = 0
        return events

    def _split(self, data: bytes, *, final: bool) -> list[SSEEvent]:
        """Cut every complete block out of `data`; keep the rest in the buffer."""
        events: list[SSEEvent] = []
        start = 0
        size = len(data)
        lf_only = not self._cr_seen
        while start < size:
            end = self._block_end(data, start, size, final=final)
            if end < 0:
                break
            events.append(_parse_block(data[start:end], lf_only=lf_only))
            start = end
        if start < size:
            self._buffer += memoryview(data)[start:]
        return events

    def _block_end(self, data: bytes | bytearray, start: int, size: int, *, final: bool) -> int:
        """Offset just past the blank line ending the block at `start`, or -1 if not yet known
        (then `_scan_from` records how far the block is known to be open)."""
        scan = start + self._scan_from
        if not self._cr_seen:
            if data[start] == _LF:
                return start + 1  # a blank line on its own: an empty block
            blank = data.find(b"\n\n", scan)
            if blank >= 0:
                self._scan_from = 0
                return blank + 2
            self._scan_from = max(0, size - 1 - start)
            return -1
        end = self._cr_block_end(data, start, scan, size, final=final)
        self._scan_from = 0 if end >= 0 else self._scan_from
        return end

    def _cr_block_end(
        self, data: bytes | bytearray, start: int, scan: int, size: int, *, final: bool
    ) -> int:
        """`_block_end` once the stream has used CR. CRLF-only text is settled by `find` and
        `count`; lone CRs and mixed endings go through the general regular expression."""
        first = data[start]
        if first == _LF:
            return start + 1  # a blank line on its own: an empty block
        if first == _CR:
            if start + 1 < size:
                return start + 2 if data[start + 1] == _LF else start + 1
            if final:
                return start + 1
            self._scan_from = 0
            return -1
        crlf_crlf = data.find(b"\r\n\r\n", scan)
        stop = crlf_crlf if crlf_crlf >= 0 else size
        pairs = data.count(b"\r\n", scan, stop)
        if data.count(b"\r", scan, stop) == pairs == data.count(b"\n", scan, stop):
            if crlf_crlf >= 0:
                return crlf_crlf + 4
            self._scan_from = max(0, size - _RESCAN - start)
            return -1
        match = _EVENT_END.search(data, scan)
        if match is None:
            self._scan_from = max(0, size - _RESCAN - start)
            return -1
        end = match.end()
        if end == size and data[end - 1] == _CR and not final:
            # The blank line ends in CR at the buffer's edge: an LF may still belong to it.
            self._scan_from = match.start() - start
            return -1
        return end


def _parse_block(raw: bytes, *, lf_only: bool) -> SSEEvent:
    """Read the `event` and `data` fields of one block (its lines, blank ones ignored)."""
    if lf_only:
        # The two shapes nearly every provider sends, read without a per-line loop.
        if raw.startswith(b"data: ") and raw.find(b"\n") == len(raw) - 2:
            return SSEEvent(None, raw[6:-2], raw)
        if raw.startswith(b"event: "):
            newline = raw.find(b"\n")
            if (
                raw.startswith(b"data: ", newline + 1)
                and raw.find(b"\n", newline + 1) == len(raw) - 2
            ):
                name = raw[7:newline].decode("utf-8", "replace")
                return SSEEvent(name, raw[newline + 7 : -2], raw)
    event: str | None = None
    data: list[bytes] = []
    for line in raw.splitlines():  # bytes split on LF, CRLF and CR only
        if not line or line[0] == 0x3A:  # blank, or a ":" comment
            continue
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            event = value.decode("utf-8", "replace")
    return SSEEvent(event=event, data=b"\n".join(data), raw=raw)
