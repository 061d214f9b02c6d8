"""The value types pricing works on: what a request used, and what a model costs.

`Usage` mirrors what providers report, normalised to one convention for every provider
(docs/metering-and-pricing.md, the metering rules): `input_tokens` counts every prompt token,
cached and cache-written ones included, and `output_tokens` includes `reasoning_tokens`.
Pricing charges the uncached remainder of the input at the input price. Everything here is an
exact integer or a Decimal (times are timezone-aware UTC datetimes); nothing does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

UsageSource = Literal["provider", "estimated"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request, as the provider reported them (or as estimated).

    `cache_write_1h_tokens` is the part of `cache_write_tokens` written to Anthropic's 1-hour
    cache (priced at the 1-hour write price); the rest of `cache_write_tokens` is priced at
    the 5-minute write price. It is 0 unless a provider reports the split.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    source: UsageSource = "provider"
    cache_write_1h_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def uncached_input_tokens(self) -> int:
        """Prompt tokens charged at the plain input price."""
        return max(0, self.input_tokens - self.cached_input_tokens - self.cache_write_tokens)

    @property
    def cache_write_5m_tokens(self) -> int:
        """Cache-written tokens charged at the 5-minute write price."""
        return max(0, self.cache_write_tokens - self.cache_write_1h_tokens)


@dataclass(frozen=True, slots=True)
class LongContextPrice:
    """Prices that replace a model's base prices when a request's prompt is long.

    A request whose `input_tokens` (cached and cache-written ones included) exceed
    `above_input_tokens` pays these prices on every token, output included (Anthropic's
    long-context pricing for Claude Sonnet 4 / 4.5 above 200K prompt tokens).
    """

    above_input_tokens: int
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    cache_write_1h_per_mtok: Decimal | None = None


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """List prices of one model in USD per one million tokens, for one price period.

    `cached_input_per_mtok` / `cache_write_per_mtok` are None where the provider has no such
    price; those tokens are then charged at the input price. `cache_write_1h_per_mtok` (the
    1-hour cache write) falls back to the 5-minute write price. `long_context`, where set, is
    the price of a request whose prompt passes its threshold. `per_request_usd` and
    `per_second_usd` are flat list prices per successful request and per second of its
    duration (0 for token-priced models). `effective_from` is when this period starts (None:
    it covers all time before the model's next period).
    """

    model: str
    provider: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    long_context: LongContextPrice | None = None
    cache_write_1h_per_mtok: Decimal | None = None
    per_request_usd: Decimal = Decimal(0)
    per_second_usd: Decimal = Decimal(0)
    effective_from: datetime | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    """The money of one request: provider list price and what the customer pays."""

    cost_usd: Decimal
    price_usd: Decimal
    price_version: str
