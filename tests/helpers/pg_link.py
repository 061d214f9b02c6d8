"""A TCP link to a test Postgres that a test can cut and restore: an asyncio forwarder on
loopback in front of the embedded server's unix socket. Cut, it resets every connection and
refuses new ones (as a database that went away); restored, it forwards again."""

from __future__ import annotations

import asyncio
import contextlib
import glob
from urllib.parse import parse_qs, urlsplit


class PostgresLink:
    def __init__(self, database_url: str) -> None:
        parts = urlsplit(database_url)
        (host,) = parse_qs(parts.query)["host"]
        (self._socket,) = [p for p in glob.glob(f"{host}/.s.PGSQL.*") if not p.endswith(".lock")]
        self._database = parts.path.lstrip("/")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self._database}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # no new connections
        for writer in list(self._writers):
            writer.transport.abort()
        if server is not None:
            await server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_unix_connection(self._socket)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}
        try:
            await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
        finally:
            for writer in (client_w, server_w):
                self._writers.discard(writer)
                writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
