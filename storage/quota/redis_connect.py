"""The Redis client for a `storage.redis_url`: one node, a Redis Cluster, or Sentinel.

URL forms (`TOLLBOOTH_REDIS_URL` / `storage.redis_url`):

    redis://[:PASSWORD@]HOST:PORT[/DB]      one node (rediss:// over TLS; unix:///path.sock)
    redis+cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT...]
                                            Redis or Valkey Cluster, seed nodes; the slot map
                                            is read from them (rediss+cluster:// over TLS)
    redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]
                                            Sentinel: the primary of SERVICE_NAME is asked of
                                            the sentinels on every (re)connect, so a failover is
                                            followed (rediss+sentinel://: TLS to the sentinels
                                            and to the data nodes alike)

The password (and a username, `user:password@`) applies to the data nodes; sentinels are
reached with the same credentials.

`connect(url, max_connections=...)` builds the client, connecting lazily:
- one node: a `BlockingConnectionPool` (under a burst a caller waits for a free connection
  instead of failing: a full pool must never look like an outage);
- Cluster: a `RedisCluster` (redis-py follows MOVED and ASK and refreshes its slot map);
  the quota scripts go through `storage.quota.cluster_batcher`, pipelined per primary;
- Sentinel: a client whose pool asks the sentinels for the current primary on every new
  connection; a connection still on a demoted primary turns its READONLY reply (or, under
  `min-replicas-to-write`, a NOREPLICAS one from a primary whose replica was promoted) into
  a `ConnectionError`, so the script batcher drops it and sends again on a connection to
  the new primary.
Short timeouts everywhere: `quotas.on_redis_error` decides what an outage means, not a long
retry. An unusable URL raises `ValueError` naming what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis import __version__ as redis_version
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialWithJitterBackoff
from redis.driver_info import DriverInfo

REDIS_URL_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
)

SOCKET_TIMEOUT_S = 0.5
CONNECT_TIMEOUT_S = 0.5

QuotaRedis = redis.Redis | RedisCluster


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where a `redis_url` points."""

    mode: Literal["single", "cluster", "sentinel"]
    url: str
    nodes: tuple[tuple[str, int], ...] = ()  # seed nodes or sentinels
    service: str | None = None  # Sentinel's service name
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0


def parse_redis_url(url: str) -> RedisTarget:
    """What `url` names; `ValueError` when it cannot be used."""
    scheme, sep, rest = url.partition("://")
    if not sep or url.startswith(("redis://", "rediss://", "unix://")):
        if not url.startswith(REDIS_URL_SCHEMES):
            raise ValueError(f"redis_url must start with one of {', '.join(REDIS_URL_SCHEMES)}")
        return RedisTarget("single", url)
    kinds = {
        "redis+cluster": ("cluster", False),
        "rediss+cluster": ("cluster", True),
        "redis+sentinel": ("sentinel", False),
        "rediss+sentinel": ("sentinel", True),
    }
    if scheme not in kinds:
        raise ValueError(f"redis_url must start with one of {', '.join(REDIS_URL_SCHEMES)}")
    mode, tls = kinds[scheme]
    credentials, _, hosts_and_path = rest.rpartition("@")
    hosts, _, path = hosts_and_path.partition("/")
    username = password = None
    if credentials:
        user, has_password, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    nodes = tuple(_host_port(item, url) for item in hosts.split(",") if item)
    if not nodes:
        raise ValueError(f"redis_url {scheme}:// names no HOST:PORT")
    parts = [p for p in path.split("/") if p]
    service = None
    db = 0
    if mode == "sentinel":
        if not parts:
            raise ValueError("redis+sentinel:// needs the service name: .../SERVICE_NAME")
        service = unquote(parts.pop(0))
    if parts:
        if mode == "cluster" or not parts[0].isdigit() or len(parts) > 1:
            raise ValueError(f"redis_url: unexpected path /{'/'.join(parts)} for {scheme}://")
        db = int(parts[0])
    return RedisTarget(mode, url, nodes, service, tls, username, password, db)  # type: ignore[arg-type]


def _host_port(item: str, url: str) -> tuple[str, int]:
    split = urlsplit("//" + item)
    if not split.hostname:
        raise ValueError(f"redis_url: no host in {item!r}")
    return split.hostname, split.port or 6379


def _retry() -> Retry:
    # Retrying is safe: a retried admit reserves once, settle is idempotent.
    return Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2)


def connect(url: str, *, max_connections: int) -> QuotaRedis:
    """The client for `url` (see the module docstring); nothing is connected yet."""
    target = parse_redis_url(url)
    # Given, so a new connection does not look its version up on disk (importlib metadata:
    # milliseconds of file I/O in the event loop).
    driver = DriverInfo(lib_version=redis_version)
    if target.mode == "single":
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            retry=_retry(),
            driver_info=driver,
        )
        return redis.Redis(connection_pool=pool)
    common: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
    }
    if target.tls:
        common["ssl"] = True
    if target.mode == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            # A slot without a primary (mid-failover) must not stop the others' customers.
            require_full_coverage=False,
            max_connections=max_connections,
            retry=_retry(),
            driver_info=driver,
            **common,
        )
    sentinel_kwargs = dict(common)
    common.pop("ssl", None)  # the data nodes' TLS is the connection class's
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs, **common)
    assert target.service is not None
    client: redis.Redis = sentinel.master_for(
        target.service,
        db=target.db,
        max_connections=max_connections,
        retry=_retry(),
        driver_info=driver,
        connection_class=_PrimaryTLSConnection if target.tls else _PrimaryConnection,
    )
    return client


class _FollowsPrimary(SentinelManagedConnection):
    """A connection to Sentinel's primary that also leaves a primary refusing writes for want
    of replicas (NOREPLICAS, under `min-replicas-to-write`: its replica was just promoted and
    Sentinel has not demoted it yet, which takes it some seconds): the reply becomes a
    `ConnectionError`, so the caller reconnects, asking the sentinels again, and resends.
    READONLY (already demoted) is handled the same way by redis-py itself. A reconnect made
    while sending asks the sentinels too."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            # Through connect(), which asks the sentinels: redis-py's own reconnect here
            # would go back to the last address, the old primary.
            await self.connect()  # type: ignore[no-untyped-call]
        await super().send_packed_command(command, check_health)

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (redis-py's)
        *,
        disconnect_on_error: float | None = True,
        push_request: bool | None = False,
    ) -> Any:
        try:
            return await super().read_response(
                disable_decoding=disable_decoding,
                timeout=timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOREPLICAS") or not self.connection_pool.is_master:
                raise
            await self.disconnect()
            raise redis.ConnectionError(f"the primary refuses writes: {exc}") from exc


class _PrimaryConnection(_FollowsPrimary):
    pass


class _PrimaryTLSConnection(_FollowsPrimary, SentinelManagedSSLConnection):
    pass
