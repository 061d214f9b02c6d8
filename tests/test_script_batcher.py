"""The script batcher against a real Valkey: concurrent calls share round trips, a Redis error
stays in its own call, a flushed script cache and a killed connection are recovered."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.exceptions
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from storage.quota.script_batcher import LuaScript, ScriptBatcher, pack_evalsha

# Adds ARGV[1] to a counter once per id (ARGV[2]): safe to send again, like the quota scripts.
ADD_ONCE = LuaScript(
    "if redis.call('SET', KEYS[1] .. ':' .. ARGV[2], 1, 'NX') then "
    "return redis.call('INCRBY', KEYS[1], ARGV[1]) end "
    "return tonumber(redis.call('GET', KEYS[1]))"
)
FAILS = LuaScript("return redis.error_reply('ERR refused by script')")


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    c = Redis(
        connection_pool=ConnectionPool.from_url(redis_url, max_connections=2, socket_timeout=0.5)
    )
    yield c
    await c.aclose(close_connection_pool=True)  # the pool was handed in: not closed otherwise


def test_pack_evalsha_is_the_resp_encoding_redis_py_makes() -> None:
    from redis.asyncio.connection import Connection

    packed = pack_evalsha(ADD_ONCE, ["k1"], [5, "id-é", b"\x00raw"])
    expected = b"".join(
        Connection().pack_command("EVALSHA", ADD_ONCE.sha, 1, "k1", 5, "id-é", b"\x00raw")
    )
    assert packed == expected
    # An admit's shape: hash-tagged keys, -1 for unlimited, big and empty values.
    keys = ["q1:{c}:rpm", "q1:{c}:tpm", "q1:{c}:month", "q1:{c}:pending", "q1:{c}:r:é"]
    args: list[bytes | str | int] = ["rid", -1, 0, 10**20, "", b"", 60_000, 1]
    expected = b"".join(Connection().pack_command("EVALSHA", ADD_ONCE.sha, len(keys), *keys, *args))
    assert pack_evalsha(ADD_ONCE, keys, args) == expected
    assert pack_evalsha(ADD_ONCE, [], []) == b"".join(
        Connection().pack_command("EVALSHA", ADD_ONCE.sha, 0)
    )


async def test_concurrent_calls_share_round_trips_and_each_gets_its_reply(client: Redis) -> None:
    batcher = ScriptBatcher(client)
    key = f"t:{uuid.uuid4()}"
    replies = await asyncio.gather(
        *(batcher.call(ADD_ONCE, [key], [1, str(i)]) for i in range(200))
    )
    await batcher.aclose()
    assert sorted(replies) == list(range(1, 201))  # each call ran once, in its own reply
    assert replies == sorted(replies)  # and in the order they were made
    assert batcher.batches <= 3  # the first call alone, then the rest together


async def test_a_redis_error_fails_only_its_own_call(client: Redis) -> None:
    batcher = ScriptBatcher(client)
    key = f"t:{uuid.uuid4()}"
    outcomes = await asyncio.gather(
        batcher.call(ADD_ONCE, [key], [1, "a"]),
        batcher.call(FAILS, [key], []),
        batcher.call(ADD_ONCE, [key], [1, "b"]),
        return_exceptions=True,
    )
    await batcher.aclose()
    assert outcomes[0] == 1 and outcomes[2] == 2
    assert isinstance(outcomes[1], redis.exceptions.ResponseError)
    assert "refused by script" in str(outcomes[1])


async def test_a_batch_no_replica_confirms_is_never_answered_as_done(client: Redis) -> None:
    # The session's Valkey has no replica: WAIT 1 finds none, as after a failover the old
    # primary does. The calls are sent again (applied once) and then fail, never answered.
    batcher = ScriptBatcher(client, retries=2, wait_replicas=1)
    key = f"t:{uuid.uuid4()}"
    outcomes = await asyncio.gather(
        batcher.call(ADD_ONCE, [key], [1, "a"]),
        batcher.call(ADD_ONCE, [key], [1, "b"]),
        return_exceptions=True,
    )
    await batcher.aclose()
    for outcome in outcomes:
        assert isinstance(outcome, redis.exceptions.ConnectionError)
        assert "0 of 1 replicas" in str(outcome)
    assert batcher.batches == 3  # the first try and two resends
    assert int(await client.get(key)) == 2  # each call applied once on the primary


async def test_a_flushed_script_cache_is_reloaded_transparently(client: Redis) -> None:
    batcher = ScriptBatcher(client)
    key = f"t:{uuid.uuid4()}"
    assert await batcher.call(ADD_ONCE, [key], [3, "a"]) == 3
    await client.script_flush()  # what a Redis restart does to the cache
    replies = await asyncio.gather(*(batcher.call(ADD_ONCE, [key], [3, str(i)]) for i in range(10)))
    await batcher.aclose()
    assert sorted(replies) == list(range(6, 34, 3))


async def test_a_killed_connection_is_replaced_and_the_calls_sent_again(client: Redis) -> None:
    batcher = ScriptBatcher(client)
    key = f"t:{uuid.uuid4()}"
    assert await batcher.call(ADD_ONCE, [key], [1, "first"]) == 1
    killed = await client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1  # the batcher's connection among them
    replies = await asyncio.gather(*(batcher.call(ADD_ONCE, [key], [1, str(i)]) for i in range(5)))
    await batcher.aclose()
    assert sorted(replies) == [2, 3, 4, 5, 6]  # each applied once, none lost to the kill


async def test_a_batch_that_outlasts_the_socket_timeout_fails_and_the_next_one_works(
    redis_url: str,
) -> None:
    slow = LuaScript(  # a few hundred milliseconds of work (TIME is frozen inside a script)
        "local x = 0 for i = 1, 30000000 do x = x + i end return 1"
    )
    client = Redis(connection_pool=ConnectionPool.from_url(redis_url, socket_timeout=0.1))
    batcher = ScriptBatcher(client, retries=0)
    key = f"t:{uuid.uuid4()}"
    with pytest.raises(redis.exceptions.TimeoutError):
        await batcher.call(slow, [key], [])
    for _ in range(100):  # until the server has finished the script
        try:
            assert await batcher.call(ADD_ONCE, [key], [1, "after"]) == 1
            break
        except redis.exceptions.TimeoutError:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the batcher never recovered from the timeout")
    await batcher.aclose()
    await client.aclose(close_connection_pool=True)


async def test_unreachable_redis_fails_the_calls_after_the_retries() -> None:
    # No retries inside redis-py: the batcher's own three attempts are what is tested.
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    batcher = ScriptBatcher(dead, retries=2)
    with pytest.raises(redis.exceptions.ConnectionError):
        await batcher.call(ADD_ONCE, ["k"], [1, "x"])
    await batcher.aclose()
    await dead.aclose()


async def test_aclose_waits_for_calls_nobody_awaits(client: Redis) -> None:
    batcher = ScriptBatcher(client)
    key = f"t:{uuid.uuid4()}"
    futures = [batcher.submit(ADD_ONCE, [key], [1, str(i)]) for i in range(50)]
    await batcher.aclose()
    assert all(f.done() for f in futures)
    assert await client.get(key) == b"50"
    with pytest.raises(RuntimeError):
        batcher.submit(ADD_ONCE, [key], [1, "late"])


async def test_a_deferred_call_rides_with_the_next_call_or_goes_alone(client: Redis) -> None:
    batcher = ScriptBatcher(client)
    key = f"t:{uuid.uuid4()}"
    deferred = batcher.submit(ADD_ONCE, [key], [1, "settle"], defer_s=5.0)
    assert await batcher.call(ADD_ONCE, [key], [1, "admit"]) == 2
    assert deferred.done() and deferred.result() == 1
    assert batcher.batches == 1  # both in one round trip, long before the 5 s

    alone = batcher.submit(ADD_ONCE, [key], [1, "late"], defer_s=0.02)
    await asyncio.sleep(0.005)
    assert not alone.done()
    assert await asyncio.wait_for(alone, timeout=1.0) == 3
    await batcher.aclose()
