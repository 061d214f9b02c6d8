"""`ClusterScriptBatcher`: the quota scripts on a Redis Cluster, pipelined per primary.

The same interface as `storage.quota.script_batcher.ScriptBatcher` (`submit_packed`, `call_packed`,
`aclose`), for a `RedisCluster`. A call goes to the primary that owns the slot of its first
key (every key of a quota script shares the customer's hash tag, so one slot), through that
node's own `ScriptBatcher`: one connection per primary, calls made while a batch is on the
wire share the next round trip, NOSCRIPT (a new or failed-over node without the script)
loads it and sends again, exactly as on one node. The slot map is redis-py's
(`RedisCluster.nodes_manager`), read once per call.

Failure semantics, per call. A reply that says the slot is elsewhere or not served right now
(MOVED, ASK, TRYAGAIN, CLUSTERDOWN, READONLY, MASTERDOWN) or a node that cannot be reached
(after its batcher's own resends) sends the call again through redis-py's cluster client as
`EVAL` with the script's source (no NOSCRIPT possible), which follows MOVED and ASK itself
and refreshes the slot map; that is retried, the slot map refreshed between tries, for up to
`reroute_for_s`, after which the call raises `redis.exceptions.ConnectionError` (the quota
store's outage, decided by `quotas.on_redis_error`). A MOVED reply also updates the slot map
the next calls are routed by. Sending a call again is safe because the quota scripts are
idempotent by request id: a second admit is answered `duplicate`, a second settle changes
nothing. Any other Redis error is the call's own, raised unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.exceptions
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from storage.quota.script_batcher import Arg, LuaScript, ScriptBatcher, pack_evalsha

log = logging.getLogger(__name__)

REROUTE_FOR_S = 1.0
REROUTE_PAUSE_S = 0.05
REFRESH_EVERY_S = 0.1  # at most one slot-map refresh per this long
SLOW_LANE = 8  # calls sent again through the cluster client at once, at most

# Replies and failures after which the call is sent again, routed afresh.
_REROUTE = (
    redis.exceptions.AskError,  # MovedError too
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.ClusterError,
)


def command_parts(packed: bytes) -> list[bytes]:
    """The arguments of one packed RESP command (`*N` then N bulk strings)."""
    end = packed.index(b"\r\n")
    count = int(packed[1:end])
    parts: list[bytes] = []
    at = end + 2
    for _ in range(count):
        end = packed.index(b"\r\n", at)
        length = int(packed[at + 1 : end])
        parts.append(packed[end + 2 : end + 2 + length])
        at = end + 4 + length
    return parts


def first_key(packed: bytes) -> bytes:
    """The first key of a packed `EVALSHA sha numkeys key ...` (its fourth bulk string)."""
    at = packed.index(b"\r\n") + 2
    for _ in range(3):
        end = packed.index(b"\r\n", at)
        at = end + 4 + int(packed[at + 1 : end])
    end = packed.index(b"\r\n", at)
    return packed[end + 2 : end + 2 + int(packed[at + 1 : end])]


class ClusterScriptBatcher:
    def __init__(
        self,
        cluster: RedisCluster,
        *,
        retries: int = 2,
        reroute_for_s: float = REROUTE_FOR_S,
        wait_replicas: int = 0,
    ) -> None:
        self._cluster = cluster
        self._retries = retries
        self._wait_replicas = wait_replicas
        self._reroute_for_s = reroute_for_s
        self._nodes: dict[str, tuple[Redis, ScriptBatcher]] = {}
        self._rerouting: set[asyncio.Task[None]] = set()
        self._refresh: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0
        self._closed = False
        # Calls sent again share a few of the cluster client's connections (its pools do not
        # wait for a free connection: a burst of resends would find them full).
        self._slow_lane = asyncio.Semaphore(SLOW_LANE)
        self.rerouted = 0  # calls sent again after a redirect or a node failure

    @property
    def batches(self) -> int:
        return sum(batcher.batches for _, batcher in self._nodes.values())

    async def call(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        return await self.submit_packed(script, pack_evalsha(script, keys, args))

    async def call_packed(self, script: LuaScript, packed: bytes) -> Any:
        return await self.submit_packed(script, packed)

    def submit_packed(
        self, script: LuaScript, packed: bytes, *, defer_s: float = 0.0
    ) -> asyncio.Future[Any]:
        """Queue the call on the batcher of its slot's primary; the future of its reply."""
        if self._closed:
            raise RuntimeError("ClusterScriptBatcher is closed")
        loop = asyncio.get_running_loop()
        outer: asyncio.Future[Any] = loop.create_future()
        node = self._primary_of(first_key(packed))
        if node is None:  # no slot map yet, or the slot has no primary now
            self._reroute(outer, script, packed, None)
            return outer
        inner = self._batcher(node).submit_packed(script, packed, defer_s=defer_s)
        inner.add_done_callback(lambda done: self._answered(done, outer, script, packed))
        return outer

    def _primary_of(self, key: bytes) -> ClusterNode | None:
        try:
            node: ClusterNode = self._cluster.nodes_manager.get_node_from_slot(
                self._cluster.keyslot(key)
            )
        except (
            redis.exceptions.RedisClusterException,
            redis.exceptions.RedisError,
            IndexError,
            KeyError,
        ):
            return None
        return node

    def _batcher(self, node: ClusterNode) -> ScriptBatcher:
        entry = self._nodes.get(node.name)
        if entry is None:
            kwargs = dict(node.connection_kwargs)
            pool = ConnectionPool(
                connection_class=node.connection_class, max_connections=2, **kwargs
            )
            client = Redis(connection_pool=pool)
            entry = self._nodes[node.name] = (
                client,
                ScriptBatcher(client, retries=self._retries, wait_replicas=self._wait_replicas),
            )
        return entry[1]

    def _answered(
        self,
        inner: asyncio.Future[Any],
        outer: asyncio.Future[Any],
        script: LuaScript,
        packed: bytes,
    ) -> None:
        if outer.done():
            return
        error = inner.exception()
        if error is None:
            outer.set_result(inner.result())
        elif isinstance(error, _REROUTE) and not isinstance(
            error, redis.exceptions.MaxConnectionsError
        ):
            self._reroute(outer, script, packed, error)
        else:
            outer.set_exception(error)

    def _reroute(
        self,
        outer: asyncio.Future[Any],
        script: LuaScript,
        packed: bytes,
        error: BaseException | None,
    ) -> None:
        self.rerouted += 1
        task = asyncio.get_running_loop().create_task(
            self._send_again(outer, script, packed, error), name="redis-cluster-reroute"
        )
        self._rerouting.add(task)
        task.add_done_callback(self._rerouting.discard)

    async def _send_again(
        self,
        outer: asyncio.Future[Any],
        script: LuaScript,
        packed: bytes,
        error: BaseException | None,
    ) -> None:
        if isinstance(error, redis.exceptions.MovedError):
            try:  # the next calls of this slot go to its new primary at once
                await self._cluster.nodes_manager.move_slot(error)
            except (
                redis.exceptions.RedisError,
                redis.exceptions.RedisClusterException,
                KeyError,
                IndexError,
            ) as exc:
                log.debug("redis cluster: slot move not applied: %s", exc)
        parts = command_parts(packed)  # EVALSHA sha numkeys keys... args...
        deadline = time.monotonic() + self._reroute_for_s
        while True:
            try:
                async with self._slow_lane:
                    reply = await self._cluster.execute_command("EVAL", script.source, *parts[2:])
            except _REROUTE as exc:
                if time.monotonic() >= deadline:
                    if isinstance(exc, redis.exceptions.MaxConnectionsError):
                        _settle(outer, exc)
                        return
                    log.warning(
                        "redis cluster: a script call failed for %.1fs: %s",
                        self._reroute_for_s,
                        exc,
                    )
                    _settle(
                        outer,
                        exc
                        if isinstance(
                            exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
                        )
                        else redis.exceptions.ConnectionError(f"redis cluster: {exc}"),
                    )
                    return
                await asyncio.sleep(REROUTE_PAUSE_S)
                await self._refresh_slots()
            except BaseException as exc:
                _settle(outer, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            else:
                _settle(outer, reply)
                return

    async def _refresh_slots(self) -> None:
        """Read the slot map again (one refresh at a time, at most every REFRESH_EVERY_S)."""
        if self._refresh is None:
            if time.monotonic() - self._refreshed_at < REFRESH_EVERY_S:
                return
            self._refresh = asyncio.get_running_loop().create_task(self._do_refresh())
        await asyncio.wait({self._refresh})

    async def _do_refresh(self) -> None:
        try:
            await self._cluster.nodes_manager.initialize()
        except (
            redis.exceptions.RedisError,
            redis.exceptions.RedisClusterException,
            OSError,
        ) as exc:
            log.warning("redis cluster: slot map refresh failed: %s", exc)
        finally:
            self._refreshed_at = time.monotonic()
            self._refresh = None

    async def aclose(self) -> None:
        """Let queued and rerouted calls finish, then close the per-node connections."""
        self._closed = True
        for _, batcher in list(self._nodes.values()):
            await batcher.aclose()
        if self._rerouting:
            await asyncio.wait(set(self._rerouting))
        for client, _ in self._nodes.values():
            await client.aclose()


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
