"""Field values of an imported usage row, checked one at a time: text, counts, money, times.

Every parser takes the raw value (a string from CSV; a string, int, bool, Decimal or None
from JSON) and the field's name, and returns the value `usage_events` stores, or raises
`RowError` naming the field, the value and what is wrong. Checks are the column types'
limits (bigint tokens, integer status and latency, NUMERIC(20, 10) money, text without NUL
characters), so a row that passes is never refused by PostgreSQL. Money is parsed from its
decimal text, never through float, and must fit NUMERIC(20, 10) exactly: a value that would
be rounded is refused (`decimal(..., round_to_column=True)` rounds it half to even instead,
for sources that store money as floats). Pure functions, no I/O.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import orjson

MONEY_PLACES = 10
_MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_PLACES)
_MONEY_LIMIT = Decimal(10) ** (20 - MONEY_PLACES)
BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1
_TRUE = frozenset({"true", "t", "1", "yes"})
_FALSE = frozenset({"false", "f", "0", "no"})


class RowError(ValueError):
    """A row cannot be imported; the message says which field and why."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def text(value: Any, name: str, *, nullable: bool, empty_is_null: bool) -> str | None:
    """A text column. `empty_is_null`: CSV writes NULL as an empty cell."""
    if type(value) is str and value and "\x00" not in value:  # the common case
        return value
    if value is None or (empty_is_null and value == ""):
        if nullable:
            return None
        raise RowError(f"{name}: required")
    if not isinstance(value, str):
        raise RowError(f"{name}: expected text, got {_shown(value)}")
    if "\x00" in value:
        raise RowError(f"{name}: holds a NUL character")
    return value


def required_text(value: Any, name: str, *, empty_is_null: bool = False) -> str:
    found = text(value, name, nullable=False, empty_is_null=empty_is_null)
    assert found is not None
    return found


def integer(value: Any, name: str, *, low: int = 0, high: int = BIGINT_MAX) -> int:
    if type(value) is str and value.isascii() and value.isdigit():  # the common case
        number = int(value)
        if number > high or number < low:
            raise RowError(f"{name}: {number} is out of range ({low} to {high})")
        return number
    if isinstance(value, bool):
        raise RowError(f"{name}: expected a whole number, got {_shown(value)}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        digits = value.strip()
        body = digits[1:] if digits[:1] == "-" else digits
        if not (body.isascii() and body.isdigit()):
            raise RowError(f"{name}: expected a whole number, got {_shown(value)}")
        number = int(digits)
    elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        number = int(value)
    else:
        raise RowError(f"{name}: expected a whole number, got {_shown(value)}")
    if not low <= number <= high:
        raise RowError(f"{name}: {number} is out of range ({low} to {high})")
    return number


def decimal(value: Any, name: str, *, round_to_column: bool = False) -> Decimal | None:
    """Money: NULL (None or an empty cell) or a non-negative amount NUMERIC(20, 10) holds."""
    if value is None or value == "":
        return None
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int) and not isinstance(value, bool):
        amount = Decimal(value)
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            raise RowError(f"{name}: {_shown(value)} is not a decimal number") from None
    else:
        raise RowError(f"{name}: expected a decimal amount, got {_shown(value)}")
    if not amount.is_finite() or amount < 0 or amount >= _MONEY_LIMIT:
        raise RowError(f"{name}: {_shown(value)} is not an amount from 0 to 10^10")
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if exponent >= -MONEY_PLACES:
        return amount
    rounded = amount.quantize(_MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)
    if rounded != amount and not round_to_column:
        raise RowError(f"{name}: {_shown(value)} has more than {MONEY_PLACES} decimal places")
    return rounded


def moment(value: Any, name: str, *, now: datetime) -> datetime:
    """An ISO 8601 time, UTC when it has no offset, not later than `now`."""
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"{name}: expected an ISO 8601 time, got {_shown(value)}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise RowError(f"{name}: {_shown(value)} is not an ISO 8601 time") from None
    at = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    if at > now:
        raise RowError(f"{name}: {at.isoformat()} is in the future")
    return at


def boolean(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise RowError(f"{name}: expected true or false, got {_shown(value)}")


def event_id(value: Any, name: str = "id") -> uuid.UUID | None:
    """A UUID, or None when the row has none (an empty cell, null)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RowError(f"{name}: expected a UUID, got {_shown(value)}")
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise RowError(f"{name}: {_shown(value)} is not a UUID") from None


def _plain_json(value: Any, name: str) -> Any:
    """JSON read with Decimal numbers made plain (as orjson reads them); NUL refused
    (jsonb cannot hold U+0000)."""
    if isinstance(value, dict):
        return {_plain_json(k, name): _plain_json(v, name) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v, name) for v in value]
    if isinstance(value, Decimal):
        return float(value)  # metadata, never money: stored as JSON reads it
    if isinstance(value, str) and "\x00" in value:
        raise RowError(f"{name}: holds a NUL character")
    return value


def json_object(value: Any, name: str) -> dict[str, Any]:
    """A JSON object: parsed already (JSON files) or JSON text (CSV); "" or null is {}."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        if "\\u0000" in value:
            raise RowError(f"{name}: holds a NUL character")
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise RowError(f"{name}: {_shown(value)} is not JSON") from None
        if not isinstance(value, dict):
            raise RowError(f"{name}: expected a JSON object")
        return value
    if not isinstance(value, dict):
        raise RowError(f"{name}: expected a JSON object, got {_shown(value)}")
    found: dict[str, Any] = _plain_json(value, name)
    return found
