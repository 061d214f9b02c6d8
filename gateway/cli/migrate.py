"""`tollbooth migrate`: apply the Postgres schema (storage/schema/*.sql) and say what changed.

Idempotent and safe to run while `serve` runs (migrations serialize on an advisory lock).
Exit 1 when the database cannot be reached or a schema file fails (nothing is half-applied).
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli.main import add_config_option
from gateway.cli.runtime import Runtime, run_command


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "migrate", help="apply the database schema", description=__doc__
    )
    add_config_option(parser)
    parser.set_defaults(func=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    async def body(runtime: Runtime) -> int:
        applied = runtime.migrations_applied  # open_runtime migrates; report what it did
        if applied:
            print("applied: " + ", ".join(applied))
        else:
            print("schema is up to date")
        return 0

    return run_command(args, body)
