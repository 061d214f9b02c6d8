"""A fake Stripe served as a real aiohttp app on loopback, for the official `stripe` SDK.

It checks the secret key (`Authorization: Bearer`), validates form fields the way Stripe does
(unknown and missing parameters, a known customer, a whole-number meter value, a timestamp in
the past 35 days and at most 5 minutes ahead) and answers in Stripe's shapes, including
`400 "An event already exists with identifier ..."` with `Stripe-Should-Retry: false`.

Served: POST /v1/billing/meter_events, GET /v1/billing/meters, GET
/v1/billing/meters/{id}/event_summaries, POST /v1/customers (Idempotency-Key replayed), POST
/v1/billing_portal/sessions, POST /v2/billing/meter_event_session and POST
/v2/billing/meter_event_stream (JSON, session token). Faults are injected per request on the
meter event routes: `fail_next(status)` (429, 5xx, with or without Stripe-Should-Retry) and
`stall_next(seconds, record=...)` (a timeout; with `record=True` the event is kept first, so
only the answer is lost).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

API_KEY = "sk_test_tollbooth_fake_0123456789"
DEFAULT_METERS = (
    "tollbooth_input_tokens",
    "tollbooth_output_tokens",
    "tollbooth_cached_input_tokens",
    "tollbooth_requests",
    "tollbooth_price_micros",
)
_MAX_AGE_S = 35 * 86400
_MAX_AHEAD_S = 300
_WHOLE = re.compile(r"-?[0-9]+")
_METER_EVENT_PARAMS = {
    "event_name",
    "identifier",
    "timestamp",
    "payload[stripe_customer_id]",
    "payload[value]",
}


@dataclass
class Fault:
    status: int | None  # None: stall instead of answering
    should_retry: str | None = None
    stall_s: float = 0.0
    record: bool = False  # for a stall: keep the event first, lose only the answer


@dataclass
class FakeStripe:
    api_key: str = API_KEY
    clock: Callable[[], float] = time.time
    meters: dict[str, str] = field(default_factory=dict)  # event_name -> meter id
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    meter_events: dict[str, dict[str, Any]] = field(default_factory=dict)  # identifier -> event
    meter_event_posts: list[dict[str, Any]] = field(default_factory=list)  # every attempt
    portal_sessions: list[dict[str, Any]] = field(default_factory=list)
    stream_batches: list[list[dict[str, Any]]] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    url: str = ""
    _idempotent: dict[str, dict[str, Any]] = field(default_factory=dict)
    _tokens: dict[str, float] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        for name in DEFAULT_METERS:
            self.meters.setdefault(name, f"mtr_test_{secrets.token_hex(8)}")

    # -- test controls -------------------------------------------------------------------

    def add_customer(self, name: str | None = None) -> str:
        customer_id = f"cus_{secrets.token_hex(7)}"
        self.customers[customer_id] = {"id": customer_id, "object": "customer", "name": name}
        return customer_id

    def fail_next(self, status: int, count: int = 1, should_retry: str | None = None) -> None:
        self.faults.extend(Fault(status, should_retry) for _ in range(count))

    def stall_next(self, seconds: float, count: int = 1, *, record: bool = False) -> None:
        self.faults.extend(Fault(None, stall_s=seconds, record=record) for _ in range(count))

    def expire_stream_sessions(self) -> None:
        self._tokens.clear()

    def totals(self) -> dict[tuple[str, str], int]:
        """Accepted value per (stripe customer, event_name)."""
        sums: dict[tuple[str, str], int] = {}
        for event in self.meter_events.values():
            key = (event["payload"]["stripe_customer_id"], event["event_name"])
            sums[key] = sums.get(key, 0) + int(event["payload"]["value"])
        return sums

    def posted_identifiers(self) -> list[str]:
        return [p["identifier"] for p in self.meter_event_posts]

    # -- the app -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/v1/billing/meter_events", self._meter_event)
        app.router.add_get("/v1/billing/meters", self._list_meters)
        app.router.add_get("/v1/billing/meters/{id}/event_summaries", self._summaries)
        app.router.add_post("/v1/customers", self._create_customer)
        app.router.add_post("/v1/billing_portal/sessions", self._portal_session)
        app.router.add_post("/v2/billing/meter_event_session", self._stream_session)
        app.router.add_post("/v2/billing/meter_event_stream", self._stream)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ").strip()
        if request.path == "/v2/billing/meter_event_stream":
            expires = self._tokens.get(key)
            if expires is None or expires < self.clock():
                return _error(
                    401,
                    "Meter event session expired or unknown.",
                    type_="temporary_session_expired",
                )
        elif key != self.api_key:
            return _error(401, "Invalid API Key provided: sk_test_****")
        response: web.StreamResponse = await handler(request)
        return response

    async def _fault(self, request: web.Request, record: Callable[[], Any]) -> web.Response | None:
        if not self.faults:
            return None
        fault = self.faults.popleft()
        if fault.status is None:
            if fault.record:
                record()
            await asyncio.sleep(fault.stall_s)
            return _error(500, "stalled answer (the client should have given up)")
        if fault.status == 429:
            return _error(
                429,
                "Request rate limit exceeded.",
                code="rate_limit",
                should_retry=fault.should_retry,
            )
        return _error(
            fault.status,
            "An unknown error occurred.",
            type_="api_error",
            should_retry=fault.should_retry,
        )

    async def _meter_event(self, request: web.Request) -> web.Response:
        form = await request.post()
        fields = {k: str(v) for k, v in form.items()}
        self.meter_event_posts.append(fields)
        problem = self._check_meter_event(fields)
        if problem is not None:
            return problem
        identifier = fields.get("identifier") or f"auto_{secrets.token_hex(8)}"
        event = {
            "object": "billing.meter_event",
            "created": int(self.clock()),
            "event_name": fields["event_name"],
            "identifier": identifier,
            "livemode": False,
            "payload": {
                "stripe_customer_id": fields["payload[stripe_customer_id]"],
                "value": fields["payload[value]"],
            },
            "timestamp": int(fields.get("timestamp") or self.clock()),
        }

        def record() -> None:
            self.meter_events.setdefault(identifier, event)

        faulted = await self._fault(request, record)
        if faulted is not None:
            return faulted
        if identifier in self.meter_events:
            return _error(
                400, f"An event already exists with identifier {identifier}.", should_retry="false"
            )
        record()
        return web.json_response(event, headers=_request_id())

    def _check_meter_event(self, fields: dict[str, str]) -> web.Response | None:
        for name in fields:
            if name not in _METER_EVENT_PARAMS:
                return _error(
                    400, f"Received unknown parameter: {name}", param=name, code="parameter_unknown"
                )
        for name in ("event_name", "payload[stripe_customer_id]", "payload[value]"):
            if not fields.get(name):
                return _error(
                    400, f"Missing required param: {name}.", param=name, code="parameter_missing"
                )
        if fields["event_name"] not in self.meters:
            return _error(
                400,
                f"No active meter was found for event_name '{fields['event_name']}'.",
                param="event_name",
            )
        if fields["payload[stripe_customer_id]"] not in self.customers:
            return _error(
                400,
                f"No such customer: '{fields['payload[stripe_customer_id]']}'",
                param="payload[stripe_customer_id]",
                code="resource_missing",
            )
        if not _WHOLE.fullmatch(fields["payload[value]"]):
            return _error(400, "The value must be a whole number.", param="payload[value]")
        if len(fields.get("identifier", "")) > 100:
            return _error(400, "identifier: at most 100 characters.", param="identifier")
        if "timestamp" in fields:
            try:
                stamp = int(fields["timestamp"])
            except ValueError:
                return _error(400, "Invalid integer: " + fields["timestamp"], param="timestamp")
            now = self.clock()
            if not now - _MAX_AGE_S <= stamp <= now + _MAX_AHEAD_S:
                return _error(
                    400,
                    "Timestamp must be within the past 35 calendar days or up "
                    "to 5 minutes in the future.",
                    param="timestamp",
                )
        return None

    async def _list_meters(self, request: web.Request) -> web.Response:
        meters = [
            {"id": meter_id, "object": "billing.meter", "event_name": name, "status": "active"}
            for name, meter_id in sorted(self.meters.items(), key=lambda kv: kv[1])
        ]
        limit = int(request.query.get("limit", "10"))
        after = request.query.get("starting_after")
        if after:
            meters = meters[[m["id"] for m in meters].index(after) + 1 :]
        page = meters[:limit]
        return web.json_response(
            {
                "object": "list",
                "url": "/v1/billing/meters",
                "has_more": len(meters) > limit,
                "data": page,
            }
        )

    async def _summaries(self, request: web.Request) -> web.Response:
        meter_id = request.match_info["id"]
        names = [n for n, m in self.meters.items() if m == meter_id]
        if not names:
            return _error(404, f"No such billing meter: '{meter_id}'", code="resource_missing")
        query = request.query
        for name in ("customer", "start_time", "end_time"):
            if name not in query:
                return _error(
                    400, f"Missing required param: {name}.", param=name, code="parameter_missing"
                )
        start, end = int(query["start_time"]), int(query["end_time"])
        if start % 60 or end % 60:
            return _error(400, "start_time and end_time must be aligned with minute boundaries.")
        total = sum(
            int(e["payload"]["value"])
            for e in self.meter_events.values()
            if e["event_name"] == names[0]
            and e["payload"]["stripe_customer_id"] == query["customer"]
            and start <= e["timestamp"] < end
        )
        summary = {
            "id": f"mtrusg_test_{next(self._ids)}",
            "object": "billing.meter_event_summary",
            "aggregated_value": float(total),
            "start_time": start,
            "end_time": end,
            "livemode": False,
            "meter": meter_id,
        }
        return web.json_response(
            {
                "object": "list",
                "has_more": False,
                "data": [summary],
                "url": f"/v1/billing/meters/{meter_id}/event_summaries",
            }
        )

    async def _create_customer(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if key and key in self._idempotent:
            return web.json_response(self._idempotent[key], headers={"Idempotent-Replayed": "true"})
        form = await request.post()
        customer_id = f"cus_{secrets.token_hex(7)}"
        metadata = {
            k[len("metadata[") : -1]: str(v) for k, v in form.items() if k.startswith("metadata[")
        }
        customer = {
            "id": customer_id,
            "object": "customer",
            "name": form.get("name"),
            "email": form.get("email"),
            "metadata": metadata,
        }
        self.customers[customer_id] = customer
        if key:
            self._idempotent[key] = customer
        return web.json_response(customer, headers=_request_id())

    async def _portal_session(self, request: web.Request) -> web.Response:
        form = await request.post()
        customer = str(form.get("customer") or "")
        if not customer:
            return _error(
                400, "Missing required param: customer.", param="customer", code="parameter_missing"
            )
        if customer not in self.customers:
            return _error(
                400, f"No such customer: '{customer}'", param="customer", code="resource_missing"
            )
        session_id = f"bps_{secrets.token_hex(8)}"
        session = {
            "id": session_id,
            "object": "billing_portal.session",
            "customer": customer,
            "return_url": form.get("return_url"),
            "livemode": False,
            "created": int(self.clock()),
            "url": f"https://billing.stripe.com/p/session/test_{session_id}",
        }
        self.portal_sessions.append(session)
        return web.json_response(session, headers=_request_id())

    async def _stream_session(self, request: web.Request) -> web.Response:
        token = f"mes_tok_{secrets.token_hex(12)}"
        expires = self.clock() + 900
        self._tokens[token] = expires
        return web.json_response(
            {
                "id": f"mes_{secrets.token_hex(8)}",
                "object": "v2.billing.meter_event_session",
                "authentication_token": token,
                "livemode": False,
                "created": _iso(self.clock()),
                "expires_at": _iso(expires),
            }
        )

    async def _stream(self, request: web.Request) -> web.Response:
        body = await request.json()
        events = body.get("events")
        if not isinstance(events, list) or not 1 <= len(events) <= 100:
            return _error(400, "events: between 1 and 100 events.", param="events")
        batch = []
        for raw in events:
            batch.append(raw)
            self.meter_event_posts.append({"identifier": raw.get("identifier"), "v2": True})
        faulted = await self._fault(request, lambda: None)
        if faulted is not None:
            return faulted
        self.stream_batches.append(batch)
        for raw in batch:  # validated asynchronously by Stripe; duplicates are dropped
            identifier = raw["identifier"]
            stamp = int(datetime.fromisoformat(raw["timestamp"].replace("Z", "+00:00")).timestamp())
            self.meter_events.setdefault(
                identifier,
                {
                    "object": "billing.meter_event",
                    "event_name": raw["event_name"],
                    "identifier": identifier,
                    "payload": dict(raw["payload"]),
                    "timestamp": stamp,
                },
            )
        return web.json_response({})


def _request_id() -> dict[str, str]:
    return {"Request-Id": f"req_{secrets.token_hex(7)}"}


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(moment))


def _error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    should_retry: str | None = None,
) -> web.Response:
    error: dict[str, Any] = {"message": message, "type": type_}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    headers = _request_id()
    if should_retry is not None:
        headers["Stripe-Should-Retry"] = should_retry
    return web.json_response({"error": error}, status=status, headers=headers)


@asynccontextmanager
async def running_fake_stripe(**kwargs: Any) -> AsyncIterator[FakeStripe]:
    fake = FakeStripe(**kwargs)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        await server.close()
