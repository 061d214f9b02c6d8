"""`PricingRules`: the catalog plus the operator's markup and per-request fee, as one object.

The gateway builds one per config snapshot and asks it three things: the list price of a
model (`price`), the money of a finished request (`charge`), and the most a request could cost
before it runs (`max_charge`, for spend-cap reservations). `version` says exactly what a charge
was priced with — the catalog version plus a short hash of the markup and fee, e.g.
``2026-11-21+1f0c2a9e`` — and is stored on every usage event.

How it fails: an unknown model yields None (never a zero charge); the caller decides between
rejecting and recording it unpriced. A float, a non-finite amount, a negative fee or a markup
below -100% is refused with ValueError when the rules are built, so a running gateway never
prices with a bad rule.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal

from pricing.catalog import Catalog
from pricing.cost import apply_markup, cost_of, max_cost_of, quantize_usd
from pricing.models import Charge, ModelPrice, Usage

_HASH_CHARS = 8


class PricingRules:
    """Prices requests: catalog list price, then markup and per-request fee."""

    def __init__(self, catalog: Catalog, markup_percent: Decimal, per_request_usd: Decimal):
        _require_decimal(markup_percent, "markup_percent")
        _require_decimal(per_request_usd, "per_request_usd")
        if markup_percent < -100:
            raise ValueError(f"markup_percent must be >= -100, got {markup_percent}")
        if per_request_usd < 0:
            raise ValueError(f"per_request_usd must be >= 0, got {per_request_usd}")
        self._catalog = catalog
        self._markup_percent = markup_percent
        self._per_request_usd = per_request_usd
        self._version = f"{catalog.version}+{_rules_hash(markup_percent, per_request_usd)}"

    @property
    def version(self) -> str:
        return self._version

    @property
    def markup_percent(self) -> Decimal:
        return self._markup_percent

    @property
    def per_request_usd(self) -> Decimal:
        return self._per_request_usd

    def price(self, model: str) -> ModelPrice | None:
        """The list price of `model` (aliases and snapshots resolved); None if unknown."""
        return self._catalog.lookup(model)

    def charge(self, model: str, usage: Usage) -> Charge | None:
        """Provider cost and customer price of a finished request; None if the model is unknown."""
        price = self._catalog.lookup(model)
        if price is None:
            return None
        cost = cost_of(price, usage)
        return Charge(
            cost_usd=quantize_usd(cost),
            price_usd=quantize_usd(
                apply_markup(cost, self._markup_percent, self._per_request_usd)
            ),
            price_version=self._version,
        )

    def max_charge(self, model: str, input_tokens: int, max_output_tokens: int) -> Decimal | None:
        """The most a request can be charged (price_usd), for a spend-cap reservation.

        Every prompt token at the dearest input rate (input price, or the cache-write price
        where that is higher), every allowed output token at the output price, long-context
        prices if the prompt passes the threshold, markup and fee included. None if unknown.
        """
        price = self._catalog.lookup(model)
        if price is None:
            return None
        worst = max_cost_of(price, input_tokens, max_output_tokens)
        return quantize_usd(apply_markup(worst, self._markup_percent, self._per_request_usd))

    def __repr__(self) -> str:
        return f"PricingRules(version={self._version!r})"


def _rules_hash(markup_percent: Decimal, per_request_usd: Decimal) -> str:
    # Canonical text, so "20", "20.0" and "2E+1" give one version and only a changed value
    # gives a new one.
    markup, fee = _canonical(markup_percent), _canonical(per_request_usd)
    text = f"markup_percent={markup};per_request_usd={fee}"
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:_HASH_CHARS]


def _canonical(amount: Decimal) -> str:
    if amount == 0:
        return "0"
    text = format(amount, "f")  # positional, exact, no context rounding
    return text.rstrip("0").rstrip(".") if "." in text else text


def _require_decimal(value: object, name: str) -> None:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{name} must be a finite Decimal (never a float), got {value!r}")
