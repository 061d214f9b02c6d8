"""A customer's quota windows as a report: for GET /usage/limits and GET /usage/quota-status.

Pure: `build_status` combines a tier's limits with a `UsageSnapshot` that `QuotaPolicy.status`
read from Redis; nothing here does I/O or can fail. Each window, and the report as a whole
(its worst window), has a status: ``over_limit`` when nothing is left (used >= limit; tokens
and spend can also pass the limit by a settle top-up), ``approaching_limit`` at 80 % or more,
else ``ok``. Unlimited windows are listed with ``limit: null`` and are always ``ok``. Money is
reported as decimal strings in USD, never as floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from gateway.config import TierLimits
from storage.quota.store import UsageSnapshot

Status = Literal["ok", "approaching_limit", "over_limit"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SEVERITY: dict[Status, int] = {"ok": 0, "approaching_limit": 1, "over_limit": 2}


def utc_from_ms(ms: int) -> datetime:
    """An exact UTC datetime from Unix milliseconds (no float on the way)."""
    return _EPOCH + timedelta(milliseconds=ms)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True, slots=True)
class WindowStatus:
    name: str  # the tier limit's name, e.g. "requests_per_minute"
    unit: Literal["requests", "tokens", "usd"]
    used: int | Decimal
    limit: int | Decimal | None  # None: unlimited
    resets_at: datetime | None  # minute windows: when the oldest usage leaves; None if empty

    @property
    def status(self) -> Status:
        if self.limit is None:
            return "ok"
        if self.used >= self.limit:
            return "over_limit"
        if self.used * 5 >= self.limit * 4:
            return "approaching_limit"
        return "ok"

    @property
    def remaining(self) -> int | Decimal | None:
        return None if self.limit is None else max(self.limit - self.used, 0)

    def to_json(self) -> dict[str, Any]:
        def shown(value: int | Decimal | None) -> int | str | None:
            return str(value) if isinstance(value, Decimal) else value

        return {
            "current": shown(self.used),
            "limit": shown(self.limit),
            "remaining": shown(self.remaining),
            "within_limit": self.status != "over_limit",
            "unit": self.unit,
            "status": self.status,
            "resets_at": _iso(self.resets_at),
        }


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    customer_id: str
    month: str  # "YYYY-MM", the UTC calendar month the monthly windows count
    checked_at: datetime  # the Redis server's clock when the windows were read
    windows: tuple[WindowStatus, ...]

    def window(self, name: str) -> WindowStatus:
        for window in self.windows:
            if window.name == name:
                return window
        raise KeyError(name)

    @property
    def status(self) -> Status:
        return max((w.status for w in self.windows), key=_SEVERITY.__getitem__, default="ok")

    @property
    def message(self) -> str:
        worst = [w for w in self.windows if w.status == self.status and w.limit is not None]
        if self.status == "ok" or not worst:
            return "Usage is within limits"
        names = ", ".join(f"{w.name} ({w.used} of {w.limit})" for w in worst)
        if self.status == "over_limit":
            return f"Limit reached: {names}"
        return f"Approaching limit (80% or more): {names}"

    def limits_json(self) -> dict[str, Any]:
        """The body of GET /usage/limits (the route adds the tier name)."""
        return {
            "customer_id": self.customer_id,
            "period": self.month,
            "checked_at": _iso(self.checked_at),
            "limits": {w.name: w.to_json() for w in self.windows},
        }

    def status_json(self) -> dict[str, Any]:
        """The body of GET /usage/quota-status (the route adds the tier name)."""
        return {"customer_id": self.customer_id, "status": self.status, "message": self.message}


def build_status(customer_id: str, limits: TierLimits, usage: UsageSnapshot) -> QuotaStatus:
    now = usage.server_time_ms

    def minute_reset(reset_ms: int) -> datetime | None:
        return utc_from_ms(now + reset_ms) if reset_ms > 0 else None

    month_end = utc_from_ms(usage.next_month_ms)
    windows = (
        WindowStatus(
            "requests_per_minute",
            "requests",
            usage.minute_requests,
            limits.requests_per_minute,
            minute_reset(usage.minute_requests_reset_ms),
        ),
        WindowStatus(
            "tokens_per_minute",
            "tokens",
            usage.minute_tokens,
            limits.tokens_per_minute,
            minute_reset(usage.minute_tokens_reset_ms),
        ),
        WindowStatus(
            "requests_per_month",
            "requests",
            usage.month_requests,
            limits.requests_per_month,
            month_end,
        ),
        WindowStatus(
            "tokens_per_month",
            "tokens",
            usage.month_tokens,
            limits.tokens_per_month,
            month_end,
        ),
        WindowStatus(
            "spend_per_month_usd",
            "usd",
            Decimal(usage.month_spend_micros).scaleb(-6),
            limits.spend_per_month_usd,
            month_end,
        ),
    )
    return QuotaStatus(customer_id, usage.month, utc_from_ms(now), windows)
