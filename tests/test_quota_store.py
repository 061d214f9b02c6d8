"""QuotaStore against the session's real Valkey: the Lua scripts' counting, windows and months.

Per-minute windows are exercised with 2-second windows (`QuotaStore(window_ms=2000)`), so the
sliding behaviour shows without waiting a minute; every test uses its own customer id.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from storage.quota.keys import customer_keys
from storage.quota.scripts import lua_source
from storage.quota.store import (
    AdmitReply,
    QuotaLimits,
    QuotaStore,
    UsageSnapshot,
)

WINDOW_MS = 2000
TTL_MS = 60_000


@pytest.fixture
def store(redis_client: Redis) -> QuotaStore:
    return QuotaStore(redis_client, window_ms=WINDOW_MS)


def new_customer() -> str:
    return f"cust-{uuid.uuid4().hex[:12]}"


def new_request() -> str:
    return str(uuid.uuid4())


async def admit(
    store: QuotaStore,
    customer: str,
    limits: QuotaLimits,
    *,
    tokens: int = 0,
    micros: int = 0,
    ttl_ms: int = TTL_MS,
    request_id: str | None = None,
    shadow: bool = False,
) -> AdmitReply:
    return await store.admit(
        customer_id=customer,
        request_id=request_id or new_request(),
        limits=limits,
        tokens=tokens,
        spend_micros=micros,
        reservation_ttl_ms=ttl_ms,
        shadow=shadow,
    )


def counters(usage: UsageSnapshot) -> tuple[int, ...]:
    return (
        usage.minute_requests,
        usage.minute_tokens,
        usage.month_requests,
        usage.month_tokens,
        usage.month_spend_micros,
    )


def test_a_customers_keys_share_one_cluster_slot() -> None:
    for customer in ("acme", "cust_42", "we{ir}d", "a}b{c", "%7B"):
        keys = customer_keys(customer)
        names = [
            keys.requests_log,
            keys.token_buckets,
            keys.month_counters,
            keys.pending,
            keys.reservation(new_request()),
        ]
        assert all(name.startswith("q1:{") for name in names)
        assert len({key_slot(name.encode()) for name in names}) == 1
    # Escaping keeps distinct ids distinct.
    assert customer_keys("a{b").pending != customer_keys("a%7Bb").pending
    assert customer_keys("acme").requests_log == "q1:{acme}:rpm"


@pytest.mark.parametrize(
    ("limits", "tokens", "micros", "expected", "refusing"),
    [
        (QuotaLimits(requests_per_minute=3), 0, 0, 3, "requests_per_minute"),
        (QuotaLimits(tokens_per_minute=1000), 250, 0, 4, "tokens_per_minute"),
        (QuotaLimits(requests_per_month=5), 0, 0, 5, "requests_per_month"),
        (QuotaLimits(tokens_per_month=1000), 200, 0, 5, "tokens_per_month"),
        (QuotaLimits(spend_per_month_micros=1_000_000), 0, 250_000, 4, "spend_per_month"),
    ],
)
async def test_each_limit_refuses_exactly_at_its_limit(
    store: QuotaStore,
    limits: QuotaLimits,
    tokens: int,
    micros: int,
    expected: int,
    refusing: str,
) -> None:
    customer = new_customer()
    replies = [
        await admit(store, customer, limits, tokens=tokens, micros=micros)
        for _ in range(expected + 3)
    ]
    assert [r.admitted for r in replies] == [True] * expected + [False] * 3
    assert {r.limit for r in replies[expected:]} == {refusing}
    # At the limit exactly: the last admission used the window up to the limit, no further.
    last = replies[expected - 1].usage
    assert counters(last) == counters(replies[-1].usage)


async def test_a_refusal_reserves_nothing_in_any_window(
    store: QuotaStore, redis_client: Redis
) -> None:
    customer = new_customer()
    keys = customer_keys(customer)
    limits = QuotaLimits(
        requests_per_minute=10,
        tokens_per_minute=1000,
        requests_per_month=10,
        tokens_per_month=10_000,
        spend_per_month_micros=10_000_000,
    )
    assert (await admit(store, customer, limits, tokens=900, micros=100)).admitted
    before = await store.usage(customer)
    pending_before = await redis_client.zcard(keys.pending)

    refused_id = new_request()
    # Only the token window is short; every other window has room and must stay untouched.
    reply = await admit(store, customer, limits, tokens=200, micros=100, request_id=refused_id)

    assert not reply.admitted
    assert reply.limit == "tokens_per_minute"
    after = await store.usage(customer)
    assert counters(after) == counters(before) == (1, 900, 1, 900, 100)
    assert await redis_client.zcard(keys.pending) == pending_before == 1
    assert await redis_client.exists(keys.reservation(refused_id)) == 0
    assert await redis_client.zscore(keys.requests_log, refused_id) is None


async def test_request_window_slides_instead_of_resetting(store: QuotaStore) -> None:
    customer = new_customer()
    limits = QuotaLimits(requests_per_minute=4)
    first = [await admit(store, customer, limits) for _ in range(2)]
    await asyncio.sleep(1.0)
    second = [await admit(store, customer, limits) for _ in range(2)]
    assert all(r.admitted for r in first + second)

    refused = await admit(store, customer, limits)
    assert not refused.admitted
    assert refused.retry_after_ms is not None
    # The first pair leaves a window after it came in: about 1 s from now, never later.
    expected = first[0].usage.server_time_ms + WINDOW_MS - refused.usage.server_time_ms
    assert refused.retry_after_ms == expected

    await asyncio.sleep(refused.retry_after_ms / 1000 + 0.02)
    # Only the first pair has left: two fit, the third meets the second pair still inside.
    again = [await admit(store, customer, limits) for _ in range(3)]
    assert [r.admitted for r in again] == [True, True, False]
    # A fixed window would have let all four slots back at once at its reset.
    assert again[2].retry_after_ms is not None
    assert again[2].retry_after_ms <= WINDOW_MS


async def test_token_window_never_holds_twice_the_limit_across_a_boundary(
    store: QuotaStore,
) -> None:
    customer = new_customer()
    limits = QuotaLimits(tokens_per_minute=1000)
    first = await admit(store, customer, limits, tokens=1000)
    assert first.admitted
    while True:  # knock until admitted: the window must have slid a full length first
        reply = await admit(store, customer, limits, tokens=1000)
        if reply.admitted:
            break
        assert reply.retry_after_ms is not None
        assert 0 < reply.retry_after_ms <= WINDOW_MS
        await asyncio.sleep(0.05)
    elapsed = reply.usage.server_time_ms - first.usage.server_time_ms
    # Never sooner than a full window; the sub-buckets cost at most one bucket (window/60) more.
    assert WINDOW_MS <= elapsed <= WINDOW_MS + WINDOW_MS // 60 + 400


@pytest.mark.parametrize(
    ("limits", "tokens"),
    [(QuotaLimits(requests_per_minute=1), 0), (QuotaLimits(tokens_per_minute=500), 400)],
)
async def test_waiting_the_retry_after_gets_in_and_less_does_not(
    store: QuotaStore, limits: QuotaLimits, tokens: int
) -> None:
    customer = new_customer()
    assert (await admit(store, customer, limits, tokens=tokens)).admitted
    await asyncio.sleep(0.5)
    refused = await admit(store, customer, limits, tokens=tokens)
    assert not refused.admitted and refused.retry_after_ms is not None
    assert refused.retry_after_ms <= WINDOW_MS

    await asyncio.sleep(max(0, refused.retry_after_ms - 500) / 1000)
    assert not (await admit(store, customer, limits, tokens=tokens)).admitted
    await asyncio.sleep(0.5)
    assert (await admit(store, customer, limits, tokens=tokens)).admitted


async def test_settle_refunds_an_overestimate_and_tops_up_an_underestimate(
    store: QuotaStore,
) -> None:
    customer = new_customer()
    limits = QuotaLimits(tokens_per_minute=1000, tokens_per_month=5000)
    big, small = new_request(), new_request()
    assert (await admit(store, customer, limits, tokens=900, micros=9000, request_id=big)).admitted
    assert not (await admit(store, customer, limits, tokens=300)).admitted

    refund = await store.settle(customer_id=customer, request_id=big, tokens=100, spend_micros=1000)
    assert (refund.outcome, refund.tokens_delta, refund.spend_micros_delta) == (
        "settled",
        -800,
        -8000,
    )
    assert not refund.released_before
    # The refund made room at once.
    assert (await admit(store, customer, limits, tokens=300, request_id=small)).admitted

    top_up = await store.settle(customer_id=customer, request_id=small, tokens=450, spend_micros=7)
    assert (top_up.tokens_delta, top_up.spend_micros_delta) == (150, 7)
    usage = await store.usage(customer)
    assert counters(usage) == (2, 550, 2, 550, 1007)


async def test_settle_returns_the_month_counters_after_it(store: QuotaStore) -> None:
    customer = new_customer()
    limits = QuotaLimits(tokens_per_month=100)
    done, pending = new_request(), new_request()
    first = await admit(store, customer, limits, tokens=75, micros=750, request_id=done)
    await admit(store, customer, limits, tokens=10, micros=100, request_id=pending)
    settled = await store.settle(customer_id=customer, request_id=done, tokens=82, spend_micros=820)
    # The reservation's month, counting this settle and the other pending reservation.
    assert (
        settled.month,
        settled.month_requests,
        settled.month_tokens,
        settled.month_spend_micros,
    ) == (first.usage.month, 2, 92, 920)
    again = await store.settle(customer_id=customer, request_id=done, tokens=82, spend_micros=820)
    assert (again.outcome, again.month) == ("already_settled", None)


async def test_settle_twice_changes_nothing_the_second_time(store: QuotaStore) -> None:
    customer = new_customer()
    request_id = new_request()
    limits = QuotaLimits()
    await admit(store, customer, limits, tokens=500, micros=500, request_id=request_id)
    first = await store.settle(
        customer_id=customer, request_id=request_id, tokens=10, spend_micros=1
    )
    after_first = counters(await store.usage(customer))
    second = await store.settle(
        customer_id=customer, request_id=request_id, tokens=9999, spend_micros=9999
    )
    assert first.outcome == "settled"
    assert (second.outcome, second.tokens_delta, second.spend_micros_delta) == (
        "already_settled",
        0,
        0,
    )
    assert counters(await store.usage(customer)) == after_first == (1, 10, 1, 10, 1)

    unknown = await store.settle(
        customer_id=customer, request_id=new_request(), tokens=5, spend_micros=5
    )
    assert unknown.outcome == "unknown"
    assert counters(await store.usage(customer)) == after_first


async def test_a_retried_admit_reserves_once(store: QuotaStore) -> None:
    customer = new_customer()
    request_id = new_request()
    limits = QuotaLimits(requests_per_minute=5)
    first = await admit(store, customer, limits, tokens=100, request_id=request_id)
    again = await admit(store, customer, limits, tokens=100, request_id=request_id)
    assert first.admitted and not first.duplicate
    assert again.admitted and again.duplicate
    assert counters(again.usage) == (1, 100, 1, 100, 0)


async def test_an_abandoned_reservation_is_released_by_its_ttl(store: QuotaStore) -> None:
    customer = new_customer()
    limits = QuotaLimits(tokens_per_minute=1000, spend_per_month_micros=1000)
    abandoned = new_request()
    held = await admit(
        store, customer, limits, tokens=800, micros=800, ttl_ms=300, request_id=abandoned
    )
    assert held.admitted
    assert not (await admit(store, customer, limits, tokens=800, micros=800)).admitted

    await asyncio.sleep(0.4)
    # Its tokens and spend came back; the request itself still counts.
    assert counters(await store.usage(customer)) == (1, 0, 1, 0, 0)
    assert (await admit(store, customer, limits, tokens=800, micros=800)).admitted

    # The request turns out to have finished after all: its actual use is added in full, once.
    late = await store.settle(customer_id=customer, request_id=abandoned, tokens=50, spend_micros=5)
    assert (late.outcome, late.released_before, late.tokens_delta, late.spend_micros_delta) == (
        "settled",
        True,
        50,
        5,
    )
    assert counters(await store.usage(customer)) == (2, 850, 2, 850, 805)


async def test_shadow_mode_reserves_and_names_the_limit_that_would_refuse(
    store: QuotaStore,
) -> None:
    customer = new_customer()
    limits = QuotaLimits(requests_per_month=1)
    assert (await admit(store, customer, limits, shadow=True)).limit is None
    over = await admit(store, customer, limits, shadow=True)
    assert over.admitted
    assert over.limit == "requests_per_month"
    assert over.usage.month_requests == 2


def python_month(ms: int) -> tuple[str, int, int]:
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    following = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    return (
        f"{moment.year:04d}-{moment.month:02d}",
        int(start.timestamp()) * 1000,
        int(following.timestamp()) * 1000,
    )


async def test_lua_calendar_month_matches_utc_calendar(redis_client: Redis) -> None:
    # quota_lib.lua's month_of, evaluated by the real server at chosen instants.
    probe = (
        lua_source("quota_lib.lua")
        + """
local out = {}
for i = 1, #ARGV do
  local id, first, following = month_of(tonumber(ARGV[i]))
  out[#out + 1] = id .. ' ' .. int(first) .. ' ' .. int(following)
end
return out
"""
    )
    instants = []
    for year in (1970, 1999, 2000, 2024, 2025, 2026, 2100, 2400):
        for month in range(1, 13):
            start_ms = int(datetime(year, month, 1, tzinfo=UTC).timestamp()) * 1000
            instants += [start_ms - 1, start_ms, start_ms + 1, start_ms + 15 * 86_400_000]
    instants += [int(datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC).timestamp()) * 1000 + 999]
    instants = [ms for ms in instants if ms >= 0]
    replies = await redis_client.eval(probe, 0, *instants)
    got = [reply.decode().split(" ") for reply in replies]
    expected = [python_month(ms) for ms in instants]
    assert [(g[0], int(g[1]), int(g[2])) for g in got] == expected


async def test_a_previous_months_usage_does_not_count_this_month(
    store: QuotaStore, redis_client: Redis
) -> None:
    customer = new_customer()
    keys = customer_keys(customer)
    limits = QuotaLimits(requests_per_month=3)
    now_s, _ = await redis_client.time()
    this_month, this_start, next_start = python_month(now_s * 1000)
    previous, _, _ = python_month(this_start - 1)
    older = [python_month(this_start - k * 40 * 86_400_000)[0] for k in (2, 3)]
    # Last month exhausted its quota; two older months are stale leftovers.
    await redis_client.hset(
        keys.month_counters,
        mapping={
            f"{previous}:requests": 3,
            f"{previous}:tokens": 7,
            **{f"{m}:requests": 1 for m in older},
            **{f"{m}:tokens": 1 for m in older},
        },
    )

    replies = [await admit(store, customer, limits) for _ in range(4)]
    assert [r.admitted for r in replies] == [True, True, True, False]
    assert replies[0].usage.month == this_month
    refused = replies[3]
    assert refused.limit == "requests_per_month"
    assert refused.usage.next_month_ms == next_start
    assert refused.retry_after_ms == next_start - refused.usage.server_time_ms
    # The month before is kept for late settles; older months are pruned.
    fields = {
        f.decode() if isinstance(f, bytes) else f
        for f in await redis_client.hkeys(keys.month_counters)
    }
    assert fields == {
        f"{m}:{c}" for m in (this_month, previous) for c in ("requests", "tokens", "spend_micros")
    } - {f"{previous}:spend_micros"}
    ttl_ms = await redis_client.pttl(keys.month_counters)
    assert ttl_ms > next_start - refused.usage.server_time_ms


async def test_admit_and_settle_send_exactly_the_evalsha_of_their_keys_and_args() -> None:
    # The packed-once parts (a customer's keys, a tier's limits) must add up to the command
    # pack_evalsha makes of the whole key and argument lists.
    from typing import Any

    from storage.quota.script_batcher import LuaScript, pack_evalsha

    sent: list[tuple[LuaScript, bytes]] = []

    class Recording:
        async def call_packed(self, script: LuaScript, packed: bytes) -> Any:
            sent.append((script, packed))
            return [1, b"", -1, 0, 1, b"2026-05", 2, 3, 4, 5, 6, 7, 8, 9]

        def submit_packed(
            self, script: LuaScript, packed: bytes, *, defer_s: float = 0.0
        ) -> asyncio.Future[Any]:
            sent.append((script, packed))
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_result([1, 0, 0, 0])
            return future

    store = QuotaStore(Redis(), window_ms=WINDOW_MS)
    store._scripts = Recording()  # type: ignore[assignment]
    limits = QuotaLimits(
        requests_per_minute=3, tokens_per_month=10**12, spend_per_month_micros=5_000_000
    )
    keys = customer_keys("cust_{é}")
    await store.admit(
        customer_id="cust_{é}",
        request_id="req-1",
        limits=limits,
        tokens=4116,
        spend_micros=29,
        reservation_ttl_ms=TTL_MS,
        shadow=True,
    )
    await store.settle_soon(customer_id="cust_{é}", request_id="req-1", tokens=55, spend_micros=3)
    admit_keys = [
        keys.requests_log,
        keys.token_buckets,
        keys.month_counters,
        keys.pending,
        keys.reservation("req-1"),
    ]
    admit_args: list[str | int] = [
        "req-1",
        3,
        -1,
        -1,
        10**12,
        5_000_000,
        4116,
        29,
        TTL_MS,
        WINDOW_MS,
        1,
    ]
    settle_keys = [keys.token_buckets, keys.month_counters, keys.pending, keys.reservation("req-1")]
    assert sent == [
        (store._admit.script, pack_evalsha(store._admit.script, admit_keys, admit_args)),
        (store._settle.script, pack_evalsha(store._settle.script, settle_keys, [55, 3])),
    ]
