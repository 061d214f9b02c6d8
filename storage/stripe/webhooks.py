"""Applies verified Stripe webhook events to customers, each event id at most once.

What an event does (to every customer whose stripe_customer_id is the event's customer):

    customer.subscription.created / .updated   status active, trialing or past_due: the tier
        its first price in `price_tiers` maps to; canceled, unpaid, incomplete_expired or
        paused: `canceled_tier`; incomplete (first payment pending): nothing yet
    customer.subscription.deleted              `canceled_tier`
    invoice.payment_failed                     suspended (if `suspend_on_payment_failure`)
    invoice.paid                               not suspended
    anything else                              recorded, nothing applied

The event id is inserted into stripe_webhook_events in the same transaction as the change, so
a redelivered event is answered "duplicate" and applied once, and a crash applies nothing (the
insert rolls back with it; Stripe redelivers). Stripe does not promise order: an event older
(`created`) than one already applied in its family (subscription, invoice) for that Stripe
customer is recorded as "stale" and not applied.

Failure semantics: an event whose price maps to a tier the config does not define raises
`WebhookConfigError` and records nothing, so Stripe's redelivery applies it once the config is
fixed. Database errors are asyncpg's, unchanged (the route answers 5xx; Stripe redelivers).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

_ACTIVE = frozenset({"active", "trialing", "past_due"})
_ENDED = frozenset({"canceled", "unpaid", "incomplete_expired", "paused"})


class WebhookConfigError(Exception):
    """The event cannot be applied with this config; the message says what to change."""


@dataclass(frozen=True, slots=True)
class WebhookRules:
    price_tiers: Mapping[str, str]  # Stripe price id -> tier
    canceled_tier: str
    known_tiers: frozenset[str]
    suspend_on_payment_failure: bool = True


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    event_id: str
    action: str  # tier | suspend | unsuspend | ignored | stale | duplicate
    customer_ids: tuple[str, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class _Change:
    action: str
    fields: dict[str, Any]
    detail: str


def _family(event_type: str) -> str:
    if event_type.startswith("customer.subscription."):
        return "subscription"
    if event_type.startswith("invoice."):
        return "invoice"
    return "other"


def _stripe_customer(obj: Mapping[str, Any]) -> str | None:
    customer = obj.get("customer")
    if isinstance(customer, Mapping):  # an expanded customer object
        customer = customer.get("id")
    return customer if isinstance(customer, str) and customer else None


def _subscription_prices(obj: Mapping[str, Any]) -> list[str]:
    items = obj.get("items")
    data = items.get("data") if isinstance(items, Mapping) else None
    prices = []
    for item in data if isinstance(data, list) else []:
        price = item.get("price") if isinstance(item, Mapping) else None
        price_id = price.get("id") if isinstance(price, Mapping) else price
        if isinstance(price_id, str):
            prices.append(price_id)
    return prices


def _change(event_type: str, obj: Mapping[str, Any], rules: WebhookRules) -> _Change | None:
    """What the event asks for, or None when it asks for nothing."""
    if event_type == "invoice.payment_failed":
        if not rules.suspend_on_payment_failure:
            return None
        return _Change("suspend", {"suspended": True}, "invoice payment failed")
    if event_type == "invoice.paid":
        return _Change("unsuspend", {"suspended": False}, "invoice paid")
    if _family(event_type) != "subscription":
        return None
    status = obj.get("status")
    if event_type == "customer.subscription.deleted" or status in _ENDED:
        tier = rules.canceled_tier
        detail = f"subscription {status or 'deleted'}"
    elif status in _ACTIVE:
        prices = _subscription_prices(obj)
        tier_or_none = next((rules.price_tiers[p] for p in prices if p in rules.price_tiers), None)
        if tier_or_none is None:
            log.warning("stripe subscription with prices %s: none is in price_tiers", prices)
            return None
        tier = tier_or_none
        detail = f"subscription {status}"
    else:
        return None
    if tier not in rules.known_tiers:
        raise WebhookConfigError(
            f"billing.stripe maps this subscription to tier {tier!r}, which is not in tiers:; "
            "add the tier or fix price_tiers / canceled_tier"
        )
    return _Change("tier", {"tier": tier}, f"{detail}: tier {tier}")


async def apply_stripe_event(
    pool: asyncpg.Pool, event: Mapping[str, Any], rules: WebhookRules
) -> WebhookOutcome:
    """Apply one verified event (a dict in Stripe's event shape), at most once per event id."""
    event_id = str(event.get("id") or "")
    event_type = str(event.get("type") or "")
    if not event_id or not event_type:
        raise ValueError("a Stripe event needs an id and a type")
    created = datetime.fromtimestamp(int(event.get("created") or 0), UTC)
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    obj = obj if isinstance(obj, Mapping) else {}
    family = _family(event_type)
    stripe_customer_id = _stripe_customer(obj)
    change = _change(event_type, obj, rules)

    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            """
            INSERT INTO stripe_webhook_events
                (event_id, event_type, family, stripe_customer_id, event_created, action)
            VALUES ($1, $2, $3, $4, $5, 'received')
            ON CONFLICT (event_id) DO NOTHING
            RETURNING event_id
            """,
            event_id,
            event_type,
            family,
            stripe_customer_id,
            created,
        )
        if inserted is None:
            return WebhookOutcome(event_id, "duplicate", (), "event already received")
        outcome = await _apply(conn, event_id, family, stripe_customer_id, created, change)
        await conn.execute(
            """
            UPDATE stripe_webhook_events SET action = $2, detail = $3, customer_id = $4
            WHERE event_id = $1
            """,
            event_id,
            outcome.action,
            outcome.detail,
            ",".join(outcome.customer_ids) or None,
        )
    return outcome


async def _apply(
    conn: asyncpg.Connection,
    event_id: str,
    family: str,
    stripe_customer_id: str | None,
    created: datetime,
    change: _Change | None,
) -> WebhookOutcome:
    if change is None:
        return WebhookOutcome(event_id, "ignored", (), "nothing to apply for this event")
    if stripe_customer_id is None:
        return WebhookOutcome(event_id, "ignored", (), "the event names no customer")
    customers = [
        r["id"]
        for r in await conn.fetch(
            "SELECT id FROM customers WHERE stripe_customer_id = $1 ORDER BY id FOR UPDATE",
            stripe_customer_id,
        )
    ]
    if not customers:
        return WebhookOutcome(
            event_id, "ignored", (), f"no customer has stripe_customer_id {stripe_customer_id}"
        )
    newer = await conn.fetchval(
        """
        SELECT event_id FROM stripe_webhook_events
        WHERE stripe_customer_id = $1 AND family = $2 AND event_created > $3
          AND action NOT IN ('received', 'ignored', 'stale', 'duplicate')
        LIMIT 1
        """,
        stripe_customer_id,
        family,
        created,
    )
    if newer is not None:
        return WebhookOutcome(
            event_id, "stale", tuple(customers), f"older than {newer}, already applied"
        )
    fields = sorted(change.fields)
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(fields, start=2))
    await conn.execute(
        f"UPDATE customers SET {assignments}, updated_at = now() WHERE id = ANY($1::text[])",
        customers,
        *(change.fields[name] for name in fields),
    )
    log.info("stripe event %s: %s for %s", event_id, change.detail, ", ".join(customers))
    return WebhookOutcome(event_id, change.action, tuple(customers), change.detail)
