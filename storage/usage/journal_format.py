"""The usage journal's line format: a `UsageEvent` as one line of PostgreSQL COPY text.

A journal segment starts with a header line naming the format version and the columns,
``#tollbooth-usage-journal v1<TAB>id<TAB>created_at<TAB>...``, then holds one event per line
in COPY's text format, in the header's column order: fields separated by a tab, NULL written
``\\N``, and a backslash, tab, newline or carriage return inside a value written ``\\\\``,
``\\t``, ``\\n``, ``\\r``. The writer streams those lines to `COPY ... FROM STDIN` unchanged,
so replaying a journal costs Python no per-event work. Values: the id as 32 hex digits,
times in ISO 8601 with their UTC offset, money as the Decimal's exact string, `metadata` as
JSON text (orjson; a Decimal inside becomes its string, as storage.postgres stores it).
`encode_provisional` writes the same line for the provisional event of an exchange in flight
(storage.usage.journal_open) without building a `UsageEvent`; `event_from_line` reads a line back
into one (startup replay of those provisional events).

Failure semantics: `encode_event` never refuses an event. A value PostgreSQL cannot store (a
NUL character, a lone surrogate, an integer past the column's range) is written as it is,
so PostgreSQL rejects that one line later and the writer dead-letters it; the event is never
altered or dropped here. `decode_line` (for the dead-letter table) never raises either: a
field that does not parse stays a string, and a line that cannot be represented as JSON for
PostgreSQL (NUL characters, invalid UTF-8, the wrong number of fields) decodes to None;
`event_from_line` returns None for such a line and for one whose values do not fit a
`UsageEvent`.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from storage.usage.event import UsageEvent

FORMAT_VERSION = 1
HEADER_PREFIX = b"#tollbooth-usage-journal v"
# For lines with no parseable id (a corrupt line): a stable id derived from the bytes.
_CORRUPT_LINE_NAMESPACE = uuid.UUID("5b0e4c1e-6f7d-4a8e-9a51-7c1f0c2d9e33")

_INT_COLUMNS = frozenset(
    {
        "status_code",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "latency_ms",
    }
)
_BOOL_COLUMNS = frozenset({"streamed"})
_JSON_COLUMNS = frozenset({"metadata"})

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_UNESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.DOTALL)
_SIMPLE = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


class JournalFormatError(Exception):
    """A segment's header is missing or names a format this version cannot read."""


def header(columns: tuple[str, ...] = UsageEvent.COLUMNS) -> bytes:
    version = str(FORMAT_VERSION).encode()
    return HEADER_PREFIX + version + b"\t" + "\t".join(columns).encode() + b"\n"


def parse_header(line: bytes) -> tuple[str, ...]:
    """The columns a header line (without its newline) declares."""
    if not line.startswith(HEADER_PREFIX):
        raise JournalFormatError("not a usage journal segment (no header line)")
    version, _, rest = line[len(HEADER_PREFIX) :].partition(b"\t")
    if version != str(FORMAT_VERSION).encode():
        raise JournalFormatError(
            f"journal format v{version.decode(errors='replace')} is "
            f"not readable by this version (v{FORMAT_VERSION})"
        )
    columns = tuple(rest.decode().split("\t"))
    if "id" not in columns:
        raise JournalFormatError("journal header names no id column")
    return columns


def _text(value: str | None) -> str:
    if value is None:
        return "\\N"
    if value.isprintable() and "\\" not in value:  # the common case: nothing to escape
        return value
    return value.translate(_ESCAPES)


def _plain(value: object) -> str:
    return "\\N" if value is None else str(value)


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _metadata(value: dict[str, Any]) -> str:
    if not value:
        return "{}"
    # JSON text never holds a raw tab or newline; only its backslashes need COPY escaping.
    return orjson.dumps(value, default=_json_default).decode().replace("\\", "\\\\")


def encode_event(e: UsageEvent) -> bytes:
    """One journal line (with its newline) in the column order of `header()`."""
    # orjson formats a datetime four times faster than isoformat(); a naive one as UTC.
    created = orjson.dumps(e.created_at, option=orjson.OPT_NAIVE_UTC)[1:-1].decode()
    line = (
        f"{e.id.hex}\t{created}\t{_text(e.customer_id)}\t"
        f"{_text(e.project_id)}\t{_text(e.user_id)}\t{_text(e.key_id)}\t{_text(e.tier)}\t"
        f"{_text(e.provider)}\t{_text(e.model)}\t{_text(e.endpoint)}\t{e.status_code}\t"
        f"{'t' if e.streamed else 'f'}\t{e.input_tokens}\t{e.output_tokens}\t"
        f"{e.cached_input_tokens}\t{e.cache_write_tokens}\t"
        f"{e.reasoning_tokens}\t{_text(e.usage_source)}\t{_plain(e.cost_usd)}\t"
        f"{_plain(e.price_usd)}\t{_text(e.price_version)}\t{e.latency_ms}\t"
        f"{_text(e.upstream_request_id)}\t{_metadata(e.metadata)}\n"
    )
    # surrogatepass: a lone surrogate is kept (invalid UTF-8) for PostgreSQL to refuse.
    return line.encode("utf-8", "surrogatepass")


def encode_provisional(
    event_id: uuid.UUID,
    created_at: datetime,
    customer_id: str,
    project_id: str | None,
    user_id: str | None,
    key_id: str,
    tier: str,
    provider: str,
    model: str,
    endpoint: str,
    status_code: int,
    streamed: bool,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int,
    cache_write_tokens: int,
    latency_ms: int,
    upstream_request_id: str | None,
    metadata: dict[str, Any],
) -> bytes:
    """The line `encode_event` writes for the event with these values, no reasoning tokens,
    `usage_source = estimated` and NULL money: the provisional event of an exchange in flight
    (storage.usage.journal_open). It builds no `UsageEvent` (constructing one costs more than
    encoding it): this runs on the request path, before every metered request goes upstream."""
    created = orjson.dumps(created_at, option=orjson.OPT_NAIVE_UTC)[1:-1].decode()
    line = (
        f"{event_id.hex}\t{created}\t{_text(customer_id)}\t"
        f"{_text(project_id)}\t{_text(user_id)}\t{_text(key_id)}\t{_text(tier)}\t"
        f"{_text(provider)}\t{_text(model)}\t{_text(endpoint)}\t{status_code}\t"
        f"{'t' if streamed else 'f'}\t{input_tokens}\t{output_tokens}\t"
        f"{cached_input_tokens}\t{cache_write_tokens}\t0\testimated\t\\N\t\\N\t\\N\t"
        f"{latency_ms}\t{_text(upstream_request_id)}\t{_metadata(metadata)}\n"
    )
    return line.encode("utf-8", "surrogatepass")


def _unescape(raw: bytes) -> bytes:
    def one(match: re.Match[bytes]) -> bytes:
        octal, hexa, char = match.groups()
        if octal is not None:
            return bytes([int(octal, 8) & 0xFF])
        if hexa is not None:
            return bytes([int(hexa, 16)])
        return _SIMPLE.get(char, char)

    return _UNESCAPE.sub(one, raw)


def _typed(column: str, text: str) -> Any:
    try:
        if column in _INT_COLUMNS:
            return int(text)
        if column in _BOOL_COLUMNS and text in ("t", "f"):
            return text == "t"
        if column in _JSON_COLUMNS:
            return orjson.loads(text)
        if column == "id":
            return str(uuid.UUID(text))
    except ValueError:  # orjson.JSONDecodeError is a ValueError
        pass
    return text


def line_event_id(columns: tuple[str, ...], line: bytes) -> uuid.UUID:
    """The event's id, or for a line without a readable id a stable id made from its bytes."""
    fields = line.split(b"\t")
    if len(fields) == len(columns):
        try:
            return uuid.UUID(fields[columns.index("id")].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    return uuid.uuid5(_CORRUPT_LINE_NAMESPACE, line.hex())


def decode_line(columns: tuple[str, ...], line: bytes) -> dict[str, Any] | None:
    """The event as a JSON object (column -> value), or None when PostgreSQL could not hold
    it as jsonb: a NUL character, invalid UTF-8, or not one field per column."""
    fields = line.split(b"\t")
    if len(fields) != len(columns):
        return None
    event: dict[str, Any] = {}
    for column, raw in zip(columns, fields, strict=True):
        if raw == b"\\N":
            event[column] = None
            continue
        value = _unescape(raw)
        if b"\x00" in value:
            return None
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
        event[column] = _typed(column, text)
    if _holds_nul(event):  # a NUL inside metadata's JSON
        return None
    return event


def event_from_line(columns: tuple[str, ...], line: bytes) -> UsageEvent | None:
    """The `UsageEvent` a journal line holds, or None when it cannot be read back as one (a
    field that does not parse, a column missing)."""
    event = decode_line(columns, line)
    if event is None or not set(UsageEvent.COLUMNS) <= event.keys():
        return None
    try:
        values = {column: event[column] for column in UsageEvent.COLUMNS}
        values["id"] = uuid.UUID(str(values["id"]))
        values["created_at"] = datetime.fromisoformat(str(values["created_at"]))
        for money in ("cost_usd", "price_usd"):
            if values[money] is not None:
                values[money] = Decimal(str(values[money]))
        if not isinstance(values["metadata"], dict):
            return None
        for column in _INT_COLUMNS:
            if not isinstance(values[column], int):
                return None
        if not isinstance(values["streamed"], bool):
            return None
        return UsageEvent(**values)
    except (ValueError, ArithmeticError):  # decimal.InvalidOperation is an ArithmeticError
        return None


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False
