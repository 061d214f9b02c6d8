"""SIGTERM drains a real `tollbooth serve` (gateway.drain): readiness off at once, new
requests served through the grace, streams in flight finished (or cut at the drain timeout
with an error event in the API's shape), every event written to Postgres before exit 0, and
nothing left in the journal for a later start.

Each gateway runs with a writer that would not flush on its own for minutes, so the events
in Postgres at exit are there because the drain wrote them. The mock provider paces streams
(`x-mock-token-delay-ms`), so they are long enough to be in flight at the signal.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.drain import EXIT_MARGIN_S, Drain
from tests.helpers.journal_only import JOURNAL_ONLY
from tests.helpers.pg_link import PostgresLink
from tests.helpers.serve_process import Serve, mock_provider_process, serve_env

PROMPT = [{"role": "user", "content": "tell me a long story"}]


@pytest.fixture
def mock() -> Iterator[str]:
    with mock_provider_process(kill=True) as url:
        yield url


@dataclass
class Streamed:
    anthropic: bool
    request_id: str = ""
    body: bytes = b""
    status: int = 0
    first_chunk_at: float | None = None


def stream_request(
    gw: Serve, anthropic: bool, tokens: int, delay_ms: int, include_usage: bool = False
) -> tuple[str, dict[str, Any], dict[str, str]]:
    pace = {"x-mock-output-tokens": str(tokens), "x-mock-token-delay-ms": str(delay_ms)}
    if anthropic:
        return (
            gw.base + "/v1/messages",
            {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": PROMPT, "stream": True},
            {"x-api-key": gw.key, "anthropic-version": "2023-06-01", **pace},
        )
    body: dict[str, Any] = {"model": "gpt-4o", "messages": PROMPT, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return gw.base + "/v1/chat/completions", body, {"Authorization": f"Bearer {gw.key}", **pace}


async def stream(
    session: aiohttp.ClientSession,
    gw: Serve,
    state: Streamed,
    tokens: int,
    delay_ms: int,
    include_usage: bool = False,
) -> None:
    url, body, headers = stream_request(gw, state.anthropic, tokens, delay_ms, include_usage)
    async with session.post(url, json=body, headers=headers) as response:
        state.status = response.status
        state.request_id = response.headers["x-request-id"]
        async for chunk in response.content.iter_any():
            if state.first_chunk_at is None:
                state.first_chunk_at = time.monotonic()
            state.body += chunk


async def all_producing(states: list[Streamed], count: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(states) == count and all(s.first_chunk_at is not None for s in states):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the streams never got going")


async def chat(gw: Serve) -> tuple[int, str]:
    """One plain request on a new connection (so it goes through the listener)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            gw.base + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": PROMPT},
            headers={"Authorization": f"Bearer {gw.key}"},
        ) as response,
    ):
        await response.read()
        return response.status, response.headers.get("x-request-id", "")


async def probe(base: str, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(base + path) as response:
        return response.status, await response.json()


async def gateway(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    mock: str,
    prefix: str,
    server: dict[str, Any],
    *workers: str,
) -> Serve:
    gw = Serve(tmp_path, database_url, serve_env(database_url, redis_url))
    # The writer would not flush for minutes: what Postgres holds at exit, the drain wrote.
    gw.write_config(mock, server, JOURNAL_ONLY)
    await gw.create_customer(prefix)
    await gw.start(*workers)
    return gw


def last_event(body: bytes) -> tuple[str | None, Any]:
    """The last SSE event of a body: its `event:` name and its data as JSON."""
    block = body.strip().split(b"\n\n")[-1]
    name, data = None, b""
    for line in block.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip().decode()
        elif line.startswith(b"data:"):
            data += line[5:].strip()
    return name, orjson.loads(data)


@pytest.mark.slow
async def test_sigterm_finishes_every_stream_and_writes_every_event_before_exit_0(
    tmp_path: Path,
    fresh_database_url: str,
    redis_url: str,
    mock: str,
) -> None:
    grace_s, timeout_s = 2.0, 20.0
    gw = await gateway(
        tmp_path,
        fresh_database_url,
        redis_url,
        mock,
        "drn",
        {"drain_grace_s": grace_s, "drain_timeout_s": timeout_s},
    )
    assert gw.proc is not None
    assert await probe(gw.base, "/health/ready") == (200, {"status": "ready"})
    states = [Streamed(anthropic=i % 5 == 4) for i in range(20)]  # 16 OpenAI, 4 Anthropic
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        streams = [
            asyncio.create_task(stream(session, gw, s, tokens=100, delay_ms=40)) for s in states
        ]
        await all_producing(states, 20)
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)

        # Readiness turns at once; liveness stays.
        while True:
            status, ready = await probe(gw.base, "/health/ready")
            if status == 503 or time.monotonic() - signalled > 0.5:
                break
            await asyncio.sleep(0.02)
        not_ready_after = time.monotonic() - signalled
        assert status == 503 and ready["status"] == "not_ready", ready
        assert "draining" in ready["reasons"]
        assert (await probe(gw.base, "/health/live"))[0] == 200

        # New requests through the grace are served, on new connections.
        trickle: list[tuple[int, str]] = []
        while time.monotonic() - signalled < grace_s - 0.4:
            trickle.append(await chat(gw))
            await asyncio.sleep(0.15)
        assert trickle and all(status == 200 for status, _ in trickle), trickle

        await asyncio.sleep(max(0.0, signalled + grace_s + 0.5 - time.monotonic()))
        with pytest.raises(aiohttp.ClientConnectionError):
            await chat(gw)  # the listener is closed
        await asyncio.gather(*streams)
    code = await asyncio.to_thread(gw.proc.wait, timeout_s + 10)
    exited_after = time.monotonic() - signalled
    output = gw.output

    events = await gw.events()
    by_id = {e["id"]: e for e in events}
    completed = [s.request_id for s in states] + [rid for _, rid in trickle]
    print(
        f"\nready 503 after {not_ready_after * 1000:.0f} ms; trickle served during grace: "
        f"{len(trickle)}; streams completed: "
        f"{sum(b'[DONE]' in s.body or b'message_stop' in s.body for s in states)}/20; "
        f"exit {code} after {exited_after:.1f} s; events in Postgres: {len(events)} "
        f"for {len(completed)} requests; journal files left: {len(gw.journal_files())}"
    )
    assert code == 0, output
    assert exited_after < timeout_s + 5
    for s in states:
        assert s.status == 200
        assert (b"message_stop" if s.anthropic else b"data: [DONE]") in s.body
        assert b"event: error" not in s.body
    assert len(by_id) == len(events) == len(completed), output
    assert set(by_id) == set(completed)
    assert all(e["usage_source"] == "provider" for e in events)
    assert not any("interrupted" in e["metadata"] for e in events)
    assert gw.journal_files() == [], output
    assert "stay in the journal" not in output


@pytest.mark.slow
async def test_streams_past_the_drain_timeout_are_cut_with_an_error_event_metered_once(
    tmp_path: Path,
    fresh_database_url: str,
    redis_url: str,
    mock: str,
) -> None:
    grace_s, timeout_s = 0.5, 2.5
    gw = await gateway(
        tmp_path,
        fresh_database_url,
        redis_url,
        mock,
        "drc",
        {"drain_grace_s": grace_s, "drain_timeout_s": timeout_s},
    )
    assert gw.proc is not None
    states = [Streamed(anthropic=i >= 6) for i in range(8)]  # 6 OpenAI, 2 Anthropic
    slow: dict[str, Any] = {}

    async def slow_call(session: aiohttp.ClientSession) -> None:
        async with session.post(
            gw.base + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": PROMPT},
            headers={
                "Authorization": f"Bearer {gw.key}",
                "x-mock-error": "slow",
                "x-mock-delay-ms": "8000",
            },
        ) as response:
            slow.update(
                status=response.status,
                id=response.headers["x-request-id"],
                body=await response.json(),
            )

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        tasks = [
            asyncio.create_task(
                stream(session, gw, s, tokens=200, delay_ms=30, include_usage=i % 2 == 1)
            )
            for i, s in enumerate(states)
        ]
        tasks.append(asyncio.create_task(slow_call(session)))
        await all_producing(states, 8)
        await asyncio.sleep(0.3)
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*tasks)
        streams_ended_after = time.monotonic() - signalled
    code = await asyncio.to_thread(gw.proc.wait, timeout_s + 10)
    exited_after = time.monotonic() - signalled
    output = gw.output
    events = await gw.events()
    by_id = {e["id"]: e for e in events}
    print(
        f"\nstreams cut after {streams_ended_after:.1f} s; exit {code} after "
        f"{exited_after:.1f} s; events: {len(events)} for {len(states) + 1} requests: "
        + ", ".join(
            f"{'stream' if e['streamed'] else 'call'} {e['status_code']} "
            f"{e['usage_source']} out={e['output_tokens']} "
            f"{e['metadata'].get('interrupted')}"
            for e in events
        )
    )
    assert code == 0, output
    assert exited_after < timeout_s + 5
    assert timeout_s - 0.2 < streams_ended_after < timeout_s + 2

    for s in states:
        assert s.status == 200
        assert b"[DONE]" not in s.body and b"message_stop" not in s.body
        name, data = last_event(s.body)
        assert name == "error"
        if s.anthropic:
            assert data["type"] == "error" and set(data["error"]) == {"type", "message"}
        else:
            assert set(data["error"]) == {"message", "type", "param", "code"}
            assert data["error"]["code"] == "drain_timeout"
    assert slow["status"] == 503
    assert slow["body"]["error"]["code"] == "drain_timeout"

    assert len(by_id) == len(events) == len(states) + 1, output
    for s in states:
        event = by_id[s.request_id]
        assert event["status_code"] == 200 and event["streamed"]
        assert event["usage_source"] == "estimated"
        assert event["metadata"]["interrupted"] == "drain_timeout"
        assert event["output_tokens"] > 0 and event["price_usd"] > 0
    cut_call = by_id[slow["id"]]
    assert cut_call["status_code"] == 503 and cut_call["usage_source"] == "estimated"
    assert cut_call["metadata"]["interrupted"] == "drain_timeout"
    assert cut_call["input_tokens"] > 0
    assert gw.journal_files() == [], output

    # A later start on the same data dir finds nothing to replay: no event doubled.
    gw.write_config(mock, {}, {"writer_flush_interval_s": 0.05})
    await gw.start()
    try:
        status, health = await probe(gw.base, "/health")
        assert status == 200 and health["writer"]["backlog"] == 0
        await asyncio.sleep(0.5)
        assert sorted(e["id"] for e in await gw.events()) == sorted(by_id)
    finally:
        assert await gw.stop() == 0


@pytest.mark.slow
async def test_two_workers_drain_and_the_supervisor_exits_0(
    tmp_path: Path,
    fresh_database_url: str,
    redis_url: str,
    mock: str,
) -> None:
    gw = await gateway(
        tmp_path,
        fresh_database_url,
        redis_url,
        mock,
        "drw",
        {"drain_grace_s": 1, "drain_timeout_s": 15},
        "--workers",
        "2",
    )
    assert gw.proc is not None
    for _ in range(100):  # /health answers once one worker listens; wait for both
        if gw.output.count("listening on") == 2:
            break
        await asyncio.sleep(0.1)
    states = [Streamed(anthropic=False) for _ in range(8)]
    connector = aiohttp.TCPConnector(force_close=True)  # spread over both workers
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        streams = [
            asyncio.create_task(stream(session, gw, s, tokens=60, delay_ms=40)) for s in states
        ]
        await all_producing(states, 8)
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*streams)
    code = await asyncio.to_thread(gw.proc.wait, 30)
    exited_after = time.monotonic() - signalled
    events = await gw.events()
    print(
        f"\n--workers 2: exit {code} after {exited_after:.1f} s; streams completed "
        f"{sum(b'[DONE]' in s.body for s in states)}/8; events {len(events)}"
    )
    assert code == 0, gw.output
    assert all(b"data: [DONE]" in s.body for s in states)
    assert sorted(e["id"] for e in events) == sorted(s.request_id for s in states)
    assert gw.journal_files() == [], gw.output


@pytest.mark.slow
async def test_postgres_down_at_the_drain_leaves_the_events_in_the_journal_and_says_so(
    tmp_path: Path,
    fresh_database_url: str,
    redis_url: str,
    mock: str,
) -> None:
    link = PostgresLink(fresh_database_url)
    await link.start()
    gw = await gateway(
        tmp_path, link.url, redis_url, mock, "drp", {"drain_grace_s": 0.5, "drain_timeout_s": 6}
    )
    assert gw.proc is not None
    states = [Streamed(anthropic=False) for _ in range(4)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        done = [await chat(gw) for _ in range(3)]
        streams = [
            asyncio.create_task(stream(session, gw, s, tokens=40, delay_ms=40)) for s in states
        ]
        await all_producing(states, 4)
        await link.cut()
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*streams)
    code = await asyncio.to_thread(gw.proc.wait, 30)
    exited_after = time.monotonic() - signalled
    output = gw.output
    served = [rid for _, rid in done] + [s.request_id for s in states]
    left = re.search(r"Postgres did not take (\d+) events", output)
    print(
        f"\nPostgres down: exit {code} after {exited_after:.1f} s; "
        f"{left.group(0) if left else 'nothing said'}; "
        f"journal files: {len(gw.journal_files())}"
    )
    assert code == 0, output
    assert exited_after < 6 + 5, output
    assert all(b"data: [DONE]" in s.body for s in states)
    assert left is not None and int(left.group(1)) == len(served), output
    assert gw.journal_files(), output

    # Postgres back: the next start on this data dir writes them, once each.
    await link.start()
    gw.write_config(mock, {}, {"writer_flush_interval_s": 0.05})
    await gw.start()
    try:
        for _ in range(100):
            if (await probe(gw.base, "/health"))[1]["writer"]["backlog"] == 0:
                break
            await asyncio.sleep(0.1)
        events = await gw.events()
    finally:
        assert await gw.stop() == 0
        await link.cut()
    assert sorted(e["id"] for e in events) == sorted(served), gw.output


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_drain_budgets_count_from_the_signal() -> None:
    clock = Clock()
    drain = Drain(grace_s=5, timeout_s=30, clock=clock)
    assert not drain.draining
    assert drain.seconds_to_cut() == 30
    assert drain.exit_budget_s(10) == 10  # not draining: the caller's default
    drain.begin()
    try:
        clock.now += 12
        assert drain.draining and drain.seconds_to_cut() == 18
        # The exit bound is 30 + EXIT_MARGIN_S after the signal, less a reserve for exiting.
        assert drain.exit_budget_s(10) == 10
        assert 18 < drain.exit_budget_s(10, use_all=True) < 18 + EXIT_MARGIN_S
        clock.now += 40
        assert drain.seconds_to_cut() == 0 and drain.exit_budget_s(10) == 0.5
    finally:
        drain.close()
    assert Drain(grace_s=5, timeout_s=2).grace_s == 2  # the grace fits in the timeout


async def test_an_exchange_waiting_for_its_head_is_cancelled_and_a_late_one_cut_at_once() -> None:
    drain = Drain(grace_s=0, timeout_s=0)
    cuts = []

    async def exchange() -> None:
        cut = drain.track()
        cuts.append(cut)
        try:
            await asyncio.sleep(30)  # waiting for the provider's response head
        finally:
            cut.release()

    early = asyncio.create_task(exchange())
    await asyncio.sleep(0)
    drain.cut_all()
    with pytest.raises(asyncio.CancelledError):
        await early
    assert cuts[0].fired and cuts[0].waiting_for_head
    late = asyncio.create_task(exchange())
    with pytest.raises(asyncio.CancelledError):
        await late
    assert cuts[1].fired and drain.in_flight == 0
