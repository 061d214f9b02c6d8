"""Billing routes: a customer's Stripe billing portal, and the webhooks Stripe sends.

`POST /billing/portal` (customer key, suspended customers included: the portal is how they
pay) answers `{"object": "billing_portal.session", "url", "return_url"}` for the key's own
customer. The return URL is `billing.stripe.portal_return_url`; a JSON body may name another
`return_url` on the same origin (or any http(s) URL when none is configured). 400 when the
customer has no stripe_customer_id, 502 when Stripe refuses or cannot be reached, 503 when
the gateway has no Stripe API key.

`POST /stripe/webhook` (no key: the `Stripe-Signature` header, checked with the secret in the
environment variable `billing.stripe.webhook_secret_env`) applies subscription and invoice
events through storage.stripe.webhooks: tier from `price_tiers`, suspension on a failed
payment until `invoice.paid`, each event id once. 400 for a bad or stale signature; 503 when
no secret is set or the config cannot apply the event (Stripe redelivers for days, so fixing
the config applies it); 200 with the action taken otherwise, duplicates included.

Both answer 404 while `billing.stripe` is not configured. Every `billing.stripe` key applies on
reload: each request reads the live snapshot, and the portal's Stripe client comes from
`gateway.stripe_clients`, rebuilt when the API key variable, base or timeout change.
`add_billing_routes(app)` adds the routes and a cleanup_ctx entry that closes the clients.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from gateway import keys
from gateway.config import StripeConfig
from gateway.errors import (
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
    UpstreamUnreachableError,
)
from gateway.routes.common import json_response
from gateway.stripe_clients import StripeClients
from storage.stripe.client import StripeApiError, WebhookSignatureError, verify_webhook
from storage.stripe.webhooks import WebhookConfigError, WebhookRules, apply_stripe_event

log = logging.getLogger("tollbooth.billing")

# Lives here rather than in gateway/keys.py only because this module owns its resource.
stripe_clients = web.AppKey("stripe_clients", StripeClients)


def _stripe_config(request: web.Request) -> StripeConfig:
    config = request.app[keys.runtime].current.settings.billing.stripe
    if config is None:
        raise NotFoundError("Billing is not configured on this gateway.")
    return config


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequestError("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body


def _return_url(requested: Any, configured: str | None) -> str:
    if requested is None:
        if configured is None:
            raise InvalidRequestError(
                "Give a return_url: this gateway has no default portal return URL.",
                param="return_url",
            )
        return configured
    if not isinstance(requested, str) or not requested.startswith(("https://", "http://")):
        raise InvalidRequestError("return_url must be an http(s) URL.", param="return_url")
    if configured is not None and URL(requested).origin() != URL(configured).origin():
        raise InvalidRequestError(
            f"return_url must be on {URL(configured).origin()}.", param="return_url"
        )
    return requested


async def billing_portal(request: web.Request) -> web.Response:
    principal = await request.app[keys.authenticator].authenticate(request.headers)
    config = _stripe_config(request)
    return_url = _return_url((await _body(request)).get("return_url"), config.portal_return_url)
    customer = await request.app[keys.accounts].get_customer(principal.customer_id)
    if customer is None or not customer.stripe_customer_id:
        raise InvalidRequestError(
            "This account has no billing profile yet; ask the operator to link it to Stripe.",
            code="billing_account_missing",
        )
    api = request.app[stripe_clients].get(config)
    if api is None:
        raise ServiceUnavailableError("Billing is not available on this gateway right now.")
    try:
        url = await api.create_portal_session(customer.stripe_customer_id, return_url)
    except StripeApiError as exc:
        log.warning("billing portal for %s: %s", customer.id, exc)
        raise UpstreamUnreachableError(
            "The billing portal could not be opened; try again shortly."
        ) from exc
    return json_response({"object": "billing_portal.session", "url": url, "return_url": return_url})


async def stripe_webhook(request: web.Request) -> web.Response:
    config = _stripe_config(request)
    settings = request.app[keys.runtime].current.settings
    secret = os.environ.get(config.webhook_secret_env)
    if not secret:
        log.error("stripe webhook refused: %s is not set", config.webhook_secret_env)
        raise ServiceUnavailableError("Stripe webhooks are not configured on this gateway.")
    payload = await request.read()
    try:
        event = verify_webhook(
            payload,
            request.headers.get("Stripe-Signature"),
            secret,
            tolerance_s=config.webhook_tolerance_s,
        )
    except WebhookSignatureError as exc:
        log.warning("stripe webhook refused: %s", exc)
        raise InvalidRequestError(
            "The Stripe-Signature header does not verify.", code="invalid_signature"
        ) from None
    rules = WebhookRules(
        price_tiers=config.price_tiers,
        canceled_tier=config.canceled_tier or next(iter(settings.tiers)),
        known_tiers=frozenset(settings.tiers),
        suspend_on_payment_failure=config.suspend_on_payment_failure,
    )
    try:
        outcome = await apply_stripe_event(request.app[keys.pool], event, rules)
    except WebhookConfigError as exc:
        log.error("stripe event %s not applied: %s", event.get("id"), exc)
        raise ServiceUnavailableError("This event cannot be applied yet.") from exc
    except ValueError as exc:
        raise InvalidRequestError(f"Not a Stripe event: {exc}") from exc
    return json_response({"received": True, "action": outcome.action, "detail": outcome.detail})


def add_billing_routes(app: web.Application) -> None:
    async def stripe_client(app: web.Application) -> AsyncIterator[None]:
        clients = app[stripe_clients] = StripeClients()
        config = app[keys.runtime].current.settings.billing.stripe
        if config is not None:
            clients.get(config)  # built (or its missing key reported) at startup
        yield
        await clients.close()

    app.cleanup_ctx.append(stripe_client)
    app.router.add_post("/billing/portal", billing_portal)
    app.router.add_post("/stripe/webhook", stripe_webhook)
