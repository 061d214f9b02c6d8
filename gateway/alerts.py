"""Usage threshold alerts: when a customer's monthly usage crosses a threshold of a monthly
limit (default 80 % and 100 %), POST a signed JSON webhook and log it, at most once per
customer, limit, threshold and month, across every gateway process.

Checked on each admission from the usage snapshot the admit script already returned (no extra
Redis call unless a threshold is crossed; usage counts the request's reservation). The claim
is one `SET NX` in Redis (`QuotaStore.claim_alert`), so two processes seeing the same crossing
send one webhook. Delivery runs in the background: `alerts.max_attempts` tries with
exponential backoff (1 s, 2 s, 4 s...); a delivery that still fails is logged at error with the
alert's content (no secret). Without `alerts.webhook_url` the crossing is logged only.

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
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import orjson

from gateway.config import AlertsConfig, TierConfig
from gateway.quotas import Admission
from storage.quota_store import QuotaStore, QuotaStoreBusy, QuotaStoreUnavailable

log = logging.getLogger("tollbooth.alerts")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _crossed(admission: Admission, thresholds: list[int]) -> list[tuple[str, int, Any, Any]]:
    """(limit, threshold, used, limit value) for every threshold the usage has reached."""
    usage, limits = admission.usage, admission.limits
    if usage is None:
        return []
    monthly: list[tuple[str, Any, Any]] = [
        ("requests_per_month", usage.month_requests, limits.requests_per_month),
        ("tokens_per_month", usage.month_tokens, limits.tokens_per_month),
    ]
    if limits.spend_per_month_usd:  # the Decimal is made only when there is a cap to check
        monthly.append(("spend_per_month_usd", Decimal(usage.month_spend_micros).scaleb(-6),
                        limits.spend_per_month_usd))
    return [
        (name, pct, used, limit)
        for name, used, limit in monthly
        if limit
        for pct in thresholds
        if used * 100 >= limit * pct
    ]


class AlertNotifier:
    def __init__(self, store: QuotaStore, session: aiohttp.ClientSession,
                 settings: AlertsConfig) -> None:
        self._store = store
        self._session = session
        self.settings = settings
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.failed = 0

    def check(self, admission: Admission, tier: TierConfig) -> None:
        """Called on every admission: cheap unless a threshold is crossed."""
        thresholds = tier.alert_thresholds_percent or self.settings.thresholds_percent
        crossed = _crossed(admission, thresholds)
        if not crossed or admission.usage is None:
            return
        task = asyncio.ensure_future(self._claim_and_send(admission, crossed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def _claim_and_send(self, admission: Admission,
                              crossed: list[tuple[str, int, Any, Any]]) -> None:
        assert admission.usage is not None
        month = admission.usage.month
        for limit, pct, used, value in crossed:
            try:
                claimed = await self._store.claim_alert(admission.customer_id, limit, pct, month)
            except (QuotaStoreBusy, QuotaStoreUnavailable) as exc:
                log.warning("usage alert not claimed (quota store): %s", exc)
                continue
            if not claimed:
                continue
            alert = {
                "type": "usage.threshold_crossed" if pct < 100 else "usage.limit_reached",
                "customer_id": admission.customer_id,
                "tier": admission.tier_name,
                "limit": limit,
                "threshold_percent": pct,
                "used": str(used),
                "limit_value": str(value),
                "period": month,
                "request_id": admission.request_id,
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
            headers = {"Content-Type": "application/json",
                       "X-Tollbooth-Signature": sign(secret, stamp, body)}
            try:
                async with self._session.post(
                        url, data=body, headers=headers,
                        timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s)) as r:
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
        log.error("usage alert webhook failed after %d attempts (%s)",
                  self.settings.max_attempts, reason, extra={"fields": alert})
