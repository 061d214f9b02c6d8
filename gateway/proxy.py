"""The forwarded routes: authenticate, validate, admit, forward, relay, record.

Two servers feed it: the fast front (`gateway.front.server`) calls `prepare` and `forward` itself;
aiohttp calls the handler `make_handler` builds (for the requests the front hands over). Both
answer through a `gateway.reply.Reply`. In order, for each request:
1. the key (where the route's API sends it: the adapter's `client_key`) is resolved to a
   customer (401 otherwise);
2. the body is parsed once (400 for malformed JSON, a non-object, or a missing `model`; 413
   past `server.max_body_mb`, enforced by the server before this runs); a body labelled
   anything but `application/json` is refused first with the 400 OpenAI answers
   (`unsupported_content_type`), an unlabelled one is judged by its bytes and labelled
   `application/json` upstream;
3. the model (the body's, or the path's on a templated route) is routed to a provider of
   the route's API kind, resolved to the catalog model it is priced as (400 when the adapter
   cannot: an unmapped deployment) and priced (400 for an unknown model under
   `unknown_model: reject`);
4. the customer's quotas reserve one request and the worst case of tokens and spend (429);
5. the request goes upstream (to the adapter's `upstream_url`, signed by its `sign` hook) with
   the provider key in place of the client's, its provisional usage event journaled just
   before (`Recorder.open`, see metering);
6. the response is relayed (JSON in one piece, a stream as it arrives: SSE, or the
   adapter's framing) with `x-request-id` and the rate-limit headers;
7. `Recorder.finish` settles the quota and queues the usage event, whatever happened.
Steps 1 to 4 (`prepare`) reach no provider and record no usage event; steps 5 to 7
(`forward`) run in a task nothing cancels (a client that leaves mid-stream is drained).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

from gateway import keys
from gateway.drain import INTERRUPTED as DRAIN_INTERRUPTED
from gateway.drain import Cut, cut_error, cut_event, record_cut
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from gateway.metering import Exchange
from gateway.providers.base import NO_CALL_DETAILS, Call, Endpoint, ProviderApi
from gateway.providers.registry import match
from gateway.relay import relay_stream
from gateway.relay_types import StreamPlan
from gateway.reply import AiohttpReply, Reply
from gateway.upstream import UpstreamResponse, check_forwardable, read_body, send
from storage.usage.writer import JournalFullError

log = logging.getLogger("tollbooth.proxy")

# A ceiling on a request's max output tokens, far above any model's, so quota counters (64-bit
# in Redis) can never overflow however many such requests are reserved.
MAX_OUTPUT_TOKENS = 2**31 - 1

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Response headers never passed from the provider to the client: hop-by-hop and framing
# headers (aiohttp sets its own), the provider's own limits and account identifiers.
_DROP_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "server",
        "set-cookie",
        "alt-svc",
        "openai-organization",
        "openai-project",
        "x-request-id",
        "request-id",
        "content-encoding",  # bodies are decoded on the way in (a provider that gzips anyway)
    }
)
# A provider's own CORS answer never reaches the client: the gateway's (gateway.cors) applies.
_DROP_RESPONSE_PREFIXES = (
    "x-ratelimit-",
    "anthropic-ratelimit-",
    "anthropic-organization",
    "access-control-",
)


def response_headers(upstream: UpstreamResponse, secret: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in upstream.headers.items():
        lower = name.lower()
        if lower in _DROP_RESPONSE_HEADERS or lower.startswith(_DROP_RESPONSE_PREFIXES):
            continue
        out[name] = value.replace(secret, "[redacted]") if secret and secret in value else value
    upstream_id = (
        upstream.headers.get("x-request-id")
        or upstream.headers.get("request-id")
        or upstream.headers.get("x-amzn-requestid")
    )  # AWS (Bedrock)
    if upstream_id:
        out["x-upstream-request-id"] = upstream_id
    return out


def parse_body(raw: bytes, endpoint: Endpoint) -> tuple[dict[str, Any], str]:
    """The request body as a JSON object and its model; 400 in the API's shape otherwise."""
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. The body must be valid JSON."
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    model = body.get("model")
    if endpoint.needs_model and (not isinstance(model, str) or not model.strip()):
        raise InvalidRequestError(
            "You must provide a model parameter.", param="model", code="missing_model"
        )
    return body, model if isinstance(model, str) else ""


def check_content_type(value: str | None) -> None:
    """400 for a body labelled as something other than JSON (`text/plain`, a form...), in
    OpenAI's words; parameters such as `charset=utf-8` are accepted. A missing label passes
    (the caller labels the forwarded request)."""
    if value is None or value == "application/json":
        return
    if value.partition(";")[0].strip().lower() == "application/json":
        return
    shown = value if len(value) <= 200 else value[:200] + "..."
    raise InvalidRequestError(
        f"Unsupported content type: '{shown}'. This API method only accepts "
        f"'application/json' requests, but you specified the header 'Content-Type: {shown}'. "
        "Please try again with a supported content type.",
        code="unsupported_content_type",
    )


def make_handler(api: ProviderApi, endpoint: Endpoint) -> Handler:
    """The aiohttp handler of a forwarded route (requests the fast front hands to aiohttp)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        app = request.app
        call = NO_CALL_DETAILS
        if endpoint.templated:  # parameters as the front reads them: one matcher for both
            found = match(request.raw_path)
            if found is None or found[0][1] is not endpoint:
                raise NotFoundError(
                    "Unknown request URL. Tollbooth serves the routes in its README."
                )
            call = found[1]
        elif request.query_string:
            call = Call(MappingProxyType({}), MappingProxyType(dict(request.query)))

        async def read_body() -> bytes:
            try:
                return await request.read()
            except (RequestPayloadError, BadHttpMessage):
                raise InvalidRequestError(
                    "The request body could not be read (bad Content-Encoding or framing)."
                ) from None

        pending = await prepare(
            app, api, endpoint, request.headers, read_body, request[keys.request_id], started, call
        )
        reply = AiohttpReply(request)
        # Steps 5-7 run as their own task: a handler cancelled because the client left (or
        # the server is stopping) never cancels the forwarding, the drain or the billing.
        task = app[keys.recorder].spawn(forward(app, api, endpoint, pending, reply))
        await asyncio.shield(task)
        assert reply.response is not None  # forward answers or raises
        return reply.response

    return handle


@dataclass(slots=True)
class Pending:
    """An admitted request, ready to go upstream (`call` is None once it was sent)."""

    ex: Exchange
    call: Upstream | None
    strip_usage: bool
    our_headers: dict[str, str]


async def prepare(
    app: web.Application,
    api: ProviderApi,
    endpoint: Endpoint,
    headers: Mapping[str, str],
    read_body: Callable[[], Awaitable[bytes]],
    request_id: uuid.UUID,
    started: float,
    call: Call = NO_CALL_DETAILS,
) -> Pending:
    """Steps 1-4 (and the provisional record of a metered request): raise a GatewayError to
    refuse, reaching no provider; `headers` is a case-insensitive mapping, `call` the path
    and query parameters of a templated route or a target with a query."""
    snapshot = app[keys.runtime].current
    settings = snapshot.settings
    principal = await app[keys.authenticator].authenticate_key(api.client_key(headers, call.query))
    if principal.suspended:
        raise PaymentRequiredError(
            "This account is suspended for an unpaid invoice. Update your payment method."
        )
    content_type = headers.get("content-type")
    check_content_type(content_type)
    raw = await read_body()
    body, requested = parse_body(raw, endpoint)
    if endpoint.model_param is not None:
        requested = call.params[endpoint.model_param]

    provider_name = settings.provider_for(requested, api.kind)
    if provider_name is None:
        raise InvalidRequestError(
            f"No provider of kind '{api.kind}' is configured for this route.", param="model"
        )
    provider = settings.providers[provider_name]
    model = api.catalog_model(provider, requested)
    if model is None:
        raise InvalidRequestError(
            f"The model or deployment '{requested}' is not mapped to a priced model on this "
            f"gateway (provider '{provider_name}').",
            param="model",
            code="model_not_found",
        )
    provider_key = provider.api_key()
    if provider.api_key_env and provider_key is None:
        log.error(
            "provider %s: environment variable %s is not set", provider_name, provider.api_key_env
        )
        raise ServiceUnavailableError(
            f"The provider '{provider_name}' has no API key configured on this gateway."
        )
    priced = snapshot.pricing.price(model) is not None
    if endpoint.metered and not priced and settings.pricing.unknown_model == "reject":
        raise InvalidRequestError(
            f"The model '{model}' does not exist or is not available on this gateway.",
            param="model",
            code="model_not_found",
        )

    streaming = api.is_streaming(endpoint, body)
    strip_usage = (
        api.prepare_body(endpoint, body)
        if endpoint.metered and api.may_ask_usage(endpoint, provider, call)
        else False
    )
    try:
        payload = orjson.dumps(body) if strip_usage else raw
    except orjson.JSONEncodeError:
        raise InvalidRequestError("The request body is nested too deeply.") from None
    ex = Exchange(
        request_id=request_id,
        created_at=datetime.now(UTC),
        started=started,
        principal=principal,
        snapshot=snapshot,
        provider=provider_name,
        model=model,
        endpoint=endpoint,
        streamed=streaming,
        prompt_text=api.prompt_text(endpoint, body) if endpoint.metered else "",
    )
    if model != requested:
        ex.metadata["requested_model"] = requested
    our_headers = {"x-request-id": str(request_id)}
    url = api.upstream_url(endpoint, provider, call)
    upstream_headers = api.upstream_headers(headers, provider_key)
    if content_type is None:  # providers refuse an unlabelled body; this one is JSON
        upstream_headers["Content-Type"] = "application/json"
    check_forwardable(upstream_headers)  # 400 now: before quotas reserve, nothing journaled
    api.sign(provider, endpoint.method, url, upstream_headers, payload)
    outgoing = Upstream(
        endpoint.method, url, upstream_headers, payload, (provider_key or "").encode()
    )

    if endpoint.metered:
        try:
            app[keys.writer].check_accepting()
        except JournalFullError:
            raise ServiceUnavailableError(
                "Usage cannot be recorded right now (journal full); retry shortly."
            ) from None
        tier = settings.tiers.get(principal.tier)
        if tier is None:
            raise PermissionDeniedError(
                f"Your account's tier '{principal.tier}' is not configured on this gateway."
            )
        counter = app[keys.tokens]
        prompt_tokens = counter.reservation_tokens(model, ex.prompt_text)
        max_out = api.max_output_tokens(body)
        if max_out is None:
            max_out = settings.quotas.default_max_output_tokens
        elif max_out > MAX_OUTPUT_TOKENS:  # no model writes this much; it would poison quotas
            raise InvalidRequestError(
                f"The maximum output tokens requested is larger than {MAX_OUTPUT_TOKENS}.",
                param="max_tokens",
            )
        spend = None  # a spend reservation matters only under a spend cap
        if tier.limits.spend_per_month_usd is not None:
            spend = snapshot.pricing.max_charge(
                model,
                prompt_tokens,
                max_out,
                customer_id=principal.customer_id,
                tier=principal.tier,
            )
        ex.admission = await app[keys.quotas].admit(
            customer_id=principal.customer_id,
            tier_name=principal.tier,
            tier=tier,
            request_id=str(request_id),
            tokens=prompt_tokens + max_out,
            spend_usd=spend,
        )
        our_headers.update(app[keys.quotas].rate_limit_headers(ex.admission))
        app[keys.alerts].check(ex.admission, tier)

    if endpoint.metered:  # journaled in case the gateway dies mid-request (metering)
        app[keys.recorder].open(ex, prompt_tokens)
    return Pending(ex, outgoing, strip_usage, our_headers)


@dataclass(frozen=True, slots=True)
class Upstream:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    secret: bytes  # the provider key, scrubbed from anything a provider echoes back


def scrub(data: bytes, secret: bytes) -> bytes:
    """A provider that echoes its key (in an error body, say) must not hand it to clients."""
    return data.replace(secret, b"[redacted]") if secret and secret in data else data


async def forward(
    app: web.Application,
    api: ProviderApi,
    endpoint: Endpoint,
    pending: Pending,
    reply: Reply,
) -> None:
    """Steps 5-7: go upstream, answer through `reply`, record. Raises a GatewayError (502,
    504) when the provider could not be reached or read, after recording it; a 503 when the
    drain cut it before its response began (gateway.drain), after recording that."""
    cut = app[keys.drain].track()
    try:
        await _exchange(app, api, endpoint, pending, reply, cut)
    except asyncio.CancelledError:
        if not cut.waiting_for_head:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the drain's cancellation, answered here
        if endpoint.metered:
            await record_cut(app[keys.recorder], pending.ex)
        raise cut_error() from None
    finally:
        cut.release()


async def _exchange(
    app: web.Application,
    api: ProviderApi,
    endpoint: Endpoint,
    pending: Pending,
    reply: Reply,
    cut: Cut,
) -> None:
    ex, call, strip_usage = pending.ex, pending.call, pending.strip_usage
    assert call is not None, "a request is forwarded once"
    secret = call.secret
    recorder = app[keys.recorder]
    metered = endpoint.metered
    # From here on the request's headers and body are not needed: a stream keeps this frame
    # (and `pending`) for minutes, so neither holds them (a body is up to 1 MB, and orjson's
    # output of even a small one is a 4 KiB allocation).
    pending.call = None
    try:
        upstream = await send(app[keys.upstream], call.method, call.url, call.headers, call.body)
    except GatewayError as exc:
        if metered:
            await recorder.finish(ex, status=exc.status, usage=None, upstream_id=None)
        raise
    del call
    cut.upstream = upstream  # from now on the drain cuts it by closing this connection
    async with upstream:
        status = upstream.status
        out_headers = response_headers(upstream, secret.decode())
        out_headers.update(pending.our_headers)
        header_id = out_headers.get("x-upstream-request-id")
        is_stream = upstream.headers.get("content-type", "").startswith(api.stream_content_types)
        if is_stream and status < 400:
            ex.streamed = True  # e.g. "stream": 1 that a lax server honoured: meter it as one
        else:
            ex.streamed = False
            try:
                data = await read_body(upstream)
            except GatewayError as exc:
                if cut.fired:
                    if metered:
                        await record_cut(recorder, ex)
                    raise cut_error() from exc
                if metered:
                    await recorder.finish(ex, status=exc.status, usage=None, upstream_id=None)
                raise
            if metered:
                found = api.usage_from_body(endpoint, data)
                await recorder.finish(
                    ex,
                    status=status,
                    usage=found.usage,
                    upstream_id=found.upstream_id or header_id,
                    produced_text=found.produced_text,
                )
            await reply.send(status, out_headers, scrub(data, secret))
            return

        meter = api.stream_meter(endpoint, strip_usage)
        recorded = False

        async def record(client_gone: bool, broken: bool) -> None:
            nonlocal recorded
            if recorded or not metered:
                return
            recorded = True
            recorder.untrack_stream(ex)  # no progress record after the real event
            ex.metadata.update(_stream_metadata(client_gone, broken, was_cut()))
            result = meter.result()
            await recorder.finish(
                ex,
                status=status,
                usage=result.usage,
                upstream_id=result.upstream_id or header_id,
                produced_text=result.produced_text,
                partial_usage=result.partial_usage,
            )

        sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        upstream.forget_headers()  # all read: a stream keeps its response for minutes
        no_buffering(out_headers)  # any stream: SSE, or a framing such as AWS event-stream

        def was_cut() -> bool:  # by the drain, before the stream's terminal event
            return cut.fired and not meter.finished

        def cut_trailer() -> bytes:
            return cut_event(api) if sse and was_cut() else b""

        sink = await reply.open_stream(status, out_headers)
        del out_headers  # written: not held for the stream's life either
        try:
            plan = StreamPlan(
                meter,
                record,
                strip_usage=strip_usage,
                drain_s=ex.snapshot.settings.server.disconnect_drain_s,
                started=ex.started,
                framer=api.stream_framer(endpoint),
                trailer=cut_trailer,
            )
            if metered:  # journaled with the output so far while it runs (metering)
                recorder.track_stream(ex, meter)
            outcome = await relay_stream(sink, upstream, plan)
        finally:
            await record(False, True)  # a no-op unless the relay failed before recording
        if outcome.first_byte_s is not None:
            app[keys.metrics].observe_ttfb(endpoint.name, outcome.first_byte_s)


def _stream_metadata(client_gone: bool, broken: bool, cut: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if client_gone:
        meta["client_disconnected"] = True
    if cut:
        meta["interrupted"] = DRAIN_INTERRUPTED
    elif broken:
        meta["upstream_broken"] = True
    return meta


# SSE through a reverse proxy (nginx buffers responses unless told not to) or a cache.
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_SSE_HEADER_NAMES = frozenset(name.lower() for name in _SSE_HEADERS)


def no_buffering(headers: dict[str, str]) -> None:
    """A streamed response's headers (SSE, AWS event-stream): no proxy buffering, no
    caching (the provider's own values for those two headers replaced)."""
    for name in [n for n in headers if n.lower() in _SSE_HEADER_NAMES]:
        del headers[name]
    headers.update(_SSE_HEADERS)
