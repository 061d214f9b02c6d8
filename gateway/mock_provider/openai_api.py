"""The mock's OpenAI endpoints: chat completions, legacy completions, embeddings, models.

Bodies and SSE chunks follow the real API field for field. A stream ends with `data: [DONE]`;
the extra chunk with `"choices": []` and the usage comes only when the request set
`stream_options.include_usage`, and then every other chunk carries `"usage": null`, as
OpenAI does. Token counts follow `tokens.py`; faults follow `controls.py`. The Responses API
lives in `openai_responses.py`.
"""

from __future__ import annotations

import base64
import struct
import time
from functools import lru_cache
from typing import Any

from aiohttp import web

from gateway.mock_provider.endpoint import Call, Handler, InvalidRequest, endpoint
from gateway.mock_provider.ids import base62
from gateway.mock_provider.openai_dialect import OpenAIDialect
from gateway.mock_provider.openai_responses import create_response
from gateway.mock_provider.replies import DONE_EVENT, EventStream, send_json, send_stream, sse
from gateway.mock_provider.tokens import (
    OutputPlan,
    conversation_tokens,
    message_contents,
    prompt_tokens,
)

SYSTEM_FINGERPRINT = "fp_mock0001"
MODEL_IDS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-5",
    "gpt-5.4-mini",
    "o3-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
MODEL_CREATED = 1_700_000_000
DEFAULT_EMBEDDING_DIMENSIONS = 1536
MAX_EMBEDDING_DIMENSIONS = 3072


def add_openai_routes(app: web.Application) -> Handler:
    """Add the POST routes; return the GET /v1/models handler (shared with Anthropic)."""
    dialect = OpenAIDialect()
    app.router.add_post("/v1/chat/completions", endpoint(dialect, chat_completions))
    app.router.add_post("/v1/completions", endpoint(dialect, completions))
    app.router.add_post("/v1/embeddings", endpoint(dialect, embeddings))
    app.router.add_post("/v1/responses", endpoint(dialect, create_response))
    return endpoint(dialect, list_models, reads_body=False)


def chat_usage(prompt: int, cached: int, plan: OutputPlan) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": plan.output_tokens,
        "total_tokens": prompt + plan.output_tokens,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def wants_usage_chunk(call: Call) -> bool:
    options = call.body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


async def chat_completions(call: Call) -> web.StreamResponse:
    model = call.model()
    messages = call.body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("Missing required parameter: 'messages'.", "messages")
    plan = call.plan(model, call.optional_int("max_completion_tokens", "max_tokens"))
    cached = call.controls.cached_tokens
    prompt = conversation_tokens(message_contents(messages)) + cached
    usage = None if call.controls.no_usage else chat_usage(prompt, cached, plan)
    finish_reason = "length" if plan.hit_max_tokens else "stop"
    head: dict[str, Any] = {
        "id": "chatcmpl-" + base62(29),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
    }
    if not call.body.get("stream"):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": plan.text,
            "refusal": None,
            "annotations": [],
        }
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        body = {**head, "choices": [choice], "usage": usage}
        body.update(service_tier="default", system_fingerprint=SYSTEM_FINGERPRINT)
        if usage is None:
            del body["usage"]
        return await send_json(call, body)

    head.update(
        object="chat.completion.chunk",
        service_tier="default",
        system_fingerprint=SYSTEM_FINGERPRINT,
    )
    usage_chunk = wants_usage_chunk(call) and usage is not None
    tail = {"usage": None} if usage_chunk else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse(None, {**head, "choices": [choice], **tail})

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events.extend(chunk({"content": word}) for word in plan.words)
    terminal_at = len(events)
    events.append(chunk({}, finish_reason))
    if usage_chunk:
        events.append(sse(None, {**head, "choices": [], "usage": usage}))
    events.append(DONE_EVENT)
    return await send_stream(call, EventStream(events, terminal_at))


async def completions(call: Call) -> web.StreamResponse:
    model = call.model()
    if "prompt" not in call.body:
        raise InvalidRequest("Missing required parameter: 'prompt'.", "prompt")
    plan = call.plan(model, call.optional_int("max_tokens"), reasons=False)
    prompt = prompt_tokens(call.body["prompt"]) + call.controls.cached_tokens
    usage = None
    if not call.controls.no_usage:
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": plan.output_tokens,
            "total_tokens": prompt + plan.output_tokens,
        }
    finish_reason = "length" if plan.hit_max_tokens else "stop"
    head: dict[str, Any] = {
        "id": "cmpl-" + base62(29),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    def choice(text: str, finish: str | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

    if not call.body.get("stream"):
        body = {**head, "choices": [choice(plan.text, finish_reason)], "usage": usage}
        if usage is None:
            del body["usage"]
        return await send_json(call, body)

    usage_chunk = wants_usage_chunk(call) and usage is not None
    tail = {"usage": None} if usage_chunk else {}
    events = [sse(None, {**head, "choices": [choice(word, None)], **tail}) for word in plan.words]
    terminal_at = len(events)
    events.append(sse(None, {**head, "choices": [choice("", finish_reason)], **tail}))
    if usage_chunk:
        events.append(sse(None, {**head, "choices": [], "usage": usage}))
    events.append(DONE_EVENT)
    return await send_stream(call, EventStream(events, terminal_at))


async def embeddings(call: Call) -> web.StreamResponse:
    model = call.model()
    inputs = call.body.get("input")
    if inputs is None or inputs == "" or inputs == []:
        raise InvalidRequest("'input' must be a non-empty string or array.", "input")
    count = (
        len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
    )
    default = MAX_EMBEDDING_DIMENSIONS if model.endswith("-large") else DEFAULT_EMBEDDING_DIMENSIONS
    dimensions = call.optional_int("dimensions") or default
    if dimensions > MAX_EMBEDDING_DIMENSIONS:
        raise InvalidRequest(f"dimensions: at most {MAX_EMBEDDING_DIMENSIONS}", "dimensions")
    encoding = call.body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequest("encoding_format: 'float' or 'base64'", "encoding_format")
    floats, packed = embedding_vector(dimensions)
    vector: object = packed if encoding == "base64" else floats
    body: dict[str, Any] = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)],
        "model": model,
    }
    if not call.controls.no_usage:
        tokens = prompt_tokens(inputs) + call.controls.cached_tokens
        body["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return await send_json(call, body)


@lru_cache(maxsize=8)
def embedding_vector(dimensions: int) -> tuple[list[float], str]:
    """The one deterministic vector (as floats and as base64 little-endian float32)."""
    floats = [((i % 16) - 7.5) / 64 for i in range(dimensions)]  # exact in float32
    packed = base64.b64encode(struct.pack(f"<{dimensions}f", *floats)).decode("ascii")
    return floats, packed


async def list_models(call: Call) -> web.StreamResponse:
    data = [
        {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "openai"}
        for model in MODEL_IDS
    ]
    return await send_json(call, {"object": "list", "data": data})
