"""`tollbooth usage replay-dead-letters [--limit N] [--dry-run]`: retry the usage events
PostgreSQL refused (storage.usage.dead_letters).

Oldest first, one transaction per event: an event PostgreSQL now accepts moves to
`usage_events` (never doubled) and leaves `usage_dead_letters`; one still refused stays, with
`attempts + 1` and the new error. An event stored as NULL (e.g. a NUL character) needs a
corrected `event` written by hand first. `--dry-run` tries each one and rolls back, changing
nothing. Output: one row per event (`--format json`: an object with `dry_run`, `written`,
`still_failing` and `events`, a list of `event_id`, `written`, `attempts`, `error`,
`first_failed_at`). Exit 0 when every event tried was (or would be) written, 1 when some still
fail or on a database error, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.cli.main import add_config_option
from gateway.cli.runtime import (
    OUTPUT_FORMATS,
    Runtime,
    add_format_option,
    render_table,
    run_command,
    short_time,
    usage_error,
    write_output,
)
from storage.usage.dead_letters import ReplayOutcome, replay_dead_letters


def add_commands(actions: Any) -> None:
    """Add the dead-letter subcommands to the `tollbooth usage` subparsers."""
    replay: argparse.ArgumentParser = actions.add_parser(
        "replay-dead-letters", help="retry usage events Postgres refused", description=__doc__
    )
    replay.add_argument("--limit", type=int, metavar="N", help="at most N events (oldest first)")
    replay.add_argument(
        "--dry-run", action="store_true", help="try each event and roll back; change nothing"
    )
    add_format_option(replay, OUTPUT_FORMATS)
    add_config_option(replay)
    replay.set_defaults(func=_replay)


def _replay(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        return usage_error(f"--limit must be at least 1, got {args.limit}")

    async def body(runtime: Runtime) -> int:
        outcomes = await replay_dead_letters(runtime.pool, limit=args.limit, dry_run=args.dry_run)
        write_output(render(outcomes, args.format, dry_run=args.dry_run), None)
        return 0 if all(o.written for o in outcomes) else 1

    return run_command(args, body)


def render(outcomes: list[ReplayOutcome], fmt: str, *, dry_run: bool) -> str:
    written = sum(1 for o in outcomes if o.written)
    if fmt == "json":
        return (
            json.dumps(
                {
                    "dry_run": dry_run,
                    "written": written,
                    "still_failing": len(outcomes) - written,
                    "events": [
                        {
                            "event_id": str(o.event_id),
                            "written": o.written,
                            "attempts": o.attempts,
                            "error": o.error,
                            "first_failed_at": o.first_failed_at.isoformat(),
                        }
                        for o in outcomes
                    ],
                },
                indent=2,
            )
            + "\n"
        )
    verb = "would be written" if dry_run else "written"
    rows = [
        [
            str(o.event_id),
            verb if o.written else "still failing",
            o.attempts,
            short_time(o.first_failed_at),
            o.error,
        ]
        for o in outcomes
    ]
    table = render_table(["EVENT", "RESULT", "ATTEMPTS", "FIRST FAILED", "ERROR"], rows)
    return table + f"{written} {verb}, {len(outcomes) - written} still failing\n"
