"""The one place that talks to Stripe, through the official `stripe` SDK: meter events (v1, and
the v2 meter event stream), customers, billing portal sessions, meter event summaries, and the
signature check of incoming webhooks.

Every SDK error is translated here, once, into this tree (`raise ... from exc`):

    StripeApiError (message, status, response)
    ├── StripeRetryableError   no answer (timeout, connection refused), 409, 429 or 5xx, unless
    │                          Stripe-Should-Retry says false; or any answer whose
    │                          Stripe-Should-Retry says true. `retry_after_s` from Retry-After.
    ├── StripeRejectedError    Stripe answered and will not take the request as sent (other 4xx,
    │                          or Stripe-Should-Retry: false)
    └── StripeAuthError        401/403: the API key is wrong or lacks the permission
    WebhookSignatureError      an incoming webhook whose Stripe-Signature does not verify

The SDK's own retries are off (`max_network_retries=0`): the caller decides when to retry, and
storage.stripe.sync records every attempt. A meter event refused because Stripe already holds
its identifier is no error: the identifier is deterministic, so Stripe holding it proves the
usage was delivered, and `MeterEventAnswer.duplicate` says so. Messages never contain the key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import stripe

if TYPE_CHECKING:
    from stripe._base_address import BaseAddresses

_DUPLICATE_IDENTIFIER = "already exists with identifier"
# A meter event session token lives 15 minutes; renew it a minute before Stripe would refuse it.
_SESSION_MARGIN = timedelta(seconds=60)


class StripeApiError(Exception):
    """Stripe did not do what was asked; `status` is None when no answer came at all."""

    def __init__(
        self, message: str, *, status: int | None = None, response: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.response = response or {}


class StripeRetryableError(StripeApiError):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        response: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, status=status, response=response)
        self.retry_after_s = retry_after_s


class StripeRejectedError(StripeApiError):
    pass


class StripeAuthError(StripeApiError):
    pass


class WebhookSignatureError(Exception):
    """The webhook's Stripe-Signature header is missing, malformed, stale or wrong."""


@dataclass(frozen=True, slots=True)
class MeterEventRequest:
    event_name: str
    stripe_customer_id: str
    value: int
    identifier: str
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class MeterEventAnswer:
    """Stripe has the event: just now, or already (`duplicate`). `response` is Stripe's body."""

    duplicate: bool
    response: dict[str, Any]


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return None


def _retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    raw = _header(headers, "retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def _translate(exc: stripe.StripeError) -> StripeApiError:
    status = exc.http_status
    response = _body(exc)
    message = " ".join((exc.user_message or type(exc).__name__).split())
    if status is None:
        # No answer: the SDK flags what is worth retrying (timeouts, refused connections).
        if isinstance(exc, stripe.APIConnectionError) and not exc.should_retry:
            return StripeRejectedError(f"cannot reach Stripe: {message}")
        return StripeRetryableError(f"no answer from Stripe: {message}")
    text = f"Stripe answered {status}: {message}"
    if status in (401, 403):
        return StripeAuthError(text, status=status, response=response)
    should_retry = _header(exc.headers, "stripe-should-retry")
    retry_after = _retry_after_s(exc.headers)
    if should_retry == "true" or (
        should_retry != "false" and (status in (409, 429) or status >= 500)
    ):
        return StripeRetryableError(
            text, status=status, response=response, retry_after_s=retry_after
        )
    return StripeRejectedError(text, status=status, response=response)


def _body(exc: stripe.StripeError) -> dict[str, Any]:
    """Stripe's JSON answer as plain dicts (the SDK gives OrderedDicts), or {}."""
    body = exc.json_body
    return json.loads(json.dumps(body)) if isinstance(body, dict) else {}


def _is_duplicate_identifier(exc: stripe.StripeError) -> bool:
    return exc.http_status == 400 and _DUPLICATE_IDENTIFIER in (exc.user_message or "").lower()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class StripeApi:
    """A Stripe account, reached through one SDK client; `close()` releases its connections.

    `api_base` (tests, stripe-mock) replaces both the API and the meter-events hosts.
    """

    def __init__(self, api_key: str, *, api_base: str | None = None, timeout_s: float = 30.0):
        self._http = stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=timeout_s))
        bases: BaseAddresses | None = (
            {"api": api_base.rstrip("/"), "meter_events": api_base.rstrip("/")}
            if api_base
            else None
        )
        self._client = stripe.StripeClient(
            api_key, base_addresses=bases, max_network_retries=0, http_client=self._http
        )
        self._session_token: str | None = None
        self._session_expires_at = datetime.min.replace(tzinfo=UTC)
        self._meter_ids: dict[str, str] | None = None

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    # -- meter events --------------------------------------------------------------------

    async def create_meter_event(self, event: MeterEventRequest) -> MeterEventAnswer:
        """POST /v1/billing/meter_events; an identifier Stripe already holds is delivered."""
        try:
            created = await self._client.v1.billing.meter_events.create_async(
                {
                    "event_name": event.event_name,
                    "identifier": event.identifier,
                    "timestamp": int(event.timestamp.timestamp()),
                    "payload": {
                        "stripe_customer_id": event.stripe_customer_id,
                        "value": str(event.value),
                    },
                }
            )
        except stripe.StripeError as exc:
            if _is_duplicate_identifier(exc):
                return MeterEventAnswer(duplicate=True, response=_body(exc))
            raise _translate(exc) from exc
        return MeterEventAnswer(duplicate=False, response=created.to_dict(for_json=True))

    async def stream_meter_events(self, events: Sequence[MeterEventRequest]) -> MeterEventAnswer:
        """POST /v2/billing/meter_event_stream (at most 100 events), with a session token.

        Stripe validates streamed events later and drops identifiers it already holds, so an
        accepted batch is delivered as far as this call can know.
        """
        params: Any = {
            "events": [
                {
                    "event_name": e.event_name,
                    "identifier": e.identifier,
                    "timestamp": _iso(e.timestamp),
                    "payload": {
                        "stripe_customer_id": e.stripe_customer_id,
                        "value": str(e.value),
                    },
                }
                for e in events
            ]
        }
        for renewed in (False, True):
            token = await self._stream_token(renew=renewed)
            try:
                await self._client.v2.billing.meter_event_stream.create_async(
                    params, options={"api_key": token}
                )
            except stripe.TemporarySessionExpiredError:
                continue
            except stripe.StripeError as exc:
                raise _translate(exc) from exc
            return MeterEventAnswer(duplicate=False, response={"streamed": len(events)})
        raise StripeRetryableError("the meter event session expired twice in a row")

    async def _stream_token(self, *, renew: bool) -> str:
        now = datetime.now(UTC)
        if renew or self._session_token is None or now >= self._session_expires_at:
            try:
                session = await self._client.v2.billing.meter_event_session.create_async()
            except stripe.StripeError as exc:
                raise _translate(exc) from exc
            self._session_token = session.authentication_token
            expires = datetime.fromisoformat(session.expires_at.replace("Z", "+00:00"))
            self._session_expires_at = expires - _SESSION_MARGIN
        assert self._session_token is not None
        return self._session_token

    async def meter_event_total(
        self, event_name: str, stripe_customer_id: str, start: datetime, end: datetime
    ) -> Decimal | None:
        """Stripe's aggregated value of a meter for a customer over [start, end), from its meter
        event summaries; None when no active meter has that event_name."""
        meter_id = (await self._meters()).get(event_name)
        if meter_id is None:
            return None
        total = Decimal(0)
        try:
            page = await self._client.v1.billing.meters.event_summaries.list_async(
                meter_id,
                {
                    "customer": stripe_customer_id,
                    "start_time": int(start.timestamp()),
                    "end_time": int(end.timestamp()),
                    "limit": 100,
                },
            )
            async for summary in page.auto_paging_iter():
                total += Decimal(str(summary.aggregated_value))
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        whole = total.to_integral_value()
        return whole if total == whole else total

    async def _meters(self) -> dict[str, str]:
        if self._meter_ids is None:
            found: dict[str, str] = {}
            try:
                page = await self._client.v1.billing.meters.list_async(
                    {"status": "active", "limit": 100}
                )
                async for meter in page.auto_paging_iter():
                    found[meter.event_name] = meter.id
            except stripe.StripeError as exc:
                raise _translate(exc) from exc
            self._meter_ids = found
        return self._meter_ids

    # -- customers and the billing portal ------------------------------------------------

    async def create_customer(self, customer_id: str, name: str | None, email: str | None) -> str:
        """A new Stripe customer for a Tollbooth customer; returns its id (cus_...).

        The idempotency key is derived from the arguments, so a command retried after a lost
        answer gets the same Stripe customer back (for the 24 hours Stripe keeps keys).
        """
        params: Any = {"metadata": {"tollbooth_customer_id": customer_id}}
        if name:
            params["name"] = name
        if email:
            params["email"] = email
        digest = hashlib.sha256(f"{customer_id}\0{name}\0{email}".encode()).hexdigest()[:32]
        try:
            customer = await self._client.v1.customers.create_async(
                params, options={"idempotency_key": f"tollbooth-customer-{digest}"}
            )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return str(customer.id)

    async def create_portal_session(self, stripe_customer_id: str, return_url: str) -> str:
        """The URL of a new billing portal session for the customer."""
        try:
            session = await self._client.v1.billing_portal.sessions.create_async(
                {"customer": stripe_customer_id, "return_url": return_url}
            )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return str(session.url)


def verify_webhook(
    payload: bytes, signature: str | None, secret: str, *, tolerance_s: int = 300
) -> dict[str, Any]:
    """The event in a webhook body whose Stripe-Signature verifies with `secret` and whose
    timestamp is at most `tolerance_s` old; else `WebhookSignatureError`."""
    try:
        event = stripe.Webhook.construct_event(payload, signature, secret, tolerance_s)
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureError(exc.user_message or "invalid signature") from exc
    except ValueError as exc:  # verified but not a Stripe event (JSON or shape)
        raise WebhookSignatureError(f"the signed body is not a Stripe event: {exc}") from exc
    data: dict[str, Any] = event.to_dict()
    return data
