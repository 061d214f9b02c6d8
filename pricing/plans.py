"""Plans: a tier's monthly base fee, included units and overage prices, and their arithmetic.

A `Plan` meters any of six dimensions over a calendar month:
`requests` (successful requests, "tasks"), `input_tokens`, `output_tokens`, `tokens` (input +
output), `price_usd` (the usage charges: the sum of the events' stored prices, in USD) and
`compute_minutes` (the duration of successful requests). For each dimension it lists the
units `included` in the base fee (None: unlimited) and an `OveragePrice` for the units beyond:
price tiers whose `up_to` bounds are in the dimension's units, applied either `graduated`
(each unit at the price of the tier it falls in: "the first 1M at X, the rest at Y") or
`volume` (every unit at the price of the tier the whole billable quantity falls in). Tiers
count billable units, i.e. those beyond the included ones; `up_to` is inclusive. A unit price
is per `per_units` units (e.g. USD per 1,000,000 tokens); a flat price is one unbounded tier.
A dimension with included units but no overage price bills nothing beyond them, except
`price_usd`, whose overage defaults to face value (1 USD per USD).

`price_dimension` prices one dimension exactly (no rounding: the invoice rounds each line to
cents, pricing.cost). Compute time is carried in whole milliseconds and divided into minutes
only in the final multiplication, so amounts stay exact; quantities shown in minutes are
rounded to 6 decimal places for display only.

How it fails: a plan that cannot be priced (an unknown dimension, tiers out of order, a
bounded last tier, a negative or float amount) raises `PlanError` naming the field (relative
to the plan) when it is built, so it is refused when config.yaml is loaded, never while an
invoice is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import Literal, get_args

Dimension = Literal[
    "requests", "input_tokens", "output_tokens", "tokens", "price_usd", "compute_minutes"
]
DIMENSIONS: tuple[Dimension, ...] = get_args(Dimension)
Mode = Literal["graduated", "volume"]

# Base units per dimension unit: compute minutes are counted in milliseconds.
SCALE: Mapping[str, int] = {"compute_minutes": 60_000}
_DISPLAY_QUANTUM = Decimal("0.000001")
_EXACT = Context(prec=80, rounding=ROUND_HALF_EVEN)
_ZERO = Decimal(0)


class PlanError(ValueError):
    """A plan is malformed; the message names the field and what to write instead."""


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Units up to `up_to` (inclusive, in the dimension's units; None: no bound)."""

    up_to: Decimal | None
    unit_price_usd: Decimal


@dataclass(frozen=True, slots=True)
class OveragePrice:
    tiers: tuple[PriceTier, ...]
    mode: Mode = "graduated"
    per_units: int = 1

    @classmethod
    def flat(cls, unit_price_usd: Decimal, per_units: int = 1) -> OveragePrice:
        return cls((PriceTier(None, unit_price_usd),), "graduated", per_units)

    def check(self, where: str | None) -> None:
        """Refuse a price that cannot be applied; `where` prefixes the field names."""

        def at(name: str) -> str:
            return name if where is None else f"{where}.{name}"

        if self.mode not in get_args(Mode):
            raise PlanError(f"{at('mode')}: got {self.mode!r}; write graduated or volume")
        if (
            isinstance(self.per_units, bool)
            or not isinstance(self.per_units, int)
            or (self.per_units < 1)
        ):
            raise PlanError(f"{at('per_units')}: got {self.per_units!r}; a whole number >= 1")
        if not self.tiers:
            raise PlanError(f"{at('tiers')}: at least one tier is needed")
        previous = _ZERO
        for i, tier in enumerate(self.tiers):
            here = at(f"tiers[{i}]")
            _check_amount(tier.unit_price_usd, f"{here}.unit_price_usd")
            last = i == len(self.tiers) - 1
            if tier.up_to is None:
                if not last:
                    raise PlanError(f"{here}.up_to: only the last tier may be unbounded")
                continue
            if last:
                raise PlanError(
                    f"{here}.up_to: the last tier must be unbounded (omit up_to), so every "
                    f"unit has a price"
                )
            _check_amount(tier.up_to, f"{here}.up_to")
            if tier.up_to <= previous:
                raise PlanError(
                    f"{here}.up_to: got {tier.up_to}; bounds must grow (the previous one is "
                    f"{previous})"
                )
            previous = tier.up_to


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    base_price_usd: Decimal = _ZERO
    included: Mapping[str, Decimal | None] = field(default_factory=dict)
    overage: Mapping[str, OveragePrice] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Messages name the field relative to the plan (config adds `tiers.<name>.plan`).
        _check_amount(self.base_price_usd, "base_price_usd")
        for dimension, units in self.included.items():
            _check_dimension(dimension, "included")
            if units is not None:
                _check_amount(units, f"included.{dimension}")
        for dimension, price in self.overage.items():
            _check_dimension(dimension, "overage")
            price.check(f"overage.{dimension}")

    def dimensions(self) -> list[Dimension]:
        """The metered dimensions of this plan, in the order of DIMENSIONS."""
        return [d for d in DIMENSIONS if d in self.included or d in self.overage]

    def overage_for(self, dimension: Dimension) -> OveragePrice:
        if dimension in self.overage:
            return self.overage[dimension]
        return OveragePrice.flat(Decimal(1) if dimension == "price_usd" else _ZERO)


@dataclass(frozen=True, slots=True)
class TierCharge:
    """The billable units that fell into one price tier."""

    above: Decimal
    up_to: Decimal | None
    quantity: Decimal
    unit_price_usd: Decimal
    amount_usd: Decimal


@dataclass(frozen=True, slots=True)
class DimensionCharge:
    """One dimension of a month, priced: amounts exact, quantities in the dimension's units."""

    dimension: Dimension
    quantity: Decimal
    included: Decimal | None  # None: unlimited
    billable: Decimal
    unit_price_usd: Decimal | None  # None when billable units span several graduated tiers
    per_units: int
    mode: Mode
    amount_usd: Decimal
    tiers: tuple[TierCharge, ...]


def price_dimension(
    plan: Plan, dimension: Dimension, base_quantity: Decimal | int
) -> DimensionCharge:
    """Price `base_quantity` of `dimension` (milliseconds for compute_minutes) under `plan`."""
    scale = SCALE.get(dimension, 1)
    overage = plan.overage_for(dimension)
    included = plan.included.get(dimension, _ZERO)
    with localcontext(_EXACT):
        quantity = Decimal(base_quantity)
        if quantity < 0:
            raise ValueError(f"{dimension}: quantity is negative ({quantity})")
        billable = _ZERO if included is None else max(_ZERO, quantity - included * scale)
        divisor = scale * overage.per_units
        charges = _tier_charges(overage, billable, scale, divisor)
        amount = sum((c.amount_usd for c in charges), _ZERO)
    used = [c for c in charges if c.quantity > 0] or charges[:1]
    unit_price = used[0].unit_price_usd if len(used) == 1 else None
    return DimensionCharge(
        dimension=dimension,
        quantity=_display(quantity, scale),
        included=included,
        billable=_display(billable, scale),
        unit_price_usd=unit_price,
        per_units=overage.per_units,
        mode=overage.mode,
        amount_usd=amount,
        tiers=tuple(c for c in charges if c.quantity > 0),
    )


def _tier_charges(
    overage: OveragePrice, billable: Decimal, scale: int, divisor: int
) -> list[TierCharge]:
    """Exact charges per tier, quantities still in base units until the end."""
    out: list[TierCharge] = []
    above = _ZERO
    for tier in overage.tiers:
        bound = None if tier.up_to is None else tier.up_to * scale
        if overage.mode == "volume":
            fits = bound is None or billable <= bound
            units = billable if fits and (billable > above or above == 0) else _ZERO
        else:
            top = billable if bound is None else min(billable, bound)
            units = max(_ZERO, top - above)
        out.append(
            TierCharge(
                above=_display(above, scale),
                up_to=tier.up_to,
                quantity=_display(units, scale),
                unit_price_usd=tier.unit_price_usd,
                amount_usd=units * tier.unit_price_usd / divisor,
            )
        )
        if overage.mode == "volume" and units > 0:
            break
        if bound is None:
            break
        above = bound
    return out


def _display(base_units: Decimal, scale: int) -> Decimal:
    if scale == 1:
        return base_units
    with localcontext(_EXACT):
        return (base_units / scale).quantize(_DISPLAY_QUANTUM, rounding=ROUND_HALF_EVEN)


def _check_dimension(dimension: str, where: str) -> None:
    if dimension not in DIMENSIONS:
        raise PlanError(
            f"{where}.{dimension}: unknown dimension; use one of {', '.join(DIMENSIONS)}"
        )


def _check_amount(value: object, where: str) -> None:
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise PlanError(f"{where}: got {value!r}; write a decimal >= 0 as a quoted string")
