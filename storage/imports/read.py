"""Records of a usage file to import, read one at a time with the line each starts on.

Three shapes, all streamed (memory holds one chunk of the file, never the whole of it):

- `csv`: a header row naming the columns, then one record per row (quoted fields may span
  lines; a record's line is the line it starts on). Every value is a string; an empty cell
  is "".
- `jsonl`: one JSON object per line; blank lines are skipped.
- `json`: one JSON array of objects, or an object holding it under `events` (what
  `tollbooth usage export --format json` writes) or `data` (LiteLLM's paged spend logs).

JSON numbers with a fraction or exponent are read as `Decimal`, never float, so money keeps
every digit it was written with. Failure semantics: a record that is not a JSON object, or
not valid JSON, comes back as a `SourceRecord` with `error` set and reading goes on (in a
`json` array, at the next line). A file that is not one of the shapes at all (no header, no
array, not UTF-8 text in its structure) raises `ImportFileError` before any record.
Bytes that are not UTF-8 inside values are kept as lone surrogates, for the row's
validation to refuse that row alone.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TextIO

FORMATS = ("csv", "json", "jsonl")
_CHUNK_CHARS = 1 << 20
_DECODER = json.JSONDecoder(parse_float=Decimal)
_ARRAY_START = re.compile(r'\s*\{.*?"(?:events|data)"\s*:\s*\[|\s*\[', re.DOTALL)
_SPACE = re.compile(r"[\s,]*")


class ImportFileError(Exception):
    """The file is not in the format it was said (or guessed) to be in."""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    line: int
    fields: dict[str, Any]  # empty when `error` is set
    error: str | None = None


def guess_format(path: str) -> str:
    """The format a file name says: .csv, .jsonl / .ndjson, .json; csv otherwise."""
    lower = path.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "json" if lower.endswith(".json") else "csv"


def read_records(handle: TextIO, fmt: str) -> Iterator[SourceRecord]:
    if fmt == "csv":
        return _csv_records(handle)
    if fmt == "jsonl":
        return _jsonl_records(handle)
    if fmt == "json":
        return _json_records(handle)
    raise ValueError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")


def _csv_records(handle: TextIO) -> Iterator[SourceRecord]:
    reader = csv.reader(handle, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise ImportFileError(f"line 1: not a CSV header ({exc})") from None
    names = [name.strip().lstrip("\ufeff") for name in header]  # a spreadsheet's BOM
    if not any(names) or len(set(names)) != len(names):
        raise ImportFileError("line 1: the CSV header must name each column once")
    width = len(names)
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield SourceRecord(start, {}, f"not valid CSV ({exc})")
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not row:
            continue
        if len(row) != width:
            yield SourceRecord(line, {}, f"{len(row)} fields, the header has {width}")
            continue
        yield SourceRecord(line, dict(zip(names, row, strict=True)))


def _object(line: int, value: Any) -> SourceRecord:
    if not isinstance(value, dict):
        return SourceRecord(line, {}, f"expected a JSON object, got {type(value).__name__}")
    return SourceRecord(line, value)


def _jsonl_records(handle: TextIO) -> Iterator[SourceRecord]:
    for number, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            value = _DECODER.decode(text)
        except json.JSONDecodeError as exc:
            yield SourceRecord(number, {}, f"not valid JSON ({exc.msg})")
            continue
        yield _object(number, value)


def _json_records(handle: TextIO) -> Iterator[SourceRecord]:
    """The elements of the file's array, streamed with `raw_decode` over a sliding buffer."""
    buffer = handle.read(_CHUNK_CHARS)
    found = _ARRAY_START.match(buffer)
    if found is None:
        raise ImportFileError(
            'not a JSON array of events, nor an object with an "events" or "data" array'
        )
    line = 1 + buffer.count("\n", 0, found.end())
    pos = found.end()
    eof = False
    while True:
        skip = _SPACE.match(buffer, pos)
        assert skip is not None  # the pattern matches the empty string
        line += buffer.count("\n", pos, skip.end())
        pos = skip.end()
        if len(buffer) - pos < _CHUNK_CHARS // 2 and not eof:
            more = handle.read(_CHUNK_CHARS)
            eof = not more
            buffer = buffer[pos:] + more
            pos = 0
            continue
        if pos >= len(buffer):
            raise ImportFileError(f"line {line}: the JSON array is not closed")
        if buffer[pos] == "]":
            return
        try:
            value, end = _DECODER.raw_decode(buffer, pos)
        except json.JSONDecodeError as exc:
            # Go on at the next line: an export holds one event per line.
            yield SourceRecord(line, {}, f"not valid JSON ({exc.msg})")
            newline = buffer.find("\n", pos)
            if newline < 0:
                raise ImportFileError(f"line {line}: the JSON array is not closed") from None
            line += 1
            pos = newline + 1
            continue
        yield _object(line, value)
        line += buffer.count("\n", pos, end)
        pos = end
