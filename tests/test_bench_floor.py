"""The benchmark's floor proxy (`gateway.bench.floor_proxy`): it relays a paced SSE answer of the
raw upstream byte for byte, holds the upstream back while a client does not read (and the
client still gets every byte), and closes each side when the other closes; and the paced-streams
table shows its row next to the gateway's and direct. Nothing here asserts a speed."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import orjson
import pytest

from gateway.bench.floor_proxy import start_proxy
from gateway.bench.procs import machine_info
from gateway.bench.report import notes_on, render_text, to_json
from gateway.bench.results import BenchReport, PhaseResult
from gateway.bench.scenarios import BenchOptions, scenarios

pytestmark = pytest.mark.timeout(120)

HANG_S = 30.0  # only against a hang: nothing here is timed
CHUNK = 64 * 1024
# Far more than the loopback sockets' buffers between the upstream and a client that does not
# read: a receive buffer may grow to tcp_rmem's maximum (6 to 32 MiB), plus the send buffers.
BIG_CHUNKS = 1536  # 96 MiB


async def _listening_port(proc: asyncio.subprocess.Process) -> int:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), HANG_S)
    assert b"listening on" in line, line
    return int(line.rsplit(b":", 1)[1])


@asynccontextmanager
async def _module(*args: str) -> AsyncIterator[int]:
    """`python -m MODULE ARGS` serving; yields the port it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        yield await _listening_port(proc)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), HANG_S)


def _paced_request(delay_ms: int) -> bytes:
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer sk-provider\r\nContent-Type: application/json\r\n"
        b"x-mock-token-delay-ms: %d\r\nContent-Length: %d\r\n\r\n%s" % (delay_ms, len(body), body)
    )


async def _answers(port: int, request: bytes, count: int) -> list[bytes]:
    """`count` answers to `request`, one after the other on one connection, as bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        answers = []
        for _ in range(count):
            writer.write(request)
            # The stream's last chunk, then the chunked body's end.
            answers.append(await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), HANG_S))
        return answers
    finally:
        writer.close()


@pytest.mark.slow
async def test_a_paced_stream_is_relayed_byte_for_byte() -> None:
    request = _paced_request(delay_ms=5)
    async with _module("gateway.bench.upstream", "--port", "0", "--output-tokens", "5") as up:
        proxied = _module("gateway.bench.floor_proxy", "--port", "0", "--upstream-port", str(up))
        async with proxied as floor:
            (direct,) = await _answers(up, request, 1)
            through = await _answers(floor, request, 2)  # two on one kept-alive connection

    assert direct.startswith(b"HTTP/1.1 200 OK\r\n")
    assert direct.count(b"data: ") == 5 + 3  # role, one per token, finish, [DONE]
    assert through == [direct, direct]


def _big_chunk(index: int) -> bytes:
    return index.to_bytes(8, "big") * (CHUNK // 8)


async def test_a_client_that_does_not_read_holds_the_upstream_back_and_gets_every_byte() -> None:
    sent = [0]
    finished = asyncio.Event()

    async def send_big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for index in range(BIG_CHUNKS):
            writer.write(_big_chunk(index))
            await writer.drain()
            sent[0] += CHUNK
        finished.set()
        writer.close()

    upstream = await asyncio.start_server(send_big, "127.0.0.1", 0)
    proxy = await start_proxy("127.0.0.1", 0, "127.0.0.1", upstream.sockets[0].getsockname()[1])
    async with upstream, proxy:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CHUNK)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, proxy.sockets[0].getsockname())
        reader, writer = await asyncio.open_connection(sock=sock)
        # Not reading: the upstream gets stuck once the buffers between us are full.
        while True:
            before = sent[0]
            await asyncio.sleep(0.5)
            if sent[0] == before:
                break
        assert not finished.is_set() and sent[0] < BIG_CHUNKS * CHUNK

        got, digest = 0, hashlib.sha256()
        while data := await asyncio.wait_for(reader.read(1 << 20), HANG_S):
            got += len(data)
            digest.update(data)
        writer.close()

    expected = hashlib.sha256()
    for index in range(BIG_CHUNKS):
        expected.update(_big_chunk(index))
    assert finished.is_set()
    assert got == BIG_CHUNKS * CHUNK
    assert digest.hexdigest() == expected.hexdigest()


async def test_each_side_closing_closes_the_other() -> None:
    heard: asyncio.Queue[bytes] = asyncio.Queue()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(100)
        if first == b"close, please":
            writer.write(b"bye")
            writer.close()  # the upstream closes first
            return
        await heard.put(first + await reader.read())  # read to the client's close
        writer.close()

    upstream = await asyncio.start_server(answer, "127.0.0.1", 0)
    proxy = await start_proxy("127.0.0.1", 0, "127.0.0.1", upstream.sockets[0].getsockname()[1])
    port = proxy.sockets[0].getsockname()[1]
    async with upstream, proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"close, please")
        assert await asyncio.wait_for(reader.read(), HANG_S) == b"bye"  # then the end
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        await writer.drain()
        writer.close()  # the client closes first
        assert await asyncio.wait_for(heard.get(), HANG_S) == b"hello"


async def test_a_proxy_whose_upstream_is_gone_closes_its_clients() -> None:
    gone = socket.socket()
    gone.bind(("127.0.0.1", 0))
    port = gone.getsockname()[1]
    gone.close()  # nothing listens there now
    proxy = await start_proxy("127.0.0.1", 0, "127.0.0.1", port)
    async with proxy:
        reader, writer = await asyncio.open_connection(*proxy.sockets[0].getsockname())
        assert await asyncio.wait_for(reader.read(), HANG_S) == b""
        writer.close()


def _phase(
    target: str, requests: int, ttfb_ms: tuple[float, float], cpu_s: dict[str, float]
) -> PhaseResult:
    """A paced-streams phase at c=300 of 10 s, 102 events per stream."""
    return PhaseResult(
        scenario="paced-streams",
        target=target,
        workers=1 if target == "gateway" else None,
        concurrency=300,
        loadgen_procs=1,
        window_s=10.0,
        requests=requests,
        window_errors=0,
        completed=requests + 300,
        statuses={"200": requests + 300},
        failures=0,
        p50_ms=2050.0,
        p90_ms=2060.0,
        p99_ms=2080.0,
        ttfb_p50_ms=ttfb_ms[0],
        ttfb_p99_ms=ttfb_ms[1],
        cpu_s=cpu_s,
        events=(requests + 300) * 102,
        window_events=requests * 102,
        wait_s={name: 0.1 for name in cpu_s},
    )


def test_the_floor_row_sits_under_gateway_and_direct_with_its_own_cpu_per_event() -> None:
    options = BenchOptions(scenarios=("paced-streams",), stream_tokens=99, token_delay_ms=20)
    gateway = _phase("gateway", 1400, (1.5, 9.0), {"gateway": 2.856, "upstream": 0.5})
    direct = _phase("direct", 1460, (0.5, 3.0), {"upstream": 0.5})
    floor = _phase("floor", 1450, (0.75, 4.0), {"floor": 0.7395, "upstream": 0.5})
    report = BenchReport(
        command="tollbooth bench --scenarios paced-streams --concurrency 300",
        machine=machine_info(),
        settings=options.to_json(scenarios(options)),
        phases=[gateway, direct, replace(floor, compared_with=direct)],
    )
    report.notes += notes_on(report)

    lines = render_text(report).splitlines()
    rows = [line.split() for line in lines if line.startswith("  300  ")]
    assert [row[1] for row in rows] == ["gateway", "direct", "floor"]
    floor_row = rows[2]
    # streams/s, floor/direct, stream s, ttfb50, ttfb99, +ttfb50, +ttfb99, ev/stream,
    # events/s, then its CPU per event (0.7395 s / 147,900 events) in the gateway's column.
    assert floor_row[2:12] == [
        "145.0", "0.99", "2.05", "0.75", "4.00", "+0.25", "+1.00", "102.0", "14,790", "5.0"
    ]  # fmt: skip
    assert rows[0][12] == "20.0"  # "gateway w1"; 2.856 s / 142,800 events
    assert any("a proxy that only moves bytes used 5.0 us" in note for note in report.notes)

    data = to_json(report)
    floor_json = data["phases"][2]
    assert floor_json["target"] == "floor" and "compared_with" not in floor_json
    assert floor_json["versus_direct"]["ratio_to_direct"] == pytest.approx(1450 / 1460, abs=1e-4)
    assert floor_json["versus_direct"]["added_ttfb_p99_ms"] == pytest.approx(1.0)
    assert floor_json["cpu_us_per_event"]["floor"] == pytest.approx(5.0)
    # The comparisons (and the targets) stay the gateway's.
    assert [c["workers"] for c in data["comparisons"]] == [1]
    assert data["settings"]["floor"] is True
