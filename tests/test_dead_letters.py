"""Rows Postgres refuses for what they hold: isolated from their batch into
`usage_dead_letters` (the rest of the batch written), and `replay-dead-letters` retrying them
(written ones removed, still-bad ones kept with attempts + 1), through the library and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import asyncpg
import pytest
import yaml

from gateway.cli import usage_replay
from storage.postgres import create_pool, migrate
from storage.usage.dead_letters import replay_dead_letters
from storage.usage.event import UsageEvent
from storage.usage.journal_format import encode_event
from storage.usage.writer import UsageWriter
from tests.helpers.numbered_events import numbered_event

NUL_AT, OVERFLOW_AT = 137, 802


async def write(pool: asyncpg.Pool, journal_dir: Path, events: list[UsageEvent]) -> UsageWriter:
    """Submit `events` as one batch and close (which writes it)."""
    writer = UsageWriter(pool, journal_dir=journal_dir, batch_size=len(events), flush_interval_s=5)
    await writer.start()
    for event in events:
        await writer.submit(event)
    await writer.close()
    return writer


def poisoned_batch() -> list[UsageEvent]:
    events = [numbered_event(i) for i in range(1_000)]
    events[NUL_AT] = numbered_event(NUL_AT, upstream_request_id="chatcmpl-\x00-nul")
    events[OVERFLOW_AT] = numbered_event(OVERFLOW_AT, latency_ms=2**31)  # latency_ms is integer
    return events


async def test_poisoned_rows_go_to_dead_letters_and_the_rest_of_the_batch_is_written(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    events = poisoned_batch()
    writer = await write(pool, tmp_path, events)

    assert (writer.written, writer.dead_lettered, writer.backlog) == (998, 2, 0)
    stored = {r["id"] for r in await pool.fetch("SELECT id FROM usage_events")}
    bad = {events[NUL_AT].id, events[OVERFLOW_AT].id}
    assert stored == {e.id for e in events} - bad
    letters = {r["event_id"]: r for r in await pool.fetch("SELECT * FROM usage_dead_letters")}
    assert set(letters) == bad

    nul = letters[events[NUL_AT].id]
    assert nul["event"] is None  # jsonb cannot hold a NUL; the exact line is kept
    assert nul["journal_line"] == encode_event(events[NUL_AT])[:-1]
    assert "0x00" in nul["error"] and nul["error"].startswith("22021")
    overflow = letters[events[OVERFLOW_AT].id]
    assert "out of range for type integer" in overflow["error"]
    assert overflow["event"]["latency_ms"] == 2**31
    assert overflow["event"]["id"] == str(events[OVERFLOW_AT].id)
    assert overflow["event"]["customer_id"] == events[OVERFLOW_AT].customer_id
    assert overflow["event"]["price_usd"] == str(events[OVERFLOW_AT].price_usd)
    assert (overflow["attempts"], nul["attempts"]) == (1, 1)
    assert overflow["first_failed_at"] == overflow["last_failed_at"]


async def test_a_replayed_journal_does_not_double_dead_letters(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    events = poisoned_batch()
    await write(pool, tmp_path / "a", events)
    await write(pool, tmp_path / "b", events)  # the same lines again, as after a crash
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 998
    assert await pool.fetchval("SELECT count(*) FROM usage_dead_letters") == 2
    assert await pool.fetchval("SELECT max(attempts) FROM usage_dead_letters") == 1


async def test_replay_writes_fixed_rows_and_keeps_bad_ones_with_one_more_attempt(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    events = poisoned_batch()
    await write(pool, tmp_path, events)
    nul_id, overflow_id = events[NUL_AT].id, events[OVERFLOW_AT].id

    first = {o.event_id: o for o in await replay_dead_letters(pool)}
    assert not first[nul_id].written and "event is NULL" in (first[nul_id].error or "")
    assert not first[overflow_id].written and first[overflow_id].attempts == 2
    assert "out of range" in (first[overflow_id].error or "")

    # An operator corrects the overflowing value; the NUL one is left as it is.
    await pool.execute(
        "UPDATE usage_dead_letters SET event = jsonb_set(event, '{latency_ms}', '5') "
        "WHERE event_id = $1",
        overflow_id,
    )
    second = {o.event_id: o for o in await replay_dead_letters(pool)}
    assert second[overflow_id].written
    assert not second[nul_id].written and second[nul_id].attempts == 3

    row = await pool.fetchrow("SELECT * FROM usage_events WHERE id = $1", overflow_id)
    assert row is not None
    assert row["latency_ms"] == 5
    expected = {c: getattr(events[OVERFLOW_AT], c) for c in UsageEvent.COLUMNS}
    assert {**dict(row), "latency_ms": 2**31} == expected
    letters = await pool.fetch("SELECT event_id, attempts FROM usage_dead_letters")
    assert [(r["event_id"], r["attempts"]) for r in letters] == [(nul_id, 3)]
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 999


async def test_rows_a_constraint_refused_are_written_once_it_is_lifted(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await pool.execute(
        "ALTER TABLE usage_events ADD CONSTRAINT no_beta CHECK (model <> 'beta-model')"
    )
    events = [
        numbered_event(i, model="beta-model" if i % 100 == 7 else "gpt-4o-mini") for i in range(300)
    ]
    writer = await write(pool, tmp_path, events)
    assert (writer.written, writer.dead_lettered) == (297, 3)
    errors = await pool.fetch("SELECT error FROM usage_dead_letters")
    assert all(r["error"].startswith("23514") for r in errors)  # check_violation

    dry = await replay_dead_letters(pool, dry_run=True)
    assert [o.written for o in dry] == [False] * 3
    await pool.execute("ALTER TABLE usage_events DROP CONSTRAINT no_beta")
    dry = await replay_dead_letters(pool, dry_run=True)
    assert [o.written for o in dry] == [True] * 3
    assert await pool.fetchval("SELECT count(*) FROM usage_dead_letters") == 3  # unchanged
    assert await pool.fetchval("SELECT max(attempts) FROM usage_dead_letters") == 1  # dry

    outcomes = await replay_dead_letters(pool, limit=2)
    assert [o.written for o in outcomes] == [True, True]
    assert await pool.fetchval("SELECT count(*) FROM usage_dead_letters") == 1
    await replay_dead_letters(pool)
    assert await pool.fetchval("SELECT count(*) FROM usage_dead_letters") == 0
    row = await pool.fetchrow("SELECT count(*) AS n, count(DISTINCT id) AS ids FROM usage_events")
    assert row is not None
    assert (row["n"], row["ids"]) == (300, 300)


def run_cli(config: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tollbooth usage")
    usage_replay.add_commands(parser.add_subparsers(dest="report", required=True))
    args = parser.parse_args([*argv, "--config", str(config)])
    code: int = args.func(args)
    return code


def test_the_cli_replays_and_reports(
    fresh_database_url: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TOLLBOOTH_DATABASE_URL", fresh_database_url)
    monkeypatch.setenv("TOLLBOOTH_REDIS_URL", redis_url)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "providers": {"openai": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
                "tiers": {"free": {"limits": {}}},
            }
        )
    )
    events = poisoned_batch()

    async def setup() -> None:
        pool = await create_pool(fresh_database_url, max_size=2)
        try:
            await migrate(pool)
            await write(pool, tmp_path / "journal", events)
            await pool.execute(
                "UPDATE usage_dead_letters SET event = jsonb_set(event, '{latency_ms}', '7') "
                "WHERE event_id = $1",
                events[OVERFLOW_AT].id,
            )
        finally:
            await pool.close()

    asyncio.run(setup())
    assert run_cli(config, "replay-dead-letters", "--dry-run", "--format", "json") == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["dry_run"], report["written"], report["still_failing"]) == (True, 1, 1)

    assert run_cli(config, "replay-dead-letters") == 1  # the NUL row still fails
    out = capsys.readouterr().out
    assert "1 written, 1 still failing" in out
    assert str(events[NUL_AT].id) in out and "event is NULL" in out
    assert run_cli(config, "replay-dead-letters", "--limit", "0") == 2
