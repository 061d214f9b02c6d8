"""`GET /health/live` and `GET /health/ready`: the probes a load balancer or Kubernetes asks.

- `/health/live`: 200 `{"status": "live"}` whenever the process answers at all (it is never
  turned off by a dependency: restarting the process would not bring Postgres back).
- `/health/ready`: 200 `{"status": "ready"}` when this process should receive traffic, else
  503 `{"status": "not_ready", "reasons": [...]}`, the reasons being:
  - `draining`: SIGTERM arrived (gateway.drain); from that moment on, whatever else holds;
  - `redis_unreachable`: Redis does not answer a PING within PROBE_TIMEOUT_S and
    `quotas.on_redis_error` is `reject` (under `allow`, requests are served without quota,
    so the process stays ready);
  - `postgres_unreachable_journal_over_budget`: Postgres does not answer within
    PROBE_TIMEOUT_S and the usage journal is past `storage.journal_max_mb` (while the journal
    is within its budget, events wait on disk and requests are served as usual).
  The configuration is loaded by the time the routes answer (a file refused on reload leaves
  the previous one running, which `/health` reports; the process stays ready).

Both are unauthenticated, like `/health`, and reveal no more than it does. Failure
semantics: a check that fails or times out is a reason, never an error answer; the probe
itself answers within about PROBE_TIMEOUT_S (the checks run concurrently).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import orjson
from aiohttp import web

from gateway import keys

PROBE_TIMEOUT_S = 1.0


def _json(data: object, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _reachable(check: Awaitable[object]) -> bool:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await check
    except Exception:  # any failure is "unreachable" here; /health says which
        return False
    return True


async def live(request: web.Request) -> web.Response:
    return _json({"status": "live"}, 200)


async def ready(request: web.Request) -> web.Response:
    app = request.app
    settings = app[keys.runtime].current.settings
    postgres_ok, redis_ok = await asyncio.gather(
        _reachable(app[keys.pool].fetchval("SELECT 1")),
        _reachable(app[keys.quotas].ping()),
    )
    reasons: list[str] = []
    if app[keys.drain].draining:
        reasons.append("draining")
    if not redis_ok and settings.quotas.on_redis_error == "reject":
        reasons.append("redis_unreachable")
    if not postgres_ok and app[keys.writer].journal_over_budget:
        reasons.append("postgres_unreachable_journal_over_budget")
    if reasons:
        return _json({"status": "not_ready", "reasons": reasons}, 503)
    return _json({"status": "ready"}, 200)


def add_probe_routes(app: web.Application) -> None:
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
