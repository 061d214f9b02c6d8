"""The money arithmetic of one request, and the one rounding rule.

`cost_of(price, usage)` is the exact provider list price of a request in USD: the uncached
remainder of the prompt at the input price, cache reads at the cached-input price, cache
writes at the 5-minute cache-write price (the part a provider reports as 1-hour writes at the
1-hour price), each falling back to the input price where the model has none, and output at
the output price. `output_tokens` already includes reasoning tokens, so reasoning is never
added a second time. A prompt longer than the model's long-context threshold is priced
entirely at the long-context prices. A model's flat `per_request_usd` and `per_second_usd`
(of the request's duration) are added for a request that succeeded.

The customer's price (`apply_markup`, `compute_fee`) is the cost times (1 + markup/100), plus
the per-request fee and the per-compute-minute fee of a request that succeeded.

The one rounding rule, ROUND_HALF_EVEN everywhere, applied once at each of two boundaries:
- per event: cost and price are computed exactly, then quantized to 10 decimal places
  (`quantize_usd`) when they are stored;
- per invoice: each line's exact amount (a sum of stored event prices, or a plan's fee or
  overage) is quantized to cents (`quantize_cents`); the subtotal is the sum of the lines,
  the tax is the subtotal times the rate, quantized to cents, and the total is subtotal plus
  tax, so an invoice always adds up.
Redis spend counters use integer millionths of a dollar rounded up (`usd_to_micros_ceil`), so
a counter never under-counts what was charged; spend caps become micro-dollars rounded down
(`micros_floor`), so a cap never allows more than it says.

How it fails: negative token counts or durations, and amounts that are not finite Decimals,
raise ValueError (a bug upstream, never a price). Arithmetic runs in a private decimal context
with enough precision to be exact, whatever the thread's current context says.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import (
    ROUND_CEILING,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)

from pricing.models import LongContextPrice, ModelPrice, Usage

USD_PLACES = 10
USD_QUANTUM = Decimal(1).scaleb(-USD_PLACES)  # Decimal("1E-10")
CENT = Decimal("0.01")
TOKENS_PER_PRICE_UNIT = 1_000_000
MICROS_PER_USD = 1_000_000
MS_PER_SECOND = 1_000
MS_PER_MINUTE = 60_000

_RATIO_MAX = 10**30
_DENOMINATOR_MAX = 10**20

# Wide enough that token counts times catalog prices, markups and fees are computed exactly
# (division by 100 or 1,000,000 only shifts the exponent), so the only rounding is the
# explicit quantize. Used only as a template: localcontext() works on a copy.
_EXACT = Context(
    prec=80, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow]
)


def quantize_usd(amount: Decimal) -> Decimal:
    """Round a USD amount to 10 decimal places, half to even: the one rounding rule."""
    _check_amount(amount, "amount")
    with localcontext(_EXACT):
        return amount.quantize(USD_QUANTUM, rounding=ROUND_HALF_EVEN)


def quantize_cents(amount: Decimal) -> Decimal:
    """Round a USD amount to whole cents, half to even: an invoice line, tax or total."""
    _check_amount(amount, "amount")
    with localcontext(_EXACT):
        return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


_TOKEN_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
)


def cost_of(
    price: ModelPrice, usage: Usage, *, succeeded: bool = True, duration_ms: int = 0
) -> Decimal:
    """Exact provider list price in USD of `usage` at `price` (not rounded).

    The model's per-request and per-second prices apply only when the request `succeeded`;
    `duration_ms` is how long it ran (whole milliseconds, as stored in `latency_ms`).
    """
    for name in _TOKEN_FIELDS:
        if getattr(usage, name) < 0:
            raise ValueError(f"usage.{name} is negative ({getattr(usage, name)})")
    if usage.cache_write_1h_tokens > usage.cache_write_tokens:
        raise ValueError(
            f"usage.cache_write_1h_tokens ({usage.cache_write_1h_tokens}) exceeds "
            f"cache_write_tokens ({usage.cache_write_tokens}), which includes them"
        )
    if duration_ms < 0:
        raise ValueError(f"duration_ms is negative ({duration_ms})")
    rates = _rates(price, usage.input_tokens)
    with localcontext(_EXACT):
        tokens = (
            usage.uncached_input_tokens * rates.input
            + usage.cached_input_tokens * rates.cached
            + usage.cache_write_5m_tokens * rates.write
            + usage.cache_write_1h_tokens * rates.write_1h
            + usage.output_tokens * rates.output
        ) / TOKENS_PER_PRICE_UNIT
        if not succeeded:
            return tokens
        return tokens + price.per_request_usd + price.per_second_usd * duration_ms / MS_PER_SECOND


def max_cost_of(price: ModelPrice, input_tokens: int, max_output_tokens: int) -> Decimal:
    """Exact worst-case list price of a request before it runs (not rounded).

    Every prompt token is charged at the dearest input rate the model has (a cache write costs
    more than plain input on Anthropic), every allowed output token at the output price, plus
    the per-request price. A per-second price is left out: a duration is unknown beforehand.
    """
    if input_tokens < 0 or max_output_tokens < 0:
        raise ValueError(
            f"token counts must be >= 0 (input_tokens={input_tokens}, "
            f"max_output_tokens={max_output_tokens})"
        )
    rates = _rates(price, input_tokens)
    with localcontext(_EXACT):
        dearest_input = max(rates.input, rates.cached, rates.write, rates.write_1h)
        total = input_tokens * dearest_input + max_output_tokens * rates.output
        return total / TOKENS_PER_PRICE_UNIT + price.per_request_usd


def apply_markup(cost_usd: Decimal, markup_percent: Decimal, per_request_usd: Decimal) -> Decimal:
    """Exact customer price: cost × (1 + markup/100) + the per-request fee (not rounded)."""
    _check_amount(cost_usd, "cost_usd")
    _check_amount(markup_percent, "markup_percent")
    _check_amount(per_request_usd, "per_request_usd")
    with localcontext(_EXACT):
        return cost_usd * (1 + markup_percent / 100) + per_request_usd


def compute_fee(per_compute_minute_usd: Decimal, duration_ms: int) -> Decimal:
    """Exact fee for `duration_ms` milliseconds at `per_compute_minute_usd` (not rounded)."""
    _check_amount(per_compute_minute_usd, "per_compute_minute_usd")
    if duration_ms < 0:
        raise ValueError(f"duration_ms is negative ({duration_ms})")
    # The one division here that may not terminate (x/60000). At 80 significant digits the
    # result is far closer to its true value than any 10-place rounding tie, so the quantize
    # that follows rounds it exactly as it would round the true fraction.
    with localcontext(_EXACT):
        return per_compute_minute_usd * duration_ms / MS_PER_MINUTE


def usd_to_micros_ceil(amount: Decimal) -> int:
    """USD as whole millionths of a dollar, rounded up (toward +infinity)."""
    if type(amount) is Decimal and amount.is_finite():
        # Exact in integers. Within these bounds the amount has at most 77 significant
        # digits (numerator < 10^30 times 10^k/denominator < 10^47), so the Decimal way
        # below is exact too and both give the true ceiling.
        numerator, denominator = amount.as_integer_ratio()
        if -_RATIO_MAX < numerator < _RATIO_MAX and denominator < _DENOMINATOR_MAX:
            return -((-numerator * MICROS_PER_USD) // denominator)
    _check_amount(amount, "amount")
    with localcontext(_EXACT):
        return int((amount * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def micros_floor(amount: Decimal) -> int:
    """USD as whole millionths of a dollar, rounded down, computed exactly: what a spend cap
    allows (a cap never grows by rounding)."""
    numerator, denominator = amount.as_integer_ratio()
    return (numerator * MICROS_PER_USD) // denominator


@dataclass(frozen=True, slots=True)
class _Rates:
    """USD per 1M tokens of each kind of token, for one request."""

    input: Decimal
    cached: Decimal
    write: Decimal
    write_1h: Decimal
    output: Decimal


def _rates(price: ModelPrice, input_tokens: int) -> _Rates:
    """The rates for a prompt this long: long-context prices past the threshold."""
    table: ModelPrice | LongContextPrice = price
    if price.long_context is not None and input_tokens > price.long_context.above_input_tokens:
        table = price.long_context
    base = table.input_per_mtok
    write = _or(table.cache_write_per_mtok, base)
    return _Rates(
        input=base,
        cached=_or(table.cached_input_per_mtok, base),
        write=write,
        write_1h=_or(table.cache_write_1h_per_mtok, write),
        output=table.output_per_mtok,
    )


def _or(rate: Decimal | None, fallback: Decimal) -> Decimal:
    return fallback if rate is None else rate


def _check_amount(value: object, name: str) -> None:
    if type(value) is Decimal and value.is_finite():  # the common case, checked first
        return
    # bool is an int subclass and float is inexact; both are refused as money.
    if not isinstance(value, Decimal | int) or isinstance(value, bool):
        raise ValueError(f"{name} must be a Decimal (never a float), got {value!r}")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
