"""A record of Tollbooth's own export (`usage export --format csv|json`) as an event's columns.

The fields are the `usage_events` columns (UsageEvent.COLUMNS). `created_at`, `customer_id`
and `model` are required; a missing column takes the value the gateway would have stored
for an unknown: no project or user, key `imported`, provider `unknown`, status 200, zero
tokens, `usage_source` provider, no money, latency 0, metadata {}. `tier` missing or empty
is left "" for the importer to fill with the customer's tier. In CSV an empty cell of a
nullable column is NULL (as the export writes it); in JSON, null is.

Identity: a row's `id` is its event id; a row without one gets `derived_id`, a UUIDv5 over
the source name and the canonical text of every other field, so the same row read again,
from this file or a new export of the same source, gets the same id and is skipped.

`mark_imported` adds the import's marks to the columns: `metadata.imported` = the source
(kept when the row already has one: re-importing an export of imported rows changes
nothing) and, when the file's money is kept, `price_version` = `imported:<the row's
price_version, else the source>`.

Failure semantics: `tollbooth_values` raises storage.imports.values.RowError with the field
and the reason; nothing here does I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from storage.accounts import CUSTOMER_ID_PATTERN
from storage.imports import values as v
from storage.usage.event import UsageEvent

# Fixed forever: derived ids depend on it.
IMPORT_NAMESPACE = uuid.UUID("0d7f3c8e-2b1a-5e4f-9c6d-7a8b9c0d1e2f")
IMPORTED_PREFIX = "imported:"
DEFAULT_KEY_ID = "imported"
DEFAULT_PROVIDER = "unknown"
_KNOWN = frozenset(UsageEvent.COLUMNS)
_REQUIRED = ("created_at", "customer_id", "model")
_USAGE_SOURCES = frozenset({"provider", "estimated"})


def _canonical(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return str(value)


def derived_id(source: str, values: dict[str, Any]) -> uuid.UUID:
    """A deterministic id for a row that has none: its source and fields, canonically."""
    parts = [source] + [f"{name}={_canonical(values[name])}" for name in sorted(values)]
    return uuid.uuid5(IMPORT_NAMESPACE, "\x1f".join(parts))


def customer_id(value: Any, name: str = "customer_id") -> str:
    found = v.required_text(value, name, empty_is_null=True)
    if not CUSTOMER_ID_PATTERN.fullmatch(found):
        raise v.RowError(
            f"{name}: {found[:70]!r} is not a customer id (1 to 64 of A-Z a-z 0-9 _ . -)"
        )
    return found


def _count(fields: dict[str, Any], name: str, csv: bool, high: int = v.BIGINT_MAX) -> int:
    raw = fields.get(name)
    if raw is None or (csv and raw == ""):
        return 0
    return v.integer(raw, name, high=high)


def _opt(fields: dict[str, Any], name: str, csv: bool) -> str | None:
    return v.text(fields.get(name), name, nullable=True, empty_is_null=csv)


def _req(fields: dict[str, Any], name: str, default: str) -> str:
    return default if name not in fields else v.required_text(fields[name], name)


def tollbooth_values(fields: dict[str, Any], *, csv: bool, now: datetime) -> dict[str, Any]:
    """The columns (UsageEvent's fields) of the event a record of Tollbooth's export
    describes; RowError if it cannot be stored. (A dict: building the event once, after the
    importer's changes, is a third of the cost of a row.)"""
    unknown = fields.keys() - _KNOWN
    if unknown:
        raise v.RowError(f"unknown field(s): {', '.join(sorted(unknown))}")
    for name in _REQUIRED:
        if fields.get(name) in (None, ""):
            raise v.RowError(f"{name}: required")
    usage_source = _req(fields, "usage_source", "provider")
    if usage_source not in _USAGE_SOURCES:
        raise v.RowError(f"usage_source: expected provider or estimated, got {usage_source!r}")
    status = fields.get("status_code")
    streamed = fields.get("streamed")
    values: dict[str, Any] = {
        "created_at": v.moment(fields["created_at"], "created_at", now=now),
        "customer_id": customer_id(fields["customer_id"]),
        "project_id": _opt(fields, "project_id", csv),
        "user_id": _opt(fields, "user_id", csv),
        "key_id": _req(fields, "key_id", DEFAULT_KEY_ID),
        "tier": _req(fields, "tier", ""),
        "provider": _req(fields, "provider", DEFAULT_PROVIDER),
        "model": v.required_text(fields["model"], "model"),
        "endpoint": _req(fields, "endpoint", ""),
        "status_code": 200
        if status in (None, "")
        else v.integer(status, "status_code", low=100, high=599),
        "streamed": False if streamed in (None, "") else v.boolean(streamed, "streamed"),
        "input_tokens": _count(fields, "input_tokens", csv),
        "output_tokens": _count(fields, "output_tokens", csv),
        "cached_input_tokens": _count(fields, "cached_input_tokens", csv),
        "cache_write_tokens": _count(fields, "cache_write_tokens", csv),
        "reasoning_tokens": _count(fields, "reasoning_tokens", csv),
        "usage_source": usage_source,
        "cost_usd": v.decimal(fields.get("cost_usd"), "cost_usd"),
        "price_usd": v.decimal(fields.get("price_usd"), "price_usd"),
        "price_version": _opt(fields, "price_version", csv),
        "latency_ms": _count(fields, "latency_ms", csv, high=v.INT_MAX),
        "upstream_request_id": _opt(fields, "upstream_request_id", csv),
        "metadata": v.json_object(fields.get("metadata"), "metadata"),
    }
    values["id"] = v.event_id(fields.get("id")) or derived_id("tollbooth", values)
    return values


def tollbooth_event(fields: dict[str, Any], *, csv: bool, now: datetime) -> UsageEvent:
    """`tollbooth_values` as a UsageEvent."""
    return UsageEvent(**tollbooth_values(fields, csv=csv, now=now))


def mark_imported(values: dict[str, Any], source: str, *, money_kept: bool) -> None:
    """Add the import's marks to an event's columns, in place (see the module docstring)."""
    metadata = values["metadata"]
    if metadata.get("imported") is None:
        values["metadata"] = {**metadata, "imported": source}
    version = values["price_version"]
    if money_kept and not (version or "").startswith(IMPORTED_PREFIX):
        values["price_version"] = IMPORTED_PREFIX + (version or source)


RowConverter = Callable[[dict[str, Any]], UsageEvent]
