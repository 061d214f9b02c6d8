"""kill -9 of a real `tollbooth serve` while requests are upstream: every request that reached
the provider ends up with exactly one usage event once `serve` restarts on the same data dir.

The mock provider paces long streams (OpenAI and Anthropic) and holds slow non-streaming
calls; the gateway is SIGKILLed while all of them are in flight, after the streams have been
producing output for well over a second. Its writer would not flush for minutes, so every
event, the finished requests' too, exists only in its journal. The restarted gateway must
then record: the finished requests with their real (provider) usage, never their provisional
events, which are still on disk beside them; each cut request once, `estimated`, status 502,
flagged `interrupted`, with the prompt estimate as input, the output its last progress record
counted (streams) and a price. The mock's own request log is the count of what reached it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.helpers.journal_only import journal_only_gateway, restart_drained
from tests.helpers.serve_process import mock_provider_process

pytestmark = pytest.mark.slow

LONG_STREAMS = 6  # OpenAI chat streams, 300 tokens 20 ms apart: about 6 s each
ANTHROPIC_STREAMS = 2
SLOW_CALLS = 3  # non-streaming, answered after 8 s
FINISHED = 4  # two plain, two streamed, all complete before the kill
PRODUCING_S = 1.6  # every long stream has produced output for this long at the kill
PROMPT = [{"role": "user", "content": "tell me a long story"}]
FINISHED_INPUT_TOKENS = 3 + 4 + 5  # the mock's rule (tokens.py) for PROMPT
FINISHED_OUTPUT_TOKENS = 5


@pytest.fixture
def mock_provider() -> Iterator[str]:
    with mock_provider_process(kill=True) as url:
        yield url


@dataclass
class Stream:
    request_id: str = ""
    first_chunk_at: float | None = None
    chunks: int = 0
    done: bool = False


@dataclass
class Traffic:
    streams: list[Stream] = field(default_factory=list)
    cut_off: int = 0


async def finished_requests(session: aiohttp.ClientSession, base: str, key: str) -> list[str]:
    """Requests that complete before the kill; their x-request-ids."""
    ids = []
    for stream in (False, False, True, True):
        body = {"model": "gpt-4o", "messages": PROMPT, "stream": stream}
        async with session.post(
            base + "/v1/chat/completions",
            json=body,
            headers={
                "Authorization": f"Bearer {key}",
                "x-mock-output-tokens": str(FINISHED_OUTPUT_TOKENS),
            },
        ) as response:
            text = await response.text()
            assert response.status == 200, text
            assert not stream or "[DONE]" in text
            ids.append(response.headers["x-request-id"])
    return ids


async def in_flight_until_killed(
    session: aiohttp.ClientSession, base: str, mock: str, key: str, serve: subprocess.Popen[str]
) -> Traffic:
    traffic = Traffic()
    auth = {"Authorization": f"Bearer {key}"}

    async def stream(anthropic: bool) -> None:
        state = Stream()
        traffic.streams.append(state)
        if anthropic:
            url, body = (
                base + "/v1/messages",
                {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 1000,
                    "messages": PROMPT,
                    "stream": True,
                },
            )
            headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        else:
            url, body = (
                base + "/v1/chat/completions",
                {"model": "gpt-4o", "messages": PROMPT, "stream": True},
            )
            headers = dict(auth)
        headers.update({"x-mock-output-tokens": "300", "x-mock-token-delay-ms": "20"})
        try:
            async with session.post(url, json=body, headers=headers) as response:
                assert response.status == 200, await response.text()
                state.request_id = response.headers["x-request-id"]
                async for _ in response.content.iter_any():
                    state.chunks += 1
                    if state.first_chunk_at is None:
                        state.first_chunk_at = time.monotonic()
            state.done = True
        except (TimeoutError, aiohttp.ClientError):
            traffic.cut_off += 1

    async def slow() -> None:
        body = {"model": "gpt-4o", "messages": PROMPT}
        headers = {**auth, "x-mock-error": "slow", "x-mock-delay-ms": "8000"}
        try:
            async with session.post(
                base + "/v1/chat/completions", json=body, headers=headers
            ) as response:
                await response.read()
            raise AssertionError("a slow call completed before the kill")
        except (TimeoutError, aiohttp.ClientError):
            traffic.cut_off += 1

    async def killer() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            producing = [s.first_chunk_at for s in traffic.streams]
            if (
                len(producing) == LONG_STREAMS + ANTHROPIC_STREAMS
                and all(t is not None and time.monotonic() - t >= PRODUCING_S for t in producing)
                and await slow_calls_received(session, mock) == SLOW_CALLS
            ):
                break
        else:
            raise AssertionError("the in-flight requests never got going")
        os.kill(serve.pid, signal.SIGKILL)
        await asyncio.to_thread(serve.wait, 30)

    await asyncio.gather(
        killer(),
        *(stream(False) for _ in range(LONG_STREAMS)),
        *(stream(True) for _ in range(ANTHROPIC_STREAMS)),
        *(slow() for _ in range(SLOW_CALLS)),
    )
    return traffic


async def provider_log(session: aiohttp.ClientSession, mock: str) -> list[dict[str, Any]]:
    async with session.get(mock + "/_mock/requests") as response:
        entries: list[dict[str, Any]] = await response.json()
    return [e for e in entries if e["path"] in ("/v1/chat/completions", "/v1/messages")]


async def slow_calls_received(session: aiohttp.ClientSession, mock: str) -> int:
    return sum(
        e["headers"].get("x-mock-error") == "slow" for e in await provider_log(session, mock)
    )


async def stored_events(database_url: str, customer: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT id::text AS id, status_code, streamed, input_tokens, output_tokens, "
            "usage_source, price_usd, metadata::text AS metadata FROM usage_events "
            "WHERE customer_id = $1",
            customer,
        )
    finally:
        await conn.close()
    return [{**dict(r), "metadata": json.loads(r["metadata"])} for r in rows]


async def test_kill_9_mid_stream_bills_every_request_that_reached_the_provider_once(
    tmp_path: Path, fresh_database_url: str, redis_url: str, mock_provider: str
) -> None:
    gw = await journal_only_gateway(tmp_path, fresh_database_url, redis_url, mock_provider, "k9s")
    customer, key, serve, lines, base = gw.customer, gw.key, gw.serve, gw.lines, gw.base
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        finished = await finished_requests(session, base, key)
        traffic = await in_flight_until_killed(session, base, mock_provider, key, serve)
        reached = await provider_log(session, mock_provider)
    assert serve.returncode == -signal.SIGKILL
    cut = [s.request_id for s in traffic.streams]
    assert not any(s.done for s in traffic.streams), "a long stream ended before the kill"
    assert traffic.cut_off == LONG_STREAMS + ANTHROPIC_STREAMS + SLOW_CALLS
    assert len(reached) == FINISHED + LONG_STREAMS + ANTHROPIC_STREAMS + SLOW_CALLS
    assert await stored_events(fresh_database_url, customer) == [], "".join(lines)
    assert list(gw.data_dir.glob("journal/*/*/*.open")), "no provisional records on disk"

    restarted = await restart_drained(gw, mock_provider)
    try:
        events = await stored_events(fresh_database_url, customer)
    finally:
        restarted.send_signal(signal.SIGTERM)
        await asyncio.to_thread(restarted.wait, 60)
    output = "".join(lines)

    by_id = {e["id"]: e for e in events}
    print(
        f"\nreached the provider: {len(reached)}; events after restart: {len(events)}; "
        "interrupted: "
        + ", ".join(
            f"{'stream' if e['streamed'] else 'call'} in={e['input_tokens']} "
            f"out={e['output_tokens']} price={e['price_usd']}"
            for e in events
            if "interrupted" in e["metadata"]
        )
    )
    assert len(by_id) == len(events), "an event was doubled"
    assert len(events) == len(reached), output  # exactly one per request that reached it

    for request_id in finished:  # completed before the kill: the real event, unchanged
        event = by_id[request_id]
        assert event["usage_source"] == "provider" and event["status_code"] == 200
        assert (event["input_tokens"], event["output_tokens"]) == (
            FINISHED_INPUT_TOKENS,
            FINISHED_OUTPUT_TOKENS,
        )
        assert "interrupted" not in event["metadata"]
        assert event["price_usd"] is not None and event["price_usd"] > 0

    interrupted = [e for e in events if e["id"] not in finished]
    assert {e["id"] for e in interrupted} >= set(cut)
    for event in interrupted:
        assert event["usage_source"] == "estimated"
        assert event["status_code"] == 502
        assert event["metadata"]["interrupted"] == "gateway_stopped"
        assert event["input_tokens"] > 0
        assert isinstance(event["price_usd"], Decimal) and event["price_usd"] > 0, output
        if event["streamed"]:  # produced output for over a second: billed, not zero
            assert event["id"] in cut
            assert 0 < event["output_tokens"] <= 2 * 300
        else:
            assert event["output_tokens"] == 0
    assert sum(not e["streamed"] for e in interrupted) == SLOW_CALLS
    assert restarted.returncode == 0, output
    assert not list(gw.data_dir.glob("journal/*/*/*.seg")), "a segment was left behind"
    assert not list(gw.data_dir.glob("journal/*/*/*.open")), "a provisional record was left"
