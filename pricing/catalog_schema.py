"""The catalog's YAML shape, validated into `ModelPrice` periods: every rule a price must obey.

One model entry is its current prices plus, under `history:`, its earlier price periods:

    o3:
      provider: openai
      effective_from: "2025-06-10"      # when the current prices started (optional)
      input_per_mtok: "2.00"
      output_per_mtok: "8.00"
      history:                          # earlier periods, each complete on its own
        - {effective_from: "2025-04-16", input_per_mtok: "10.00", output_per_mtok: "40.00"}

`parse_periods` turns one entry into its periods, oldest first; `parse_amount` is the one check
every price (catalog or config override) goes through. Used by `pricing.catalog` (the packaged
file) and `pricing.overrides` (operator overrides from config.yaml).

How it fails: `CatalogError`, whose message names the model, the field and what to write
instead. A price must be a quoted decimal string (a YAML float is already a rounded binary
value); a non-zero per-1M-tokens price below 0.0001 is refused as a per-token price written
into a per-1M field; unknown fields are refused (a typo must not price tokens at the input
price); periods must have distinct dates, only the oldest may omit `effective_from`, and the
current prices must be the newest period.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pricing.models import LongContextPrice, ModelPrice


class CatalogError(ValueError):
    """The price catalog is malformed; the message names the model, the field and the fix."""


# A real per-1M-token list price is at least a hundredth of a cent; a per-token price
# (e.g. 0.0000025 for $2.50/1M) is far below that.
MIN_NONZERO_PER_MTOK = Decimal("0.0001")
VERSION_FORM = re.compile(r"^[A-Za-z0-9._-]+$")

PER_MTOK_FIELDS = (
    "input_per_mtok",
    "output_per_mtok",
    "cached_input_per_mtok",
    "cache_write_per_mtok",
    "cache_write_1h_per_mtok",
)
FLAT_FIELDS = ("per_request_usd", "per_second_usd")
REQUIRED_PRICES = ("input_per_mtok", "output_per_mtok")
PERIOD_FIELDS = frozenset({"effective_from", "long_context", *PER_MTOK_FIELDS, *FLAT_FIELDS})
MODEL_FIELDS = frozenset({"provider", "aliases", "history", *PERIOD_FIELDS})
LONG_CONTEXT_FIELDS = frozenset({"above_input_tokens", *PER_MTOK_FIELDS})


def parse_periods(name: str, entry: Any, where: str) -> tuple[ModelPrice, ...]:
    """Every price period of one catalog entry, oldest first."""
    if not isinstance(entry, Mapping):
        raise CatalogError(f"{where}: must be a mapping of fields, got {entry!r}")
    refuse_unknown(entry, MODEL_FIELDS, where)
    provider = entry.get("provider")
    if not isinstance(provider, str) or not provider:
        raise CatalogError(f'{where}.provider: required, a provider name such as "openai"')
    history = entry.get("history") or []
    if not isinstance(history, list):
        raise CatalogError(f"{where}.history: must be a list of earlier price periods")
    earlier = []
    for i, period in enumerate(history):
        here = f"{where}.history[{i}]"
        if not isinstance(period, Mapping):
            raise CatalogError(f"{here}: must be a mapping of prices, got {period!r}")
        refuse_unknown(period, PERIOD_FIELDS, here)
        earlier.append(parse_period(name, provider, period, here))
    current = parse_period(name, provider, entry, where)
    periods = sorted(earlier, key=_period_order)
    _check_dates(periods, current, where)
    return (*periods, current)


def parse_period(name: str, provider: str, entry: Mapping[str, Any], where: str) -> ModelPrice:
    """One price period: the price fields of `entry` (other fields are the caller's)."""
    amounts = parse_prices(entry, where, required=REQUIRED_PRICES)
    flat = {
        field: parse_amount(entry[field], f"{where}.{field}", per_mtok=False)
        for field in FLAT_FIELDS
        if entry.get(field) is not None
    }
    long_context = None
    if entry.get("long_context") is not None:
        long_context = parse_long_context(entry["long_context"], f"{where}.long_context")
    effective_from = None
    if entry.get("effective_from") is not None:
        effective_from = parse_effective_from(entry["effective_from"], f"{where}.effective_from")
    return ModelPrice(
        model=name,
        provider=provider,
        input_per_mtok=amounts["input_per_mtok"],
        output_per_mtok=amounts["output_per_mtok"],
        cached_input_per_mtok=amounts.get("cached_input_per_mtok"),
        cache_write_per_mtok=amounts.get("cache_write_per_mtok"),
        cache_write_1h_per_mtok=amounts.get("cache_write_1h_per_mtok"),
        long_context=long_context,
        per_request_usd=flat.get("per_request_usd", Decimal(0)),
        per_second_usd=flat.get("per_second_usd", Decimal(0)),
        effective_from=effective_from,
    )


def parse_long_context(entry: Any, where: str) -> LongContextPrice:
    if not isinstance(entry, Mapping):
        raise CatalogError(f"{where}: must be a mapping of fields, got {entry!r}")
    refuse_unknown(entry, LONG_CONTEXT_FIELDS, where)
    threshold = entry.get("above_input_tokens")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= 0:
        raise CatalogError(
            f"{where}.above_input_tokens: got {threshold!r}; write a positive whole number "
            f"of prompt tokens, e.g. 200000"
        )
    amounts = parse_prices(entry, where, required=REQUIRED_PRICES)
    return LongContextPrice(
        above_input_tokens=threshold,
        input_per_mtok=amounts["input_per_mtok"],
        output_per_mtok=amounts["output_per_mtok"],
        cached_input_per_mtok=amounts.get("cached_input_per_mtok"),
        cache_write_per_mtok=amounts.get("cache_write_per_mtok"),
        cache_write_1h_per_mtok=amounts.get("cache_write_1h_per_mtok"),
    )


def parse_prices(
    entry: Mapping[str, Any], where: str, *, required: tuple[str, ...]
) -> dict[str, Decimal]:
    """The per-1M-token prices present in `entry`; each of `required` must be there."""
    for field in required:
        if entry.get(field) is None:
            raise CatalogError(f"{where}.{field}: required, USD per 1M tokens as a quoted string")
    return {
        field: parse_amount(entry[field], f"{where}.{field}")
        for field in PER_MTOK_FIELDS
        if entry.get(field) is not None
    }


def parse_amount(value: Any, where: str, *, per_mtok: bool = True) -> Decimal:
    """A price: a quoted decimal string (or an int or Decimal), finite and >= 0.

    With `per_mtok`, a non-zero value below 0.0001 is refused as a per-token price.
    """
    unit = "USD per 1M tokens" if per_mtok else "USD"
    if isinstance(value, float):
        raise CatalogError(
            f'{where}: got the float {value!r}; write prices as quoted strings, e.g. "{value}", '
            f"so they stay exact"
        )
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise CatalogError(f"{where}: got {value!r}; write {unit} as a quoted string")
    try:
        amount = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise CatalogError(f"{where}: {value!r} is not a decimal number") from None
    if not amount.is_finite() or amount < 0:
        raise CatalogError(f"{where}: got {value!r}; a price is a finite amount >= 0")
    if per_mtok and 0 < amount < MIN_NONZERO_PER_MTOK:
        raise CatalogError(
            f"{where}: {value!r} looks like a per-token price; this field is USD per 1M "
            f'tokens (multiply by 1,000,000, e.g. 0.0000025 -> "2.50")'
        )
    return amount


def parse_effective_from(value: Any, where: str) -> datetime:
    """A date ("2025-06-10", midnight UTC) or an ISO time with its offset, as UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, str):
        moment = _parse_time_text(value, where)
    else:
        raise CatalogError(f'{where}: got {value!r}; write a date as "YYYY-MM-DD"')
    if moment.tzinfo is None:
        raise CatalogError(
            f'{where}: {value!r} has no time zone; add one (e.g. "Z") or write a date only'
        )
    return moment.astimezone(UTC)


def _parse_time_text(value: str, where: str) -> datetime:
    text = value.strip()
    try:
        if len(text) == len("YYYY-MM-DD"):
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        return datetime.fromisoformat(text)
    except ValueError:
        raise CatalogError(
            f'{where}: {value!r} is not a date; write "YYYY-MM-DD" (midnight UTC) or an '
            f'ISO time with its offset, e.g. "2025-06-10T17:00:00Z"'
        ) from None


def aliases_of(entry: Mapping[str, Any], where: str) -> list[str]:
    aliases = entry.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise CatalogError(f"{where}.aliases: must be a list of model names, got {aliases!r}")
    return list(aliases)


def refuse_unknown(entry: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in entry if k not in allowed)
    if unknown:
        raise CatalogError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _period_order(price: ModelPrice) -> datetime:
    return price.effective_from or datetime.min.replace(tzinfo=UTC)


def _check_dates(earlier: list[ModelPrice], current: ModelPrice, where: str) -> None:
    if not earlier:
        return
    if current.effective_from is None:
        raise CatalogError(
            f"{where}.effective_from: required when the model has a history: the date its "
            f'current prices started, e.g. "2025-06-10"'
        )
    undated = [p for p in earlier if p.effective_from is None]
    if len(undated) > 1:
        raise CatalogError(
            f"{where}.history: only the oldest period may omit effective_from ({len(undated)} do)"
        )
    dates = [p.effective_from for p in earlier if p.effective_from is not None]
    if len(set(dates)) != len(dates):
        raise CatalogError(f"{where}.history: two periods have the same effective_from")
    if dates and max(dates) >= current.effective_from:
        raise CatalogError(
            f"{where}.effective_from: the current prices must be the newest period, but "
            f"history has one from {max(dates):%Y-%m-%d %H:%M}Z; move it out of history"
        )
