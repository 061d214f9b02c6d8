"""What every JSON route here shares: the reply, the request body, and the `days` parameter.

Errors raised here are `InvalidRequestError`s, which the middleware answers in OpenAI's shape.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import InvalidRequestError

MAX_DAYS = 3660


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body, which must be one JSON object."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise InvalidRequestError("The body must be valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    return body


def text_field(body: dict[str, Any], field: str) -> str | None:
    """`body[field]`: a string, or None when absent or null."""
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise InvalidRequestError(f"{field} must be a string", param=field)
    return value


def days_param(request: web.Request) -> int:
    """`?days=N` (default 30), 1 to `MAX_DAYS`."""
    raw = request.query.get("days", "30")
    try:
        days = int(raw)
    except ValueError:
        raise InvalidRequestError("days must be a whole number", param="days") from None
    if not 1 <= days <= MAX_DAYS:
        raise InvalidRequestError(f"days must be between 1 and {MAX_DAYS}", param="days")
    return days
