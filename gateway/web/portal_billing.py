"""The portal's billing pages: invoices (preview and past months) and "Manage billing".

`GET /portal/invoices[?month=YYYY-MM]`: the current UTC month's invoice preview (or the
month asked for, up to the current one) itemized as `tollbooth billing invoice` prints it
(gateway.web.portal_invoices), and links to the last 12 months. Only a whole-customer session
sees invoices; a project session gets 403 (an invoice covers every project).

`POST /portal/billing` (CSRF checked): when billing.stripe is configured and the customer is
linked to Stripe, opens a Stripe billing portal session with the gateway's Stripe client
(the one `POST /billing/portal` uses) and answers 303 to it; the return URL is
`billing.stripe.portal_return_url`, else this gateway's /portal/invoices. Stripe refusing or
unreachable: a 502 page; no Stripe: 404. The Stripe customer id never appears in a page.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway import keys
from gateway.routes.billing import stripe_clients
from gateway.web import keys as web_keys
from gateway.web.portal_auth import page, refusal
from gateway.web.portal_invoices import (
    InvoiceUnavailable,
    invoice_rows,
    month_invoice,
    recent_months,
)
from gateway.web.portal_page import BadParameter, page_context, view_period, viewer_or_login
from gateway.web.sessions import csrf_ok
from pricing.months import BillingMonth
from storage.stripe.client import StripeApiError

log = logging.getLogger("tollbooth.portal")


async def invoices_page(request: web.Request) -> web.Response:
    viewer = await viewer_or_login(request)
    if viewer.project_id is not None:
        return refusal(request, 403, "Invoices cover every project; this link shows one.")
    period = view_period(request)
    current = BillingMonth.of(request.app[web_keys.clock]())
    month = current
    if request.query.get("month"):
        try:
            month = BillingMonth.parse(request.query["month"])
        except ValueError as exc:
            raise BadParameter(f"month: {exc}") from None
        if month > current:
            raise BadParameter("month: no invoice for a month that has not started")
    settings = request.app[keys.runtime].current.settings
    invoice = rows = error = None
    try:
        invoice = await month_invoice(request.app[keys.pool], settings, viewer.customer.id, month)
        rows = invoice_rows(invoice)
    except InvoiceUnavailable as exc:
        error = str(exc)
    stripe = settings.billing.stripe
    return page(
        request,
        "portal_invoices.html",
        month=month,
        is_preview=month == current,
        invoice=invoice,
        rows=rows,
        error=error,
        current_month=current,
        months=[current, *recent_months(current, 12)],
        can_manage=stripe is not None and bool(viewer.customer.stripe_customer_id),
        show_period=False,
        **page_context(viewer, period, "invoices"),
    )


async def manage_billing(request: web.Request) -> web.Response:
    viewer = await viewer_or_login(request)
    form = await request.post()
    if not csrf_ok(viewer.session.csrf, form.get("csrf")):
        return refusal(request, 403, "The form expired. Reload the page and retry.")
    if viewer.project_id is not None:
        return refusal(request, 403, "Billing is managed for the whole account.")
    config = request.app[keys.runtime].current.settings.billing.stripe
    stripe_id = viewer.customer.stripe_customer_id
    if config is None or not stripe_id:
        return refusal(request, 404, "Billing is not managed online for this account.")
    api = request.app[stripe_clients].get(config)
    if api is None:
        return refusal(request, 503, "Billing is not available right now; try again later.")
    return_url = config.portal_return_url or str(
        request.url.with_path("/portal/invoices").with_query(None)
    )
    try:
        url = await api.create_portal_session(stripe_id, return_url)
    except StripeApiError as exc:
        log.warning("billing portal for %s: %s", viewer.customer.id, exc)
        return refusal(request, 502, "The billing portal could not be opened; try again.")
    raise web.HTTPSeeOther(url)
