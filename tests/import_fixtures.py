"""Files for `tollbooth usage import` tests and its benchmark: a large CSV in the export's
columns (with some rows made bad on purpose), and the CLI run as a user runs it."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from storage.usage.event import UsageEvent

CONFIG = """
providers:
  openai: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
tiers:
  free: {limits: {requests_per_minute: 20}}
  pro: {limits: {requests_per_minute: 600}}
retention: {raw_events_days: null}
"""

# Each bad row is one of these (column, value), cycling.
BAD_VALUES = (
    ("created_at", "yesterday"),
    ("input_tokens", "-5"),
    ("price_usd", "0.12345678901234"),
    ("customer_id", "no spaces allowed"),
    ("usage_source", "guessed"),
    ("id", "not-a-uuid"),
)


@dataclass(frozen=True, slots=True)
class GeneratedFile:
    path: Path
    rows: int
    bad_lines: dict[int, str]  # file line -> the column made bad


def write_usage_csv(
    path: Path,
    rows: int,
    *,
    now: datetime,
    days: int = 150,
    customers: int = 20,
    bad_every: int = 0,
    seed: int = 7,
) -> GeneratedFile:
    """`rows` events over the `days` before `now`, oldest first, in `usage export --format
    csv`'s columns; every `bad_every`-th row (0: none) has one bad value."""
    rng = random.Random(seed)
    index = {name: i for i, name in enumerate(UsageEvent.COLUMNS)}
    bad_lines: dict[int, str] = {}
    span_s = days * 86_400
    # Oldest first, as `usage export` writes them (and as most logs are kept).
    offsets = sorted(
        (rng.randrange(1, span_s) * 10**6 + rng.randrange(10**6) for _ in range(rows)), reverse=True
    )
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(",".join(UsageEvent.COLUMNS) + "\n")
        for n, offset in enumerate(offsets):
            at = now - timedelta(microseconds=offset)
            priced = n % 17 != 0
            cells = [
                str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                at.isoformat(),
                f"cust-{rng.randrange(customers):02d}",
                rng.choice(("web", "api", "")),
                "u1",
                "key_0123456789abcdef",
                "pro",
                "openai",
                rng.choice(("gpt-4o", "gpt-4o-mini")),
                "/v1/chat/completions",
                rng.choice(("200", "200", "200", "429")),
                "false",
                str(rng.randrange(5000)),
                str(rng.randrange(900)),
                str(rng.randrange(50)),
                "0",
                "0",
                "provider",
                f"0.{rng.randrange(10**10):010d}".rstrip("0").rstrip(".") if priced else "",
                f"0.{rng.randrange(10**10):010d}".rstrip("0").rstrip(".") if priced else "",
                "cat-1",
                str(rng.randrange(2000)),
                "chatcmpl-1",
                '"{""config_hash"":""abc""}"',
            ]
            if bad_every and n % bad_every == bad_every - 1:
                column, value = BAD_VALUES[(n // bad_every) % len(BAD_VALUES)]
                cells[index[column]] = f'"{value}"' if " " in value else value
                bad_lines[n + 2] = column
            out.write(",".join(cells) + "\n")
    return GeneratedFile(path, rows, bad_lines)


class Cli:
    """`python -m gateway.cli.main ...` in `workdir`, against the database at `url` (and
    the embedded Valkey of `workdir` unless `redis_url` is given)."""

    def __init__(
        self, workdir: Path, url: str, redis_url: str | None = None, config: str = CONFIG
    ) -> None:
        self.workdir = workdir
        (workdir / "config.yaml").write_text(config)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLBOOTH_")}
        self.env["TOLLBOOTH_DATABASE_URL"] = url
        if redis_url is not None:
            self.env["TOLLBOOTH_REDIS_URL"] = redis_url

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gateway.cli.main", *args]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout
