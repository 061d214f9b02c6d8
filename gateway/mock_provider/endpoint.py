"""The steps every mock endpoint shares, in the order a real provider takes them.

`endpoint(dialect, handler)` turns a handler of one parsed `Call` into an aiohttp handler:
wait `latency_ms`, check the key and required headers (401/400 in the provider's shape),
read the `x-mock-*` controls (400 if malformed), answer an injected or random error, wait if
asked to be slow, parse the JSON body (400 if it is not a JSON object), then run the handler.
A handler raises `InvalidRequest` for a bad field; it becomes a provider-shaped 400. What
differs between OpenAI and Anthropic (bodies, headers, ids) is behind the `Dialect` protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from gateway.mock_provider.controls import ControlError, Controls, read_controls
from gateway.mock_provider.state import MOCK_OPTIONS, MOCK_RNG, MockOptions
from gateway.mock_provider.tokens import OutputPlan, plan_output


class Dialect(Protocol):
    """How one API family speaks: its ids, headers, error bodies and in-stream events."""

    @property
    def broken_event(self) -> bytes:
        """An SSE event whose data is not JSON."""
        ...

    @property
    def stream_error_event(self) -> bytes:
        """The event the provider sends when a stream fails after it started."""
        ...

    def new_request_id(self) -> str: ...

    def response_headers(self, request_id: str) -> dict[str, str]: ...

    def error(
        self, status: int, request_id: str, message: str | None = None, param: str | None = None
    ) -> web.Response:
        """A provider-shaped error body with that status (a stock message if None)."""
        ...

    def refuse(
        self, request: web.Request, api_key: str | None, request_id: str
    ) -> web.Response | None:
        """401 for a missing or wrong key, 400 for a missing required header, else None."""
        ...

    def injected_error(self, controls: Controls, request_id: str) -> web.Response:
        """The response for `x-mock-error: NNN` / `insufficient-quota`."""
        ...


class InvalidRequest(Exception):
    """A request field the real API would refuse with a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class Call:
    """One accepted request, ready for its handler."""

    request: web.Request
    dialect: Dialect
    body: dict[str, Any]
    controls: Controls
    options: MockOptions
    request_id: str
    # Sent before a stream's events, untouched by faults (Azure's content-filter chunk).
    stream_preamble: bytes = b""

    @property
    def token_delay_s(self) -> float:
        delay_ms = self.controls.token_delay_ms
        return (self.options.token_delay_ms if delay_ms is None else delay_ms) / 1000

    def plan(self, model: str, max_tokens: int | None, *, reasons: bool = True) -> OutputPlan:
        wanted = self.controls.output_tokens
        if wanted is None:
            wanted = self.options.output_tokens
        return plan_output(model, wanted, max_tokens, reasons=reasons)

    def model(self) -> str:
        model = self.body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model: a non-empty string is required", "model")
        return model

    def optional_int(self, *names: str) -> int | None:
        """The first of these integer fields present in the body."""
        for name in names:
            value = self.body.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidRequest(f"{name}: must be a non-negative integer", name)
            return value
        return None


CallHandler = Callable[[Call], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def endpoint(dialect: Dialect, handler: CallHandler, *, reads_body: bool = True) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        options = request.app[MOCK_OPTIONS]
        request_id = dialect.new_request_id()
        if options.latency_ms > 0:
            await asyncio.sleep(options.latency_ms / 1000)
        refusal = dialect.refuse(request, options.api_key, request_id)
        if refusal is not None:
            return refusal
        try:
            controls = read_controls(request.headers)
        except ControlError as exc:
            return dialect.error(400, request_id, str(exc))
        if options.error_rate > 0 and request.app[MOCK_RNG].random() < options.error_rate:
            return dialect.error(500, request_id)
        if controls.error_status is not None or controls.mode == "insufficient-quota":
            return dialect.injected_error(controls, request_id)
        if controls.mode == "slow":
            await asyncio.sleep(controls.delay_ms / 1000)
        body: dict[str, Any] = {}
        if reads_body:
            try:
                parsed = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                return dialect.error(400, request_id, "the request body is not valid JSON")
            if not isinstance(parsed, dict):
                return dialect.error(400, request_id, "the request body must be a JSON object")
            body = parsed
        call = Call(request, dialect, body, controls, options, request_id)
        try:
            return await handler(call)
        except InvalidRequest as exc:
            return dialect.error(400, request_id, exc.message, exc.param)

    return handle
