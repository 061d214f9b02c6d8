"""AWS event-stream framing (`application/vnd.amazon.eventstream`): an incremental decoder
that never raises, and the encoder the fake provider and the tests frame messages with.

One message on the wire:

    total_length u32 | headers_length u32 | prelude_crc u32      (the 12-byte prelude)
    headers (headers_length bytes) | payload | message_crc u32

all big-endian; `prelude_crc` is the CRC32 of the first 8 bytes and `message_crc` the CRC32
of every byte before it. A header is `name_length u8, name, type u8, value`, the value's
size given by its type (booleans carry none, strings and byte arrays a u16 length).

`EventStreamDecoder.feed(chunk)` takes bytes cut anywhere and returns the messages they
complete, each with its exact bytes in `raw` (so the relay can forward them untouched and
hold back one). A frame that cannot be trusted — a CRC mismatch, a length below the
minimum or above `MAX_MESSAGE_BYTES`, headers that overrun the frame or have an unknown
type — sets `broken` and ends decoding for the rest of the stream: with a lost frame
boundary nothing after it can be read safely. `flush()` at the end of the stream marks a
trailing partial frame as broken too. Nothing here raises on any input; the caller reads
`broken` and estimates (usage flagged `estimated`).

botocore ships a parser (`botocore.eventstream.EventStreamBuffer`) that raises on bad bytes
and keeps no raw frames; this one is checked against it in the tests.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

PRELUDE_BYTES = 12
MIN_MESSAGE_BYTES = PRELUDE_BYTES + 4
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # as botocore's parser
MAX_HEADERS_BYTES = 128 * 1024

HeaderValue = bool | int | str | bytes | datetime | uuid.UUID

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PRELUDE = struct.Struct(">III")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_FIXED = {
    2: struct.Struct(">b"),
    3: struct.Struct(">h"),
    4: struct.Struct(">i"),
    5: struct.Struct(">q"),
    8: struct.Struct(">q"),
}


@dataclass(frozen=True, slots=True)
class EventStreamMessage:
    """One decoded message. `raw` is its exact bytes, prelude and message CRC included."""

    headers: Mapping[str, HeaderValue]
    payload: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value if isinstance(value, str) else None

    @property
    def message_type(self) -> str:
        """`event`, `exception` or `error` (an absent header reads as `event`)."""
        return self.header(":message-type") or "event"

    @property
    def event_type(self) -> str | None:
        """The event's name (`metadata`, ...), or an exception's type."""
        return self.header(":event-type") or self.header(":exception-type")


class EventStreamDecoder:
    """Splits one byte stream into messages. One instance per stream; not thread-safe."""

    __slots__ = ("_buffer", "broken")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.broken = False

    @property
    def buffered(self) -> int:
        """Bytes held for a message that has not ended yet."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[EventStreamMessage]:
        """Consume `chunk` and return the messages it completed, in order."""
        if self.broken or not chunk:
            return []
        buffer = self._buffer
        buffer += chunk
        messages: list[EventStreamMessage] = []
        start = 0
        size = len(buffer)
        while size - start >= PRELUDE_BYTES:
            total, headers_length, prelude_crc = _PRELUDE.unpack_from(buffer, start)
            if (
                zlib.crc32(buffer[start : start + 8]) != prelude_crc
                or total < MIN_MESSAGE_BYTES
                or total > MAX_MESSAGE_BYTES
                or headers_length > MAX_HEADERS_BYTES
                or headers_length > total - MIN_MESSAGE_BYTES
            ):
                return self._break(messages)
            if size - start < total:
                break
            raw = bytes(buffer[start : start + total])
            message = _decode(raw, headers_length)
            if message is None:
                return self._break(messages)
            messages.append(message)
            start += total
        if start:
            del buffer[:start]
        return messages

    def flush(self) -> list[EventStreamMessage]:
        """The stream ended: a partial message left over means it was cut (`broken`)."""
        if self._buffer and not self.broken:
            self.broken = True
        self._buffer.clear()
        return []

    def _break(self, messages: list[EventStreamMessage]) -> list[EventStreamMessage]:
        self.broken = True
        self._buffer.clear()
        return messages


def _decode(raw: bytes, headers_length: int) -> EventStreamMessage | None:
    (message_crc,) = _U32.unpack_from(raw, len(raw) - 4)
    if zlib.crc32(memoryview(raw)[:-4]) != message_crc:
        return None
    headers = _headers(raw, PRELUDE_BYTES, PRELUDE_BYTES + headers_length)
    if headers is None:
        return None
    return EventStreamMessage(headers, raw[PRELUDE_BYTES + headers_length : -4], raw)


def _headers(raw: bytes, pos: int, end: int) -> dict[str, HeaderValue] | None:
    """The headers between `pos` and `end`, or None if they do not parse exactly."""
    headers: dict[str, HeaderValue] = {}
    try:
        while pos < end:
            name_length = raw[pos]
            name = raw[pos + 1 : pos + 1 + name_length].decode("utf-8")
            pos += 1 + name_length
            kind = raw[pos]
            pos += 1
            value: HeaderValue
            if kind == 0 or kind == 1:
                value = kind == 0
            elif kind in _FIXED:
                fixed = _FIXED[kind]
                (number,) = fixed.unpack_from(raw, pos)
                pos += fixed.size
                value = _EPOCH + timedelta(milliseconds=number) if kind == 8 else number
            elif kind == 6 or kind == 7:
                (length,) = _U16.unpack_from(raw, pos)
                data = raw[pos + 2 : pos + 2 + length]
                pos += 2 + length
                value = data.decode("utf-8") if kind == 7 else data
            elif kind == 9:
                value = uuid.UUID(bytes=raw[pos : pos + 16])
                pos += 16
            else:
                return None
            if pos > end:
                return None
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError, ValueError, OverflowError):
        return None
    return headers


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes) -> bytes:
    """One framed message. Strings are type 7, bytes 6, ints 4 (or 5 past 32 bits)."""
    encoded = b"".join(_encode_header(name, value) for name, value in headers.items())
    total = PRELUDE_BYTES + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += _U32.pack(zlib.crc32(prelude))
    body = prelude + encoded + payload
    return body + _U32.pack(zlib.crc32(body))


def event_message(event_type: str, payload: bytes, content_type: str = "application/json") -> bytes:
    """An `event` message as Bedrock frames it."""
    return encode_message(
        {":event-type": event_type, ":content-type": content_type, ":message-type": "event"},
        payload,
    )


def exception_message(exception_type: str, payload: bytes) -> bytes:
    """An `exception` message (an error the service reports mid-stream)."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        payload,
    )


def _encode_header(name: str, value: HeaderValue) -> bytes:
    name_bytes = name.encode("utf-8")
    head = bytes((len(name_bytes),)) + name_bytes
    if isinstance(value, bool):
        return head + bytes((0 if value else 1,))
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return head + b"\x04" + _FIXED[4].pack(value)
        return head + b"\x05" + _FIXED[5].pack(value)
    if isinstance(value, str):
        data = value.encode("utf-8")
        return head + b"\x07" + _U16.pack(len(data)) + data
    if isinstance(value, bytes):
        return head + b"\x06" + _U16.pack(len(value)) + value
    if isinstance(value, datetime):
        millis = (value - _EPOCH) // timedelta(milliseconds=1)
        return head + b"\x08" + _FIXED[8].pack(millis)
    return head + b"\x09" + value.bytes
