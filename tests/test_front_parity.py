"""Both servers answer a forwarded route alike: the same request, served by the fast front
(`gateway.front.server`) and handed to aiohttp, gets the same status line, the same headers and
the same body.

The request handed over is the one the front serves with its body sent chunked
(`Transfer-Encoding: chunked`), which the front always leaves to aiohttp. What may differ:
`Date`, aiohttp's `Server` header (how a test tells which server answered; the front sends
none), the framing of a body (`Content-Length` or chunks; bodies are compared whole), header
order (aiohttp writes its own headers last), and per-request values — the gateway's
`x-request-id`, the provider's `x-upstream-request-id`, and the provider's response ids and
`created` times inside a body. Every request names an allowed `Origin`, so the CORS headers
are compared too. Answers that need a provider are checked on the OpenAI and Anthropic routes;
refusals (401, 400) on every API's routes, aliases and templated ones included.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest

from gateway import keys
from gateway.mock_provider.app import MockOptions
from gateway.providers.registry import match_path
from tests.harness import Gateway, running_gateway

ORIGIN = "https://app.example"
OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"
BODIES: dict[str, dict[str, object]] = {
    OPENAI: {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]},
    ANTHROPIC: {
        "model": "claude-sonnet-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello there"}],
    },
}
# Every API's routes, for the refusals the gateway answers before choosing a provider: an
# alias, a query string and templated routes (the front's slower match), and the error shapes
# of Azure, Gemini and Bedrock.
REFUSED_PATHS = [
    OPENAI,
    ANTHROPIC,
    "/v1/v1/messages",
    "/v1/responses",
    "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
    "/v1beta/models/gemini-2.5-flash:generateContent",
    "/model/anthropic.claude-sonnet-4-5/converse",
]
# Per-request values: they differ between any two requests, whichever server answers.
PER_REQUEST_HEADERS = frozenset({"date", "server", "x-request-id", "x-upstream-request-id"})
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
PER_REQUEST_IN_BODY = (
    (re.compile(rb"chatcmpl-[A-Za-z0-9]+"), b"chatcmpl-ID"),
    (re.compile(rb"msg_[A-Za-z0-9]+"), b"msg_ID"),
    (re.compile(rb"req_[A-Za-z0-9]+"), b"req_ID"),
    (re.compile(rb'"created":\d+'), b'"created":0'),
)


@dataclass
class Answer:
    status_line: bytes
    headers: list[tuple[str, str]]  # as sent, names lowercased
    body: bytes  # de-chunked

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    @property
    def from_aiohttp(self) -> bool:
        return self.header("server") is not None

    def comparable(self) -> tuple[bytes, list[tuple[str, str]], bytes]:
        headers = sorted(
            (name, value)
            for name, value in self.headers
            if name not in PER_REQUEST_HEADERS and name not in FRAMING_HEADERS
        )
        body = self.body
        for pattern, replacement in PER_REQUEST_IN_BODY:
            body = pattern.sub(replacement, body)
        return self.status_line, headers, body


def post(path: str, key: str, body: bytes, *, extra: bytes = b"", chunked: bool) -> bytes:
    """A POST as an SDK sends it; `chunked`: the body in one chunk, so aiohttp serves it."""
    if chunked:
        framing, data = (
            b"Transfer-Encoding: chunked\r\n",
            b"%x\r\n%b\r\n0\r\n\r\n"
            % (
                len(body),
                body,
            ),
        )
    else:
        framing, data = b"Content-Length: %d\r\n" % len(body), body
    head = (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nOrigin: {ORIGIN}\r\n"
        f"Authorization: Bearer {key}\r\nx-api-key: {key}\r\napi-key: {key}\r\n"
        f"x-goog-api-key: {key}\r\nanthropic-version: 2023-06-01\r\n"
        "Content-Type: application/json\r\n"
    ).encode()
    return head + extra + framing + b"\r\n" + data


async def ask(gw: Gateway, data: bytes) -> Answer:
    """Send one request on a new connection and read its response."""
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    try:
        async with asyncio.timeout(10):
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head[:-4].split(b"\r\n")
            headers = []
            for line in lines:
                name, _, value = line.decode().partition(":")
                headers.append((name.strip().lower(), value.strip()))
            answer = Answer(status_line, headers, b"")
            if answer.header("transfer-encoding") == "chunked":
                parts = []
                while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                    parts.append((await reader.readexactly(size + 2))[:-2])
                await reader.readexactly(2)
                answer.body = b"".join(parts)
            else:
                answer.body = await reader.readexactly(int(answer.header("content-length") or 0))
            return answer
    finally:
        writer.close()


def assert_alike(fast: Answer, handed: Answer) -> None:
    """The front's answer and aiohttp's are alike; if not, say where they differ."""
    (fast_status, fast_headers, fast_body) = fast.comparable()
    (aiohttp_status, aiohttp_headers, aiohttp_body) = handed.comparable()
    problems = []
    if fast_status != aiohttp_status:
        problems.append(f"status: front {fast_status!r}, aiohttp {aiohttp_status!r}")
    if fast_headers != aiohttp_headers:
        only_fast = [h for h in fast_headers if h not in aiohttp_headers]
        only_aiohttp = [h for h in aiohttp_headers if h not in fast_headers]
        problems.append(f"headers: front only {only_fast}, aiohttp only {only_aiohttp}")
        if not only_fast and not only_aiohttp:
            problems.append(f"repeated headers: front {fast_headers}, aiohttp {aiohttp_headers}")
    if fast_body != aiohttp_body:
        problems.append(f"body: front {fast_body[:300]!r}, aiohttp {aiohttp_body[:300]!r}")
    assert not problems, "; ".join(problems)


async def both_servers(
    gw: Gateway, path: str, key: str, body: bytes, *, extra: bytes = b""
) -> tuple[Answer, Answer]:
    """The front's answer and aiohttp's to the same request; each server is checked to be
    the one that answered, and the two answers to be alike."""
    fast = await ask(gw, post(path, key, body, extra=extra, chunked=False))
    handed = await ask(gw, post(path, key, body, extra=extra, chunked=True))
    assert not fast.from_aiohttp, fast.headers
    assert handed.from_aiohttp, handed.headers
    assert_alike(fast, handed)
    return fast, handed


@pytest.fixture
async def gw(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        mock_options=MockOptions(latency_ms=0),
        tiers={"free": {"limits": {}}, "closed": {"limits": {"requests_per_minute": 0}}},
        extra_config={
            "server": {"host": "127.0.0.1", "port": 0, "cors_origins": [ORIGIN]},
        },
    ) as gateway:
        yield gateway


def served_as(path: str) -> str:
    """The route a request to `path` is counted on: the forwarded route serving it."""
    found = match_path(path.partition("?")[0])
    assert found is not None, path
    return found[0][1].path


def refusals(gw: Gateway) -> dict[tuple[str, str], float]:
    """The refusal counter's value per (route, status)."""
    counter = gw.app[keys.metrics].refused
    return {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
async def test_a_json_answer_is_the_same_from_both_servers(gw: Gateway, path: str) -> None:
    fast, handed = await both_servers(gw, path, gw.key, orjson.dumps(BODIES[path]))
    assert fast.status_line == b"HTTP/1.1 200 OK"
    assert fast.header("access-control-allow-origin") == ORIGIN
    rows = await gw.events(wait_for=2)
    assert {str(row["id"]) for row in rows} == {
        fast.header("x-request-id"),
        handed.header("x-request-id"),
    }


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
async def test_a_stream_is_the_same_from_both_servers(gw: Gateway, path: str) -> None:
    body = orjson.dumps({**BODIES[path], "stream": True})
    fast, _ = await both_servers(gw, path, gw.key, body)
    assert (fast.header("content-type") or "").startswith("text/event-stream")
    assert fast.header("transfer-encoding") == "chunked"
    assert b"tok1" in fast.body


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
async def test_a_provider_error_is_passed_on_alike_by_both_servers(gw: Gateway, path: str) -> None:
    body = orjson.dumps(BODIES[path])
    fast, _ = await both_servers(gw, path, gw.key, body, extra=b"x-mock-error: 500\r\n")
    assert fast.status_line == b"HTTP/1.1 500 Internal Server Error"


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
async def test_an_unreachable_provider_is_answered_alike_by_both_servers(
    gw: Gateway, path: str
) -> None:
    body = orjson.dumps(BODIES[path])
    fast, _ = await both_servers(gw, path, gw.key, body, extra=b"x-mock-error: reset\r\n")
    assert fast.status_line == b"HTTP/1.1 502 Bad Gateway"
    assert refusals(gw) == {}  # an upstream failure is a usage event, not a refusal


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
async def test_a_quota_refusal_is_the_same_from_both_servers(gw: Gateway, path: str) -> None:
    accounts = gw.app[keys.accounts]
    await accounts.create_customer(gw.customer_id + "_closed", tier="closed")
    _, key = await accounts.create_key(
        gw.customer_id + "_closed", project_id="web", user_id="u1", name="closed"
    )
    fast, _ = await both_servers(gw, path, key, orjson.dumps(BODIES[path]))
    assert fast.status_line == b"HTTP/1.1 429 Too Many Requests"
    assert fast.header("content-type") == "application/json"
    assert (fast.header("retry-after"), fast.header("x-should-retry")) == ("60", "false")
    assert fast.header("x-ratelimit-limit-requests") == "0"
    assert refusals(gw) == {(path, "429"): 2.0}  # each server counted its refusal once


@pytest.mark.parametrize("path", REFUSED_PATHS)
async def test_an_unknown_key_is_refused_alike_by_both_servers(gw: Gateway, path: str) -> None:
    stranger = "tb_" + "x" * 40
    fast, _ = await both_servers(gw, path, stranger, orjson.dumps(BODIES[OPENAI]))
    bedrock = path.startswith("/model/")  # Bedrock's clients expect a 403 for a bad key
    assert fast.status_line.startswith(b"HTTP/1.1 403 " if bedrock else b"HTTP/1.1 401 ")
    assert fast.header("access-control-allow-origin") == ORIGIN
    assert refusals(gw) == {(served_as(path), "401"): 2.0}


@pytest.mark.parametrize("path", REFUSED_PATHS)
async def test_a_bad_body_is_refused_alike_by_both_servers(gw: Gateway, path: str) -> None:
    fast, _ = await both_servers(gw, path, gw.key, b'{"model": ')
    assert fast.status_line.startswith(b"HTTP/1.1 400 ")
    assert b"JSON" in fast.body
    assert refusals(gw) == {(served_as(path), "400"): 2.0}


def preflight(path: str, origin: str, *, chunked: bool) -> bytes:
    """A browser's CORS preflight; `chunked`: with an empty chunked body, so aiohttp serves it."""
    framing = b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" if chunked else b"\r\n"
    head = (
        f"OPTIONS {path} HTTP/1.1\r\nHost: gateway\r\nOrigin: {origin}\r\n"
        "Access-Control-Request-Method: POST\r\n"
        "Access-Control-Request-Headers: authorization, content-type\r\n"
    ).encode()
    return head + framing


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
async def test_preflights_are_answered_alike_by_both_servers(gw: Gateway, path: str) -> None:
    for origin, status_line in (
        (ORIGIN, b"HTTP/1.1 204 No Content"),
        ("https://elsewhere.example", b"HTTP/1.1 403 Forbidden"),
    ):
        fast = await ask(gw, preflight(path, origin, chunked=False))
        handed = await ask(gw, preflight(path, origin, chunked=True))
        assert not fast.from_aiohttp and handed.from_aiohttp
        assert_alike(fast, handed)
        assert fast.status_line == status_line
    assert refusals(gw) == {(path, "403"): 2.0}


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
async def test_a_body_too_slow_is_timed_out_alike_by_both_servers(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        extra_config={
            "server": {
                "host": "127.0.0.1",
                "port": 0,
                "cors_origins": [ORIGIN],
                "client_timeout_s": 0.5,
            },
        },
    ) as gw:
        stalled = post(path, gw.key, b"{", chunked=False).replace(
            b"Content-Length: 1\r\n", b"Content-Length: 100000\r\n"
        )
        fast = await ask(gw, stalled)
        handed = await ask(gw, post(path, gw.key, b"{", chunked=True)[: -len(b"\r\n0\r\n\r\n")])
        assert not fast.from_aiohttp and handed.from_aiohttp
        assert_alike(fast, handed)
        assert fast.status_line == b"HTTP/1.1 408 Request Timeout"
        assert refusals(gw) == {(path, "408"): 2.0}
