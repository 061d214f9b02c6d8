"""What every admin command shares: a migrated database, one-line errors, and plain output.

`open_runtime(config_path)` loads the settings, enters `storage.embedded.default.infrastructure`
(the
configured URLs, or the embedded servers: reused while `serve` runs on the same data dir,
otherwise started here and stopped on exit), opens a small asyncpg pool, applies the schema,
and yields a `Runtime`. Where the servers are is printed to stderr, so stdout stays parseable.
`infrastructure_for(settings)` is the infrastructure step alone, for `serve`.

`run_command(args, body)` runs `body(runtime)` and turns failures into an exit code with one
line on stderr, never a traceback: 2 for bad usage (`UsageError`) or an invalid config
(`ConfigError`, reported by `gateway.cli.main`), 1 for anything the database, the embedded
servers or the account rules refused.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from gateway.admin import AdminError, UnknownTierError
from gateway.config import Settings, load_settings
from storage.accounts import AccountError
from storage.embedded.default import EmbeddedError, Infrastructure, infrastructure
from storage.postgres import MigrationError, create_pool, migrate

OUTPUT_FORMATS = ("table", "json")


class CommandError(Exception):
    """A command cannot do what was asked; the message is printed as is. Exit code 1."""

    exit_code = 1


class UsageError(CommandError):
    """The command line asks for something impossible (e.g. an unknown tier). Exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    infra: Infrastructure
    migrations_applied: list[str]  # schema versions this process applied at open


def announce(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def infrastructure_for(settings: Settings) -> Iterator[Infrastructure]:
    """The configured servers, or the embedded ones (announced on stderr); see
    storage.embedded.default."""
    with infrastructure(
        settings.storage.database_url,
        settings.storage.redis_url,
        settings.data_dir(),
        announce=announce,
    ) as infra:
        yield infra


@asynccontextmanager
async def open_runtime(config_path: str) -> AsyncIterator[Runtime]:
    settings = load_settings(config_path)
    # Starting embedded servers blocks for a moment; nothing else runs on this loop yet.
    with infrastructure_for(settings) as infra:
        pool = await create_pool(
            infra.database_url, min_size=1, max_size=4, pgbouncer=settings.storage.pgbouncer
        )
        try:
            applied = await migrate(pool)
            yield Runtime(settings=settings, pool=pool, infra=infra, migrations_applied=applied)
        finally:
            await pool.close()


def run_command(args: argparse.Namespace, body: Callable[[Runtime], Awaitable[int]]) -> int:
    """Run `body` with a runtime for `args.config`; failures become one stderr line."""

    async def main() -> int:
        async with open_runtime(args.config) as runtime:
            return await body(runtime)

    try:
        return asyncio.run(main())
    except (CommandError, AdminError, AccountError, EmbeddedError, MigrationError) as exc:
        print(f"tollbooth: {exc}", file=sys.stderr)
        if isinstance(exc, CommandError):
            return exc.exit_code
        return 2 if isinstance(exc, UnknownTierError) else 1
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"tollbooth: database error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tollbooth: {exc.strerror or exc}", file=sys.stderr)
        return 1


def usage_error(message: str) -> int:
    """Report bad usage found before any server is started; returns the exit code (2)."""
    print(f"tollbooth: {message}", file=sys.stderr)
    return UsageError.exit_code


def short_time(moment: datetime | None) -> str | None:
    """A timestamp for a table: UTC, to the second, e.g. 2026-05-01 12:00:00Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else None


def add_format_option(parser: argparse.ArgumentParser, formats: Sequence[str]) -> None:
    parser.add_argument(
        "--format",
        choices=formats,
        default=formats[0],
        help="output format (default: %(default)s)",
    )


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; None shows as '-'."""
    cells = [[str(h) for h in headers]]
    cells += [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines) + "\n"


def write_output(text: str, path: str | None) -> None:
    """To stdout, or to the file named by -o (replaced whole)."""
    if path is None or path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
