"""A misbehaving provider behind a real gateway: error statuses, 429s with Retry-After,
connections reset mid-stream, truncated and corrupt bodies and streams, missing usage, slow
streams against `server.upstream_read_timeout_s`, and chunked or gzip bodies from a small
custom upstream.

For each: the client gets a sane answer (the provider's own status and body, or 502/504 in
the API's shape for a provider fault), exactly one usage event per forwarded request with the
status the client saw, `usage_source = estimated` where the provider reported no usage (and
then never a zero output for an answer that produced text), zero tokens for an error.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.harness import Gateway, running_gateway
from tests.helpers.raw_http import events_with_sentinel

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there friend"}]}
MESSAGE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hello there friend"}],
}
RESPONSES = {"model": "gpt-4o", "input": "hello there friend"}
ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", CHAT),
    ("/v1/messages", MESSAGE),
    ("/v1/responses", RESPONSES),
]
# The last bytes a complete stream ends with, per route; a cut stream lacks them.
STREAM_END = {
    "/v1/chat/completions": b"data: [DONE]\n\n",
    "/v1/messages": b"event: message_stop",
    "/v1/responses": b"event: response.completed",
}
SERVER = {"host": "127.0.0.1", "port": 0, "disconnect_drain_s": 2, "upstream_read_timeout_s": 0.5}


@dataclass(frozen=True)
class Answer:
    route: str
    streamed: bool
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def request_id(self) -> str:
        return self.headers["x-request-id"]

    @property
    def label(self) -> str:
        return f"{self.route} stream={self.streamed}"


async def call(
    gw: Gateway, route: str, body: dict[str, Any], stream: bool, **headers: str
) -> Answer:
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            gw.base_url + route,
            data=orjson.dumps({**body, "stream": stream}),
            headers={
                "Authorization": f"Bearer {gw.key}",
                "content-type": "application/json",
                "anthropic-version": "2023-06-01",
                **headers,
            },
        )
        data = await response.read()
        return Answer(
            route,
            stream,
            response.status,
            {k.lower(): v for k, v in response.headers.items()},
            data,
        )


async def ledger(gw: Gateway, answers: list[Answer], *, others: int = 0) -> dict[str, Any]:
    """Every answer's event by request id: one per forwarded request (`others` were forwarded
    besides the answers), none doubled, each with the status the client saw."""
    assert len(gw.mock_requests) == len(answers) + others
    rows = await events_with_sentinel(gw, len(answers) + others)
    by_id = {str(row["id"]): row for row in rows}
    for answer in answers:
        assert by_id[answer.request_id]["status_code"] == answer.status, answer.label
    return by_id


async def test_provider_error_statuses_pass_through_with_zero_tokens(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        answers = []
        for status in (500, 503, 529, 400, 404):
            for route, body in ROUTES:
                for stream in (False, True):
                    answer = await call(gw, route, body, stream, **{"x-mock-error": str(status)})
                    assert answer.status == status, answer.label
                    answers.append(answer)
        for answer in answers:
            error = orjson.loads(answer.body)  # the provider's own error body, passed through
            assert "error" in error and b"The gateway" not in answer.body, answer.label
        events = await ledger(gw, answers)
        for answer in answers:
            row = events[answer.request_id]
            assert (row["input_tokens"], row["output_tokens"]) == (0, 0), answer.label
            assert row["price_usd"] == Decimal(0), answer.label


async def test_provider_429_retry_after_reaches_the_client_unchanged(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        answers = []
        for retry_after in ("0", "7", "120"):
            for route, body in ROUTES:
                for stream in (False, True):
                    answer = await call(
                        gw,
                        route,
                        body,
                        stream,
                        **{"x-mock-error": "429", "x-mock-retry-after": retry_after},
                    )
                    assert answer.status == 429, answer.label
                    assert answer.headers["retry-after"] == retry_after, answer.label
                    answers.append(answer)
        overloaded = await call(
            gw, "/v1/messages", MESSAGE, False, **{"x-mock-error": "529", "x-mock-retry-after": "9"}
        )
        assert (overloaded.status, overloaded.headers["retry-after"]) == (529, "9")
        answers.append(overloaded)
        # What an SDK sees: the provider's 429 and its Retry-After, no retry by the gateway.
        client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(
                extra_headers={"x-mock-error": "429", "x-mock-retry-after": "7"}, **CHAT
            )  # type: ignore[call-overload]
        assert refused.value.response.headers["retry-after"] == "7"
        events = await ledger(gw, answers, others=1)  # the SDK's request, once
        assert all(row["output_tokens"] == 0 for row in events.values())


async def test_connection_reset_is_502_before_the_answer_and_a_cut_stream_after(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        answers = [
            await call(gw, route, body, stream, **{"x-mock-error": "reset"})
            for route, body in ROUTES
            for stream in (False, True)
        ]
        events = await ledger(gw, answers)
        for answer in answers:
            row = events[answer.request_id]
            if not answer.streamed:
                assert answer.status == 502, answer.label
                error = orjson.loads(answer.body)
                assert (
                    error["error"]["type"] == "api_error"
                    if answer.route == "/v1/messages"
                    else error["error"]["code"] == "upstream_unreachable"
                ), answer.label
                assert (row["input_tokens"], row["output_tokens"]) == (0, 0), answer.label
            else:  # the head was sent: the client gets what was produced, then the end
                assert answer.status == 200, answer.label
                assert answer.body and STREAM_END[answer.route] not in answer.body
                assert row["usage_source"] == "estimated", answer.label
                assert row["output_tokens"] > 0 and row["price_usd"] > 0, answer.label
                assert orjson.loads(row["metadata"])["upstream_broken"] is True


@pytest.mark.parametrize("mode", ["truncate", "stream-error"])
async def test_streams_that_end_without_usage_are_estimated(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """`truncate` ends the stream cleanly before its usage and final events; `stream-error`
    sends the provider's error event half-way. Both: the client gets every byte, the text
    produced is billed as an estimate."""
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        answers = [
            await call(gw, route, body, True, **{"x-mock-error": mode}) for route, body in ROUTES
        ]
        events = await ledger(gw, answers)
        for answer in answers:
            row = events[answer.request_id]
            assert answer.status == 200 and STREAM_END[answer.route] not in answer.body
            if mode == "stream-error":
                assert b"error" in answer.body.rsplit(b"\n\n", 2)[-2], answer.label
            assert row["usage_source"] == "estimated", answer.label
            assert row["input_tokens"] > 0 and row["output_tokens"] > 0, answer.label
            assert "upstream_broken" not in orjson.loads(row["metadata"])


@pytest.mark.parametrize("mode", ["truncate", "invalid-json"])
async def test_unreadable_json_bodies_pass_through_and_are_estimated(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        answers = [
            await call(gw, route, body, False, **{"x-mock-error": mode}) for route, body in ROUTES
        ]
        events = await ledger(gw, answers)
        for answer in answers:
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(answer.body)  # the provider's bytes, as it sent them
            row = events[answer.request_id]
            assert answer.status == 200, answer.label
            assert row["usage_source"] == "estimated" and row["input_tokens"] > 0, answer.label


async def test_an_invalid_event_mid_stream_does_not_lose_the_usage(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        answers = [
            await call(gw, route, body, True, **{"x-mock-error": "invalid-json"})
            for route, body in ROUTES
        ]
        events = await ledger(gw, answers)
        for answer in answers:
            assert answer.status == 200 and STREAM_END[answer.route] in answer.body
            row = events[answer.request_id]
            assert (row["usage_source"], row["output_tokens"]) == ("provider", 20), answer.label


async def test_missing_usage_is_estimated_on_every_route(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        answers = [
            await call(gw, route, body, stream, **{"x-mock-no-usage": "1"})
            for route, body in ROUTES
            for stream in (False, True)
        ]
        events = await ledger(gw, answers)
        for answer in answers:
            row = events[answer.request_id]
            assert answer.status == 200, answer.label
            assert row["usage_source"] == "estimated", answer.label
            assert row["input_tokens"] > 0 and row["output_tokens"] > 0, answer.label
            assert row["price_usd"] > 0, answer.label


async def test_slow_provider_against_the_read_timeout(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """upstream_read_timeout_s = 0.5 bounds the silence between bytes, not the whole answer:
    no head within it is a 504; a stream whose tokens come 150 ms apart runs to its end
    (longer than the timeout in total); one whose tokens come 900 ms apart is cut."""
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:

        async def timed(route: str, body: dict[str, Any], **headers: str) -> tuple[Answer, float]:
            started = time.perf_counter()
            answer = await call(gw, route, body, True, **headers)
            return answer, time.perf_counter() - started

        late_headers = {"x-mock-error": "slow", "x-mock-delay-ms": "3000"}
        paced_headers = {"x-mock-token-delay-ms": "150", "x-mock-output-tokens": "6"}
        stalled_headers = {"x-mock-token-delay-ms": "900", "x-mock-output-tokens": "6"}
        runs = await asyncio.gather(
            *(
                timed(route, body, **headers)
                for route, body in ROUTES
                for headers in (late_headers, paced_headers, stalled_headers)
            )
        )
        answers = [answer for answer, _ in runs]
        for (late, late_s), (paced, _), (stalled, stalled_s) in zip(
            runs[::3], runs[1::3], runs[2::3], strict=True
        ):
            assert late.status == 504 and late_s < 2.0, late.label
            assert paced.status == 200 and STREAM_END[paced.route] in paced.body, paced.label
            assert stalled.status == 200 and STREAM_END[stalled.route] not in stalled.body
            assert stalled_s < 3.0, stalled.label
        events = await ledger(gw, answers)
        for late, paced, stalled in zip(answers[::3], answers[1::3], answers[2::3], strict=True):
            row = events[late.request_id]
            assert (row["input_tokens"], row["output_tokens"]) == (0, 0), late.label
            row = events[paced.request_id]
            assert (row["usage_source"], row["output_tokens"]) == ("provider", 6), paced.label
            row = events[stalled.request_id]
            assert row["usage_source"] == "estimated", stalled.label
            assert orjson.loads(row["metadata"])["upstream_broken"] is True, stalled.label


# A tiny OpenAI-compatible upstream that answers in small chunked pieces, gzip-encoded when
# asked (`x-test-gzip: 1`) although the gateway sends `accept-encoding: identity`.
REPLY = {
    "id": "chatcmpl-up",
    "object": "chat.completion",
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "hello back to you, friend"},
        }
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}
CONTENT_CHUNK = (
    b'data: {"id":"chatcmpl-up","object":"chat.completion.chunk","choices":'
    b'[{"index":0,"delta":{"content":"hello back to you, friend"}}],"usage":null}\n\n'
)
USAGE_CHUNK = (
    b'data: {"id":"chatcmpl-up","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}\n\n'
)
DONE = b"data: [DONE]\n\n"


async def custom_upstream(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body.get("stream"):
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        data = CONTENT_CHUNK + (USAGE_CHUNK if include_usage else b"") + DONE
        content_type = "text/event-stream"
    else:
        data, content_type = orjson.dumps(REPLY), "application/json"
    response = web.StreamResponse(headers={"content-type": content_type})
    if request.headers.get("x-test-gzip") == "1":
        data = gzip.compress(data)
        response.headers["content-encoding"] = "gzip"
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, len(data), 7):
        await response.write(data[start : start + 7])
    await response.write_eof()
    return response


@asynccontextmanager
async def gateway_on_custom_upstream(
    database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", custom_upstream)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    base = str(upstream.make_url("/v1"))
    extra = {
        "server": SERVER,
        "models": [],
        "providers": {
            "openai": {"kind": "openai", "base_url": base, "api_key_env": "TB_TEST_OPENAI_KEY"}
        },
    }
    try:
        async with running_gateway(database_url, redis_url, monkeypatch, extra_config=extra) as gw:
            yield gw
    finally:
        await upstream.close()


async def test_chunked_upstream_bodies_are_relayed_and_metered_exactly(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with gateway_on_custom_upstream(fresh_database_url, redis_url, monkeypatch) as gw:
        plain = await call(gw, "/v1/chat/completions", CHAT, False)
        streamed = await call(gw, "/v1/chat/completions", CHAT, True)
        assert orjson.loads(plain.body) == REPLY
        assert streamed.body == CONTENT_CHUNK + DONE  # the usage we asked for is hidden
        rows = await events_with_sentinel(gw, 2)
        for row in rows:
            assert (row["usage_source"], row["input_tokens"], row["output_tokens"]) == (
                "provider",
                11,
                7,
            )


async def test_gzip_upstream_bodies_pass_through_and_are_metered(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider that gzips although asked for identity: the client still gets the exact
    content (its HTTP client decodes it), the usage chunk the gateway asked for stays hidden,
    and the event has the provider's usage, or at least an estimate of the text produced."""
    async with gateway_on_custom_upstream(fresh_database_url, redis_url, monkeypatch) as gw:
        plain = await call(gw, "/v1/chat/completions", CHAT, False, **{"x-test-gzip": "1"})
        streamed = await call(gw, "/v1/chat/completions", CHAT, True, **{"x-test-gzip": "1"})
        problems = []
        if orjson.loads(plain.body) != REPLY:
            problems.append("plain: the client did not get the provider's JSON")
        if streamed.body != CONTENT_CHUNK + DONE:
            problems.append(f"stream: the client got {streamed.body!r}")
        for answer, row in zip((plain, streamed), await events_with_sentinel(gw, 2), strict=True):
            metered = (row["usage_source"], row["input_tokens"], row["output_tokens"])
            if metered != ("provider", 11, 7) and not (
                row["usage_source"] == "estimated" and row["output_tokens"] > 0
            ):
                problems.append(f"{answer.label}: metered as {metered}")
        assert not problems, "\n".join(problems)
