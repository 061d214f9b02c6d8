"""gateway/alerts.py: which thresholds an admission's usage has crossed."""

from __future__ import annotations

from decimal import Decimal

from gateway.alerts import _crossed
from gateway.config import TierLimits
from gateway.quotas import Admission
from storage.quota_store import UsageSnapshot


def _admission(limits: TierLimits, *, requests: int, spend_micros: int) -> Admission:
    usage = UsageSnapshot(0, "2026-05", 1, 0, 0, 0, 0, requests, 0, spend_micros)
    return Admission("req-1", "cust_1", "pro", limits, True, usage)


def test_each_capped_limit_reports_every_threshold_it_reached() -> None:
    limits = TierLimits(requests_per_month=10, spend_per_month_usd=Decimal("5.00"))
    crossed = _crossed(_admission(limits, requests=8, spend_micros=5_000_000), [80, 100])
    assert crossed == [
        ("requests_per_month", 80, 8, 10),
        ("spend_per_month_usd", 80, Decimal("5"), Decimal("5.00")),
        ("spend_per_month_usd", 100, Decimal("5"), Decimal("5.00")),
    ]
    assert str(crossed[1][2]) == "5.000000"  # the webhook's "used", as it always read


def test_limits_without_a_cap_never_alert() -> None:
    limits = TierLimits(requests_per_minute=5)
    assert _crossed(_admission(limits, requests=10**6, spend_micros=10**12), [80, 100]) == []
