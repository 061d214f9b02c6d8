"""`tollbooth serve`: run the gateway (on the embedded default or configured servers).

The parent process resolves the infrastructure once (starting the embedded Postgres and
Valkey when no URL is configured, or reusing the ones another process started), then runs
one worker in-process, or `--workers N` processes bound to the same port with SO_REUSEPORT,
under a supervisor (gateway.cli.supervisor: signals, restarts, metrics summed over workers).
Each worker serves through `gateway.front.server.FrontRunner` (the fast front before aiohttp).
SIGINT/SIGTERM/SIGQUIT drain (gateway.drain): not ready at once, new requests still served
for `server.drain_grace_s`, then the listener closes and in-flight requests finish, cut at
`server.drain_timeout_s` after the signal; every event is written to Postgres (within the
drain's exit bound), then the embedded servers it started are stopped.
SIGHUP reloads the config (gateway.reload).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import signal
import sys

from aiohttp import web

from gateway.cli.main import add_config_option
from gateway.cli.runtime import infrastructure_for
from gateway.cli.serve_preflight import preflight
from gateway.cli.supervisor import supervise
from gateway.cli.worker_link import WorkerLink
from gateway.config import Settings, load_settings
from gateway.logs import setup_logging
from gateway.tls import server_tls_context


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


def run_worker(
    config_path: str,
    host: str,
    port: int,
    database_url: str,
    redis_url: str,
    reuse_port: bool,
    link: WorkerLink | None = None,
) -> None:
    """One worker: this process (`link` None) or one a supervisor started."""
    if link is not None:
        link.bind()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the config watcher handles it
    _install_uvloop()
    settings = load_settings(config_path)
    setup_logging(settings.logging.level, settings.logging.format, settings.logging.requests)
    asyncio.run(_serve(settings, host, port, database_url, redis_url, reuse_port, link))


async def _serve(
    settings: Settings,
    host: str,
    port: int,
    database_url: str,
    redis_url: str,
    reuse_port: bool,
    link: WorkerLink | None = None,
) -> None:
    """Serve until SIGINT, SIGTERM or SIGQUIT (or the supervisor is gone), then stop
    gracefully (the runner's cleanup)."""
    from gateway import keys
    from gateway.app import create_app
    from gateway.drain import CUT_SETTLE_S
    from gateway.front.server import FrontRunner

    app = create_app(
        settings,
        database_url=database_url,
        redis_url=redis_url,
        watch_config=True,
        access_log_to_stderr=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        loop.add_signal_handler(signum, stop.set)
    if link is not None:
        link.watch(stop.set)
    drain = app[keys.drain]
    # From the listener's close (after the grace) until the cut, and the cut's settling.
    runner = FrontRunner(
        app, access_log=None, shutdown_timeout=drain.timeout_s - drain.grace_s + CUT_SETTLE_S
    )
    await runner.setup()
    try:
        tls = server_tls_context(settings)  # the front and aiohttp both serve over it
        await web.TCPSite(runner, host, port, reuse_port=reuse_port, ssl_context=tls).start()
        scheme = "https" if tls is not None else "http"
        freeze_startup_heap()
        print(f"tollbooth worker {os.getpid()} listening on {scheme}://{host}:{port}", flush=True)
        if link is not None:
            link.ready()
        await stop.wait()
        drain.begin()  # /health/ready answers 503 from now on; still serving
        await asyncio.sleep(drain.grace_s)
    finally:
        await runner.cleanup()


def freeze_startup_heap() -> None:
    """Take what start-up built (modules, config, pricing catalog, pools) out of the cyclic
    collector's walks: a full collection otherwise walks all of it each time, a pause of
    tens of milliseconds once hundreds of streams are open, which every stream waiting on
    the loop then adds to its latency. The start-up garbage is collected first."""
    gc.collect()
    gc.freeze()


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
        return supervise(
            settings,
            workers,
            functools.partial(
                run_worker, args.config, host, port, infra.database_url, infra.redis_url, True
            ),
        )
    return 0
