"""gateway/alerts.py: which thresholds a month's usage has crossed."""

from __future__ import annotations

from decimal import Decimal

from gateway.alerts import crossed
from gateway.config import TierLimits
from storage.quota.store import SettleReply, UsageSnapshot


def _usage(*, requests: int = 0, tokens: int = 0, spend_micros: int = 0) -> UsageSnapshot:
    return UsageSnapshot(0, "2026-05", 1, 0, 0, 0, 0, requests, tokens, spend_micros)


def test_each_capped_limit_reports_every_threshold_it_reached() -> None:
    limits = TierLimits(requests_per_month=10, spend_per_month_usd=Decimal("5.00"))
    found = crossed(limits, _usage(requests=8, spend_micros=5_000_000), [80, 100])
    assert found == [
        ("requests_per_month", 80, 8, 10),
        ("spend_per_month_usd", 80, Decimal("5"), Decimal("5.00")),
        ("spend_per_month_usd", 100, Decimal("5"), Decimal("5.00")),
    ]
    assert str(found[1][2]) == "5.000000"  # the webhook's "used", as it always read


def test_limits_without_a_cap_never_alert() -> None:
    limits = TierLimits(requests_per_minute=5)
    usage = _usage(requests=10**6, tokens=10**9, spend_micros=10**12)
    assert crossed(limits, usage, [80, 100]) == []


def test_a_settle_reply_is_checked_like_a_snapshot() -> None:
    limits = TierLimits(tokens_per_month=100)
    settled = SettleReply.from_reply([1, 7, 0, 0, b"2026-05", 1, 82, 0])
    assert settled.month == "2026-05"
    assert crossed(limits, settled, [80, 100]) == [("tokens_per_month", 80, 82, 100)]


def test_an_exhausted_limit_reaches_every_threshold_up_to_100() -> None:
    limits = TierLimits(tokens_per_month=100, requests_per_month=1000)
    usage = _usage(requests=2, tokens=17)
    assert crossed(limits, usage, [50, 100, 120], exhausted="tokens_per_month") == [
        ("tokens_per_month", 50, 17, 100),
        ("tokens_per_month", 100, 17, 100),
    ]
