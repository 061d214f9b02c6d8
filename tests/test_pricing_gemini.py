"""Gemini's catalog entries: exact prices below and above the 200k-token prompt threshold
(every token of a long prompt costs the long-context prices), thinking billed as output."""

from __future__ import annotations

from decimal import Decimal

from pricing.catalog import Catalog
from pricing.cost import cost_of
from pricing.models import Usage


def price(model: str):  # type: ignore[no-untyped-def]
    found = Catalog.load_default().lookup(model)
    assert found is not None and found.provider == "google"
    return found


def test_gemini_2_5_pro_prices_long_prompts_at_the_long_context_rates() -> None:
    pro = price("gemini-2.5-pro")
    at_threshold = Usage(input_tokens=200_000, output_tokens=1_000, cached_input_tokens=100_000)
    assert cost_of(pro, at_threshold) == (
        Decimal(100_000) * Decimal("1.25")
        + Decimal(100_000) * Decimal("0.125")
        + Decimal(1_000) * Decimal("10.00")
    ) / Decimal(1_000_000)
    long = Usage(input_tokens=200_001, output_tokens=1_000, cached_input_tokens=100_000)
    assert cost_of(pro, long) == (
        Decimal(100_001) * Decimal("2.50")
        + Decimal(100_000) * Decimal("0.25")
        + Decimal(1_000) * Decimal("15.00")
    ) / Decimal(1_000_000)


def test_flash_has_one_tier_and_thoughts_cost_output() -> None:
    flash = price("gemini-2.5-flash")
    usage = Usage(input_tokens=300_000, output_tokens=500, reasoning_tokens=400)
    assert cost_of(flash, usage) == Decimal("0.09125")  # 0.3 * 0.30 + 0.0005 * 2.50


def test_versioned_names_and_embeddings() -> None:
    assert price("gemini-2.0-flash-001").model == "gemini-2.0-flash"
    assert cost_of(price("gemini-embedding-001"), Usage(input_tokens=1_000_000)) == Decimal("0.15")
