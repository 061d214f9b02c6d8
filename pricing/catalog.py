"""The price catalog: provider list prices per model, loaded from `pricing/data/catalog.yaml`.

`Catalog.load_default()` reads the packaged file once (through importlib.resources, so it
works from a wheel) and caches it; `Catalog.from_mapping(data)` builds one from any parsed
mapping (tests, operator overrides). `catalog.lookup(model)` resolves a request's model name
to its `ModelPrice`: first the exact name or an `aliases:` entry, then the name with a dated
snapshot suffix (-YYYY-MM-DD, -YYYYMMDD) or -latest stripped; anything else is None (unknown;
the gateway decides whether to reject or record it unpriced).

How it fails: a malformed catalog raises `CatalogError` at load time, never at lookup time.
The message names the model and the field and says what to write instead. Prices must be
written as quoted strings: a YAML float (2.5) is refused because it is already a rounded
binary value, and a non-zero price below 0.0001 is refused because it is almost surely a
per-token price written into a per-1M-tokens field. Unknown fields are refused so that a
typo (`cache_read_per_mtok`) cannot silently price tokens at the input price.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from pricing.models import LongContextPrice, ModelPrice

_DATA_PACKAGE = "pricing"
_DATA_PATH = ("data", "catalog.yaml")

# A real per-1M-token list price is at least a hundredth of a cent; a per-token price
# (e.g. 0.0000025 for $2.50/1M) is far below that.
_MIN_NONZERO_PER_MTOK = Decimal("0.0001")
# "-2024-08-06", "-20250929", "-latest" at the end of a model name.
_SNAPSHOT_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")
_VERSION_FORM = re.compile(r"^[A-Za-z0-9._-]+$")

_PRICE_FIELDS = (
    "input_per_mtok",
    "output_per_mtok",
    "cached_input_per_mtok",
    "cache_write_per_mtok",
)
_REQUIRED_PRICES = ("input_per_mtok", "output_per_mtok")
_MODEL_FIELDS = frozenset({"provider", "aliases", "long_context", *_PRICE_FIELDS})
_LONG_CONTEXT_FIELDS = frozenset({"above_input_tokens", *_PRICE_FIELDS})
_TOP_FIELDS = frozenset({"version", "models"})


class CatalogError(ValueError):
    """The price catalog is malformed; the message names the model, the field and the fix."""


class Catalog:
    """An immutable set of model prices with one version string."""

    def __init__(self, version: str, prices: Mapping[str, ModelPrice], names: Mapping[str, str]):
        # `names` maps every canonical name and alias to its canonical name.
        self._version = version
        self._prices = MappingProxyType(dict(prices))
        self._names = MappingProxyType(dict(names))

    @classmethod
    def load_default(cls) -> Catalog:
        """The packaged catalog, read and validated once per process."""
        return _load_default()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "catalog") -> Catalog:
        """Validate a parsed catalog (the YAML's shape) into a Catalog; raises CatalogError."""
        return _parse(data, source)

    @property
    def version(self) -> str:
        return self._version

    def lookup(self, model: str) -> ModelPrice | None:
        """The price of `model`, resolving aliases and dated snapshots; None if unknown."""
        canonical = self._names.get(model)
        if canonical is None:
            stripped = _SNAPSHOT_SUFFIX.sub("", model)
            if stripped != model:
                canonical = self._names.get(stripped)
        return None if canonical is None else self._prices[canonical]

    def models(self) -> list[ModelPrice]:
        """Every priced model, in catalog order."""
        return list(self._prices.values())

    def __repr__(self) -> str:
        return f"Catalog(version={self._version!r}, models={len(self._prices)})"


@functools.lru_cache(maxsize=1)
def _load_default() -> Catalog:
    resource = resources.files(_DATA_PACKAGE).joinpath(*_DATA_PATH)
    source = "pricing/data/catalog.yaml"
    try:
        data = yaml.safe_load(resource.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise CatalogError(f"{source}: the top level must be a mapping with version and models")
    return _parse(data, source)


def _parse(data: Mapping[str, Any], source: str) -> Catalog:
    unknown = sorted(str(k) for k in data if k not in _TOP_FIELDS)
    if unknown:
        raise CatalogError(f"{source}: unknown top-level field(s) {', '.join(unknown)}")
    version = data.get("version")
    if not isinstance(version, str) or not _VERSION_FORM.match(version):
        raise CatalogError(
            f"{source}: version: got {version!r}; write a quoted string of letters, digits, "
            f"'.', '-' or '_', e.g. \"2026-11-01\""
        )
    models = data.get("models")
    if not isinstance(models, Mapping) or not models:
        raise CatalogError(f"{source}: models: must be a non-empty mapping of model name to prices")

    prices: dict[str, ModelPrice] = {}
    names: dict[str, str] = {}
    for name, entry in models.items():
        if not isinstance(name, str) or not name:
            raise CatalogError(f"{source}: models: model names must be strings, got {name!r}")
        where = f"{source}: models.{name}"
        price = _parse_model(name, entry, where)
        prices[name] = price
        for known in (name, *_aliases(entry, where)):
            if known in names:
                raise CatalogError(
                    f"{where}: the name {known!r} is already used by model {names[known]!r}; "
                    f"a name or alias may price only one model"
                )
            names[known] = name
    return Catalog(version, prices, names)


def _parse_model(name: str, entry: Any, where: str) -> ModelPrice:
    if not isinstance(entry, Mapping):
        raise CatalogError(f"{where}: must be a mapping of fields, got {entry!r}")
    _refuse_unknown(entry, _MODEL_FIELDS, where)
    provider = entry.get("provider")
    if not isinstance(provider, str) or not provider:
        raise CatalogError(f"{where}.provider: required, a provider name such as \"openai\"")
    amounts = _parse_prices(entry, where)
    long_context = None
    if entry.get("long_context") is not None:
        long_context = _parse_long_context(entry["long_context"], f"{where}.long_context")
    return ModelPrice(
        model=name,
        provider=provider,
        input_per_mtok=_required(amounts, "input_per_mtok"),
        output_per_mtok=_required(amounts, "output_per_mtok"),
        cached_input_per_mtok=amounts.get("cached_input_per_mtok"),
        cache_write_per_mtok=amounts.get("cache_write_per_mtok"),
        long_context=long_context,
    )


def _parse_long_context(entry: Any, where: str) -> LongContextPrice:
    if not isinstance(entry, Mapping):
        raise CatalogError(f"{where}: must be a mapping of fields, got {entry!r}")
    _refuse_unknown(entry, _LONG_CONTEXT_FIELDS, where)
    threshold = entry.get("above_input_tokens")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= 0:
        raise CatalogError(
            f"{where}.above_input_tokens: got {threshold!r}; write a positive whole number "
            f"of prompt tokens, e.g. 200000"
        )
    amounts = _parse_prices(entry, where)
    return LongContextPrice(
        above_input_tokens=threshold,
        input_per_mtok=_required(amounts, "input_per_mtok"),
        output_per_mtok=_required(amounts, "output_per_mtok"),
        cached_input_per_mtok=amounts.get("cached_input_per_mtok"),
        cache_write_per_mtok=amounts.get("cache_write_per_mtok"),
    )


def _parse_prices(entry: Mapping[str, Any], where: str) -> dict[str, Decimal]:
    for field in _REQUIRED_PRICES:
        if entry.get(field) is None:
            raise CatalogError(f"{where}.{field}: required, USD per 1M tokens as a quoted string")
    return {
        field: _parse_amount(entry[field], f"{where}.{field}")
        for field in _PRICE_FIELDS
        if entry.get(field) is not None
    }


def _parse_amount(value: Any, where: str) -> Decimal:
    if isinstance(value, float):
        raise CatalogError(
            f"{where}: got the float {value!r}; write prices as quoted strings, e.g. \"{value}\", "
            f"so they stay exact"
        )
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise CatalogError(f"{where}: got {value!r}; write USD per 1M tokens as a quoted string")
    try:
        amount = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise CatalogError(f"{where}: {value!r} is not a decimal number") from None
    if not amount.is_finite() or amount < 0:
        raise CatalogError(f"{where}: got {value!r}; a price is a finite amount >= 0")
    if 0 < amount < _MIN_NONZERO_PER_MTOK:
        raise CatalogError(
            f"{where}: {value!r} looks like a per-token price; this field is USD per 1M "
            f"tokens (multiply by 1,000,000, e.g. 0.0000025 -> \"2.50\")"
        )
    return amount


def _aliases(entry: Mapping[str, Any], where: str) -> list[str]:
    aliases = entry.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise CatalogError(f"{where}.aliases: must be a list of model names, got {aliases!r}")
    return list(aliases)


def _refuse_unknown(entry: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in entry if k not in allowed)
    if unknown:
        raise CatalogError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _required(amounts: Mapping[str, Decimal], field: str) -> Decimal:
    # _parse_prices has already refused a missing required field.
    return amounts[field]
