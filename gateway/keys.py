"""Every typed key the aiohttp application and its requests carry (STYLE: one place)."""

from __future__ import annotations

import uuid

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.cluster import RedisCluster

from gateway.alerts import AlertNotifier
from gateway.auth import Authenticator
from gateway.drain import Drain
from gateway.metering import Recorder
from gateway.metrics import Metrics
from gateway.quotas import QuotaPolicy
from gateway.reload import ConfigWatcher
from gateway.runtime import Runtime
from gateway.tokens import TokenCounter
from gateway.upstream_client import UpstreamClient
from storage.accounts import AccountStore
from storage.usage.writer import UsageWriter

runtime = web.AppKey("runtime", Runtime)
http = web.AppKey("http", aiohttp.ClientSession)  # the gateway's own calls (webhooks)
upstream = web.AppKey("upstream", UpstreamClient)  # forwarded requests
pool = web.AppKey("pool", asyncpg.Pool)
accounts = web.AppKey("accounts", AccountStore)
authenticator = web.AppKey("authenticator", Authenticator)
quotas = web.AppKey("quotas", QuotaPolicy)
# The quota store's client: one node (or Sentinel's primary), or a Cluster.
redis_client = web.AppKey[aioredis.Redis | RedisCluster]("redis_client")
tokens = web.AppKey("tokens", TokenCounter)
writer = web.AppKey("writer", UsageWriter)
recorder = web.AppKey("recorder", Recorder)
metrics = web.AppKey("metrics", Metrics)
alerts = web.AppKey("alerts", AlertNotifier)
config_watcher = web.AppKey("config_watcher", ConfigWatcher)
drain = web.AppKey("drain", Drain)  # SIGTERM's graceful drain (readiness, the cut)

request_id = web.RequestKey("request_id", uuid.UUID)
