"""`PricingRules`: the catalog (with overrides) plus the operator's rates, as one object.

The gateway builds one per config snapshot and asks it three things: the list price of a
model (`price`), the money of a finished request (`charge`), and the most a request could cost
before it runs (`max_charge`, for spend-cap reservations). Re-rating asks `charge` again for a
stored event, with the event's time, customer, tier, status and duration, and gets the same
answer the gateway would give today.

Rates: `markup_percent` (on the provider list price), `per_request_usd` (a fee per successful
request, a "task") and `per_compute_minute_usd` (a fee per minute of a successful request's
duration). Each is resolved on its own, most specific first: the customer's override, then
the customer's tier's, then the global value. A failed request (provider error) pays for the
tokens the provider reported, marked up, and no fees; with no tokens it costs nothing.

`version` says exactly what a charge was priced with: the catalog version plus a short hash of
every price in the catalog (overrides included) and every rate, e.g. ``2026-11-22+1f0c2a9e``.
It is stored on every usage event; a change to any price or rate gives a new version.

How it fails: an unknown model yields None (never a zero charge); the caller decides between
rejecting and recording it unpriced. A float, a non-finite amount, a negative fee or a markup
below -100% is refused with ValueError when the rules are built, so a running gateway never
prices with a bad rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from pricing.catalog import Catalog
from pricing.cost import (
    apply_markup,
    compute_fee,
    cost_of,
    max_cost_of,
    quantize_usd,
)
from pricing.models import Charge, ModelPrice, Usage
from pricing.tariff import Markup, PeriodTariff, quantize_scaled, within_bound

_HASH_CHARS = 8
_ZERO = Decimal(0)
# Rates resolved per (customer, tier) are cached; customer ids come from accounts, not from
# clients, but the cache is bounded all the same.
_RATES_CACHE_MAX = 65_536


@dataclass(frozen=True, slots=True)
class Rates:
    """The rates one request is priced with, after precedence is resolved."""

    markup_percent: Decimal = _ZERO
    per_request_usd: Decimal = _ZERO
    per_compute_minute_usd: Decimal = _ZERO

    def __post_init__(self) -> None:
        _check_rate(self.markup_percent, "markup_percent", minimum=Decimal(-100))
        _check_rate(self.per_request_usd, "per_request_usd", minimum=_ZERO)
        _check_rate(self.per_compute_minute_usd, "per_compute_minute_usd", minimum=_ZERO)


@dataclass(frozen=True, slots=True)
class RateOverride:
    """A tier's or a customer's rates; None leaves a rate to the next level down."""

    markup_percent: Decimal | None = None
    per_request_usd: Decimal | None = None
    per_compute_minute_usd: Decimal | None = None

    def __post_init__(self) -> None:
        if self.markup_percent is not None:
            _check_rate(self.markup_percent, "markup_percent", minimum=Decimal(-100))
        for name in ("per_request_usd", "per_compute_minute_usd"):
            value = getattr(self, name)
            if value is not None:
                _check_rate(value, name, minimum=_ZERO)

    def over(self, base: Rates) -> Rates:
        """These rates where set, `base`'s elsewhere."""
        return Rates(
            markup_percent=_pick(self.markup_percent, base.markup_percent),
            per_request_usd=_pick(self.per_request_usd, base.per_request_usd),
            per_compute_minute_usd=_pick(self.per_compute_minute_usd, base.per_compute_minute_usd),
        )


class PricingRules:
    """Prices requests: catalog list price, then markup and fees, customer > tier > global."""

    def __init__(
        self,
        catalog: Catalog,
        markup_percent: Decimal = _ZERO,
        per_request_usd: Decimal = _ZERO,
        *,
        per_compute_minute_usd: Decimal = _ZERO,
        tiers: Mapping[str, RateOverride] | None = None,
        customers: Mapping[str, RateOverride] | None = None,
    ):
        self._catalog = catalog
        self._global = Rates(markup_percent, per_request_usd, per_compute_minute_usd)
        self._tiers = dict(tiers or {})
        self._customers = dict(customers or {})
        self._version = f"{catalog.version}+{self._hash()}"
        # Caches of what never changes for this object (the catalog is immutable, the rate
        # tables are private copies); a config reload builds a new PricingRules.
        self._rates: dict[tuple[str | None, str | None], tuple[Rates, Markup | None]] = {}
        self._tariffs: dict[int, tuple[ModelPrice, PeriodTariff | None]] = {}

    @property
    def version(self) -> str:
        return self._version

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def markup_percent(self) -> Decimal:
        return self._global.markup_percent

    @property
    def per_request_usd(self) -> Decimal:
        return self._global.per_request_usd

    def rates_for(self, customer_id: str | None = None, tier: str | None = None) -> Rates:
        """The rates of a customer on a tier: customer override > tier override > global."""
        return self._resolved(customer_id, tier)[0]

    def _resolved(self, customer_id: str | None, tier: str | None) -> tuple[Rates, Markup | None]:
        key = (customer_id, tier)
        found = self._rates.get(key)
        if found is None:
            rates = self._resolve(customer_id, tier)
            found = (
                rates,
                Markup.of(
                    rates.markup_percent, rates.per_request_usd, rates.per_compute_minute_usd
                ),
            )
            if len(self._rates) < _RATES_CACHE_MAX:
                self._rates[key] = found
        return found

    def _tariff(self, price: ModelPrice) -> PeriodTariff | None:
        # Keyed by identity: every period comes from this object's catalog, which keeps
        # it alive; the entry keeps the period too, so an id is never reused under it.
        found = self._tariffs.get(id(price))
        if found is None or found[0] is not price:
            found = (price, PeriodTariff.of(price))
            self._tariffs[id(price)] = found
        return found[1]

    def _resolve(self, customer_id: str | None, tier: str | None) -> Rates:
        rates = self._global
        if tier is not None and tier in self._tiers:
            rates = self._tiers[tier].over(rates)
        if customer_id is not None and customer_id in self._customers:
            rates = self._customers[customer_id].over(rates)
        return rates

    def price(self, model: str, at: datetime | None = None) -> ModelPrice | None:
        """The list price of `model` at `at` (default: now); None if unknown."""
        return self._catalog.lookup(model, at)

    def charge(
        self,
        model: str,
        usage: Usage,
        *,
        at: datetime | None = None,
        customer_id: str | None = None,
        tier: str | None = None,
        duration_ms: int = 0,
        succeeded: bool = True,
    ) -> Charge | None:
        """Provider cost and customer price of a finished request; None if the model is unknown.

        `at` is the event's time (which price period applies; default now), `duration_ms` its
        duration (per-second prices, per-compute-minute fees), `succeeded` False for a provider
        error (no fees; reported tokens are still charged).
        """
        if not succeeded and usage.total_tokens == 0:
            return Charge(cost_usd=_ZERO, price_usd=_ZERO, price_version=self._version)
        price = self._catalog.lookup(model, at)
        if price is None:
            return None
        rates, markup = self._resolved(customer_id, tier)
        fast = self._fast_charge(price, markup, usage, duration_ms, succeeded)
        if fast is not None:
            return fast
        cost = cost_of(price, usage, succeeded=succeeded, duration_ms=duration_ms)
        if succeeded:
            fees = rates.per_request_usd + compute_fee(rates.per_compute_minute_usd, duration_ms)
        else:
            fees = _ZERO
        return Charge(
            cost_usd=quantize_usd(cost),
            price_usd=quantize_usd(apply_markup(cost, rates.markup_percent, fees)),
            price_version=self._version,
        )

    def _fast_charge(
        self,
        price: ModelPrice,
        markup: Markup | None,
        usage: Usage,
        duration_ms: int,
        succeeded: bool,
    ) -> Charge | None:
        """`charge` in integers (pricing.tariff): the same Charge, or None for the general
        path (which also raises the errors of bad input)."""
        tariff = self._tariff(price)
        if (
            tariff is None
            or markup is None
            or (succeeded and duration_ms and markup.per_minute_fee)
        ):
            return None
        input_tokens = usage.input_tokens
        cached = usage.cached_input_tokens
        write = usage.cache_write_tokens
        write_1h = usage.cache_write_1h_tokens
        output = usage.output_tokens
        if (
            input_tokens < 0
            or cached < 0
            or write < 0
            or write_1h < 0
            or output < 0
            or write_1h > write
            or duration_ms < 0
        ):
            return None
        cost = tariff.tokens(
            input_tokens,
            cached,
            write - write_1h,
            write_1h,
            output,
            max(0, input_tokens - cached - write),
        )
        if succeeded:
            cost += tariff.per_request + tariff.per_ms * duration_ms
        if not within_bound(cost):
            return None
        priced = markup.price(cost, tariff.exponent, fees=succeeded)
        if priced is None:
            return None
        return Charge(
            cost_usd=quantize_scaled(cost, tariff.exponent),
            price_usd=quantize_scaled(*priced),
            price_version=self._version,
        )

    def max_charge(
        self,
        model: str,
        input_tokens: int,
        max_output_tokens: int,
        *,
        at: datetime | None = None,
        customer_id: str | None = None,
        tier: str | None = None,
    ) -> Decimal | None:
        """The most a request can be charged (price_usd), for a spend-cap reservation.

        Every prompt token at the dearest input rate (input price, or a cache-write price
        where that is higher), every allowed output token at the output price, long-context
        prices if the prompt passes the threshold, the per-request price, markup and fee
        included. Time-based prices and fees are not: the duration is unknown beforehand
        (the settle after the request charges them). None if the model is unknown.
        """
        price = self._catalog.lookup(model, at)
        if price is None:
            return None
        rates, markup = self._resolved(customer_id, tier)
        tariff = self._tariff(price)
        if (
            tariff is not None
            and markup is not None
            and input_tokens >= 0
            and max_output_tokens >= 0
        ):
            r = tariff.rates(input_tokens)
            cost = (
                input_tokens * r.dearest_input + max_output_tokens * r.output + tariff.per_request
            )
            priced = markup.price(cost, tariff.exponent, fees=True) if within_bound(cost) else None
            if priced is not None:
                return quantize_scaled(*priced)
        worst = max_cost_of(price, input_tokens, max_output_tokens)
        return quantize_usd(apply_markup(worst, rates.markup_percent, rates.per_request_usd))

    def _hash(self) -> str:
        # Canonical text, so "20", "20.0" and "2E+1" give one version and only a changed
        # value gives a new one.
        parts = [f"catalog={self._catalog.fingerprint}", f"global={_rates_text(self._global)}"]
        for scope, table in (("tier", self._tiers), ("customer", self._customers)):
            for name in sorted(table):
                parts.append(f"{scope}:{name}={_override_text(table[name])}")
        text = ";".join(parts)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_CHARS]

    def __repr__(self) -> str:
        return f"PricingRules(version={self._version!r})"


def _rates_text(rates: Rates) -> str:
    return ",".join(
        _canonical(v)
        for v in (rates.markup_percent, rates.per_request_usd, rates.per_compute_minute_usd)
    )


def _override_text(override: RateOverride) -> str:
    values = (override.markup_percent, override.per_request_usd, override.per_compute_minute_usd)
    return ",".join("-" if v is None else _canonical(v) for v in values)


def _canonical(amount: Decimal) -> str:
    if amount == 0:
        return "0"
    text = format(amount, "f")  # positional, exact, no context rounding
    return text.rstrip("0").rstrip(".") if "." in text else text


def _pick(value: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if value is None else value


def _check_rate(value: object, name: str, *, minimum: Decimal) -> None:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{name} must be a finite Decimal (never a float), got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
