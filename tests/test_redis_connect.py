"""`storage.quota.redis_connect`: the redis_url forms, and the client each one builds."""

from __future__ import annotations

import pytest
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from gateway.config import ConfigError, parse_settings
from storage.quota.redis_connect import connect, parse_redis_url


def test_one_node_urls_are_passed_through_unchanged() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://:pw@cache:6380/2", "unix:///tmp/r.sock"):
        target = parse_redis_url(url)
        assert (target.mode, target.url) == ("single", url)


def test_cluster_url_names_its_seed_nodes_and_credentials() -> None:
    target = parse_redis_url("rediss+cluster://app:s%40cret@a:7000,b:7001,c")
    assert target.mode == "cluster" and target.tls
    assert target.nodes == (("a", 7000), ("b", 7001), ("c", 6379))
    assert (target.username, target.password) == ("app", "s@cret")


def test_sentinel_url_names_sentinels_service_and_db() -> None:
    target = parse_redis_url("redis+sentinel://:pw@s1:26379,s2:26380/mymaster/3")
    assert target.mode == "sentinel" and not target.tls
    assert target.nodes == (("s1", 26379), ("s2", 26380))
    assert (target.service, target.db, target.password) == ("mymaster", 3, "pw")


@pytest.mark.parametrize(
    "url",
    [
        "http://x:1",
        "redis+cluster://",
        "redis+sentinel://s1:26379",
        "redis+cluster://a:1/0",
        "redis+sentinel://s1:1/svc/x",
    ],
)
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_redis_url(url)


async def test_each_form_builds_its_client() -> None:
    single = connect("redis://127.0.0.1:1/0", max_connections=4)
    cluster = connect("redis+cluster://127.0.0.1:1,127.0.0.1:2", max_connections=4)
    sentinel = connect("redis+sentinel://127.0.0.1:1/mymaster", max_connections=4)
    try:
        assert isinstance(single, redis.Redis)
        assert isinstance(single.connection_pool, redis.BlockingConnectionPool)
        assert isinstance(cluster, RedisCluster)
        assert isinstance(sentinel, redis.Redis)
        assert sentinel.connection_pool.service_name == "mymaster"  # type: ignore[attr-defined]
    finally:
        for client in (single, cluster, sentinel):
            await client.aclose()


def test_config_accepts_the_cluster_and_sentinel_schemes_and_names_them_on_a_typo() -> None:
    base = b"providers: {openai: {kind: openai, base_url: https://api.openai.com/v1}}\n"
    for url in ("redis+cluster://a:7000,b:7001", "redis+sentinel://s:26379/mymaster"):
        settings = parse_settings(
            base + f"storage: {{redis_url: '{url}', pgbouncer: true}}\n".encode()
        )
        assert settings.storage.redis_url == url and settings.storage.pgbouncer
    with pytest.raises(ConfigError) as refused:
        parse_settings(base + b"storage: {redis_url: 'redis-cluster://a:1'}\n")
    assert "redis+cluster://" in str(refused.value)
