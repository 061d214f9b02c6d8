"""The mock's Azure OpenAI endpoints: OpenAI's answers behind Azure's routes and key header.

Deployment routes `POST /openai/deployments/{deployment}/chat/completions`, `/completions`,
`/embeddings` (with `?api-version=`, else 404 as Azure answers) and the v1 routes
`/openai/v1/chat/completions`, `/openai/v1/responses`, `/openai/v1/embeddings` (the body's
`model` names the deployment). Each deployment serves the model of its own name. The answers
are the OpenAI mock's (`openai_api`), with what Azure adds: a streamed chat completion opens
with a chunk that has `choices: []` and `prompt_filter_results` (and an empty id), and a
dated api-version older than 2024-09-01-preview refuses `stream_options` with Azure's 400.

The key is read from `api-key` (what `openai.AzureOpenAI` sends; never echoed back); a
missing or wrong one is Azure's 401 `{"error": {"code": "401", "message": ...}}`.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import replace

import orjson
from aiohttp import web

from gateway.mock_provider.endpoint import Call, CallHandler, InvalidRequest, endpoint
from gateway.mock_provider.openai_api import chat_completions, completions, embeddings
from gateway.mock_provider.openai_dialect import OpenAIDialect
from gateway.mock_provider.openai_responses import create_response

_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API "
    "endpoint for your resource."
)
# Dated api-versions before this one refuse `stream_options` (they predate streamed usage).
STREAM_OPTIONS_SINCE = "2024-09-01"
_DATED = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
_FILTER_OK = {"filtered": False, "severity": "safe"}
PROMPT_FILTER_CHUNK = (
    b"data: "
    + orjson.dumps(
        {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": [
                {
                    "prompt_index": 0,
                    "content_filter_results": {
                        name: _FILTER_OK for name in ("hate", "self_harm", "sexual", "violence")
                    },
                }
            ],
        }
    )
    + b"\n\n"
)


class AzureDialect(OpenAIDialect):
    """OpenAI's bodies and ids; Azure's key header, its 401 and its request id headers."""

    def response_headers(self, request_id: str) -> dict[str, str]:
        return {
            **super().response_headers(request_id),
            "apim-request-id": request_id,
            "x-ms-region": "East US",
        }

    def refuse(
        self, request: web.Request, api_key: str | None, request_id: str
    ) -> web.Response | None:
        key = request.headers.get("api-key", "").strip()
        if not key or (
            api_key is not None and not hmac.compare_digest(key.encode(), api_key.encode())
        ):
            body = orjson.dumps({"error": {"code": "401", "message": _DENIED}})
            return self._reply(401, body, request_id)
        return None


def add_azure_routes(app: web.Application) -> None:
    dialect = AzureDialect()
    for suffix, handler in (
        ("/chat/completions", chat_completions),
        ("/completions", completions),
        ("/embeddings", embeddings),
    ):
        app.router.add_post(
            "/openai/deployments/{deployment}" + suffix, endpoint(dialect, _deployment(handler))
        )
    for suffix, handler in (
        ("/chat/completions", chat_completions),
        ("/responses", create_response),
        ("/embeddings", embeddings),
    ):
        app.router.add_post("/openai/v1" + suffix, endpoint(dialect, _v1(handler)))


def _deployment(handler: CallHandler) -> CallHandler:
    async def handle(call: Call) -> web.StreamResponse:
        version = call.request.query.get("api-version")
        if not version:
            body = orjson.dumps({"error": {"code": "404", "message": "Resource not found"}})
            return web.Response(
                status=404,
                body=body,
                content_type="application/json",
                headers=call.dialect.response_headers(call.request_id),
            )
        if (
            "stream_options" in call.body
            and _DATED.fullmatch(version)
            and version[:10] < STREAM_OPTIONS_SINCE
        ):
            raise InvalidRequest("Unrecognized request argument supplied: stream_options")
        deployment = call.request.match_info["deployment"]
        return await _answer(handler, replace(call, body={**call.body, "model": deployment}))

    return handle


def _v1(handler: CallHandler) -> CallHandler:
    async def handle(call: Call) -> web.StreamResponse:
        return await _answer(handler, call)

    return handle


async def _answer(handler: CallHandler, call: Call) -> web.StreamResponse:
    if handler is chat_completions and call.body.get("stream"):
        call = replace(call, stream_preamble=PROMPT_FILTER_CHUNK)
    return await handler(call)
