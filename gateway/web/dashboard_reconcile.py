"""`POST /admin/dashboard/system/reconcile` (CSRF): the month's reconciliation, on demand.

It runs `storage.stripe.reconcile.reconcile` for the UTC calendar month holding the page's
period start, as `tollbooth billing reconcile --month YYYY-MM --offline` does: our usage per
customer and meter (raw events per sync window, price rounded as the sync sends it) against
what `billing_sync` recorded as sent, unsent and skipped. Stripe itself is not asked (that
takes the API key and a call per customer and meter: the CLI does it). It reads a month of raw
events, so it runs when asked (a POST), never on page load. The page shows totals per meter
and the customers with a difference; customer ids only, never a Stripe id.

Without `billing.stripe` it answers a 404 page. Database errors propagate (500).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from gateway import keys
from gateway.web.dashboard_auth import admin_session, message
from gateway.web.dashboard_page import layout
from gateway.web.portal_page import view_period
from gateway.web.render import render
from gateway.web.sessions import csrf_ok
from storage.stripe.reconcile import ReconcileLine, reconcile

MAX_SHOWN = 50


@dataclass
class MeterTotal:
    dimension: str
    ours: int = 0
    sent: int = 0
    unsent: int = 0
    skipped: int = 0
    imported: int = 0
    customers_off: list[ReconcileLine] = field(default_factory=list)

    @property
    def difference(self) -> int:
        return self.ours - self.sent


def summarize(lines: list[ReconcileLine]) -> list[MeterTotal]:
    totals: dict[str, MeterTotal] = {}
    for line in lines:
        meter = totals.setdefault(line.dimension, MeterTotal(line.dimension))
        meter.ours += line.ours
        meter.sent += line.sent
        meter.unsent += line.unsent
        meter.skipped += line.skipped
        meter.imported += line.imported
        if line.difference:
            meter.customers_off.append(line)
    return list(totals.values())


def month_of(day: datetime) -> tuple[datetime, datetime]:
    start = day.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, following


async def reconcile_page(request: web.Request) -> web.Response:
    session = admin_session(request)
    form = await request.post()
    if not csrf_ok(session.csrf, form.get("csrf")):
        return message(request, 403, "The form expired. Reload the page and retry.")
    stripe = request.app[keys.runtime].current.settings.billing.stripe
    if stripe is None:
        return message(request, 404, "Stripe is not configured (billing.stripe).")
    period = view_period(request)
    start, end = month_of(period.since)
    lines = await reconcile(
        request.app[keys.pool],
        start=start,
        end=end,
        window_s=stripe.window_s,
        meters=stripe.meters,
        version=stripe.version,
        import_since=stripe.import_since,
    )
    return render(
        request,
        "dashboard_reconcile.html",
        month=start,
        meters=summarize(lines),
        customers=len({line.customer_id for line in lines}),
        max_shown=MAX_SHOWN,
        **layout(session, period, "system"),
    )
