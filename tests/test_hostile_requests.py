"""Hostile clients against a real gateway: malformed bodies, wrong types, oversized and
compressed bodies, path and method tricks, broken HTTP, slow-loris clients and clients that
hang up at every phase of a request.

Each attack must get its documented 4xx (never a 5xx, never a traceback in the body), reach
the provider only when it is a request the gateway forwards, and leave exactly one usage event
per forwarded request and none for a refused one. "None" is proved, not waited for: after the
attacks a sentinel request is sent and the test waits for its event; the writer flushes in
submission order, so any event an attack produced is in the table by then.

The raw-socket helpers (`http_request`, `raw_exchange`, `events_with_sentinel`) are in
tests/helpers/raw_http.py, shared with the other `test_hostile_*` modules.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest

from tests.harness import Gateway, running_gateway
from tests.helpers.raw_http import (
    CHAT,
    CHAT_BODY,
    MESSAGE,
    SERVER,
    RawResponse,
    events_with_sentinel,
    http_request,
    raw_exchange,
)

OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
ANTHROPIC_ROUTES = ("/v1/messages", "/v1/messages/count_tokens")


def refusal_problem(response: RawResponse, status: int, *, anthropic: bool = False) -> str:
    """ "" if `response` is a refusal with `status` in the shape of the API called (and no
    traceback), else what is wrong with it."""
    seen = f"got {response.status} {response.body[:160]!r}"
    if response.status != status or b"Traceback" in response.body:
        return seen
    if not response.body:  # HEAD: no body at all
        return ""
    try:
        error = orjson.loads(response.body)
        message = error["error"]["message"]
        shaped = error.get("type") == "error" if anthropic else "type" in error["error"]
    except (ValueError, KeyError, TypeError):
        return seen
    return "" if message and shaped else seen


def assert_refused(
    response: RawResponse, status: int, *, anthropic: bool = False, label: str = ""
) -> None:
    problem = refusal_problem(response, status, anthropic=anthropic)
    assert not problem, f"{label}: {problem}"


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


MALFORMED: list[tuple[str, bytes]] = [
    ("invalid JSON", b"{not json"),
    ("empty body", b""),
    ("JSON null", b"null"),
    ("JSON array", b"[1, 2]"),
    ("JSON number", b"42"),
    ("JSON string", b'"gpt-4o"'),
    ("trailing garbage", CHAT_BODY + b"}"),
    ("two documents", CHAT_BODY + CHAT_BODY),
    ("UTF-8 byte order mark", b"\xef\xbb\xbf" + CHAT_BODY),
    ("invalid UTF-8", b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "\xff"}]}'),
    ("lone surrogate", b'{"model": "gpt-4o", "messages": [], "user": "\\ud800"}'),
    ("NaN", b'{"model": "gpt-4o", "messages": [], "temperature": NaN}'),
    ("number overflow", b'{"model": "gpt-4o", "messages": [], "temperature": 1e400}'),
    ("100k nested arrays", b"[" * 100_000 + b"]" * 100_000),
    (
        "100k nested arrays as messages",
        b'{"model": "gpt-4o", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ),
    ("100k nested objects", nested(100_000)),
    ("missing model", b'{"messages": [{"role": "user", "content": "hi"}]}'),
    ("model null", b'{"model": null, "messages": []}'),
    ("model number", b'{"model": 4, "messages": []}'),
    ("model empty", b'{"model": "", "messages": []}'),
    ("model blank", b'{"model": "   ", "messages": []}'),
    ("model list", b'{"model": ["gpt-4o"], "messages": []}'),
    ("model object", b'{"model": {"id": "gpt-4o"}, "messages": []}'),
    ("unknown model", b'{"model": "gpt-nonexistent-9000", "messages": []}'),
    ("10k-char model", orjson.dumps({"model": "gpt-" + "x" * 10_000, "messages": []})),
]


async def test_malformed_bodies_get_400_before_the_provider(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        problems: list[str] = []
        for route in OPENAI_ROUTES + ANTHROPIC_ROUTES:
            anthropic = route in ANTHROPIC_ROUTES
            for label, body in MALFORMED:
                if route == "/v1/messages/count_tokens" and label.startswith(("unknown", "10k")):
                    continue  # a free, unmetered route: the provider judges the model there
                reply = await raw_exchange(gw, http_request(gw, "POST", route, body))
                problem = refusal_problem(reply, 400, anthropic=anthropic)
                if problem:
                    problems.append(f"{route} {label}: {problem}")
        assert not problems, "\n".join(problems)
        assert gw.mock_requests == []
        assert await events_with_sentinel(gw, 0) == []


async def test_nesting_the_parser_accepts_is_never_a_5xx(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """orjson parses up to 1024 levels but serializes only ~254: a body in between must be
    forwarded (and metered) or refused with a 400, in particular when the gateway rewrites it
    (a stream without include_usage gets stream_options added and is re-serialized)."""
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        cases = []
        for route in ("/v1/chat/completions", "/v1/completions"):
            for stream in (b"true", b"false"):
                cases.append(
                    (
                        route,
                        b'{"model": "gpt-4o", "prompt": "hi", "stream": '
                        + stream
                        + b', "messages": [{"role": "user", "content": "hi"}], '
                        + b'"metadata": '
                        + nested(300)
                        + b"}",
                    )
                )
        cases.append(
            (
                "/v1/chat/completions",
                b'{"model": "gpt-4o", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}",
            )
        )
        forwarded_statuses = []
        for route, body in cases:
            before = len(gw.mock_requests)
            reply = await raw_exchange(gw, http_request(gw, "POST", route, body))
            assert reply.status in (200, 400), f"{route}: {reply.status} {reply.body[:200]!r}"
            if reply.status == 400:
                assert len(gw.mock_requests) == before, "refused, yet it reached the provider"
            else:
                assert len(gw.mock_requests) == before + 1
                forwarded_statuses.append(reply.status)
        rows = await events_with_sentinel(gw, len(forwarded_statuses))
        assert [r["status_code"] for r in rows] == forwarded_statuses


# (body, route): fields of the wrong type. The gateway checks only JSON and `model`; the rest
# is the provider's to judge. Whatever happens, never a 5xx, one event per forwarded request
# with the status the client saw, and a served answer is never metered as zero output.
WRONG_TYPES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {**CHAT, "stream": "yes"}),
    ("/v1/chat/completions", {**CHAT, "stream": 1}),
    ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": "x"}),
    ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": "no"}}),
    ("/v1/chat/completions", {**CHAT, "max_tokens": "100"}),
    ("/v1/chat/completions", {**CHAT, "max_tokens": -5}),
    ("/v1/chat/completions", {**CHAT, "max_tokens": True}),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 1e300}),
    ("/v1/chat/completions", {**CHAT, "max_tokens": [1]}),
    ("/v1/chat/completions", {**CHAT, "messages": "hello"}),
    ("/v1/chat/completions", {**CHAT, "messages": {}}),
    ("/v1/chat/completions", {**CHAT, "messages": [1, 2]}),
    ("/v1/chat/completions", {**CHAT, "messages": None}),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": {"deep": [[1]]}}]}),
    ("/v1/chat/completions", {**CHAT, "temperature": "hot", "tools": "none"}),
    ("/v1/responses", {"model": "gpt-4o", "input": 5}),
    ("/v1/responses", {"model": "gpt-4o", "input": [{"content": 7}]}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": [[1, "x"], None]}),
    ("/v1/messages", {**MESSAGE, "max_tokens": "64"}),
    ("/v1/messages", {**MESSAGE, "messages": "hello"}),
    ("/v1/messages", {**MESSAGE, "system": 5}),
    ("/v1/messages", {**MESSAGE, "stream": "yes"}),
]


async def test_wrong_field_types_are_never_a_5xx_and_are_metered_as_forwarded(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        problems: list[str] = []
        forwarded: list[tuple[str, int]] = []  # (label, status the client saw)
        for route, body in WRONG_TYPES:
            label = f"{route} {orjson.dumps(body)[:100]!r}"
            before = len(gw.mock_requests)
            reply = await raw_exchange(gw, http_request(gw, "POST", route, orjson.dumps(body)))
            reached = len(gw.mock_requests) - before
            if reply.status >= 500 or b"Traceback" in reply.body:
                problems.append(f"{label}: {reply.status} {reply.body[:120]!r}")
            elif reached:
                forwarded.append((label, reply.status))
            elif not 400 <= reply.status < 500:
                problems.append(f"{label}: {reply.status} without reaching the provider")
        rows = await events_with_sentinel(gw, len(gw.mock_requests))
        assert len(rows) == len(forwarded)
        for row, (label, status) in zip(rows, forwarded, strict=True):
            if row["status_code"] != status:
                problems.append(f"{label}: event status {row['status_code']}, client {status}")
            elif status == 200 and row["output_tokens"] == 0 and row["endpoint"] != "embeddings":
                problems.append(
                    f"{label}: served, metered with zero output tokens "
                    f"({row['usage_source']}, streamed={row['streamed']})"
                )
            elif status != 200 and (row["input_tokens"], row["output_tokens"]) != (0, 0):
                problems.append(f"{label}: provider error metered with tokens")
        assert not problems, "\n".join(problems)


async def test_body_over_max_body_mb_gets_413_before_the_provider(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:  # max_body_mb: 1
        big = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 1_100_000}]})
        anthropic_big = orjson.dumps(
            {**MESSAGE, "messages": [{"role": "user", "content": "x" * 1_100_000}]}
        )
        chunk = b"x" * 0x10000
        chunked = b"".join(b"10000\r\n" + chunk + b"\r\n" for _ in range(20)) + b"0\r\n\r\n"
        bomb = gzip.compress(b'{"model": "gpt-4o", "pad": "' + b"0" * 50_000_000 + b'"}')
        assert len(bomb) < 1024 * 1024  # under the limit on the wire, far over it decoded
        attacks = [
            ("content-length", http_request(gw, "POST", "/v1/chat/completions", big), False),
            ("anthropic", http_request(gw, "POST", "/v1/messages", anthropic_big), True),
            (
                "chunked",
                http_request(
                    gw,
                    "POST",
                    "/v1/chat/completions",
                    chunked,
                    b"Transfer-Encoding: chunked\r\n",
                    length=False,
                ),
                False,
            ),
            (
                "gzip bomb",
                http_request(
                    gw, "POST", "/v1/chat/completions", bomb, b"Content-Encoding: gzip\r\n"
                ),
                False,
            ),
        ]
        for label, data, anthropic in attacks:
            reply = await raw_exchange(gw, data)
            assert_refused(reply, 413, anthropic=anthropic, label=label)
            if anthropic:
                assert orjson.loads(reply.body)["error"]["type"] == "request_too_large"
        # Just under the limit is served: the limit is the configured one, not a lower one.
        fits = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "ab " * 300_000}]})
        assert (
            await raw_exchange(gw, http_request(gw, "POST", "/v1/chat/completions", fits))
        ).status == 200
        assert len(gw.mock_requests) == 1
        [row] = await events_with_sentinel(gw, 1)
        assert row["status_code"] == 200


def labelled(data: bytes, content_type: bytes | None) -> bytes:
    """`data` (from http_request) with another Content-Type, or none."""
    old = b"Content-Type: application/json\r\n"
    return data.replace(
        old, b"" if content_type is None else b"Content-Type: " + content_type + b"\r\n"
    )


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)


async def refused_400_count(gw: Gateway) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.base_url + "/metrics") as response,
    ):
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tollbooth_refused_requests_total{") and 'status="400"' in line
    )


NOT_JSON = (
    b"text/plain",
    b"text/plain;charset=UTF-8",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=b",
    b"application/jsonl",
    b"x/y",
    b"",
)


async def test_a_body_labelled_other_than_json_is_refused_before_the_provider(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON body labelled text/plain, a form or anything but application/json gets the 400
    OpenAI answers (in the called API's shape), from the fast front and from aiohttp alike;
    application/json with parameters, and an unlabelled body, are served."""
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        refusals_before = await refused_400_count(gw)
        sent = 0
        for route, body, anthropic in (
            ("/v1/chat/completions", CHAT_BODY, False),
            ("/v1/messages", orjson.dumps(MESSAGE), True),
        ):
            for content_type in NOT_JSON:
                fast = labelled(http_request(gw, "POST", route, body), content_type)
                handed = labelled(
                    http_request(
                        gw,
                        "POST",
                        route,
                        chunked(body),
                        b"Transfer-Encoding: chunked\r\n",
                        length=False,
                    ),
                    content_type,
                )
                for data, by_aiohttp in ((fast, False), (handed, True)):
                    reply = await raw_exchange(gw, data)
                    sent += 1
                    label = f"{route} {content_type!r} aiohttp={by_aiohttp}"
                    assert_refused(reply, 400, anthropic=anthropic, label=label)
                    assert (b"\r\nServer:" in reply.head) is by_aiohttp, label
                    error = orjson.loads(reply.body)["error"]
                    shown = content_type.decode()
                    assert error["message"].startswith(
                        f"Unsupported content type: '{shown}'. This API method only accepts "
                        "'application/json' requests"
                    ), label
                    if not anthropic:
                        assert error["code"] == "unsupported_content_type", label
                        assert error["type"] == "invalid_request_error", label
        assert gw.mock_requests == []
        assert await refused_400_count(gw) - refusals_before == sent

        route = "/v1/chat/completions"
        for content_type in (b"application/json; charset=utf-8", b"Application/JSON", None):
            fast = labelled(http_request(gw, "POST", route, CHAT_BODY), content_type)
            handed = labelled(
                http_request(
                    gw,
                    "POST",
                    route,
                    chunked(CHAT_BODY),
                    b"Transfer-Encoding: chunked\r\n",
                    length=False,
                ),
                content_type,
            )
            for data in (fast, handed):
                reply = await raw_exchange(gw, data)
                assert reply.status == 200, (content_type, reply.body[:300])
        assert len(gw.mock_requests) == 6
        # An unlabelled body goes upstream labelled: providers refuse one without the label.
        upstream = [
            {k.lower(): v for k, v in r.headers.items()}["content-type"]
            for r in gw.mock_requests[-2:]
        ]
        assert upstream == ["application/json", "application/json"]
        rows = await events_with_sentinel(gw, 6)
        assert [r["status_code"] for r in rows] == [200] * 6


async def test_compressed_request_bodies_are_decoded_or_refused(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server decodes a `Content-Encoding` request body; what goes upstream must then be
    consistent (the decoded bytes, without the encoding header), and a body that cannot be
    decoded is the client's error (400), never a 500."""
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        route = "/v1/chat/completions"
        problems: list[str] = []
        good = await raw_exchange(
            gw,
            http_request(
                gw, "POST", route, gzip.compress(CHAT_BODY), b"Content-Encoding: gzip\r\n"
            ),
        )
        if good.status != 200 and not 400 <= good.status < 500:
            problems.append(f"valid gzip body: {good.status} {good.body[:120]!r}")
        for encoding, body in (
            (b"deflate", b"not deflate"),
            (b"gzip", b"not gzip"),
            (b"br", CHAT_BODY),
            (b"zstd", CHAT_BODY),
        ):
            reply = await raw_exchange(
                gw,
                http_request(gw, "POST", route, body, b"Content-Encoding: " + encoding + b"\r\n"),
            )
            if reply.status != 400:
                problems.append(f"undecodable {encoding!r}: {reply.status} {reply.body[:120]!r}")
        assert not problems, "\n".join(problems)
        rows = await events_with_sentinel(gw, 1 if good.status == 200 else 0)
        if good.status == 200:
            [row] = rows
            assert row["usage_source"] == "provider" and row["output_tokens"] == 20


async def test_absurd_max_tokens_never_corrupts_the_quota_counters(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_tokens sizes the quota reservation. Values past 2**53 (Lua numbers are doubles) or
    2**63 must be served or refused (400/429), never a 500, and must leave the customer's
    counters exact: after settling, the month's tokens are the sum of its events' tokens."""
    tiers = {"free": {"limits": {"requests_per_month": 1000}}}
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, tiers=tiers, extra_config={"server": SERVER}
    ) as gw:
        problems: list[str] = []
        for max_tokens in (100, 10**15, 2**53 + 1, 2**63 - 1, 2**64 - 1):
            body = orjson.dumps({**CHAT, "max_tokens": max_tokens})
            reply = await raw_exchange(gw, http_request(gw, "POST", "/v1/chat/completions", body))
            if reply.status not in (200, 400, 429):
                problems.append(f"max_tokens {max_tokens}: {reply.status}")
        rows = await events_with_sentinel(gw, len(gw.mock_requests))
        async with aiohttp.ClientSession() as session:
            response = await session.get(
                gw.base_url + "/usage/limits", headers={"Authorization": f"Bearer {gw.key}"}
            )
            limits = (await response.json())["limits"]
        used = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
        sentinel = (await gw.events(wait_for=len(rows) + 1))[-1]
        used += sentinel["input_tokens"] + sentinel["output_tokens"]
        if limits["tokens_per_month"]["current"] != used:
            problems.append(
                f"tokens_per_month counts {limits['tokens_per_month']['current']}, "
                f"the events {used}"
            )
        if Decimal(limits["spend_per_month_usd"]["current"]) < 0:
            problems.append(f"negative spend {limits['spend_per_month_usd']['current']}")
        assert not problems, "\n".join(problems)


# (method, target, status); every one with a valid key and a valid chat body.
ROUTE_TRICKS: list[tuple[str, str, int]] = [
    ("POST", "/v1/files", 404),
    ("POST", "/", 404),
    ("POST", "/v2/chat/completions", 404),
    ("GET", "/v1/../admin/customers", 404),
    ("POST", "/v1/../v1/chat/completions", 404),
    ("POST", "/%2e%2e/admin/customers", 404),
    ("POST", "//v1/chat/completions", 404),
    ("POST", "/v1/chat%2Fcompletions", 404),
    ("POST", "/v1/chat/completions/", 404),
    ("POST", "/V1/CHAT/COMPLETIONS", 404),
    ("POST", "/v1/chat/./completions", 404),
    ("POST", "/v1/models/../chat/completions", 404),
    ("POST", "/v1/chat/completions;x", 404),
    ("POST", "/v1/chat/completions%00", 404),
    ("POST", "/v1/chat/completions%0d%0aX-Injected:%201", 404),
    ("POST", "/v1/messages/", 404),
    ("POST", "/v1/messages/batches", 404),
    ("POST", "/v1/models", 405),
    ("HEAD", "/v1/chat/completions", 405),
    ("OPTIONS", "/v1/chat/completions", 405),
    ("PUT", "/v1/chat/completions", 405),
    ("DELETE", "/v1/chat/completions", 405),
    ("PATCH", "/v1/chat/completions", 405),
    ("GET", "/v1/chat/completions", 405),
    ("TRACE", "/v1/chat/completions", 405),
    ("GET", "/v1/messages", 405),
]


async def test_unknown_routes_methods_and_path_tricks_are_404_or_405(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        problems: list[str] = []
        for method, target, status in ROUTE_TRICKS:
            reply = await raw_exchange(gw, http_request(gw, method, target, CHAT_BODY))
            problem = refusal_problem(reply, status, anthropic=target.startswith("/v1/messages"))
            if problem or b"x-request-id" not in reply.head.lower():
                problems.append(f"{method} {target}: {problem or 'no x-request-id'}")
        assert not problems, "\n".join(problems)
        assert gw.mock_requests == []
        assert await events_with_sentinel(gw, 0) == []


# Broken HTTP: the server's parser refuses each before any handler runs.
BROKEN_HTTP: list[tuple[str, bytes]] = [
    ("obs-fold continuation line", b"X-Foo: a\r\n b\r\n"),
    ("bare LF in headers", b"X-Foo: a\nX-Api-Key: injected\r\n"),
    ("bare CR in headers", b"X-Foo: a\rX-Api-Key: injected\r\n"),
    ("NUL in a header value", b"X-Foo: a\x00b\r\n"),
    ("space in a header name", b"X Foo: a\r\n"),
    ("20 KB header value", b"X-Foo: " + b"a" * 20_000 + b"\r\n"),
    ("2000 headers", b"".join(b"X-H%d: v\r\n" % i for i in range(2000))),
    ("Transfer-Encoding with Content-Length", b"Transfer-Encoding: chunked\r\n"),
    ("duplicate Content-Length", b"Content-Length: 5\r\n"),
    ("non-numeric Content-Length", b"Content-Length: 12abc\r\n"),
]


async def test_broken_http_is_refused_by_the_parser(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        attacks = [
            (
                label,
                http_request(
                    gw,
                    "POST",
                    "/v1/chat/completions",
                    CHAT_BODY,
                    header,
                    length=label != "non-numeric Content-Length",
                ),
            )
            for label, header in BROKEN_HTTP
        ]
        attacks += [
            ("request line over 16 KB", http_request(gw, "POST", "/v1/" + "a" * 20_000, CHAT_BODY)),
            (
                "bad chunk size",
                http_request(
                    gw,
                    "POST",
                    "/v1/chat/completions",
                    b"zz\r\n{}\r\n",
                    b"Transfer-Encoding: chunked\r\n",
                    length=False,
                ),
            ),
            ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            ("TLS client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64),
        ]
        problems = []
        for label, data in attacks:
            reply = await raw_exchange(gw, data)
            if not 400 <= reply.status < 500 or b"Traceback" in reply.body:
                problems.append(f"{label}: {reply.status} {reply.body[:120]!r}")
        assert not problems, "\n".join(problems)
        # Header bytes that parse but are not ASCII are served, never a 5xx.
        for value in (b"caf\xe9", b"\xff\xfe", "日本".encode()):
            data = http_request(
                gw,
                "POST",
                "/v1/chat/completions",
                CHAT_BODY,
                b"X-Custom: " + value + b"\r\nOpenAI-Organization: " + value + b"\r\n",
            )
            assert (await raw_exchange(gw, data)).status == 200, value
        assert len(gw.mock_requests) == 3
        for recorded in gw.mock_requests:
            assert "x-api-key" not in recorded.headers
            assert all("\r" not in v and "\n" not in v for v in recorded.headers.values())
        assert len(await events_with_sentinel(gw, 3)) == 3


async def test_slow_loris_clients_do_not_starve_other_clients(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 connections that never finish their headers or their body hold no worker: 20
    ordinary requests alongside them are all served promptly, and the stalled ones never
    reach the provider nor leave an event (within `server.client_timeout_s`, 30 s here; that
    they are then cut off is tests/test_hostile_slow_clients.py)."""
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        host, port = gw.server.host, gw.server.port
        stalled: list[asyncio.StreamWriter] = []
        try:
            for i in range(100):
                _, writer = await asyncio.open_connection(host, port)
                if i % 2:
                    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n")
                else:  # complete headers, a body that never comes
                    writer.write(
                        http_request(
                            gw,
                            "POST",
                            "/v1/chat/completions",
                            b"{",
                            b"Content-Length: 100000\r\n",
                            length=False,
                        )
                    )
                await writer.drain()
                stalled.append(writer)
            async with asyncio.timeout(10):
                replies = await asyncio.gather(
                    *(
                        raw_exchange(
                            gw, http_request(gw, "POST", "/v1/chat/completions", CHAT_BODY)
                        )
                        for _ in range(20)
                    )
                )
            assert [r.status for r in replies] == [200] * 20
            for writer in stalled:  # trickle one more byte: still nothing may go upstream
                writer.write(b"X")
            await asyncio.sleep(0.3)
        finally:
            for writer in stalled:
                writer.close()
        await asyncio.sleep(0.2)
        assert len(gw.mock_requests) == 20
        assert len(await events_with_sentinel(gw, 20)) == 20


async def hang_up(gw: Gateway, data: bytes, *, read_bytes: int = 0, pause_s: float = 0.1) -> None:
    """Send `data`, optionally read the first bytes of the answer, and close the socket."""
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    writer.write(data)
    await writer.drain()
    if read_bytes:
        await reader.readexactly(read_bytes)
    await asyncio.sleep(pause_s)
    writer.close()


async def test_clients_that_hang_up_at_every_phase(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        route = "/v1/chat/completions"
        full = http_request(gw, "POST", route, CHAT_BODY)
        headers_end = full.index(b"\r\n\r\n") + 4
        chunked = http_request(
            gw, "POST", route, b"", b"Transfer-Encoding: chunked\r\n", length=False
        )
        # Phases before the body is complete: nothing may go upstream.
        await hang_up(gw, full[:20])  # inside the request line
        await hang_up(gw, full[: headers_end - 30])  # inside the headers
        await hang_up(gw, full[:headers_end])  # headers done, no body
        await hang_up(gw, full[: headers_end + 10])  # half the body
        await hang_up(gw, chunked + b"20\r\n" + CHAT_BODY[:10])  # inside a chunk
        await asyncio.sleep(0.3)
        assert gw.mock_requests == []
        # Body sent, client gone before the answer (the provider takes 300 ms): forwarded,
        # billed once, with the provider's usage whether the client asked to stream or not.
        slow = b"x-mock-error: slow\r\nx-mock-delay-ms: 300\r\n"
        await hang_up(gw, http_request(gw, "POST", route, CHAT_BODY, slow))
        await hang_up(
            gw, http_request(gw, "POST", route, orjson.dumps({**CHAT, "stream": True}), slow)
        )
        # Mid-stream, every streaming API: the provider's final usage is still read.
        paced = b"x-mock-token-delay-ms: 30\r\n"
        for path, body in (
            ("/v1/messages", MESSAGE),
            ("/v1/responses", {"model": "gpt-4o", "input": "hi"}),
        ):
            await hang_up(
                gw,
                http_request(gw, "POST", path, orjson.dumps({**body, "stream": True}), paced),
                read_bytes=200,
            )
        await asyncio.sleep(1.5)  # the drains finish (20 tokens x 30 ms)
        assert len(gw.mock_requests) == 4
        rows = await events_with_sentinel(gw, 4)
    expected = (200, "provider", 20)
    problems = [
        f"{r['endpoint']} streamed={r['streamed']}: {r['status_code']} "
        f"{r['usage_source']} output={r['output_tokens']}"
        for r in rows
        if (r["status_code"], r["usage_source"], r["output_tokens"]) != expected
    ]
    problems += [
        f"log: {r.name} {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("tollbooth")
    ]
    assert not problems, "\n".join(problems)
