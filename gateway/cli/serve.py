"""`tollbooth serve`: run the gateway (on the embedded default or configured servers).

The parent process resolves the infrastructure once (starting the embedded Postgres and
Valkey when no URL is configured, or reusing the ones another process started), then runs
one worker in-process, or `--workers N` processes bound to the same port with SO_REUSEPORT.
Each worker serves through `gateway.front.FrontRunner` (the fast front before aiohttp).
SIGINT/SIGTERM stop accepting, let in-flight requests finish (up to
`server.shutdown_grace_s`), drain the usage writer, then stop the embedded servers it started.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys

from aiohttp import web

from gateway.cli.main import add_config_option
from gateway.cli.runtime import infrastructure_for
from gateway.cli.serve_preflight import preflight
from gateway.config import Settings, load_settings
from gateway.logs import setup_logging


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("serve", help="run the gateway")
    add_config_option(parser)
    parser.add_argument("--host", help="listen address (default: server.host)")
    parser.add_argument("--port", type=int, help="listen port (default: server.port)")
    parser.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
    parser.set_defaults(func=run)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return
    uvloop.install()


def run_worker(config_path: str, host: str, port: int, database_url: str, redis_url: str,
               reuse_port: bool) -> None:
    _install_uvloop()
    settings = load_settings(config_path)
    setup_logging(settings.logging.level, settings.logging.format, settings.logging.requests)
    asyncio.run(_serve(settings, host, port, database_url, redis_url, reuse_port))


async def _serve(settings: Settings, host: str, port: int, database_url: str, redis_url: str,
                 reuse_port: bool) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully (the runner's cleanup)."""
    from gateway.app import create_app
    from gateway.front import FrontRunner

    app = create_app(settings, database_url=database_url, redis_url=redis_url,
                     watch_config=True, access_log_to_stderr=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = FrontRunner(app, access_log=None, shutdown_timeout=settings.server.shutdown_grace_s)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
        print(f"tollbooth worker {os.getpid()} listening on http://{host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    settings: Settings = load_settings(args.config)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    workers = args.workers or settings.server.workers
    if (problem := preflight(settings, host, port)) is not None:
        print(problem, file=sys.stderr)  # nothing was started
        return 1
    with infrastructure_for(settings) as infra:
        if workers == 1:
            run_worker(args.config, host, port, infra.database_url, infra.redis_url, False)
            return 0
        ctx = multiprocessing.get_context("spawn")
        procs = [
            ctx.Process(
                target=run_worker,
                args=(args.config, host, port, infra.database_url, infra.redis_url, True),
                name=f"tollbooth-worker-{i}",
            )
            for i in range(workers)
        ]
        for proc in procs:
            proc.start()

        def forward(signum: int, _frame: object) -> None:
            for proc in procs:
                if proc.pid is not None and proc.is_alive():
                    os.kill(proc.pid, signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        for proc in procs:
            proc.join()
        failed = [p.name for p in procs if p.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT)]
        if failed:
            print(f"tollbooth: workers exited with errors: {', '.join(failed)}", file=sys.stderr)
            return 1
    return 0
