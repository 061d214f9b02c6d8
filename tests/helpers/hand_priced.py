"""The money a test gateway must record for an event, computed by hand from the catalog: the
reference the product's pricing is checked against through a real request. The harness's
pricing is a 20 % markup and a $0.001 fee a request; both amounts round half-even to ten
places, as the schema stores them."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from pricing.catalog import Catalog

MARKUP = Decimal("1.20")
FEE = Decimal("0.001")
TEN_PLACES = Decimal("1e-10")


def expected_money(model: str, row: Any, cache_write_1h: int = 0) -> tuple[Decimal, Decimal]:
    """(cost_usd, price_usd) of a usage row for catalog `model`: uncached input, cache reads,
    cache writes (of them `cache_write_1h` at the one-hour rate) and output, each at its rate."""
    price = Catalog.load_default().lookup(model)
    assert price is not None
    cached, writes = row["cached_input_tokens"], row["cache_write_tokens"]
    cost = (
        (row["input_tokens"] - cached - writes) * price.input_per_mtok
        + cached * (price.cached_input_per_mtok or price.input_per_mtok)
        + row["output_tokens"] * price.output_per_mtok
    )
    if writes:
        assert price.cache_write_per_mtok is not None
        cost += (writes - cache_write_1h) * price.cache_write_per_mtok
    if cache_write_1h:
        assert price.cache_write_1h_per_mtok is not None
        cost += cache_write_1h * price.cache_write_1h_per_mtok
    cost = (cost / Decimal(1_000_000)).quantize(TEN_PLACES, rounding=ROUND_HALF_EVEN)
    return cost, (cost * MARKUP + FEE).quantize(TEN_PLACES, rounding=ROUND_HALF_EVEN)
