"""Tier quotas: admit a request against its customer's limits before it is forwarded, settle after.

`QuotaPolicy` turns a tier's limits and a request's worst-case estimate (prompt tokens plus
its max output tokens, and that estimate's price) into an `Admission` or a `RateLimitError`,
and gives the OpenAI rate-limit headers of the per-minute windows. The counting itself is
`storage.quota.store.QuotaStore`: one atomic Lua call per decision, on the Redis every gateway
process shares, with the Redis server's clock. Counted per customer (all its keys together);
months are UTC calendar months; spend is counted in whole micro-dollars, rounded up.

The guarantee: with N gateway processes on one Redis and C concurrent requests, admitted
requests never exceed a requests limit (per sliding minute or per month), and tokens or spend
never exceed a limit by more than the settle delta of the requests in flight (what their actual
usage turns out to exceed their reservations by, which admission could not know).

Refusals: a per-minute limit answers 429 with a Retry-After that is right (a client that waits
that long gets in, barring new traffic) and at most one window away; a monthly limit or the
spend cap answers 429 with `x-should-retry: false`, code `insufficient_quota`, and the next
month's start as the reset. A request whose own estimate is larger than a per-minute token
limit can never fit: it is refused with `x-should-retry: false` too (so code
`insufficient_quota`), saying so. Headers: `x-ratelimit-reset-*` is how long until the oldest
usage in the sliding window leaves it, i.e. until `x-ratelimit-remaining-*` next grows.

Shadow mode (`tiers.<name>.shadow: true`): the decision is computed in the same atomic call,
and a refusal is logged at info and counted in `shadow_refusals`; the request is admitted and
reserved anyway, so the counters show the tier's real traffic and switching shadow off
enforces from real numbers.

Failure semantics, Redis unreachable or timing out (after the client's socket timeout and
the script batcher's two quick retries, so the client should be built to fail fast: a short
socket and connect timeout):
- `quotas.on_redis_error: allow` (default): the request is admitted without quota (nothing is
  reserved, so its settle is a no-op), a warning with its request id is logged, and
  `redis_error_admissions` is incremented. No per-process counter stands in for the quota.
- `reject`: the request is refused with `ServiceUnavailableError` (503), except on a shadow
  tier, which refuses nothing and is admitted as under `allow`.
`settle` / `settle_soon` never raise into the request path: a failure is logged at error with
the request id, counted in `settle_failures`, and the reservation is released by its ttl
(`quotas.reservation_ttl_s`) so the customer is not charged the estimate forever. `status`
raises `ServiceUnavailableError`: there is nothing true to report without Redis.

Usage alerts (`UsageAlerts`, gateway.alerts) are told of the month's counters as each settle
returns them (the settle script reads them in the same call: no extra round trip) and of each
refusal by a monthly limit or the spend cap; they decide whether a threshold was crossed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from gateway.config import QuotasConfig, TierConfig, TierLimits
from gateway.errors import RateLimitError, ServiceUnavailableError
from gateway.quota_status import QuotaStatus, build_status, utc_from_ms
from gateway.traffic import MinuteTraffic
from pricing.cost import micros_floor, usd_to_micros_ceil
from storage.quota.store import (
    AdmitReply,
    QuotaLimits,
    QuotaStore,
    QuotaStoreBusy,
    QuotaStoreUnavailable,
    SettleReply,
    UsageSnapshot,
    translate,
)

log = logging.getLogger("tollbooth.quotas")

# How long a settle may wait to share a Redis round trip with the next admit: a quota that
# lags by 5 ms costs nothing; a round trip per request costs two syscalls each way.
SETTLE_DEFER_S = 0.005
_LIMITS_CACHE_MAX = 256

__all__ = ["Admission", "QuotaPolicy", "QuotaStatus", "UsageAlerts"]
# The limits whose refusal means the customer is out of quota until next month, by the name
# the admit script gives them.
MONTHLY_LIMITS = frozenset({"requests_per_month", "tokens_per_month", "spend_per_month"})


def store_limits(limits: TierLimits) -> QuotaLimits:
    cap = limits.spend_per_month_usd
    return QuotaLimits(
        requests_per_minute=limits.requests_per_minute,
        tokens_per_minute=limits.tokens_per_minute,
        requests_per_month=limits.requests_per_month,
        tokens_per_month=limits.tokens_per_month,
        spend_per_month_micros=None if cap is None else micros_floor(cap),
    )


def openai_duration(ms: int) -> str:
    """A duration the way OpenAI's x-ratelimit-reset-* headers write it: 20ms, 1s, 1.5s, 6m0s."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    text = f"{seconds}.{millis:03d}".rstrip("0") if millis else str(seconds)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    if minutes:
        return f"{minutes}m{text}s"
    return f"{text}s"


def _iso(ms: int) -> str:
    return utc_from_ms(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


def _whole_seconds(ms: int) -> int:
    return max(1, -(-ms // 1000))


@dataclass(frozen=True, slots=True)
class Admission:
    """A request let through. `reserved` is False when Redis was down and policy allowed it."""

    request_id: str
    customer_id: str
    tier_name: str
    limits: TierLimits
    reserved: bool
    usage: UsageSnapshot | None
    # Shadow mode only: the limit that would have refused this request.
    shadow_limit: str | None = None
    tier: TierConfig | None = None  # the tier it was admitted under (its alert thresholds)


class UsageAlerts(Protocol):
    """Told of a customer's month usage after each settle and at each monthly refusal."""

    def settled(self, admission: Admission, reply: SettleReply) -> None:
        """`reply` is a settle that went through (`reply.month` set). Must not raise."""

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
        """A request refused by `limit` (one of MONTHLY_LIMITS). Must not raise."""


class QuotaPolicy:
    def __init__(
        self, store: QuotaStore, settings: QuotasConfig, alerts: UsageAlerts | None = None
    ) -> None:
        self._store = store
        self._settings = settings
        self._alerts = alerts
        # Counters for /metrics: what happened, never a stand-in for the quota itself.
        self.refusals: Counter[str] = Counter()
        self.redis_error_admissions = 0
        self.shadow_refusals = 0
        self.settle_failures = 0
        # Per-minute requests and 429s by tier, for the operator dashboard (this process only).
        self.traffic = MinuteTraffic()
        # store_limits per TierLimits (frozen; a reload brings new objects): by identity,
        # the entry holding the object so its id is never reused while cached.
        self._limits: dict[int, tuple[TierLimits, QuotaLimits]] = {}

    def _store_limits(self, limits: TierLimits) -> QuotaLimits:
        found = self._limits.get(id(limits))
        if found is None or found[0] is not limits:
            if len(self._limits) >= _LIMITS_CACHE_MAX:  # reloads: old tiers go
                self._limits.clear()
            found = self._limits[id(limits)] = (limits, store_limits(limits))
        return found[1]

    def reconfigure(self, settings: QuotasConfig) -> None:
        """Apply a reloaded `quotas:` section (limits themselves come with each call)."""
        self._settings = settings

    async def admit(
        self,
        *,
        customer_id: str,
        tier_name: str,
        tier: TierConfig,
        request_id: str,
        tokens: int,
        spend_usd: Decimal | None,
    ) -> Admission:
        """Reserve the request's worst case, or raise RateLimitError / ServiceUnavailableError."""
        try:
            reply = await self._store.admit(
                customer_id=customer_id,
                request_id=request_id,
                limits=self._store_limits(tier.limits),
                tokens=tokens,
                spend_micros=0 if spend_usd is None else usd_to_micros_ceil(spend_usd),
                reservation_ttl_ms=self._settings.reservation_ttl_s * 1000,
                shadow=tier.shadow,
            )
        except QuotaStoreBusy as exc:
            log.warning("quota store busy; request %s refused with 503: %s", request_id, exc)
            raise ServiceUnavailableError("The gateway is overloaded; retry shortly.") from exc
        except QuotaStoreUnavailable as exc:
            # A shadow tier refuses nothing, not even for want of Redis.
            if self._settings.on_redis_error == "reject" and not tier.shadow:
                log.warning(
                    "quota store unreachable; request %s refused (on_redis_error: reject): %s",
                    request_id,
                    exc,
                )
                raise ServiceUnavailableError(
                    "The quota service is unavailable; retry shortly."
                ) from exc
            self.redis_error_admissions += 1
            self.traffic.count(tier_name, refused=False)
            log.warning(
                "quota store unreachable; request %s of customer %s admitted without quota "
                "(on_redis_error: allow): %s",
                request_id,
                customer_id,
                exc,
            )
            return Admission(request_id, customer_id, tier_name, tier.limits, False, None)
        if not reply.admitted:
            self.refusals[reply.limit or "unknown"] += 1
            self.traffic.count(tier_name, refused=True)
            if self._alerts is not None and reply.limit in MONTHLY_LIMITS:
                self._alerts.refused(
                    customer_id=customer_id,
                    tier_name=tier_name,
                    tier=tier,
                    request_id=request_id,
                    limit=reply.limit,
                    usage=reply.usage,
                )
            raise self._refusal(reply, tier.limits, tokens)
        self.traffic.count(tier_name, refused=False)
        if reply.limit is not None:
            self.shadow_refusals += 1
            log.info(
                "shadow mode: request %s of customer %s (tier %s) would be refused by %s",
                request_id,
                customer_id,
                tier_name,
                reply.limit,
            )
        return Admission(
            request_id, customer_id, tier_name, tier.limits, True, reply.usage, reply.limit, tier
        )

    async def settle(self, admission: Admission, *, tokens: int, spend_usd: Decimal | None) -> None:
        """Replace the reservation by the actual usage and wait for it. Never raises."""
        future = self.settle_soon(admission, tokens=tokens, spend_usd=spend_usd, defer_s=0.0)
        if future is not None:
            await asyncio.wait({future})

    def settle_soon(
        self,
        admission: Admission,
        *,
        tokens: int,
        spend_usd: Decimal | None,
        defer_s: float = SETTLE_DEFER_S,
    ) -> asyncio.Future[Any] | None:
        """Queue the settle and return at once: it rides with the next admit's Redis round
        trip, or goes on its own within `defer_s`; its outcome is logged as it arrives, and
        `aclose` waits for it. Never raises."""
        if not admission.reserved:
            return None
        spend_micros = 0 if spend_usd is None else usd_to_micros_ceil(spend_usd)
        try:
            future = self._store.settle_soon(
                customer_id=admission.customer_id,
                request_id=admission.request_id,
                tokens=tokens,
                spend_micros=spend_micros,
                defer_s=defer_s,
            )
        except Exception as exc:  # the request path must not fail on its bookkeeping
            self._settle_failed(admission, tokens, spend_usd, exc)
            return None

        def done(future: asyncio.Future[Any]) -> None:
            exc = future.exception()
            if exc is not None:
                self._settle_failed(admission, tokens, spend_usd, translate(exc))
                return
            reply = SettleReply.from_reply(future.result())
            if reply.month is not None:
                if self._alerts is not None:
                    self._alerts.settled(admission, reply)
            elif reply.outcome == "unknown":
                log.warning(
                    "quota settle for request %s found no reservation (expired); usage not "
                    "counted in quotas",
                    admission.request_id,
                )

        future.add_done_callback(done)
        return future

    def _settle_failed(
        self, admission: Admission, tokens: int, spend_usd: Decimal | None, exc: BaseException
    ) -> None:
        self.settle_failures += 1
        log.error(
            "quota settle failed for request %s of customer %s (%s tokens, spend %s USD); "
            "its reservation is released after %ss: %r",
            admission.request_id,
            admission.customer_id,
            tokens,
            spend_usd,
            self._settings.reservation_ttl_s,
            exc,
        )

    async def aclose(self) -> None:
        """Wait for the settles still queued."""
        await self._store.aclose()

    def rate_limit_headers(self, admission: Admission) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers of the limited per-minute windows; none without Redis."""
        if admission.usage is None:
            return {}
        return rate_limit_headers(admission.limits, admission.usage)

    async def status(self, customer_id: str, tier: TierConfig) -> QuotaStatus:
        """Used and limit in every window, for /usage/limits and /usage/quota-status."""
        try:
            usage = await self._store.usage(customer_id)
        except QuotaStoreUnavailable as exc:
            raise ServiceUnavailableError(
                "The quota service is unavailable; retry shortly."
            ) from exc
        return build_status(customer_id, tier.limits, usage)

    async def ping(self) -> None:
        await self._store.ping()

    def _refusal(self, reply: AdmitReply, limits: TierLimits, tokens: int) -> RateLimitError:
        usage = reply.usage
        headers = rate_limit_headers(limits, usage)
        wait = reply.retry_after_ms
        resets = _iso(usage.next_month_ms)
        if reply.limit == "requests_per_minute":
            if wait is None:
                message = "This tier allows no requests (requests per minute limit 0)."
            else:
                message = (
                    f"Rate limit reached for requests per minute (limit "
                    f"{limits.requests_per_minute}). Retry in {_whole_seconds(wait)}s."
                )
        elif reply.limit == "tokens_per_minute":
            if wait is None:
                message = (
                    f"Request too large for tokens per minute (limit {limits.tokens_per_minute}):"
                    f" it may use up to {tokens} tokens (prompt plus max output tokens). "
                    "Lower max_tokens or shorten the prompt."
                )
            else:
                message = (
                    f"Rate limit reached for tokens per minute (limit {limits.tokens_per_minute},"
                    f" used {usage.minute_tokens}, requested {tokens}). "
                    f"Retry in {_whole_seconds(wait)}s."
                )
        elif reply.limit == "requests_per_month":
            message = (
                f"Monthly request quota exhausted (limit {limits.requests_per_month} requests "
                f"per month); resets {resets}."
            )
        elif reply.limit == "tokens_per_month":
            message = (
                f"Monthly token quota exhausted (limit {limits.tokens_per_month} tokens per "
                f"month, {usage.month_tokens} used, this request may use up to {tokens}); "
                f"resets {resets}."
            )
        else:
            used = Decimal(usage.month_spend_micros).scaleb(-6)
            message = (
                f"Monthly spend cap reached (limit ${limits.spend_per_month_usd} per month, "
                f"${used} used); resets {resets}."
            )
        per_minute = reply.limit in ("requests_per_minute", "tokens_per_minute")
        return RateLimitError(
            message,
            retry_after_ms=wait if wait is not None else self._store.window_ms,
            should_retry=per_minute and wait is not None,
            limit=reply.limit or "unknown",
            extra_headers=headers,
        )


def rate_limit_headers(limits: TierLimits, usage: UsageSnapshot) -> dict[str, str]:
    headers: dict[str, str] = {}
    if limits.requests_per_minute is not None:
        limit = limits.requests_per_minute
        headers["x-ratelimit-limit-requests"] = str(limit)
        headers["x-ratelimit-remaining-requests"] = str(max(0, limit - usage.minute_requests))
        headers["x-ratelimit-reset-requests"] = openai_duration(usage.minute_requests_reset_ms)
    if limits.tokens_per_minute is not None:
        limit = limits.tokens_per_minute
        headers["x-ratelimit-limit-tokens"] = str(limit)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, limit - usage.minute_tokens))
        headers["x-ratelimit-reset-tokens"] = openai_duration(usage.minute_tokens_reset_ms)
    return headers
