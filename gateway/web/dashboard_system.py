"""The operator dashboard's system panel: traffic, models, the writer, dead letters, Stripe,
the config. `system_view(app, period)` returns the template's context.

Where each number comes from:
- requests and 429s per minute by tier: `QuotaPolicy.traffic` (gateway.traffic), counted in
  this process where the quota decides, the last 60 minutes. Per instance: with several
  instances or `serve --workers N`, the page shows the one that served it.
- models (top by spend, unpriced, the estimated share):
  `storage.reports.system_queries.models_usage`
  over the page's period, all customers; the same sums as `tollbooth usage summary`.
- the writer's backlog and journal size, events dead-lettered and lost since start: this
  process's `UsageWriter`, as /health shows them.
- dead letters: `usage_dead_letters` (how many, the oldest), shared by every instance.
- Stripe: `billing_sync` rows of the period's windows by status, the newest recorded and
  sent times (storage.reports.system_queries.stripe_sync_state); absent without `billing.stripe`.
- config: the loaded file's hash, a refused reload's error and the keys waiting for a
  restart, as /health shows them.

Failure: Postgres errors propagate (the page answers 500); nothing here calls Redis or Stripe.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from gateway import keys
from gateway.traffic import MinuteCounts
from gateway.web.periods import ViewPeriod
from storage.reports.system_queries import dead_letter_state, models_usage, stripe_sync_state
from storage.reports.usage_queries import UsageTotals, decimal_str

TOP_MODELS = 10
_TICK = timedelta(microseconds=1)


def _traffic_chart(series: list[MinuteCounts], tiers: list[str], refused: bool) -> dict[str, Any]:
    labels = [datetime.fromtimestamp(m.minute * 60, UTC).strftime("%H:%M") for m in series]
    return {
        "labels": labels,
        "unit": "requests",
        "series": [
            {
                "label": tier,
                "values": [
                    str((m.refused if refused else m.requests).get(tier, 0)) for m in series
                ],
            }
            for tier in tiers
        ],
    }


def _config_state(app: web.Application) -> dict[str, Any]:
    settings = app[keys.runtime].current.settings
    watcher = app.get(keys.config_watcher)
    error = watcher.error if watcher is not None else None
    restart = list(getattr(watcher, "restart_required", []) or []) if watcher else []
    return {
        "state": "error" if error else "ok",
        "hash": settings.source_hash,
        "error": error,
        "restart_required": restart,
        "watching": watcher is not None,
    }


def _writer_state(app: web.Application) -> dict[str, Any]:
    writer = app[keys.writer]
    return {
        "backlog": writer.backlog,
        "journal_bytes": writer.journal_bytes,
        "over_budget": writer.journal_over_budget,
        "written": writer.written,
        "dead_lettered": writer.dead_lettered,
        "events_lost": writer.events_lost,
    }


def estimated_share(totals: UsageTotals) -> Decimal:
    """Estimated requests as a fraction of all requests (0 when there are none)."""
    return (
        Decimal(0)
        if totals.requests == 0
        else (Decimal(totals.estimated_requests) / Decimal(totals.requests))
    )


async def system_view(app: web.Application, period: ViewPeriod) -> dict[str, Any]:
    pool = app[keys.pool]
    settings = app[keys.runtime].current.settings
    models = await models_usage(pool, since=period.since, until=period.until)
    totals = sum((m.totals for m in models), UsageTotals())
    traffic = app[keys.quotas].traffic
    series = traffic.series()
    tiers = traffic.tiers()
    stripe = None
    if settings.billing.stripe is not None:
        stripe = await stripe_sync_state(
            pool,
            since=period.since,
            until=period.until + _TICK,
            version=settings.billing.stripe.version,
        )
    share = estimated_share(totals)
    return {
        "period": period,
        "totals": totals,
        "top_models": models[:TOP_MODELS],
        "model_count": len(models),
        "unpriced_models": [m for m in models if m.totals.unpriced_requests],
        "estimated_share": share,
        "estimated_percent": decimal_str((share * 100).quantize(Decimal("0.01"))),
        "traffic_tiers": tiers,
        "traffic_recent": list(reversed(series[-15:])),
        "traffic_totals": {
            tier: (
                sum(m.requests.get(tier, 0) for m in series),
                sum(m.refused.get(tier, 0) for m in series),
            )
            for tier in tiers
        },
        "chart_requests": _traffic_chart(series, tiers, refused=False),
        "chart_refused": _traffic_chart(series, tiers, refused=True),
        "writer": _writer_state(app),
        "dead_letters": await dead_letter_state(pool),
        "stripe": stripe,
        "config": _config_state(app),
    }
