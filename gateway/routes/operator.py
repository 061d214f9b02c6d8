"""Routes the gateway answers itself: health, the model list, and the caller's own usage.

`GET /health` is unauthenticated and says whether Postgres, Redis and the writer are fine
(503 when a dependency is down), and the config's state: `error` while a refused file is on
disk, `restart_required` listing changed keys a reload does not apply; and each provider's
key variable (`providers`: set or missing, by name only; `degraded` while one is missing, as
those requests answer 503). `GET /v1/models` and `/usage/*` need a customer key and only ever
show that customer's data: the customer id comes from the key, never the query.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway import keys
from gateway.errors import PermissionDeniedError
from gateway.provider_keys import MISSING, key_states
from gateway.quota_status import QuotaStatus
from gateway.routes.common import days_param, json_response
from storage.reports.usage_queries import usage_summary


def _writer_state(app: web.Application) -> dict[str, Any]:
    writer = app[keys.writer]
    return {
        "backlog": writer.backlog,
        "written": writer.written,
        "journal_bytes": writer.journal_bytes,
        "over_budget": writer.journal_over_budget,
        "dead_lettered": writer.dead_lettered,
        "events_lost": writer.events_lost,
    }


async def health(request: web.Request) -> web.Response:
    app = request.app
    checks: dict[str, Any] = {}
    ok = True
    try:
        async with asyncio.timeout(2):
            await app[keys.pool].fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # reported, not raised: health must answer
        checks["postgres"] = f"error: {type(exc).__name__}"
        ok = False
    try:
        async with asyncio.timeout(2):
            await app[keys.quotas].ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
        ok = False
    settings = app[keys.runtime].current.settings
    watcher = app.get(keys.config_watcher)
    config_error = watcher.error if watcher is not None else None
    config: dict[str, Any] = {
        "state": "error" if config_error else "ok",
        "hash": settings.source_hash,
    }
    if config_error:
        config["error"] = config_error  # the refused file's problem; the old config runs
    # Keys changed on disk that this process applies only when it restarts (names, no values).
    config["restart_required"] = watcher.restart_required if watcher is not None else []
    providers = key_states(settings)  # variable names and set/missing, never a key
    key_missing = any(state["key"] == MISSING for state in providers.values())
    body = {
        "status": "ok" if ok and not config_error and not key_missing else "degraded",
        "config": config,
        "providers": providers,
        **checks,
        "writer": _writer_state(app),
    }
    return json_response(body, status=200 if ok else 503)


async def list_models(request: web.Request) -> web.Response:
    """The priced models this gateway routes, in the shape of the SDK asking: the Anthropic
    SDK sends `anthropic-version` and gets Anthropic's list; any other caller gets OpenAI's."""
    await request.app[keys.authenticator].authenticate(request.headers)
    snapshot = request.app[keys.runtime].current
    kind = "anthropic" if "anthropic-version" in request.headers else "openai"
    models = [
        price.model
        for price in snapshot.catalog.models()
        if price.provider == kind and snapshot.settings.provider_for(price.model, kind)
    ]
    if kind == "anthropic":
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}
            for m in models
        ]
        return json_response(
            {
                "data": data,
                "has_more": False,
                "first_id": models[0] if models else None,
                "last_id": models[-1] if models else None,
            }
        )
    owned = [{"id": m, "object": "model", "created": 0, "owned_by": "tollbooth"} for m in models]
    return json_response({"object": "list", "data": owned})


async def summary(request: web.Request) -> web.Response:
    principal = await request.app[keys.authenticator].authenticate(request.headers)
    result = await usage_summary(
        request.app[keys.pool],
        days=days_param(request),
        customer_id=principal.customer_id,
        project_id=request.query.get("project") or None,
        model=request.query.get("model") or None,
    )
    return json_response(result.to_json())


async def _quota_status(request: web.Request) -> tuple[str, QuotaStatus]:
    principal = await request.app[keys.authenticator].authenticate(request.headers)
    tier = request.app[keys.runtime].current.settings.tiers.get(principal.tier)
    if tier is None:
        raise PermissionDeniedError(
            f"Your account's tier '{principal.tier}' is not configured on this gateway."
        )
    return principal.tier, await request.app[keys.quotas].status(principal.customer_id, tier)


async def limits(request: web.Request) -> web.Response:
    tier_name, status = await _quota_status(request)
    return json_response({"tier": tier_name, **status.limits_json()})


async def quota_status(request: web.Request) -> web.Response:
    tier_name, status = await _quota_status(request)
    return json_response({"tier": tier_name, **status.status_json()})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[keys.metrics].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


def add_operator_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/usage/summary", summary)
    app.router.add_get("/usage/limits", limits)
    app.router.add_get("/usage/quota-status", quota_status)
