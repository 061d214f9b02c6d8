"""How numbers are shown on the pages: exact values for machines, readable text for people.

A headline figure is `<span data-metric="NAME" data-value="EXACT">HUMAN</span>` (the
`figure` macro in templates/macros.html): `data-value` holds the integer's digits or the
money's exact decimal string as stored; the human text may group digits or round money to
cents, and its `title` shows the exact amount. These filters make the human text; they never
feed a value back into a computation. Money is Decimal throughout, never float.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from storage.reports.usage_queries import decimal_str

_CENT = Decimal("0.01")


def exact(value: int | Decimal | None) -> str:
    """The machine form: digits for an integer, the decimal's own string (no exponent)."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(int(value))


def digits(value: int | None) -> str:
    """An integer with thousands separators: 1234567 -> '1,234,567'."""
    return "" if value is None else f"{int(value):,}"


def usd(value: Decimal | None) -> str:
    """Money for people: '$1,234.57'; under a cent but not zero, the exact amount."""
    if value is None:
        return ""
    if value != 0 and abs(value) < _CENT:
        return f"${format(value.normalize(), 'f')}"
    return f"${value.quantize(_CENT, ROUND_HALF_EVEN):,}"


def tokens(value: int | None) -> str:
    """A token count, compact: 1234 -> '1,234'; 12_345_678 -> '12.3M'."""
    if value is None:
        return ""
    n = int(value)
    if abs(n) >= 10_000_000:
        return f"{n / 1_000_000:.1f}M"
    return f"{n:,}"


def money(value: Decimal | None) -> str:
    """Money as `tollbooth usage export` writes it: exact, no trailing zeros ('0.0012')."""
    return "" if value is None else decimal_str(value)


def amount(value: Decimal | int | None) -> str:
    """A quantity with thousands separators and no trailing zeros: 10000000 -> '10,000,000'."""
    if value is None:
        return ""
    number = Decimal(value)
    if number == number.to_integral_value():
        return f"{int(number):,}"
    return format(number.normalize(), ",f")


FILTERS: dict[str, Callable[..., Any]] = {
    "exact": exact,
    "digits": digits,
    "usd": usd,
    "tokens": tokens,
    "amount": amount,
    "money": money,
}
