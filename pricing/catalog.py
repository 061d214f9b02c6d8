"""The price catalog: provider list prices per model and date, from `pricing/data/catalog.yaml`.

`Catalog.load_default()` reads the packaged file once (through importlib.resources, so it
works from a wheel) and caches it; `Catalog.from_mapping(data)` builds one from any parsed
mapping (tests, operator overrides). `catalog.lookup(model, at)` resolves a request's model name
to the `ModelPrice` in force at `at` (default: now): first the exact name or an `aliases:`
entry, then the name with a dated snapshot suffix (-YYYY-MM-DD, -YYYYMMDD) or -latest stripped;
anything else is None (unknown; the gateway decides whether to reject or record it unpriced).

Price periods: a model has one or more periods, each starting at its `effective_from`. An event
at time `at` is priced by the newest period that started at or before `at`; the oldest period
also covers anything older than its own date, so a model never becomes unpriced by going back
in time. `version` is the file's `version:`; `fingerprint` is a hash of every price in the
catalog, so two catalogs with the same version but different prices can be told apart.

How it fails: a malformed catalog raises `CatalogError` at load time, never at lookup time; the
rules it enforces, and its messages, are in `pricing.catalog_schema`.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from pricing.catalog_schema import VERSION_FORM, CatalogError, aliases_of, parse_periods
from pricing.models import ModelPrice

__all__ = ["Catalog", "CatalogError"]

_DATA_PACKAGE = "pricing"
_DATA_PATH = ("data", "catalog.yaml")
_TOP_FIELDS = frozenset({"version", "models"})
# "-2024-08-06", "-20250929", "-latest" at the end of a model name.
_SNAPSHOT_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")
_FINGERPRINT_CHARS = 12
_RESOLVED_MAX = 4096


class Catalog:
    """An immutable set of model price periods with one version string."""

    def __init__(
        self,
        version: str,
        periods: Mapping[str, Sequence[ModelPrice]],
        names: Mapping[str, str],
    ):
        # `periods` maps each canonical name to its periods, oldest first; `names` maps every
        # canonical name and alias to its canonical name.
        for model, prices in periods.items():
            if not prices:
                raise CatalogError(f"models.{model}: has no price period")
        self._version = version
        self._periods = MappingProxyType({m: tuple(p) for m, p in periods.items()})
        self._starts = {
            model: [_start(p) for p in prices] for model, prices in self._periods.items()
        }
        self._names = MappingProxyType(dict(names))
        self._fingerprint = _fingerprint(self._periods, self._names)
        # Resolved names, looked up on every request. Bounded: a model name is the client's
        # string, and with `unknown_model: allow_unpriced` anything may arrive.
        self._resolved: dict[str, str | None] = {}

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

    @property
    def fingerprint(self) -> str:
        """A short hash of every price, name and date in the catalog."""
        return self._fingerprint

    def canonical_name(self, model: str) -> str | None:
        """The catalog entry `model` resolves to (aliases, dated snapshots); None if unknown."""
        try:
            return self._resolved[model]
        except KeyError:
            pass
        canonical = self._names.get(model)
        if canonical is None:
            stripped = _SNAPSHOT_SUFFIX.sub("", model)
            if stripped != model:
                canonical = self._names.get(stripped)
        if len(self._resolved) < _RESOLVED_MAX:
            self._resolved[model] = canonical
        return canonical

    def lookup(self, model: str, at: datetime | None = None) -> ModelPrice | None:
        """The price of `model` in force at `at` (default: now); None if the model is unknown."""
        canonical = self.canonical_name(model)
        if canonical is None:
            return None
        periods = self._periods[canonical]
        if len(periods) == 1:  # in force at any time: no clock to read
            if at is not None and at.tzinfo is None:
                _utc(at)  # raises
            return periods[0]
        when = _utc(at)
        index = bisect.bisect_right(self._starts[canonical], when) - 1
        return periods[max(index, 0)]

    def history(self, model: str) -> tuple[ModelPrice, ...]:
        """Every price period of `model` (resolved like `lookup`), oldest first; () if unknown."""
        canonical = self.canonical_name(model)
        return () if canonical is None else self._periods[canonical]

    def aliases(self, model: str) -> list[str]:
        """The other names of a canonical model (its `aliases:`)."""
        return [name for name, target in self._names.items() if target == model and name != model]

    def models(self, at: datetime | None = None) -> list[ModelPrice]:
        """Every priced model at `at` (default: now), one period each, in catalog order."""
        priced = [self.lookup(model, at) for model in self._periods]
        return [price for price in priced if price is not None]

    def with_periods(
        self, periods: Mapping[str, Sequence[ModelPrice]], names: Mapping[str, str]
    ) -> Catalog:
        """A catalog of the same version with these periods and names (for overrides)."""
        return Catalog(self._version, periods, names)

    def all_periods(self) -> Mapping[str, tuple[ModelPrice, ...]]:
        return self._periods

    def all_names(self) -> Mapping[str, str]:
        return self._names

    def __repr__(self) -> str:
        return f"Catalog(version={self._version!r}, models={len(self._periods)})"


_EPOCH = datetime.min.replace(tzinfo=UTC)


def _start(price: ModelPrice) -> datetime:
    return price.effective_from or _EPOCH


def _utc(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(UTC)
    if at.tzinfo is None:
        raise ValueError(f"a price lookup time must be timezone-aware, got {at!r}")
    return at


def _fingerprint(periods: Mapping[str, tuple[ModelPrice, ...]], names: Mapping[str, str]) -> str:
    # repr() of the frozen dataclasses is canonical enough: Decimals show their exact digits
    # (so "2.5" and "2.50" differ, which only makes a new version, never a wrong price).
    text = repr(sorted(periods.items())) + repr(sorted(names.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_FINGERPRINT_CHARS]


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
    if not isinstance(version, str) or not VERSION_FORM.match(version):
        raise CatalogError(
            f"{source}: version: got {version!r}; write a quoted string of letters, digits, "
            f"'.', '-' or '_', e.g. \"2026-11-01\""
        )
    models = data.get("models")
    if not isinstance(models, Mapping) or not models:
        raise CatalogError(f"{source}: models: must be a non-empty mapping of model name to prices")

    periods: dict[str, tuple[ModelPrice, ...]] = {}
    names: dict[str, str] = {}
    for name, entry in models.items():
        if not isinstance(name, str) or not name:
            raise CatalogError(f"{source}: models: model names must be strings, got {name!r}")
        where = f"{source}: models.{name}"
        periods[name] = parse_periods(name, entry, where)
        register_names(names, name, aliases_of(entry, where), where)
    return Catalog(version, periods, names)


def register_names(names: dict[str, str], model: str, aliases: list[str], where: str) -> None:
    """Add `model` and its aliases to `names`; a name may price only one model."""
    for known in (model, *aliases):
        if names.get(known, model) != model:
            raise CatalogError(
                f"{where}: the name {known!r} is already used by model {names[known]!r}; "
                f"a name or alias may price only one model"
            )
        names[known] = model
