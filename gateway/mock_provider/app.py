"""`create_mock_app`: a fake OpenAI + Anthropic provider served as a real aiohttp app.

Routes: OpenAI under /v1 (chat/completions, completions, embeddings, responses; an OpenAI
SDK uses `base_url=http://HOST:PORT/v1`), Anthropic at /v1/messages and
/v1/messages/count_tokens (an Anthropic SDK uses `base_url=http://HOST:PORT`), Bedrock's
/model/{modelId}/converse and /converse-stream (SigV4-signed, see `bedrock_api.py`), Azure
OpenAI's /openai/deployments/... and /openai/v1/... (`azure_api.py`), Gemini's
/v1beta/models/{model}:generateContent and the rest, also under /v1 (`gemini_api.py`), and
GET /v1/models in the shape of whichever API asked (Anthropic's when `anthropic-version` is
sent). Every request to those routes, and to unknown paths, is recorded in
`app[MOCK_REQUESTS]` before anything else happens, so a test can see what arrived even when
it was refused. `GET /_mock/requests` returns the log as JSON (bodies as text) and
`DELETE /_mock/requests` clears it. An unknown path answers 404 in the provider's shape.

Behaviour: `MockOptions` (latency, pacing, random errors) plus the per-request `x-mock-*`
headers of `controls.py`; token counts follow `tokens.py`.
"""

from __future__ import annotations

import random

from aiohttp import web

from gateway.mock_provider.anthropic_api import AnthropicDialect, add_anthropic_routes
from gateway.mock_provider.azure_api import add_azure_routes
from gateway.mock_provider.bedrock_api import add_bedrock_routes
from gateway.mock_provider.endpoint import Handler
from gateway.mock_provider.gemini_api import add_gemini_routes
from gateway.mock_provider.openai_api import add_openai_routes
from gateway.mock_provider.openai_dialect import OpenAIDialect
from gateway.mock_provider.state import (
    MOCK_OPTIONS,
    MOCK_REQUESTS,
    MOCK_RNG,
    MockOptions,
    RecordedRequest,
)

__all__ = ["MOCK_REQUESTS", "MockOptions", "RecordedRequest", "create_mock_app"]

LOG_PATH = "/_mock/requests"


def create_mock_app(options: MockOptions | None = None) -> web.Application:
    options = options or MockOptions()
    app = web.Application(middlewares=[record_requests, provider_shaped_404])
    app[MOCK_OPTIONS] = options
    app[MOCK_REQUESTS] = []
    app[MOCK_RNG] = random.Random(options.seed)
    openai_models = add_openai_routes(app)
    anthropic_models = add_anthropic_routes(app)
    add_bedrock_routes(app)
    add_azure_routes(app)
    add_gemini_routes(app)

    async def list_models(request: web.Request) -> web.StreamResponse:
        if "anthropic-version" in request.headers:
            return await anthropic_models(request)
        return await openai_models(request)

    app.router.add_get("/v1/models", list_models)
    app.router.add_get(LOG_PATH, get_request_log)
    app.router.add_delete(LOG_PATH, clear_request_log)
    return app


@web.middleware
async def record_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path != LOG_PATH:
        log = request.app[MOCK_REQUESTS]
        limit = request.app[MOCK_OPTIONS].request_log_limit
        if limit != 0:
            log.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query=request.query_string,
                    headers={name.lower(): value for name, value in request.headers.items()},
                    body=await request.read(),
                )
            )
            if limit is not None and len(log) > limit:
                del log[0]
    return await handler(request)


@web.middleware
async def provider_shaped_404(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        message = f"Invalid URL ({request.method} {request.path})"
        if "anthropic-version" in request.headers:
            dialect: AnthropicDialect | OpenAIDialect = AnthropicDialect()
        else:
            dialect = OpenAIDialect()
        return dialect.error(exc.status, dialect.new_request_id(), message)


async def get_request_log(request: web.Request) -> web.Response:
    return web.json_response([entry.to_json() for entry in request.app[MOCK_REQUESTS]])


async def clear_request_log(request: web.Request) -> web.Response:
    request.app[MOCK_REQUESTS].clear()
    return web.Response(status=204)
