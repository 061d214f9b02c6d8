"""`tollbooth bench`: measure the gateway against its upstream, and the upstream alone.

Starts the upstream (`tollbooth mock-provider`, or with `--upstream raw` its answers replayed
by a bare uvloop server), `tollbooth serve` (quotas and metering on, real Postgres and Valkey:
the ones `TOLLBOOTH_DATABASE_URL` / `TOLLBOOTH_REDIS_URL` name, else embedded ones in a temp
data dir) and a raw asyncio load generator, each in its own process, and prints a table per
scenario (see `gateway.bench.report`), or one JSON object with `--json`. Progress goes to
stderr. The command's own `--config` is accepted for uniformity and ignored: the benchmark
writes its own config. Exit 0 when every phase ran (whether or not the targets were met),
1 when the benchmark could not run (the message names the log to read), 2 for bad options.

Paced streams at scale (not in the default set), e.g. 100, 300 and 600 open streams of 100
tokens 20 ms apart, starts spread over 2 s, against the raw upstream:
`tollbooth bench --scenarios paced-streams --concurrency 100,300,600 --tokens 100
--token-delay-ms 20 --stagger-s 2 --upstream raw`. Each concurrency runs against the gateway,
then directly against the upstream, then (unless `--no-floor`) through a proxy that only moves
bytes, the "floor" row: what relaying an event costs on this machine whatever the proxy.
To give the load generator a core of its own (e.g. for `--compare-workers 1,2`), pin the
parts: `--pin gateway=0,1 --pin loadgen=2 --pin upstream=3` (like `taskset -c`; the gateway's
workers inherit its CPUs, and the floor proxy runs on them too).

`tollbooth bench portal` (gateway.cli.bench_portal) times the usage pages instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import orjson

from gateway.bench.report import render_text, to_json
from gateway.bench.runner import BenchError, run_bench
from gateway.bench.scenarios import DEFAULT_SCENARIOS, SCENARIO_NAMES, BenchOptions
from gateway.cli.bench_portal import register_portal
from gateway.cli.main import add_config_option

QUICK_DURATION_S = 2.0
QUICK_WARMUP_S = 0.5
QUICK_CONCURRENCIES = (1, 16)
QUICK_PACED_CONCURRENCIES = (1,)


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in SCENARIO_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"scenarios are {', '.join(SCENARIO_NAMES)}")
    return names


PIN_ROLES = ("gateway", "upstream", "loadgen")


def _pin(text: str) -> tuple[str, tuple[int, ...]]:
    role, _, cpus = text.partition("=")
    if role not in PIN_ROLES:
        raise argparse.ArgumentTypeError(f"expected ROLE=CPUS with ROLE one of {PIN_ROLES}")
    try:
        values = tuple(int(part) for part in cpus.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU numbers, got {cpus!r}") from None
    usable = os.sched_getaffinity(0)
    if not values or any(v not in usable for v in values):
        raise argparse.ArgumentTypeError(f"CPUs must be among {sorted(usable)}, got {cpus!r}")
    return role, values


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="benchmark the gateway against the mock provider",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_option(parser)
    parser.add_argument("--duration", type=float, help="measured seconds per phase (default 10)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per phase (default 1)")
    parser.add_argument(
        "--quick", action="store_true", help="a short run: 2 s phases, concurrency 1 and 16"
    )
    parser.add_argument(
        "--concurrency", type=_counts, metavar="N,N,...", help="concurrencies (default 1,16,64)"
    )
    parser.add_argument(
        "--paced-concurrency",
        type=_counts,
        metavar="N,N,...",
        help="concurrencies of the paced stream (default 1,16)",
    )
    workers = parser.add_mutually_exclusive_group()
    workers.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    workers.add_argument(
        "--compare-workers",
        type=_counts,
        metavar="N,N,...",
        help="one gateway run per worker count, e.g. 1,2",
    )
    parser.add_argument(
        "--scenarios",
        type=_names,
        default=DEFAULT_SCENARIOS,
        metavar="LIST",
        help=f"subset of {','.join(SCENARIO_NAMES)} (default {','.join(DEFAULT_SCENARIOS)})",
    )
    parser.add_argument(
        "--stream-tokens", "--tokens", type=int, default=35, help="output tokens per answer"
    )
    parser.add_argument(
        "--token-delay-ms", type=int, default=5, help="delay between events of the paced streams"
    )
    parser.add_argument(
        "--stagger-s",
        type=float,
        metavar="SECONDS",
        help="paced-streams: spread the connections' starts over this long "
        "(default: one stream's length, so streams arrive at a steady rate)",
    )
    parser.add_argument(
        "--pin",
        type=_pin,
        action="append",
        default=[],
        metavar="ROLE=CPUS",
        help="run gateway, upstream or loadgen on these CPUs only, e.g. loadgen=1",
    )
    parser.add_argument(
        "--upstream",
        choices=("mock", "raw"),
        default="mock",
        help="mock: `tollbooth mock-provider`; raw: its answers replayed by a "
        "bare uvloop server, cheap enough not to compete with the gateway",
    )
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="paced-streams: after each concurrency's gateway and direct phases, a third "
        "through gateway.bench.floor_proxy, a proxy that only moves bytes (pinned like the "
        "gateway), so the table shows the machine's share of the CPU per event and the "
        "added ttfb (default: on; --no-floor leaves it out)",
    )
    parser.add_argument(
        "--loadgen-procs",
        type=int,
        default=1,
        help="load generator processes per phase (concurrency is split)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="also run the c=16 phase of chat (else of the first scenario; for "
        "paced-streams its middle concurrency) under py-spy; collapsed stacks go to FILE",
    )
    parser.add_argument(
        "--profile-concurrency", type=int, metavar="N", help="the profiled phase's concurrency"
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="py-spy --native (C frames; idle waits in libc show as work, "
        "so read Python frames from a profile without it)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep config, logs and data here (default: a temp dir)"
    )
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the phases, a steady chat load (c=16) this long, with the "
        "gateway's RSS sampled every 30 s (memory flat or growing)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)
    kinds = parser.add_subparsers(dest="bench_kind", metavar="KIND")
    register_portal(kinds)


def options_from(args: argparse.Namespace) -> BenchOptions:
    quick = args.quick
    default = BenchOptions()
    warmup_s = QUICK_WARMUP_S if quick else default.warmup_s
    return BenchOptions(
        duration_s=args.duration or (QUICK_DURATION_S if quick else default.duration_s),
        warmup_s=args.warmup if args.warmup is not None else warmup_s,
        concurrencies=args.concurrency or (QUICK_CONCURRENCIES if quick else default.concurrencies),
        paced_concurrencies=args.paced_concurrency
        or (QUICK_PACED_CONCURRENCIES if quick else default.paced_concurrencies),
        workers=args.compare_workers or (args.workers,),
        scenarios=args.scenarios,
        stream_tokens=args.stream_tokens,
        token_delay_ms=args.token_delay_ms,
        stagger_s=args.stagger_s,
        loadgen_procs=args.loadgen_procs,
        upstream=args.upstream,
        profile=args.profile,
        profile_concurrency=args.profile_concurrency,
        profile_native=args.profile_native,
        workdir=args.workdir,
        soak_s=args.soak,
        floor=args.floor,
        cpus=tuple(dict(args.pin).items()),
    )


def run(args: argparse.Namespace) -> int:
    if args.workers < 1 or args.loadgen_procs < 1 or args.stream_tokens < 1:
        print(
            "tollbooth: --workers, --loadgen-procs and --stream-tokens must be >= 1",
            file=sys.stderr,
        )
        return 2
    if (args.stagger_s is not None and args.stagger_s < 0) or args.token_delay_ms < 0:
        print("tollbooth: --stagger-s and --token-delay-ms must be >= 0", file=sys.stderr)
        return 2
    options = options_from(args)
    argv = sys.argv[1:] if sys.argv[1:2] == ["bench"] else ["bench", "..."]
    command = "tollbooth " + " ".join(shlex.quote(a) for a in argv)
    try:
        report = run_bench(options, command)
    except BenchError as exc:
        print(f"tollbooth: bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(to_json(report), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        sys.stdout.write(render_text(report))
    return 0
