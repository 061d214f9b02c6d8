"""`create_app`: builds the aiohttp application and every collaborator, in one place.

Resources live in `cleanup_ctx`, created before `yield` and closed after it, in this order:
the provider HTTP session; the Postgres pool (schema migrated), the account store and the
usage writer (drained on shutdown, after in-flight requests have finished); the Redis client
and the quota policy; the tokenizer, warmed in a thread. Nothing mutable lives at module level.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from gateway import keys
from gateway.alerts import AlertNotifier
from gateway.auth import Authenticator
from gateway.client_timeout import client_timeout_middleware
from gateway.config import Settings
from gateway.cors import install as install_cors
from gateway.drain import CUT_SETTLE_S, Drain
from gateway.logs import AccessLog
from gateway.metering import Recorder, interrupted_pricer
from gateway.metrics import LiveValues, Metrics
from gateway.middleware import error_middleware
from gateway.probes import add_probe_routes
from gateway.providers.registry import FORWARDED, TEMPLATED, aiohttp_path, warm_up
from gateway.proxy import make_handler
from gateway.quotas import QuotaPolicy
from gateway.reload import ConfigWatcher
from gateway.routes.admin import add_admin_routes
from gateway.routes.billing import add_billing_routes
from gateway.routes.operator import add_operator_routes
from gateway.routes.usage import add_usage_routes
from gateway.runtime import Runtime
from gateway.tokens import TokenCounter
from gateway.upstream import UpstreamClient, create_session
from gateway.web.routes import add_web_routes
from pricing.catalog import Catalog
from storage.accounts import AccountStore
from storage.postgres import create_pool, migrate
from storage.quota.redis_connect import connect as connect_redis
from storage.quota.store import QuotaStore
from storage.usage.partitions import maintain_partitions
from storage.usage.writer import UsageWriter

_MB = 1024 * 1024


def create_app(
    settings: Settings,
    *,
    database_url: str,
    redis_url: str,
    catalog: Catalog | None = None,
    quota_window_ms: int = 60_000,
    watch_config: bool = False,
    access_log_to_stderr: bool = False,
) -> web.Application:
    """`watch_config`: reload `settings.source_path` on SIGHUP and when it changes on disk.
    `quota_window_ms` is the length of the "per minute" windows; only tests shorten it.
    `access_log_to_stderr`: the access log writes its buffered lines to stderr itself (what
    `serve` wants); otherwise each line is a record of the `tollbooth.access` logger, for
    whoever hosts the app in process."""
    app = web.Application(
        # error_middleware first (outermost): it renders and counts the timeout's 408.
        middlewares=[error_middleware, client_timeout_middleware(settings.server.client_timeout_s)],
        client_max_size=settings.server.max_body_mb * _MB,
        # keepalive_timeout also bounds a request's headers (aiohttp starts it when the
        # connection opens and after each response): slow-loris headers are cut off.
        handler_args={
            "max_field_size": 16 * 1024,
            "max_line_size": 16 * 1024,
            "keepalive_timeout": settings.server.client_timeout_s,
        },
    )
    install_cors(app)  # innermost middleware (its 403 rendered by error_middleware), and a hook
    app[keys.runtime] = Runtime(settings, catalog or Catalog.load_default())
    app[keys.tokens] = TokenCounter()
    app[keys.metrics] = metrics = Metrics()
    # `serve` begins it on SIGTERM; the closing steps below fit in what it leaves.
    app[keys.drain] = drain = Drain(
        grace_s=settings.server.drain_grace_s, timeout_s=settings.server.drain_timeout_s
    )

    access_log = AccessLog(
        enabled=settings.logging.requests,
        fmt=settings.logging.format,
        echo_to_logging=not access_log_to_stderr,
    )

    async def http_session(app: web.Application) -> AsyncIterator[None]:
        server = settings.server
        app[keys.http] = create_session(
            connect_timeout_s=server.upstream_connect_timeout_s,
            read_timeout_s=server.upstream_read_timeout_s,
        )
        app[keys.upstream] = UpstreamClient(
            connect_timeout_s=server.upstream_connect_timeout_s,
            read_timeout_s=server.upstream_read_timeout_s,
        )
        yield
        await app[keys.upstream].close()
        await app[keys.http].close()
        access_log.flush()

    async def postgres(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(database_url, pgbouncer=settings.storage.pgbouncer)
        await migrate(pool)
        app[keys.pool] = pool
        accounts = AccountStore(pool)
        app[keys.accounts] = accounts
        app[keys.authenticator] = Authenticator(accounts)
        storage = settings.storage
        writer = UsageWriter(
            pool,
            journal_dir=storage.journal_path(settings.data_dir()),
            batch_size=storage.writer_batch_size,
            flush_interval_s=storage.writer_flush_interval_s,
            fsync_interval_s=storage.journal_fsync_interval_s,
            segment_bytes=storage.journal_segment_mb * _MB,
            max_bytes=storage.journal_max_mb * _MB,
            full_policy=storage.journal_full_policy,
            memory_max_events=storage.writer_queue_max,
            reprice=interrupted_pricer(app[keys.runtime]),
        )
        await writer.start()  # replays what a stopped process left in the journal
        app[keys.writer] = writer
        retention = settings.retention
        maintenance = asyncio.create_task(
            maintain_partitions(
                pool,
                months_ahead=retention.partitions_ahead_months,
                raw_events_days=retention.raw_events_days,
            )
        )
        yield
        maintenance.cancel()
        await asyncio.gather(maintenance, return_exceptions=True)
        # Every event to Postgres before exiting; what it does not take in time stays in the
        # journal (the writer logs how many).
        await writer.close(timeout_s=drain.exit_budget_s(default_s=10.0, use_all=True))
        try:
            await asyncio.wait_for(pool.close(), drain.exit_budget_s(default_s=10.0))
        except TimeoutError:
            pool.terminate()

    async def quotas(app: web.Application) -> AsyncIterator[None]:
        # One node, a Cluster or Sentinel, by the URL's scheme (storage.quota.redis_connect): a
        # blocking pool on one node (a full pool must never look like an outage), short
        # timeouts (quotas.on_redis_error decides what a down Redis means, not a long retry;
        # retrying is safe: a retried admit reserves once, settle is idempotent).
        client = connect_redis(redis_url, max_connections=settings.quotas.redis_max_connections)
        store = QuotaStore(
            client, window_ms=quota_window_ms, wait_replicas=settings.quotas.redis_wait_replicas
        )
        # Alerts hear of every settle and monthly refusal from the policy.
        app[keys.alerts] = alerts = AlertNotifier(store, app[keys.http], settings.alerts)
        app[keys.quotas] = QuotaPolicy(store, settings.quotas, alerts)
        app[keys.redis_client] = client  # also the web pages' (login rate limit)
        policy = app[keys.quotas]
        writer = app[keys.writer]
        recorder = app[keys.recorder] = Recorder(
            writer, policy, app[keys.tokens], metrics, access_log
        )
        metrics.watch(
            lambda: LiveValues(
                writer_backlog=writer.backlog,
                writer_written=writer.written,
                inflight=recorder.inflight,
                quota_refusals=dict(policy.refusals),
                redis_error_admissions=policy.redis_error_admissions,
                quota_settle_failures=policy.settle_failures,
                shadow_refusals=policy.shadow_refusals,
                journal_bytes=writer.journal_bytes,
                journal_over_budget=writer.journal_over_budget,
                dead_lettered=writer.dead_lettered,
                events_lost=writer.events_lost,
                journal_errors=writer.journal_errors,
            )
        )
        yield
        await metrics.aclose()
        await policy.aclose()  # settles still queued go out before the client closes
        # What those last settles crossed.
        await alerts.drain(drain.exit_budget_s(default_s=alerts.settings.timeout_s))
        await client.aclose()

    async def tokenizer(app: web.Application) -> AsyncIterator[None]:
        await asyncio.to_thread(app[keys.tokens].warm)
        yield

    async def provider_credentials(app: web.Application) -> AsyncIterator[None]:
        await warm_up(settings.providers)  # e.g. Bedrock's AWS credentials, off the loop
        yield

    async def config_watcher(app: web.Application) -> AsyncIterator[None]:
        if not (watch_config and settings.source_path):
            yield
            return
        watcher = ConfigWatcher(
            Path(settings.source_path),
            app[keys.runtime],
            app[keys.quotas],
            app[keys.alerts],
            metrics,
        )
        app[keys.config_watcher] = watcher
        watcher.start()
        yield
        await watcher.close()

    async def inflight(app: web.Application) -> AsyncIterator[None]:
        yield
        # Cleaned up first: exchanges still relaying need the session, Redis and the writer.
        # Past the drain's cut they end within CUT_SETTLE_S.
        await app[keys.recorder].drain(drain.seconds_to_cut() + CUT_SETTLE_S)
        drain.close()
        alerts = app[keys.alerts]
        await alerts.drain(drain.exit_budget_s(default_s=alerts.settings.timeout_s))

    app.cleanup_ctx.extend(
        [http_session, postgres, quotas, tokenizer, provider_credentials, config_watcher, inflight]
    )

    for path, (api, endpoint) in FORWARDED.items():  # the fast front serves the same table
        app.router.add_route(endpoint.method, path, make_handler(api, endpoint))
    for template in TEMPLATED:  # the handler re-matches with registry.match, as the front does
        api, endpoint = template.route
        app.router.add_route(
            endpoint.method, aiohttp_path(template.path), make_handler(api, endpoint)
        )
    add_operator_routes(app)
    add_probe_routes(app)
    add_admin_routes(app)
    add_usage_routes(app)
    add_billing_routes(app)
    add_web_routes(app)
    return app
