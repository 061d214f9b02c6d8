"""The benchmark's floor: a proxy that does nothing but move bytes, the least a reverse proxy
can cost per relayed event on this machine.

Each client connection gets its own upstream connection, opened when the client connects;
what the client sends before it is open is held and written first. Bytes from either side
are written to the other as they arrive, in the `data_received` that brought them: no HTTP
parsing, no rewriting (the Authorization header goes through unchanged, so the load generator
uses the provider key as it does for direct). TCP_NODELAY is set on both sides. Back-pressure:
when one side's write buffer passes its high-water mark (`pause_writing`), the other side is
no longer read until it drains (`resume_writing`), so a client that does not read holds the
upstream back instead of growing the proxy's memory. What it costs per event is the
machine's share of the gateway's cost: two sockets' syscalls, loopback TCP and the event
loop's wake-ups, on uvloop like the gateway.

`python -m gateway.bench.floor_proxy --port 0 --upstream-port N` prints
`bench floor proxy listening on http://127.0.0.1:PORT`, then serves until SIGINT/SIGTERM.

How it fails: either side closing (or failing) closes the other, after what was already
buffered for it is written; a client whose upstream cannot be reached is closed at once. It
logs nothing per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from typing import cast

from gateway.bench.serving import run_on_uvloop, serve_until_stopped


def _nodelay(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Side(asyncio.Protocol):
    """One connection of a pair: what it receives is written to its peer."""

    def __init__(self, peer: _Side | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop: not a subclass
        _nodelay(self.transport)

    def _open_peer(self) -> asyncio.Transport | None:
        peer = self.peer.transport if self.peer is not None else None
        return None if peer is None or peer.is_closing() else peer

    def data_received(self, data: bytes) -> None:
        if (peer := self._open_peer()) is not None:
            peer.write(data)

    def pause_writing(self) -> None:
        # Our write buffer is full: stop reading what would be written to it.
        if (peer := self._open_peer()) is not None:
            peer.pause_reading()

    def resume_writing(self) -> None:
        if (peer := self._open_peer()) is not None:
            peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()  # writes what is buffered, then closes


class _Client(_Side):
    """The client's side: opens its upstream connection when the client connects."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        super().__init__()
        self._upstream = (upstream_host, upstream_port)
        self._early = bytearray()  # received before the upstream connection was open
        self._connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self._early += data
        else:
            super().data_received(data)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: _Side(self), *self._upstream)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        self.peer = upstream
        if upstream.transport is None:
            return  # it closed at once, and closed the client
        upstream.transport.write(bytes(self._early))
        self._early.clear()
        if self.transport is None:  # the client left while we connected
            upstream.transport.close()


async def start_proxy(
    host: str, port: int, upstream_host: str, upstream_port: int
) -> asyncio.Server:
    """A listening floor proxy (port 0: any free port) in the running loop."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Client(upstream_host, upstream_port), host, port)


async def serve(host: str, port: int, upstream_host: str, upstream_port: int) -> None:
    server = await start_proxy(host, port, upstream_host, upstream_port)
    await serve_until_stopped(server, "bench floor proxy", host)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.bench.floor_proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream-host", default="127.0.0.1")
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args(argv)
    run_on_uvloop(serve(args.host, args.port, args.upstream_host, args.upstream_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
