"""`Runtime`: the settings a request runs under, and everything derived from them.

A request takes `runtime.current` once, at its start, and uses that snapshot to the end, so a
config reload (swapping in a new snapshot) never changes the rules under an in-flight request.
Derived objects (pricing rules) are built once per snapshot, never per request.

`build_pricing(settings, catalog)` is the one place config.yaml's `pricing:` and
`tiers.<name>.pricing` become `PricingRules` (model overrides laid over the catalog; rates
resolved customer > tier > global); the gateway, `tollbooth pricing` and re-rating all use it,
so they price alike. `plans_of(settings)` gives each tier's `Plan` for invoices.

How it fails: a pricing section that cannot be applied to the catalog (an override that adds
a model without its prices, an alias used twice) raises `ConfigError` naming the YAML path, so
a reload with such a file is refused like any invalid config.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import ConfigError, Settings
from pricing.catalog import Catalog, CatalogError
from pricing.overrides import apply_overrides
from pricing.plans import Plan
from pricing.rules import PricingRules


@dataclass(frozen=True, slots=True)
class Snapshot:
    settings: Settings
    catalog: Catalog
    pricing: PricingRules


def build_pricing(settings: Settings, catalog: Catalog) -> PricingRules:
    """The pricing rules config.yaml describes, over `catalog`; raises ConfigError."""
    pricing = settings.pricing
    source = settings.source_path or "config.yaml"
    try:
        priced = apply_overrides(catalog, pricing.models)
        return PricingRules(
            priced,
            markup_percent=pricing.markup_percent,
            per_request_usd=pricing.per_request_usd,
            per_compute_minute_usd=pricing.per_compute_minute_usd,
            tiers={
                name: tier.pricing.to_override()
                for name, tier in settings.tiers.items()
                if tier.pricing is not None
            },
            customers={
                customer: rates.to_override() for customer, rates in pricing.customers.items()
            },
        )
    except (CatalogError, ValueError) as exc:
        raise ConfigError(f"{source} is invalid:\n  {exc}") from None


def plans_of(settings: Settings) -> dict[str, Plan]:
    """Each tier's plan, by tier name (tiers without a `plan:` are left out)."""
    return {
        name: tier.plan.to_plan(name)
        for name, tier in settings.tiers.items()
        if tier.plan is not None
    }


def build_snapshot(settings: Settings, catalog: Catalog) -> Snapshot:
    return Snapshot(settings=settings, catalog=catalog, pricing=build_pricing(settings, catalog))


class Runtime:
    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self._catalog = catalog
        self.current = build_snapshot(settings, catalog)

    def swap(self, settings: Settings) -> Snapshot:
        """Install new settings atomically (one attribute store); returns the new snapshot.

        Raises ConfigError (and keeps the current snapshot) if the pricing cannot be built.
        """
        self.current = build_snapshot(settings, self._catalog)
        return self.current
