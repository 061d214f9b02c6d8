"""What one wake-up costs on this machine: a uvloop echo server's CPU per message, with the
messages sent back to back and then spaced out.

    python -m tests.bench_wakeups [--messages N] [--gaps-ms 0,1,5]

A child process sends a 300-byte message, waits for the echo, sleeps the gap, and again; the
parent echoes with an asyncio Protocol on uvloop and reports its own CPU time
(`time.process_time()`) per message. The difference between the gaps is the cost of the
process going idle and being woken (the paced-stream and c=1 rows of `tollbooth bench` pay it
several times per request). Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time

import uvloop

PAYLOAD = b"x" * 300


def _sender(port: int, messages: int, gap_s: float) -> None:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(messages):
        conn.sendall(PAYLOAD)
        conn.recv(65536)
        if gap_s:
            time.sleep(gap_s)
    conn.close()


class _Echo(asyncio.Protocol):
    def __init__(self, closed: asyncio.Future[None]) -> None:
        self._closed = closed
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed.set_result(None)


async def _echo(listener: socket.socket) -> float:
    loop = asyncio.get_running_loop()
    conn, _ = await loop.sock_accept(listener)
    closed: asyncio.Future[None] = loop.create_future()
    started = time.process_time()
    await loop.connect_accepted_socket(lambda: _Echo(closed), conn)
    await closed
    return time.process_time() - started


def measure(messages: int, gap_s: float) -> float:
    """The echo server's CPU seconds per message."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    pid = os.fork()
    if pid == 0:
        _sender(listener.getsockname()[1], messages, gap_s)
        os._exit(0)
    try:
        cpu = uvloop.run(_echo(listener))
    finally:
        os.waitpid(pid, 0)
        listener.close()
    return cpu / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--gaps-ms", default="0,1,5")
    args = parser.parse_args()
    for gap in (float(g) for g in args.gaps_ms.split(",")):
        count = args.messages if gap < 1 else max(200, args.messages // int(gap))
        per = measure(count, gap / 1000)
        print(
            f"gap {gap:g} ms: {per * 1e6:.1f} us of echo-server CPU per message ({count} messages)"
        )


if __name__ == "__main__":
    main()
