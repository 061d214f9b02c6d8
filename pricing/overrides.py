"""Operator price overrides (`pricing.models` in config.yaml), laid over the catalog.

`apply_overrides(catalog, overrides)` returns a new `Catalog` (same version, new fingerprint):
- a key that is a catalog model or one of its aliases changes that model: each price field
  given replaces the catalog's value in every price period of the model (an override is the
  operator's price at every date; dated changes belong in the catalog's `history:`). Base
  prices and `long_context` are separate: overriding `input_per_mtok` leaves the long-context
  prices as they are; give `long_context:` (the whole table) to replace those. `aliases` are
  added to the model's names;
- any other key adds a model (e.g. a self-hosted one, or a dated snapshot priced apart from its
  family, which then wins over the snapshot-stripping rule): it needs `provider`,
  `input_per_mtok` and `output_per_mtok`, like a catalog entry.
`check_override(name, entry)` validates one entry's shape and values without a catalog; the
config loader runs it so a bad override is refused when the file is read.

How it fails: `CatalogError` naming `pricing.models.<model>.<field>`, with the same rules as
the catalog (quoted decimal strings, no per-token values in per-1M fields, no unknown fields).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pricing.catalog import Catalog, register_names
from pricing.catalog_schema import (
    FLAT_FIELDS,
    PER_MTOK_FIELDS,
    REQUIRED_PRICES,
    CatalogError,
    aliases_of,
    parse_amount,
    parse_long_context,
    parse_period,
    parse_prices,
    refuse_unknown,
)
from pricing.models import ModelPrice

OVERRIDE_FIELDS = frozenset({"provider", "aliases", "long_context", *PER_MTOK_FIELDS, *FLAT_FIELDS})
OVERRIDES_PATH = "pricing.models"


def check_override(name: str, entry: Any, where: str | None = None) -> None:
    """Validate one override's fields and values (not whether its model exists)."""
    here = where or f"{OVERRIDES_PATH}.{name}"
    if not isinstance(entry, Mapping):
        raise CatalogError(f"{here}: must be a mapping of prices, got {entry!r}")
    _changes(entry, here)
    if entry.get("provider") is not None and not isinstance(entry["provider"], str):
        raise CatalogError(f"{here}.provider: must be a provider name, got {entry['provider']!r}")
    aliases_of(entry, here)


def apply_overrides(catalog: Catalog, overrides: Mapping[str, Mapping[str, Any]]) -> Catalog:
    """The catalog with `overrides` applied; the catalog itself is not changed."""
    if not overrides:
        return catalog
    periods = dict(catalog.all_periods())
    names = dict(catalog.all_names())
    for name, entry in overrides.items():
        where = f"{OVERRIDES_PATH}.{name}"
        check_override(name, entry, where)
        target = names.get(name)
        if target is not None:
            periods[target] = _changed(periods[target], entry, where)
            register_names(names, target, aliases_of(entry, where), where)
            continue
        periods[name] = (_new_model(catalog, name, entry, where),)
        register_names(names, name, aliases_of(entry, where), where)
    return catalog.with_periods(periods, names)


def _changes(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    refuse_unknown(entry, OVERRIDE_FIELDS, where)
    changes: dict[str, Any] = dict(parse_prices(entry, where, required=()))
    for field in FLAT_FIELDS:
        if entry.get(field) is not None:
            changes[field] = parse_amount(entry[field], f"{where}.{field}", per_mtok=False)
    if entry.get("long_context") is not None:
        changes["long_context"] = parse_long_context(entry["long_context"], f"{where}.long_context")
    if entry.get("provider") is not None:
        changes["provider"] = entry["provider"]
    return changes


def _changed(
    periods: tuple[ModelPrice, ...], entry: Mapping[str, Any], where: str
) -> tuple[ModelPrice, ...]:
    changes = _changes(entry, where)
    return tuple(dataclasses.replace(period, **changes) for period in periods)


def _new_model(catalog: Catalog, name: str, entry: Mapping[str, Any], where: str) -> ModelPrice:
    missing = [f for f in ("provider", *REQUIRED_PRICES) if entry.get(f) is None]
    if missing:
        family = catalog.canonical_name(name)
        hint = (
            f"it is not in the catalog (as a dated snapshot it would resolve to {family!r}: "
            f"override {family!r} instead, or price it on its own)"
            if family is not None
            else "it is not in the catalog, so the override adds a model"
        )
        raise CatalogError(f"{where}: {hint}; add {', '.join(missing)}")
    return parse_period(name, str(entry["provider"]), entry, where)
