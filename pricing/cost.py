"""The money arithmetic of one request, and the one rounding rule.

`cost_of(price, usage)` is the exact provider list price of a request in USD: the uncached
remainder of the prompt at the input price, cache reads at the cached-input price, cache
writes at the cache-write price (each falling back to the input price where the model has
none), and output at the output price. `output_tokens` already includes reasoning tokens, so
reasoning is never added a second time. A prompt longer than the model's long-context
threshold is priced entirely at the long-context prices.

The one rounding rule: money stored per event is quantized to 10 decimal places with
ROUND_HALF_EVEN (`quantize_usd`), once, at the end; everything before it is exact. Redis spend
counters use integer millionths of a dollar rounded up (`usd_to_micros_ceil`), so a counter
never under-counts what was charged.

How it fails: negative token counts or amounts that are not finite Decimals raise ValueError
(a bug upstream, never a price). Arithmetic runs in a private decimal context with enough
precision to be exact, whatever the thread's current context says.
"""

from __future__ import annotations

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

from pricing.models import ModelPrice, Usage

USD_PLACES = 10
USD_QUANTUM = Decimal(1).scaleb(-USD_PLACES)  # Decimal("1E-10")
TOKENS_PER_PRICE_UNIT = 1_000_000
MICROS_PER_USD = 1_000_000

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


def cost_of(price: ModelPrice, usage: Usage) -> Decimal:
    """Exact provider list price in USD of `usage` at `price` (not rounded)."""
    for name in ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens"):
        if getattr(usage, name) < 0:
            raise ValueError(f"usage.{name} is negative ({getattr(usage, name)})")
    input_rate, cached_rate, write_rate, output_rate = _rates(price, usage.input_tokens)
    with localcontext(_EXACT):
        total = (
            usage.uncached_input_tokens * input_rate
            + usage.cached_input_tokens * cached_rate
            + usage.cache_write_tokens * write_rate
            + usage.output_tokens * output_rate
        )
        return total / TOKENS_PER_PRICE_UNIT


def max_cost_of(price: ModelPrice, input_tokens: int, max_output_tokens: int) -> Decimal:
    """Exact worst-case list price of a request before it runs (not rounded).

    Every prompt token is charged at the dearest input rate the model has (a cache write costs
    more than plain input on Anthropic), every allowed output token at the output price.
    """
    if input_tokens < 0 or max_output_tokens < 0:
        raise ValueError(
            f"token counts must be >= 0 (input_tokens={input_tokens}, "
            f"max_output_tokens={max_output_tokens})"
        )
    input_rate, cached_rate, write_rate, output_rate = _rates(price, input_tokens)
    with localcontext(_EXACT):
        dearest_input = max(input_rate, cached_rate, write_rate)
        total = input_tokens * dearest_input + max_output_tokens * output_rate
        return total / TOKENS_PER_PRICE_UNIT


def apply_markup(cost_usd: Decimal, markup_percent: Decimal, per_request_usd: Decimal) -> Decimal:
    """Exact customer price: cost × (1 + markup/100) + the per-request fee (not rounded)."""
    _check_amount(cost_usd, "cost_usd")
    _check_amount(markup_percent, "markup_percent")
    _check_amount(per_request_usd, "per_request_usd")
    with localcontext(_EXACT):
        return cost_usd * (1 + markup_percent / 100) + per_request_usd


def usd_to_micros_ceil(amount: Decimal) -> int:
    """USD as whole millionths of a dollar, rounded up (toward +infinity)."""
    _check_amount(amount, "amount")
    with localcontext(_EXACT):
        return int((amount * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def _rates(price: ModelPrice, input_tokens: int) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """(input, cached input, cache write, output) USD per 1M tokens for a prompt this long."""
    tier = price.long_context
    if tier is not None and input_tokens > tier.above_input_tokens:
        base, cached, write, output = (
            tier.input_per_mtok,
            tier.cached_input_per_mtok,
            tier.cache_write_per_mtok,
            tier.output_per_mtok,
        )
    else:
        base, cached, write, output = (
            price.input_per_mtok,
            price.cached_input_per_mtok,
            price.cache_write_per_mtok,
            price.output_per_mtok,
        )
    return (
        base,
        base if cached is None else cached,
        base if write is None else write,
        output,
    )


def _check_amount(value: object, name: str) -> None:
    # bool is an int subclass and float is inexact; both are refused as money.
    if not isinstance(value, Decimal | int) or isinstance(value, bool):
        raise ValueError(f"{name} must be a Decimal (never a float), got {value!r}")
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
