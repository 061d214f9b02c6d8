"""The mock's OpenAI Responses API: `POST /v1/responses`, plain and streamed.

The stream is the real event sequence, each event `event: NAME` + `data: JSON` with a
`sequence_number` from 0: response.created, response.in_progress,
response.output_item.added, response.content_part.added, response.output_text.delta (one
per word), response.output_text.done, response.content_part.done,
response.output_item.done, then response.completed, or response.incomplete (status
`incomplete`, reason `max_output_tokens`) when `max_output_tokens` cut the answer. There is
no `[DONE]`. Usage is `{input_tokens, input_tokens_details{cached_tokens}, output_tokens,
output_tokens_details{reasoning_tokens}, total_tokens}`, counted as `tokens.py` says.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.mock_provider.endpoint import Call, InvalidRequest
from gateway.mock_provider.ids import hex_id
from gateway.mock_provider.replies import EventStream, send_json, send_stream, sse
from gateway.mock_provider.tokens import OutputPlan, conversation_tokens, responses_contents


def responses_usage(input_tokens: int, cached: int, plan: OutputPlan) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": plan.output_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": input_tokens + plan.output_tokens,
    }


async def create_response(call: Call) -> web.StreamResponse:
    model = call.model()
    input_value = call.body.get("input")
    if not isinstance(input_value, str | list):
        raise InvalidRequest("Missing required parameter: 'input'.", "input")
    instructions = call.body.get("instructions")
    contents = responses_contents(input_value)
    if instructions is not None:
        contents.append(instructions)
    plan = call.plan(model, call.optional_int("max_output_tokens"))
    cached = call.controls.cached_tokens
    input_tokens = conversation_tokens(contents) + cached
    usage = None if call.controls.no_usage else responses_usage(input_tokens, cached, plan)
    status = "incomplete" if plan.hit_max_tokens else "completed"
    item_id = "msg_" + hex_id(48)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": plan.text}
    item = {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": [part],
        "role": "assistant",
    }
    final = _response_object(call, model, status, [item], usage)
    if not call.body.get("stream"):
        return await send_json(call, final)

    started = {**final, "status": "in_progress", "output": [], "usage": None}
    started["incomplete_details"] = None
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        (
            "response.output_item.added",
            {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
        ),
        ("response.content_part.added", {**where, "part": {**part, "text": ""}}),
    ]
    events.extend(
        ("response.output_text.delta", {**where, "delta": word, "logprobs": []})
        for word in plan.words
    )
    terminal_at = len(events)
    events += [
        ("response.output_text.done", {**where, "text": plan.text, "logprobs": []}),
        ("response.content_part.done", {**where, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": item}),
        (f"response.{status}", {"response": final}),
    ]
    frames = [
        sse(name, {"type": name, "sequence_number": number, **fields})
        for number, (name, fields) in enumerate(events)
    ]
    return await send_stream(call, EventStream(frames, terminal_at))


def _response_object(
    call: Call,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    body = call.body
    return {
        "id": "resp_" + hex_id(48),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }
