"""The request-path arithmetic of `PricingRules`: a request's money in Python integers.

Every amount here is a Decimal split once into an integer coefficient and a power of ten
(`0.15` is 15 x 10^-2). A `PeriodTariff` holds one price period's rates that way and a
`Markup` one set of resolved rates, both built once and cached by `PricingRules`; pricing a
request is then a few integer multiplications at a common power of ten, exact, and one
rounding with the rule of pricing.cost (`quantize_scaled`: half even, 10 places). The
answer is the very Decimal pricing.cost gives (same value, exponent -10), because that
arithmetic is exact too (80 digits) for every amount this module accepts.

Bound: a request is priced here only while every amount in it stays below 10^28 at the
common power of ten. 28 digits is the smallest precision the general path uses (the fee sum
in `PricingRules.charge` runs in the caller's default context), so below it every operation
of the general path is exact and both paths agree digit for digit. Above it, with a negative
price (built by hand, never from a catalog), or with a per-compute-minute fee on a request
that ran (x/60000 does not terminate), these functions answer None and the caller takes the
general path (pricing.cost). None never means "free".
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pricing.cost import USD_PLACES
from pricing.models import LongContextPrice, ModelPrice

_LIMIT = 10**28  # see the module docstring
_USD_EXP = -USD_PLACES
_POW10 = tuple(10**n for n in range(128))  # a table lookup costs less than a power


def _pow10(n: int) -> int:
    return _POW10[n] if n < 128 else int(10**n)


def split(amount: Decimal) -> tuple[int, int] | None:
    """(coefficient, exponent) of a finite Decimal >= 0; None for anything else."""
    if type(amount) is not Decimal or not amount.is_finite() or amount < 0:
        return None
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite
    coefficient = 0
    for digit in digits:
        coefficient = coefficient * 10 + digit
    return (-coefficient if sign else coefficient), exponent


def quantize_scaled(numerator: int, exponent: int) -> Decimal:
    """numerator x 10^exponent rounded to 10 decimal places, half to even, exactly as
    `pricing.cost.quantize_usd` rounds it; `numerator` >= 0."""
    if exponent >= _USD_EXP:
        units = numerator * _pow10(exponent - _USD_EXP)
    else:
        divisor = _pow10(_USD_EXP - exponent)
        units, rest = divmod(numerator, divisor)
        twice = 2 * rest
        if twice > divisor or (twice == divisor and units & 1):
            units += 1
    return Decimal(f"{units}E{_USD_EXP}")


@dataclass(frozen=True, slots=True)
class _Rates:
    """USD per 1M tokens of each kind, as integers at the tariff's exponent, per token."""

    input: int
    cached: int
    write: int
    write_1h: int
    output: int

    @property
    def dearest_input(self) -> int:
        return max(self.input, self.cached, self.write, self.write_1h)


@dataclass(frozen=True, slots=True)
class PeriodTariff:
    """One `ModelPrice` with every amount an integer at one exponent (`exponent`): a token
    of a kind costs its rate x 10^exponent USD, the flat price `per_request` x 10^exponent,
    a millisecond `per_ms` x 10^exponent."""

    exponent: int
    base: _Rates
    long: _Rates | None
    long_above: int
    per_request: int
    per_ms: int

    @classmethod
    def of(cls, price: ModelPrice) -> PeriodTariff | None:
        """The tariff of `price`, or None if an amount is not a finite Decimal >= 0."""
        tables: list[ModelPrice | LongContextPrice] = [price]
        if price.long_context is not None:
            tables.append(price.long_context)
        parts: list[tuple[int, int] | None] = []
        for table in tables:
            base = table.input_per_mtok
            write = _or(table.cache_write_per_mtok, base)
            # USD per token: per 1M tokens, so 6 places further right.
            parts += [
                _shift(split(rate), -6)
                for rate in (
                    base,
                    _or(table.cached_input_per_mtok, base),
                    write,
                    _or(table.cache_write_1h_per_mtok, write),
                    table.output_per_mtok,
                )
            ]
        parts.append(split(price.per_request_usd))
        parts.append(_shift(split(price.per_second_usd), -3))  # per millisecond
        known = [p for p in parts if p is not None]
        if len(known) != len(parts):
            return None
        exponent = min(e for _, e in known)
        scaled = [c * 10 ** (e - exponent) for c, e in known]
        long = None
        if price.long_context is not None:
            long = _Rates(*scaled[5:10])
        return cls(
            exponent=exponent,
            base=_Rates(*scaled[:5]),
            long=long,
            long_above=price.long_context.above_input_tokens if price.long_context else 0,
            per_request=scaled[-2],
            per_ms=scaled[-1],
        )

    def rates(self, input_tokens: int) -> _Rates:
        """The rates for a prompt this long: long-context ones past the threshold."""
        if self.long is not None and input_tokens > self.long_above:
            return self.long
        return self.base

    def tokens(
        self,
        input_tokens: int,
        cached: int,
        write_5m: int,
        write_1h: int,
        output: int,
        uncached: int,
    ) -> int:
        """The tokens' list price, x 10^exponent USD (counts already checked >= 0)."""
        r = self.rates(input_tokens)
        return (
            uncached * r.input
            + cached * r.cached
            + write_5m * r.write
            + write_1h * r.write_1h
            + output * r.output
        )


@dataclass(frozen=True, slots=True)
class Markup:
    """Resolved rates as integers: price = cost x factor x 10^factor_exponent + fee x
    10^fee_exponent; `fast` False when a per-compute-minute fee applies (general path)."""

    factor: int
    factor_exponent: int
    fee: int
    fee_exponent: int
    per_minute_fee: bool

    @classmethod
    def of(
        cls, markup_percent: Decimal, per_request_usd: Decimal, per_compute_minute_usd: Decimal
    ) -> Markup | None:
        markup = _split_signed(markup_percent)
        fee = split(per_request_usd)
        per_minute = split(per_compute_minute_usd)
        if markup is None or fee is None or per_minute is None:
            return None
        # 1 + markup/100, exactly: (10^-e + m x 10^(em-2-e)) x 10^e with e = min(0, em-2).
        coefficient, exp = markup
        factor_exponent = min(0, exp - 2)
        factor = 10**-factor_exponent + coefficient * 10 ** (exp - 2 - factor_exponent)
        if factor < 0:
            return None
        return cls(factor, factor_exponent, fee[0], fee[1], per_minute[0] != 0)

    def price(self, cost: int, cost_exponent: int, *, fees: bool) -> tuple[int, int] | None:
        """(numerator, exponent) of cost x (1 + markup/100), plus the per-request fee when
        `fees`; None past the bound."""
        marked = cost * self.factor
        exponent = cost_exponent + self.factor_exponent
        if fees and self.fee:
            if self.fee_exponent < exponent:
                marked = marked * _pow10(exponent - self.fee_exponent) + self.fee
                exponent = self.fee_exponent
            else:
                marked += self.fee * _pow10(self.fee_exponent - exponent)
        if marked >= _LIMIT:
            return None
        return marked, exponent


def within_bound(value: int) -> bool:
    return value < _LIMIT


def _split_signed(amount: Decimal) -> tuple[int, int] | None:
    if type(amount) is not Decimal or not amount.is_finite():
        return None
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)
    coefficient = 0
    for digit in digits:
        coefficient = coefficient * 10 + digit
    return (-coefficient if sign else coefficient), exponent


def _shift(part: tuple[int, int] | None, places: int) -> tuple[int, int] | None:
    return None if part is None else (part[0], part[1] + places)


def _or(rate: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if rate is None else rate
