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

The columns are declared once, in `COLUMNS`: `UsageEvent`'s fields, in order, each written as
its type says (`_WRITTEN_AS`); the decoder reads its types from there too. Both encoders are
compiled from that table when this module loads, each into one f-string: as fast as the
f-string written by hand (an encoder of one call per column costs 1.5 to 2 times as much), and
checked byte for byte against the hand-written encoders they replace in
tests/test_journal_columns.py, so journals already on disk replay unchanged.

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

import linecache
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, get_type_hints

import orjson

from storage.usage.event import UsageEvent

FORMAT_VERSION = 1
HEADER_PREFIX = b"#tollbooth-usage-journal v"
# For lines with no parseable id (a corrupt line): a stable id derived from the bytes.
_CORRUPT_LINE_NAMESPACE = uuid.UUID("5b0e4c1e-6f7d-4a8e-9a51-7c1f0c2d9e33")

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


# How a value is written on a line, by the type `UsageEvent` declares for its column: the
# column's replacement field in the line's f-string, VALUE standing for the value. Inline where
# a function call would cost more than the formatting (the gateway encodes a line per request).
_WRITTEN_AS: dict[object, str] = {
    uuid.UUID: "{VALUE.hex}",
    # orjson formats a datetime four times faster than isoformat(); a naive one as UTC.
    datetime: "{_dumps(VALUE, option=_NAIVE_UTC)[1:-1].decode()}",
    str: "{_text(VALUE)}",
    str | None: "{_text(VALUE)}",
    int: "{VALUE}",
    bool: "{'t' if VALUE else 'f'}",
    Decimal | None: "{_plain(VALUE)}",
    dict[str, Any]: "{_metadata(VALUE)}",
}


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a journal line."""

    name: str
    type: object  # as `UsageEvent` declares it
    written_as: str  # a replacement field of `_WRITTEN_AS`


def _columns() -> tuple[Column, ...]:
    types = get_type_hints(UsageEvent)
    return tuple(
        Column(f.name, types[f.name], _WRITTEN_AS[types[f.name]]) for f in fields(UsageEvent)
    )


# The journal line's columns, declared once: `UsageEvent`'s fields, in order, each written as
# its type says. Both encoders below are compiled from this table, and the decoder reads it.
COLUMNS = _columns()
_INT_COLUMNS = frozenset(c.name for c in COLUMNS if c.type is int)
_BOOL_COLUMNS = frozenset(c.name for c in COLUMNS if c.type is bool)
_JSON_COLUMNS = frozenset(c.name for c in COLUMNS if c.type == dict[str, Any])

# The columns a provisional event fixes: no reasoning tokens, estimated usage, not priced.
PROVISIONAL: dict[str, object] = {
    "reasoning_tokens": 0,
    "usage_source": "estimated",
    "cost_usd": None,
    "price_usd": None,
    "price_version": None,
}


class ProvisionalEncoder(Protocol):
    """`encode_provisional`: the line of the provisional event of an exchange in flight
    (storage.usage.journal_open), given the value of every column but those `PROVISIONAL`
    fixes, in column order, each of the type `UsageEvent` gives it (checked when this module
    is loaded). It builds no `UsageEvent` (constructing one costs more than encoding it): this
    runs on the request path, before every metered request goes upstream and at each progress
    record of a stream. So the request path passes the values by position: nineteen keyword
    arguments cost CPython 3.11 about 0.7 us more per call, a quarter of the encoding itself."""

    def __call__(
        self,
        id: uuid.UUID,
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
    ) -> bytes: ...


_NAMESPACE = {
    "_dumps": orjson.dumps,
    "_NAIVE_UTC": orjson.OPT_NAIVE_UTC,
    "_text": _text,
    "_plain": _plain,
    "_metadata": _metadata,
}


def _field(column: Column, value: str) -> str:
    return column.written_as.replace("VALUE", value)


def _format(column: Column, value: object) -> str:
    """One column's text for `value`, as the compiled encoders write it."""
    return str(eval(f'f"{_field(column, "value")}"', dict(_NAMESPACE), {"value": value}))


def _compile(name: str, parameters: str, values: dict[str, str], fixed: dict[str, str]) -> Any:
    """A function `name(parameters)` returning the encoded line: one f-string of every column
    in order, the value of column c the expression values[c], or for a fixed column its text
    fixed[c]. As fast as the same f-string written by hand; the slow reference it replaces,
    the hand-written encoders of the format's first version, is checked against it
    byte for byte in tests/test_journal_columns.py."""
    parts = []
    for column in COLUMNS:
        if column.name in fixed:
            text = fixed[column.name].encode("unicode_escape").decode("ascii")
            parts.append(text.replace('"', '\\"').replace("{", "{{").replace("}", "}}"))
        else:
            parts.append(_field(column, values[column.name]))
    line = "\\t".join(parts) + "\\n"
    source = f'def {name}({parameters}):\n    return f"{line}".encode("utf-8", "surrogatepass")\n'
    filename = f"<{__name__}.{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = dict(_NAMESPACE)
    exec(compile(source, filename, "exec"), namespace)
    function = namespace[name]
    function.__module__ = __name__
    return function


def _compile_event() -> Callable[[UsageEvent], bytes]:
    encode: Callable[[UsageEvent], bytes] = _compile(
        "encode_event", "e", {c.name: f"e.{c.name}" for c in COLUMNS}, {}
    )
    encode.__doc__ = "One journal line (with its newline) in the column order of `header()`."
    return encode


def _compile_provisional() -> ProvisionalEncoder:
    given = get_type_hints(ProvisionalEncoder.__call__)
    given.pop("return")
    column_of = {c.name: c for c in COLUMNS}
    types = {name: c.type for name, c in column_of.items()}
    if list(given) != [name for name in types if name not in PROVISIONAL]:
        raise TypeError("ProvisionalEncoder must take the columns PROVISIONAL does not fix")
    if any(given[name] != types[name] for name in given):
        raise TypeError("ProvisionalEncoder must type each column as UsageEvent does")
    fixed = {name: _format(column_of[name], value) for name, value in PROVISIONAL.items()}
    encode: ProvisionalEncoder = _compile(
        "encode_provisional", ", ".join(given), {name: name for name in given}, fixed
    )
    encode.__doc__ = ProvisionalEncoder.__doc__
    return encode


encode_event = _compile_event()
encode_provisional = _compile_provisional()


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
