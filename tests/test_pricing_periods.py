"""pricing/catalog.py price periods: `effective_from`, `history:`, lookups by event time, and
the catalog fields added with them (1-hour cache writes, per-request and per-second prices)."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from pricing.catalog import Catalog, CatalogError

D = Decimal
JUNE_10 = datetime(2025, 6, 10, tzinfo=UTC)


def _catalog() -> dict[str, Any]:
    return {
        "version": "t-1",
        "models": {
            "m": {
                "provider": "openai",
                "effective_from": "2025-06-10",
                "input_per_mtok": "2.00",
                "output_per_mtok": "8.00",
                "aliases": ["m-latest-alias"],
                "history": [
                    {
                        "effective_from": "2025-04-16",
                        "input_per_mtok": "10.00",
                        "output_per_mtok": "40.00",
                    },
                    {"input_per_mtok": "20.00", "output_per_mtok": "80.00"},
                ],
            },
        },
    }


@pytest.mark.parametrize(
    ("at", "expected_input"),
    [
        (datetime(2024, 1, 1, tzinfo=UTC), "20.00"),  # the undated oldest period
        (datetime(2025, 4, 15, 23, 59, 59, tzinfo=UTC), "20.00"),
        (datetime(2025, 4, 16, tzinfo=UTC), "10.00"),  # effective_from is inclusive
        (JUNE_10 - timedelta(microseconds=1), "10.00"),
        (JUNE_10, "2.00"),
        (datetime(2030, 1, 1, tzinfo=UTC), "2.00"),
        # Another zone, same instant: 2025-06-10 01:00+02:00 is 2025-06-09 23:00 UTC.
        (datetime(2025, 6, 10, 1, 0, tzinfo=timezone(timedelta(hours=2))), "10.00"),
    ],
)
def test_lookup_takes_the_period_in_force_at_the_event_time(
    at: datetime, expected_input: str
) -> None:
    catalog = Catalog.from_mapping(_catalog())
    for name in ("m", "m-latest-alias", "m-2025-01-01"):
        price = catalog.lookup(name, at)
        assert price is not None
        assert price.model == "m"
        assert price.input_per_mtok == D(expected_input), name


def test_lookup_without_a_time_is_now_and_history_is_oldest_first() -> None:
    catalog = Catalog.from_mapping(_catalog())
    now = catalog.lookup("m")
    assert now is not None and now.input_per_mtok == D("2.00")
    starts = [p.effective_from for p in catalog.history("m")]
    assert starts == [None, datetime(2025, 4, 16, tzinfo=UTC), JUNE_10]
    assert catalog.models() == [now]
    assert catalog.history("nope") == ()


def test_the_oldest_dated_period_also_covers_older_events() -> None:
    data = _catalog()
    data["models"]["m"]["history"].pop()  # no undated period left
    price = Catalog.from_mapping(data).lookup("m", datetime(2020, 1, 1, tzinfo=UTC))
    assert price is not None and price.input_per_mtok == D("10.00")


def test_packaged_o3_keeps_its_launch_price_before_the_cut() -> None:
    catalog = Catalog.load_default()
    before = catalog.lookup("o3-2025-04-16", datetime(2025, 5, 1, tzinfo=UTC))
    after = catalog.lookup("o3", datetime(2025, 6, 10, tzinfo=UTC))
    assert before is not None and after is not None
    assert (before.input_per_mtok, before.cached_input_per_mtok, before.output_per_mtok) == (
        D("10.00"),
        D("2.50"),
        D("40.00"),
    )
    assert (after.input_per_mtok, after.output_per_mtok) == (D("2.00"), D("8.00"))


def test_packaged_anthropic_one_hour_writes_are_twice_the_input_price() -> None:
    for price in Catalog.load_default().models():
        if price.provider != "anthropic":
            continue
        assert price.cache_write_1h_per_mtok == price.input_per_mtok * 2, price.model
        if price.long_context is not None:
            lc = price.long_context
            assert lc.cache_write_1h_per_mtok == lc.input_per_mtok * 2, price.model


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-06-10", JUNE_10),
        ("2025-06-10T17:30:00Z", datetime(2025, 6, 10, 17, 30, tzinfo=UTC)),
        ("2025-06-10T19:30:00+02:00", datetime(2025, 6, 10, 17, 30, tzinfo=UTC)),
        (date(2025, 6, 10), JUNE_10),  # an unquoted YAML date
    ],
)
def test_effective_from_forms(value: object, expected: datetime) -> None:
    data = _catalog()
    data["models"]["m"]["effective_from"] = value
    assert Catalog.from_mapping(data).history("m")[-1].effective_from == expected


def test_flat_prices_and_one_hour_writes_are_read() -> None:
    data = _catalog()
    entry = data["models"]["m"]
    entry.update(
        per_request_usd="0.01",
        per_second_usd="0.0000125",
        cache_write_per_mtok="2.50",
        cache_write_1h_per_mtok="4.00",
    )
    price = Catalog.from_mapping(data).lookup("m")
    assert price is not None
    assert (price.per_request_usd, price.per_second_usd) == (D("0.01"), D("0.0000125"))
    assert (price.cache_write_per_mtok, price.cache_write_1h_per_mtok) == (D("2.50"), D("4.00"))


def _broken(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(_catalog())
    change(data["models"]["m"])
    return data


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda m: m.pop("effective_from"),
            "models.m.effective_from: required when the model has a history",
        ),
        (
            lambda m: m.update(effective_from="2025-04-16"),
            "the current prices must be the newest period",
        ),
        (
            lambda m: m["history"][1].update(effective_from="2025-04-16"),
            "two periods have the same effective_from",
        ),
        (
            lambda m: m["history"][0].pop("effective_from"),
            "only the oldest period may omit effective_from",
        ),
        (lambda m: m.update(effective_from="June 10"), "models.m.effective_from: 'June 10'"),
        (lambda m: m.update(effective_from="2025-06-10T00:00:00"), "has no time zone"),
        (
            lambda m: m["history"][0].update(output_per_mtok=None),
            "models.m.history[0].output_per_mtok: required",
        ),
        (
            lambda m: m["history"][0].update(provider="x"),
            "models.m.history[0]: unknown field(s) provider",
        ),
        (lambda m: m.update(history={"a": 1}), "models.m.history: must be a list"),
        (
            lambda m: m.update(cache_write_1h_per_mtok="0.000004"),
            "models.m.cache_write_1h_per_mtok: '0.000004' looks like a per-token price",
        ),
        (lambda m: m.update(per_request_usd=0.01), "models.m.per_request_usd: got the float 0.01"),
        (lambda m: m.update(per_second_usd="-1"), "models.m.per_second_usd"),
    ],
)
def test_bad_periods_are_refused_naming_the_field(change: Any, expected: str) -> None:
    with pytest.raises(CatalogError) as info:
        Catalog.from_mapping(_broken(change))
    assert expected in str(info.value)


def test_tiny_flat_prices_are_not_taken_for_per_token_prices() -> None:
    # per_second_usd is plain USD: a small value is a real price, not a unit mistake.
    data = _broken(lambda m: m.update(per_second_usd="0.00001"))
    price = Catalog.from_mapping(data).lookup("m")
    assert price is not None and price.per_second_usd == D("0.00001")


def test_a_naive_lookup_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Catalog.from_mapping(_catalog()).lookup("m", datetime(2025, 1, 1))


def test_fingerprint_follows_prices_not_the_version() -> None:
    first = Catalog.from_mapping(_catalog())
    assert Catalog.from_mapping(_catalog()).fingerprint == first.fingerprint
    changed = _broken(lambda m: m["history"][0].update(input_per_mtok="11.00"))
    assert Catalog.from_mapping(changed).fingerprint != first.fingerprint
    assert Catalog.from_mapping(changed).version == first.version
