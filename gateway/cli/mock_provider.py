"""`tollbooth mock-provider`: serve the fake provider (every API family) on a port.

Prints `mock provider listening on http://HOST:PORT` once the socket is bound (with the real
port when `--port 0` asked for any free one), then serves until SIGINT or SIGTERM and exits
0. It runs on uvloop when it is installed. A port already in use is a runtime failure:
printed to stderr, exit 1. It needs no config, database or Redis; `--config` is accepted
for uniformity and ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from gateway.cli.main import add_config_option
from gateway.mock_provider import MockOptions, create_mock_app


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "mock-provider",
        help="serve a fake provider API: OpenAI, Anthropic, Azure, Gemini, Bedrock (tests)",
        description="Serve a fake OpenAI, Anthropic, Azure OpenAI, Gemini and Bedrock API "
        "with deterministic token counts "
        "and x-mock-* fault-injection headers.",
    )
    add_config_option(parser)
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=9100, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay before the first byte")
    parser.add_argument(
        "--token-delay-ms", type=int, default=0, help="delay between streamed events"
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction of requests answering 500"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the error-rate RNG")
    parser.add_argument(
        "--api-key", default=None, help="the only key accepted (default: any non-empty key)"
    )
    parser.add_argument(
        "--output-tokens", type=int, default=20, help="answer length when the request sets none"
    )
    parser.add_argument(
        "--aws-region",
        default=None,
        help="the only region a Bedrock request's SigV4 scope may name (default: any)",
    )
    parser.add_argument(
        "--request-log-limit",
        type=int,
        default=10_000,
        help="requests kept for GET /_mock/requests (0: none)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.error_rate <= 1:
        print("tollbooth: --error-rate must be between 0 and 1", file=sys.stderr)
        return 2
    options = MockOptions(
        latency_ms=args.latency_ms,
        token_delay_ms=args.token_delay_ms,
        error_rate=args.error_rate,
        seed=args.seed,
        api_key=args.api_key,
        output_tokens=args.output_tokens,
        request_log_limit=args.request_log_limit,
        aws_region=args.aws_region,
    )
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(create_mock_app(options), args.host, args.port))
    except OSError as exc:
        print(f"tollbooth: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        print(f"mock provider listening on http://{host}:{bound_port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
