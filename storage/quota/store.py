"""The quota counters in Redis: one atomic Lua call admits, one settles, one reads.

`QuotaStore` knows the keys (`storage.quota.keys`), the scripts (`storage/quota/lua/*.lua`, each
loaded once by its SHA1, `quota_lib.lua` prepended to each, their KEYS and ARGV declared once
in `storage.quota.scripts`) and their replies, which it turns into frozen dataclasses straight
away. Script calls go through `storage.quota.script_batcher`:
concurrent admits and settles share one pipelined round trip (on a Redis Cluster,
`storage.quota.cluster_batcher`: one round trip per primary, redirects and failovers followed).
It knows nothing of tiers, HTTP or Decimal money: limits and amounts arrive as integers
(tokens, micro-dollars).

What the scripts guarantee, because each runs atomically on the one Redis that holds all of a
customer's keys (one Cluster slot through the hash tag):
- admit reserves one request, the estimated tokens and the estimated spend in every window,
  or, when any window would go over its limit, nothing at all;
- the request windows are exact: a sliding log, so no window of `window_ms` ever holds more
  admitted requests than the limit, whatever the number of gateway processes;
- the token window is a sliding window of 60 sub-buckets, each kept until its newest
  admission is a full window old: it never forgets a token early (no 2x at a boundary) and
  holds a token at most one sub-bucket (window/60, 1 s) longer than an exact log would;
- months are UTC calendar months of the Redis server's TIME;
- settle is idempotent per request id; a reservation not settled within its ttl gives its
  tokens and spend back (the request stays counted), swept lazily by the customer's next call.

Failure: a full local connection pool (`MaxConnectionsError`) is `QuotaStoreBusy`, overload
that is refused, never mistaken for an outage. Redis unreachable or timing out (redis-py
`ConnectionError` / `TimeoutError`, raised after the batcher's or the client's own retries)
is translated here, once, into `QuotaStoreUnavailable`; the caller decides what that means.
So is a script refused before it ran by a primary that may not write (NOREPLICAS under
`min-replicas-to-write` while a failover takes its replica, MASTERDOWN).
Any other Redis error (a refused script, out of memory)
propagates unchanged: it is a bug or an operator problem, not an outage to paper over.
A retried admit cannot reserve twice: a request id that already holds a reservation is
answered `duplicate` with nothing reserved again.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from storage.quota.cluster_batcher import ClusterScriptBatcher
from storage.quota.keys import customer_keys
from storage.quota.script_batcher import ScriptBatcher, bulk_strings
from storage.quota.scripts import ADMIT, SETTLE, STATUS, QuotaScript

PRODUCTION_WINDOW_MS = 60_000

_UNLIMITED = -1


_ALERT_TTL_S = 40 * 24 * 3600


class QuotaStoreBusy(Exception):
    """This process has no free Redis connection: local overload, not a Redis outage. Never
    a reason to admit without quota (that would multiply limits under load)."""


class QuotaStoreUnavailable(Exception):
    """Redis could not be reached or did not answer in time."""


# A script refused, before it ran, by a primary that may not write now: its replicas are gone
# (`min-replicas-to-write`, e.g. while Sentinel promotes one) or its primary is (MASTERDOWN).
_NO_WRITABLE_PRIMARY = ("NOREPLICAS", "MASTERDOWN")

_OUTAGE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ResponseError,
)  # translate() lets most ResponseErrors through


def translate(exc: BaseException) -> BaseException:
    """A redis-py failure as this module's exceptions; anything else unchanged."""
    if isinstance(exc, redis.exceptions.MaxConnectionsError):
        return QuotaStoreBusy("no free quota store connection in this process")
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return QuotaStoreUnavailable(f"quota store unreachable: {exc}")
    if isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(
        _NO_WRITABLE_PRIMARY
    ):
        return QuotaStoreUnavailable(f"quota store has no writable primary: {exc}")
    return exc


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """A tier's limits as whole numbers; None is unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    requests_per_month: int | None = None
    tokens_per_month: int | None = None
    spend_per_month_micros: int | None = None
    # What as_args() returns, built once, and packed for the admit script (sent on every
    # admit): the fields above in their order, which is the order of admit.lua's ARGV[2..6].
    args: tuple[int, ...] = field(init=False, repr=False, compare=False)
    packed_args: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = (
            self.requests_per_minute,
            self.tokens_per_minute,
            self.requests_per_month,
            self.tokens_per_month,
            self.spend_per_month_micros,
        )
        args = tuple(_UNLIMITED if v is None else v for v in values)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "packed_args", bulk_strings(args))

    def as_args(self) -> list[int]:
        return list(self.args)


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """A customer's windows as the server saw them, at `server_time_ms` (Redis TIME)."""

    server_time_ms: int
    month: str  # "YYYY-MM", UTC
    next_month_ms: int  # the first millisecond of the next month
    minute_requests: int
    minute_requests_reset_ms: int  # until the oldest request leaves the window; 0 if empty
    minute_tokens: int
    minute_tokens_reset_ms: int  # until the oldest tokens leave the window; 0 if empty
    month_requests: int
    month_tokens: int
    month_spend_micros: int

    @classmethod
    def from_reply(cls, fields: list[Any]) -> UsageSnapshot:
        # Positional, in field order (one per admit: keyword arguments cost more).
        return cls(
            int(fields[0]),
            _text(fields[1]),
            int(fields[2]),
            int(fields[3]),
            int(fields[4]),
            int(fields[5]),
            int(fields[6]),
            int(fields[7]),
            int(fields[8]),
            int(fields[9]),
        )


@dataclass(frozen=True, slots=True)
class AdmitReply:
    admitted: bool
    # The limit that refused; in shadow mode, the one that would have (with admitted True).
    limit: str | None
    # How long until this request could fit; None when no wait can make it fit.
    retry_after_ms: int | None
    # The request id already held a reservation; nothing was reserved again.
    duplicate: bool
    usage: UsageSnapshot

    @classmethod
    def from_reply(cls, reply: list[Any]) -> AdmitReply:
        limit = _text(reply[1])
        retry = int(reply[2])
        return cls(
            int(reply[0]) == 1,
            limit or None,
            None if retry < 0 else retry,
            int(reply[3]) == 1,
            UsageSnapshot.from_reply(reply[4:]),
        )


_OUTCOMES: dict[int, Literal["settled", "already_settled", "unknown"]] = {
    1: "settled",
    2: "already_settled",
    0: "unknown",
}


@dataclass(frozen=True, slots=True)
class SettleReply:
    outcome: Literal["settled", "already_settled", "unknown"]
    tokens_delta: int  # added to the token counters; negative is a refund
    spend_micros_delta: int
    # The ttl had already released the reservation: the actual usage was added in full.
    released_before: bool
    # Settled only: the reservation's month ("YYYY-MM") and its counters after this settle
    # (pending reservations included, as admit counts them); None and zeros otherwise.
    month: str | None = None
    month_requests: int = 0
    month_tokens: int = 0
    month_spend_micros: int = 0

    @classmethod
    def from_reply(cls, reply: list[Any]) -> SettleReply:
        if len(reply) < 8:
            return cls(_OUTCOMES[int(reply[0])], int(reply[1]), int(reply[2]), int(reply[3]) == 1)
        return cls(
            _OUTCOMES[int(reply[0])],
            int(reply[1]),
            int(reply[2]),
            int(reply[3]) == 1,
            _text(reply[4]),
            int(reply[5]),
            int(reply[6]),
            int(reply[7]),
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class _PackedKeys:
    """A customer's own keys that every admit, settle and status call sends first, in the
    order each script's contract declares, packed as RESP once."""

    admit: bytes
    settle: bytes
    status: bytes


@functools.lru_cache(maxsize=65_536)  # pure, like customer_keys
def _packed_keys(customer_id: str) -> _PackedKeys:
    keys = customer_keys(customer_id)
    return _PackedKeys(
        admit=ADMIT.pack_customer_keys(keys),
        settle=SETTLE.pack_customer_keys(keys),
        status=STATUS.pack_customer_keys(keys),
    )


class QuotaStore:
    """Admit, settle and read one customer's quota windows, each in one atomic Lua call.

    `window_ms` is the length of the per-minute windows: 60 000 in production; tests pass a
    short one instead of waiting a minute. `wait_replicas` > 0: a call is answered only once
    that many replicas have its writes (`ScriptBatcher`), so a failover loses no admission.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        window_ms: int = PRODUCTION_WINDOW_MS,
        wait_replicas: int = 0,
    ) -> None:
        if window_ms < 1:
            raise ValueError(f"window_ms must be positive, got {window_ms}")
        self.window_ms = window_ms
        self._redis = client
        # On a Cluster, each call goes to its customer's slot's primary, pipelined per node.
        self._scripts: ScriptBatcher | ClusterScriptBatcher = (
            ClusterScriptBatcher(client, wait_replicas=wait_replicas)
            if isinstance(client, RedisCluster)
            else ScriptBatcher(client, wait_replicas=wait_replicas)
        )
        self._admit = QuotaScript.load(ADMIT)
        self._settle = QuotaScript.load(SETTLE)
        self._status = QuotaScript.load(STATUS)

    async def aclose(self) -> None:
        """Finish the queued script calls (settles sent without waiting, say)."""
        await self._scripts.aclose()

    async def _call(self, script: QuotaScript, packed: bytes) -> Any:
        """Run a packed EVALSHA (`QuotaScript.pack`); Redis failures as QuotaStore errors."""
        try:
            return await self._scripts.call_packed(script.script, packed)
        except _OUTAGE as exc:
            error = translate(exc)
            if error is exc:
                raise
            raise error from exc

    async def admit(
        self,
        *,
        customer_id: str,
        request_id: str,
        limits: QuotaLimits,
        tokens: int,
        spend_micros: int,
        reservation_ttl_ms: int,
        shadow: bool = False,
    ) -> AdmitReply:
        """Reserve one request, `tokens` and `spend_micros` in every window, or nothing."""
        if tokens < 0 or spend_micros < 0 or reservation_ttl_ms < 1:
            raise ValueError("tokens and spend_micros must be >= 0, reservation_ttl_ms >= 1")
        # In the order of ADMIT: the customer's keys, the reservation; the request id, the
        # five limits, tokens, spend, ttl, window, shadow.
        packed = self._admit.pack(
            _packed_keys(customer_id).admit,
            bulk_strings((customer_keys(customer_id).reservation(request_id), request_id)),
            limits.packed_args,
            bulk_strings(
                (tokens, spend_micros, reservation_ttl_ms, self.window_ms, 1 if shadow else 0)
            ),
        )
        return AdmitReply.from_reply(await self._call(self._admit, packed))

    async def settle(
        self, *, customer_id: str, request_id: str, tokens: int, spend_micros: int
    ) -> SettleReply:
        """Replace a reservation by the actual `tokens` and `spend_micros`, once."""
        future = self.settle_soon(
            customer_id=customer_id, request_id=request_id, tokens=tokens, spend_micros=spend_micros
        )
        try:
            return SettleReply.from_reply(await future)
        except _OUTAGE as exc:
            error = translate(exc)
            if error is exc:
                raise
            raise error from exc

    def settle_soon(
        self,
        *,
        customer_id: str,
        request_id: str,
        tokens: int,
        spend_micros: int,
        defer_s: float = 0.0,
    ) -> asyncio.Future[Any]:
        """Queue the settle and return the future of its raw reply (`SettleReply.from_reply`;
        a failure is a redis-py exception, see `translate`); `aclose` waits for it. With
        `defer_s` it waits up to that long for another call's round trip to ride along."""
        if tokens < 0 or spend_micros < 0:
            raise ValueError("tokens and spend_micros must be >= 0")
        # In the order of SETTLE: the customer's keys, the reservation; tokens, spend.
        packed = self._settle.pack(
            _packed_keys(customer_id).settle,
            bulk_strings(
                (customer_keys(customer_id).reservation(request_id), tokens, spend_micros)
            ),
        )
        return self._scripts.submit_packed(self._settle.script, packed, defer_s=defer_s)

    async def usage(self, customer_id: str) -> UsageSnapshot:
        """What every window of the customer holds now (expired reservations released)."""
        packed = self._status.pack(
            _packed_keys(customer_id).status, bulk_strings((self.window_ms,))
        )
        return UsageSnapshot.from_reply(await self._call(self._status, packed))

    async def claim_alert(
        self, customer_id: str, limit: str, threshold_percent: int, month: str
    ) -> bool:
        """True exactly once per (customer, limit, threshold, month), across every process."""
        key = customer_keys(customer_id).alert(limit, threshold_percent, month)
        try:
            return bool(await self._redis.set(key, "1", nx=True, ex=_ALERT_TTL_S))
        except _OUTAGE as exc:
            error = translate(exc)
            if error is exc:
                raise
            raise error from exc

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except _OUTAGE as exc:
            error = translate(exc)
            if error is exc:
                raise
            raise error from exc
