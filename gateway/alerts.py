"""Usage threshold alerts: when a customer's monthly usage crosses a threshold of a monthly
limit (default 80 % and 100 %), POST a signed JSON webhook and log it, at most once per
customer, limit, threshold and month, across every gateway process.

Checked three times in a request's life, each from numbers the quota scripts already returned
(no extra Redis call unless a threshold is newly crossed):
- at admission (`check`): the month's usage counting this request's reservation;
- at settlement (`settled`): the month's usage once the reservation is replaced by what the
  request used, read by the settle script in the same call (a request that used more than it
  reserved can cross a threshold only here);
- at a refusal by a monthly limit or the spend cap (`refused`): the customer can be served no
  more this month, so that limit counts as 100 % used: every threshold up to 100 % is
  reached, even when a large reservation rather than the usage itself hit the limit (`used`
  says what is really used).
The webhook's `trigger` says which (`admission`, `settlement`, `refusal`).

The claim is one `SET NX` in Redis (`QuotaStore.claim_alert`), so two processes seeing the same
crossing send one webhook; each process also remembers what it has claimed or seen claimed,
so a customer over a threshold costs no Redis call per request. Delivery runs in the
background: `alerts.max_attempts` tries with exponential backoff (1 s, 2 s, 4 s...); a delivery
that still fails is logged at error with the alert's content (no secret). Without
`alerts.webhook_url` the crossing is logged only. A claim Redis cannot answer is logged at
warning and tried again at the next check.

Signature: header `X-Tollbooth-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>" with the secret from `alerts.secret_env`>`; a receiver recomputes it and rejects
an old `t` to stop replays.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

import aiohttp
import orjson

from gateway.config import AlertsConfig, TierConfig, TierLimits
from gateway.quotas import Admission
from storage.quota.store import (
    QuotaStore,
    QuotaStoreBusy,
    QuotaStoreUnavailable,
    SettleReply,
    UsageSnapshot,
)

log = logging.getLogger("tollbooth.alerts")

Trigger = Literal["admission", "settlement", "refusal"]
# The admit script's name of a refusing limit -> the alert's (and config's) name.
_ALERT_LIMIT = {
    "requests_per_month": "requests_per_month",
    "tokens_per_month": "tokens_per_month",
    "spend_per_month": "spend_per_month_usd",
}
_SEEN_MAX = 100_000  # claims remembered per process; past it the memory starts over


class MonthUsage(Protocol):
    """A month's counters, as a UsageSnapshot or a SettleReply carries them."""

    @property
    def month_requests(self) -> int: ...
    @property
    def month_tokens(self) -> int: ...
    @property
    def month_spend_micros(self) -> int: ...


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def crossed(
    limits: TierLimits, usage: MonthUsage, thresholds: list[int], exhausted: str | None = None
) -> list[tuple[str, int, Any, Any]]:
    """(limit, threshold, used, limit value) for every threshold the usage has reached;
    `exhausted` names a limit that refused a request: its thresholds up to 100 are reached."""
    monthly: list[tuple[str, Any, Any]] = [
        ("requests_per_month", usage.month_requests, limits.requests_per_month),
        ("tokens_per_month", usage.month_tokens, limits.tokens_per_month),
    ]
    if limits.spend_per_month_usd:  # the Decimal is made only when there is a cap to check
        monthly.append(
            (
                "spend_per_month_usd",
                Decimal(usage.month_spend_micros).scaleb(-6),
                limits.spend_per_month_usd,
            )
        )
    return [
        (name, pct, used, limit)
        for name, used, limit in monthly
        if limit
        for pct in thresholds
        if used * 100 >= limit * pct or (name == exhausted and pct <= 100)
    ]


def _has_monthly_limit(limits: TierLimits) -> bool:
    return bool(limits.requests_per_month or limits.tokens_per_month or limits.spend_per_month_usd)


@dataclass(frozen=True, slots=True)
class _Crossing:
    customer_id: str
    tier_name: str
    request_id: str
    month: str
    trigger: Trigger
    limits: list[tuple[str, int, Any, Any]]


class AlertNotifier:
    def __init__(
        self, store: QuotaStore, session: aiohttp.ClientSession, settings: AlertsConfig
    ) -> None:
        self._store = store
        self._session = session
        self.settings = settings
        self._tasks: set[asyncio.Task[None]] = set()
        # (customer, limit, threshold, month) claimed here or found claimed by another process.
        self._seen: set[tuple[str, str, int, str]] = set()
        self.sent = 0
        self.failed = 0

    def _thresholds(self, tier: TierConfig | None) -> list[int]:
        if tier is not None and tier.alert_thresholds_percent:
            return tier.alert_thresholds_percent
        return self.settings.thresholds_percent

    def check(self, admission: Admission, tier: TierConfig) -> None:
        """Called on every admission: cheap unless a threshold is crossed."""
        if admission.usage is None or not _has_monthly_limit(admission.limits):
            return
        self._notify(
            admission.customer_id,
            admission.tier_name,
            admission.request_id,
            admission.usage.month,
            "admission",
            crossed(admission.limits, admission.usage, self._thresholds(tier)),
        )

    def settled(self, admission: Admission, reply: SettleReply) -> None:
        """Called on every settle that went through, with the month's counters after it."""
        if reply.month is None or not _has_monthly_limit(admission.limits):
            return
        self._notify(
            admission.customer_id,
            admission.tier_name,
            admission.request_id,
            reply.month,
            "settlement",
            crossed(admission.limits, reply, self._thresholds(admission.tier)),
        )

    def refused(
        self,
        *,
        customer_id: str,
        tier_name: str,
        tier: TierConfig,
        request_id: str,
        limit: str,
        usage: UsageSnapshot,
    ) -> None:
        """Called when a monthly limit or the spend cap refuses a request."""
        self._notify(
            customer_id,
            tier_name,
            request_id,
            usage.month,
            "refusal",
            crossed(tier.limits, usage, self._thresholds(tier), exhausted=_ALERT_LIMIT.get(limit)),
        )

    def _notify(
        self,
        customer_id: str,
        tier_name: str,
        request_id: str,
        month: str,
        trigger: Trigger,
        found: list[tuple[str, int, Any, Any]],
    ) -> None:
        new = [c for c in found if (customer_id, c[0], c[1], month) not in self._seen]
        if not new:
            return
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
        self._seen.update((customer_id, c[0], c[1], month) for c in new)
        crossing = _Crossing(customer_id, tier_name, request_id, month, trigger, new)
        task = asyncio.ensure_future(self._claim_and_send(crossing))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def _claim_and_send(self, crossing: _Crossing) -> None:
        for limit, pct, used, value in crossing.limits:
            try:
                claimed = await self._store.claim_alert(
                    crossing.customer_id, limit, pct, crossing.month
                )
            except (QuotaStoreBusy, QuotaStoreUnavailable) as exc:
                log.warning("usage alert not claimed (quota store): %s", exc)
                self._seen.discard((crossing.customer_id, limit, pct, crossing.month))
                continue
            if not claimed:
                continue
            alert = {
                "type": "usage.threshold_crossed" if pct < 100 else "usage.limit_reached",
                "customer_id": crossing.customer_id,
                "tier": crossing.tier_name,
                "limit": limit,
                "threshold_percent": pct,
                "used": str(used),
                "limit_value": str(value),
                "period": crossing.month,
                "trigger": crossing.trigger,
                "request_id": crossing.request_id,
                "at": datetime.now(UTC).isoformat(),
            }
            log.warning("usage alert", extra={"fields": alert})
            await self._deliver(alert)

    async def _deliver(self, alert: dict[str, Any]) -> None:
        url = self.settings.webhook_url
        if not url:
            return
        body = orjson.dumps(alert)
        secret = os.environ.get(self.settings.secret_env, "")
        delay = 1.0
        for attempt in range(1, self.settings.max_attempts + 1):
            stamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "X-Tollbooth-Signature": sign(secret, stamp, body),
            }
            try:
                async with self._session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
                ) as r:
                    if r.status < 300:
                        self.sent += 1
                        return
                    reason = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = type(exc).__name__
            if attempt < self.settings.max_attempts:
                await asyncio.sleep(delay)
                delay *= 2
        self.failed += 1
        log.error(
            "usage alert webhook failed after %d attempts (%s)",
            self.settings.max_attempts,
            reason,
            extra={"fields": alert},
        )
