"""How the benchmark's bare servers (`upstream`, `floor_proxy`) run: on uvloop, announcing
their address on stdout (the runner waits for that line), until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any


async def serve_until_stopped(server: asyncio.Server, name: str, host: str) -> None:
    """Print `NAME listening on http://HOST:PORT`, then serve until SIGINT or SIGTERM."""
    bound = server.sockets[0].getsockname()[1]
    print(f"{name} listening on http://{host}:{bound}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def run_on_uvloop(main: Coroutine[Any, Any, None]) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)
