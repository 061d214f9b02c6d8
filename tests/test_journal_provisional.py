"""Provisional usage events of exchanges in flight (storage.usage.journal_open,
storage.usage.interrupted,
the writer's replay, metering's open/progress): the latest record wins, settled exchanges
leave no file behind and never hold a segment back, a killed process's records survive (a
torn line ignored), and at the next start every exchange with no event gets its provisional
one, priced, while an exchange that has an event (in the journal, in Postgres, or
dead-lettered) keeps it."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis

from gateway.config import QuotasConfig, parse_settings
from gateway.logs import AccessLog
from gateway.metering import Exchange, Recorder, interrupted_pricer
from gateway.metrics import Metrics
from gateway.providers.anthropic import AnthropicApi
from gateway.providers.base import SSEEvent
from gateway.providers.openai import OpenAIApi
from gateway.quotas import QuotaPolicy
from gateway.runtime import Runtime
from gateway.tokens import TokenCounter
from pricing.catalog import Catalog
from pricing.models import Usage
from storage.accounts import KeyPrincipal
from storage.quota.store import QuotaStore
from storage.usage.batches import database_key
from storage.usage.event import UsageEvent
from storage.usage.journal import Journal
from storage.usage.journal_format import encode_event, encode_provisional, event_from_line
from storage.usage.journal_open import OpenLog
from storage.usage.journal_slots import AppendFiles
from storage.usage.writer import UsageWriter

SETTINGS = parse_settings(
    b"providers: {anthropic: {kind: anthropic, base_url: http://x}}\ntiers: {pro: {limits: {}}}\n"
)
INTERRUPTED = {"interrupted": "gateway_stopped"}


def provisional(
    event_id: uuid.UUID, *, output: int = 0, streamed: bool = True, model: str = "gpt-4o"
) -> bytes:
    return encode_provisional(
        event_id,
        datetime.now(UTC),
        "cust_k9",
        "proj",
        None,
        "key_0123456789abcdef",
        "pro",
        "openai",
        model,
        "chat.completions",
        502,
        streamed,
        10,
        output,
        0,
        0,
        1234,
        None,
        dict(INTERRUPTED),
    )


def final(event_id: uuid.UUID) -> UsageEvent:
    event = event_from_line(UsageEvent.COLUMNS, provisional(event_id)[:-1])
    assert event is not None
    return replace(
        event,
        status_code=200,
        usage_source="provider",
        input_tokens=12,
        output_tokens=5,
        metadata={},
    )


def open_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("**/*.open"))


# -- the open-record log on its own ------------------------------------------------------


def test_encode_provisional_writes_what_encode_event_writes(tmp_path: Path) -> None:
    event_id = uuid.uuid4()
    line = encode_provisional(
        event_id,
        datetime.now(UTC),
        "cust\t1",
        None,
        "user\\x",
        "key_0123456789abcdef",
        "pro",
        "openai",
        "gpt-4o\nevil",
        "chat.completions",
        502,
        False,
        10,
        3,
        2,
        1,
        77,
        "chatcmpl-1",
        {"config_hash": "abc", **INTERRUPTED},
    )
    event = event_from_line(UsageEvent.COLUMNS, line[:-1])
    assert event is not None
    assert encode_event(event) == line  # same columns, same escaping, one format
    assert (event.model, event.customer_id, event.user_id) == ("gpt-4o\nevil", "cust\t1", "user\\x")
    assert (event.usage_source, event.price_usd, event.reasoning_tokens) == ("estimated", None, 0)


def test_settled_exchanges_leave_no_file_and_progress_moves_the_pin(tmp_path: Path) -> None:
    log = OpenLog(tmp_path, [], [], rotate_bytes=600)  # about two records per file
    ids = [uuid.uuid4() for _ in range(12)]
    for event_id in ids:
        log.record(event_id, provisional(event_id))
    assert len(open_files(tmp_path)) >= 5
    held = ids[2]
    for event_id in ids:
        if event_id != held:
            log.settle(event_id)
    # Only the active file and the one with the unsettled exchange's latest record remain.
    assert len(open_files(tmp_path)) == 2 and log.live == 1
    pinned = open_files(tmp_path)[0]
    for _ in range(4):  # progress records: the latest moves to the newest file
        log.record(held, provisional(held, output=5))
    assert not pinned.exists()
    log.settle(held)
    assert log.live == 0 and len(open_files(tmp_path)) == 1  # the active one
    assert log.close() is False
    assert open_files(tmp_path) == []


def test_segments_are_deleted_when_committed_while_an_exchange_is_open(
    tmp_path: Path,
) -> None:
    journal = Journal.open(tmp_path, segment_bytes=1_000)
    event_id = uuid.uuid4()
    line = provisional(event_id)
    journal.open_log.record(event_id, line)
    for i in range(60):
        journal.append(f"event-{i:06d}\t{'x' * 40}\n".encode())
    while (batch := journal.read(7)) is not None:
        journal.commit(batch)
    assert len(sorted(tmp_path.glob("*/*.seg"))) == 1  # the active segment only
    assert journal.pending == 0 and journal.open_log.live == 1
    journal.close()  # the unsettled exchange keeps its slot, and only its record
    assert sorted(tmp_path.glob("*/*.seg")) == [] and len(open_files(tmp_path)) == 1
    adopted = Journal.open(tmp_path)
    assert [(r.event_id, r.line) for r in adopted.open_log.orphans] == [(event_id, line[:-1])]
    adopted.open_log.release_orphans()
    adopted.close()
    assert not tmp_path.exists()  # nothing left anywhere


_CRASHING = textwrap.dedent("""
    import json, os, signal, sys, uuid
    from pathlib import Path
    from storage.usage.journal import Journal
    journal = Journal.open(Path(sys.argv[1]))
    for action, *args in json.load(open(sys.argv[2])):
        if action == "record":
            journal.open_log.record(uuid.UUID(args[0]), args[1].encode())
        elif action == "append":
            journal.append(args[0].encode())
        else:
            journal.open_log.settle(uuid.UUID(args[0]))
    print(journal.slot, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no fsync
""")


def crash_after(directory: Path, actions: list[list[str]], tmp_path: Path) -> Path:
    script = tmp_path / "actions.json"
    script.write_text(json.dumps(actions))
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING, str(directory), str(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr
    return Path(proc.stdout.strip())


@pytest.mark.slow
def test_a_killed_process_leaves_the_latest_record_of_each_exchange(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    directory = tmp_path / "journal"
    crash_after(
        directory,
        [
            ["record", a.hex, provisional(a).decode()],
            ["record", b.hex, provisional(b).decode()],
            ["record", a.hex, provisional(a, output=42).decode()],
        ],
        tmp_path,
    )
    [record_file] = open_files(directory)
    with open(record_file, "ab") as f:
        f.write(provisional(b, output=99)[:50])  # a write the kill cut short
    with caplog.at_level(logging.WARNING, logger="storage.usage.journal"):
        journal = Journal.open(directory)
    assert any("torn line (50 bytes)" in r.getMessage() for r in caplog.records)
    orphans = {r.event_id: r for r in journal.open_log.orphans}
    assert set(orphans) == {a, b}
    outputs = {}
    for event_id, record in orphans.items():
        event = event_from_line(record.columns, record.line)
        assert event is not None
        outputs[event_id] = event.output_tokens
    assert outputs == {a: 42, b: 0}  # the last whole record of each wins
    journal.close()  # not released: they stay for the next start
    assert len(Journal.open(directory).open_log.orphans) == 2


# -- the writer's replay, against a real Postgres ------------------------------------------


async def drained(writer: UsageWriter) -> None:
    for _ in range(200):
        if writer.backlog == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the writer never drained ({writer.backlog} left)")


async def stored(pool: asyncpg.Pool) -> dict[uuid.UUID, asyncpg.Record]:
    rows = await pool.fetch("SELECT * FROM usage_events")
    return {row["id"]: row for row in rows}


@pytest.mark.slow
async def test_interrupted_exchanges_are_recorded_once_and_a_real_event_always_wins(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    journal_dir = tmp_path / "journal"
    cut, finished, committed, waiting, dead = (uuid.uuid4() for _ in range(5))
    # `committed` finished long ago: its event is in Postgres, its segment deleted.
    earlier = UsageWriter(pool, journal_dir=journal_dir, flush_interval_s=0.05)
    await earlier.start()
    earlier.submit_nowait(final(committed))
    await earlier.close()
    # `dead`'s event was refused by Postgres: it is in the dead-letter table.
    await pool.execute(
        "INSERT INTO usage_dead_letters (event_id, journal_line, error) "
        "VALUES ($1, 'x', 'refused')",
        dead,
    )
    directory = journal_dir / await database_key(pool)
    crash_after(
        directory,
        [
            *(
                ["record", i.hex, provisional(i, streamed=i != waiting).decode()]
                for i in (cut, finished, committed, waiting, dead)
            ),
            ["record", cut.hex, provisional(cut, output=7).decode()],  # stream progress
            ["append", encode_event(final(finished)).decode()],  # journaled, not in Postgres
            ["settle", finished.hex],
        ],
        tmp_path,
    )

    runtime = Runtime(SETTINGS, Catalog.load_default())
    writer = UsageWriter(
        pool, journal_dir=journal_dir, flush_interval_s=0.05, reprice=interrupted_pricer(runtime)
    )
    await writer.start()
    await drained(writer)
    rows = await stored(pool)
    assert writer.interrupted_recorded == 2
    await writer.close()

    assert set(rows) == {cut, finished, committed, waiting}  # once each; `dead` stays dead
    for event_id in (finished, committed):  # the real event, not the provisional one
        assert rows[event_id]["usage_source"] == "provider"
        assert rows[event_id]["status_code"] == 200
    for event_id, output in ((cut, 7), (waiting, 0)):
        row = rows[event_id]
        assert (row["usage_source"], row["status_code"]) == ("estimated", 502)
        assert (row["input_tokens"], row["output_tokens"]) == (10, output)
        assert row["metadata"]["interrupted"] == "gateway_stopped"
        charge = runtime.current.pricing.charge(
            "gpt-4o",
            Usage(input_tokens=10, output_tokens=output, source="estimated"),
            at=row["created_at"],
            customer_id="cust_k9",
            tier="pro",
            duration_ms=1234,
            succeeded=False,
        )
        assert charge is not None and charge.price_usd > 0
        assert (row["cost_usd"], row["price_usd"]) == (charge.cost_usd, charge.price_usd)
    assert open_files(journal_dir) == [] and not directory.exists()


async def test_without_pricing_an_interrupted_exchange_is_recorded_with_null_money(
    pool: asyncpg.Pool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cut = uuid.uuid4()
    first = UsageWriter(pool, journal_dir=tmp_path, flush_interval_s=0.05)
    await first.start()
    first.provisional(cut, provisional(cut))  # still upstream when the gateway stops
    settled = uuid.uuid4()
    first.provisional(settled, provisional(settled))
    first.submit_nowait(final(settled))
    await first.close()
    assert first.open_exchanges == 1 and len(open_files(tmp_path)) == 1

    second = UsageWriter(pool, journal_dir=tmp_path, flush_interval_s=0.05)
    with caplog.at_level(logging.ERROR, logger="storage.usage.writer"):
        await second.start()
        await drained(second)
    rows = await stored(pool)
    await second.close()
    assert set(rows) == {cut, settled}
    assert rows[cut]["price_usd"] is None and rows[cut]["usage_source"] == "estimated"
    assert rows[settled]["usage_source"] == "provider"
    assert any("NULL money" in r.getMessage() for r in caplog.records)
    assert open_files(tmp_path) == []


# -- metering: the records the gateway writes ------------------------------------------------


async def test_stream_progress_records_the_output_so_far_and_the_reported_input(
    pool: asyncpg.Pool, redis_url: str, tmp_path: Path
) -> None:
    writer = UsageWriter(pool, journal_dir=tmp_path, flush_interval_s=0.05)
    await writer.start()
    client = redis.Redis.from_url(redis_url)
    tokens = TokenCounter()
    recorder = Recorder(
        writer,
        QuotaPolicy(QuotaStore(client), QuotasConfig()),
        tokens,
        Metrics(),
        AccessLog(enabled=False),
    )
    api = AnthropicApi()
    principal = KeyPrincipal("key_0123456789abcdef", "cust_k9", None, None, "pro", False)
    ex = Exchange(
        uuid.uuid4(),
        datetime.now(UTC),
        time.perf_counter(),
        principal,
        Runtime(SETTINGS, Catalog.load_default()).current,
        "anthropic",
        "claude-sonnet-4-5",
        api.endpoints[0],
        True,
        "a prompt",
    )
    try:
        recorder.open(ex, 40)
        meter = api.stream_meter(api.endpoints[0], False)
        recorder.track_stream(ex, meter)
        progress = recorder.write_progress

        def feed(name: str, data: dict[str, object]) -> None:
            meter.observe(SSEEvent(name, json.dumps(data).encode(), b""))

        def latest() -> UsageEvent:
            [path] = open_files(tmp_path)
            event = event_from_line(UsageEvent.COLUMNS, path.read_bytes().splitlines()[-1])
            assert event is not None
            return event

        assert (latest().input_tokens, latest().output_tokens) == (40, 0)
        feed(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "usage": {"input_tokens": 25, "cache_read_input_tokens": 5, "output_tokens": 1},
                },
            },
        )
        first, second = "Once upon a time, " * 20, "there was a gateway. " * 30
        feed(
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": first}},
        )
        progress()
        feed(
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": second}},
        )
        progress()
        event = latest()
        assert event.input_tokens == 30 and event.cached_input_tokens == 5  # reported
        counted = tokens.count(ex.model, first) + tokens.count(ex.model, second)
        assert event.output_tokens == counted  # each piece of text counted once
        assert event.upstream_request_id == "msg_1" and event.latency_ms >= 0
        assert event.metadata["interrupted"] == "gateway_stopped"
        assert writer.open_exchanges == 1

        # A cumulative report above the count is a floor; text after it is counted on the
        # count, never added to the report.
        feed(
            "message_delta",
            {"type": "message_delta", "delta": {}, "usage": {"output_tokens": counted + 100}},
        )
        progress()
        assert latest().output_tokens == counted + 100
        third = "The end."
        feed(
            "content_block_delta",
            {"type": "content_block_delta", "delta": {"type": "text_delta", "text": third}},
        )
        progress()
        assert tokens.count(ex.model, third) < 100
        assert latest().output_tokens == counted + 100
    finally:
        await writer.close()
        await client.aclose()


async def test_progress_of_every_open_stream_goes_in_one_write_and_stops_at_untrack(
    pool: asyncpg.Pool, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = UsageWriter(pool, journal_dir=tmp_path, flush_interval_s=0.05)
    await writer.start()
    client = redis.Redis.from_url(redis_url)
    recorder = Recorder(
        writer,
        QuotaPolicy(QuotaStore(client), QuotasConfig()),
        TokenCounter(),
        Metrics(),
        AccessLog(enabled=False),
    )
    api = OpenAIApi()
    endpoint = api.endpoints[0]
    principal = KeyPrincipal("key_0123456789abcdef", "cust_k9", None, None, "pro", False)
    snapshot = Runtime(SETTINGS, Catalog.load_default()).current
    appends: list[bytes] = []
    real_append = AppendFiles.append

    def recording_append(self: AppendFiles, data: bytes, size_before: int) -> None:
        appends.append(data)
        real_append(self, data, size_before)

    def ids_in(data: bytes) -> list[uuid.UUID]:
        events = [event_from_line(UsageEvent.COLUMNS, line) for line in data.splitlines()]
        return [event.id for event in events if event is not None]

    def chunk(text: str) -> SSEEvent:
        data = json.dumps({"id": "c1", "choices": [{"index": 0, "delta": {"content": text}}]})
        return SSEEvent(None, data.encode(), b"")

    try:
        streams = []
        for _ in range(3):
            ex = Exchange(
                uuid.uuid4(),
                datetime.now(UTC),
                time.perf_counter(),
                principal,
                snapshot,
                "openai",
                "gpt-4o-mini",
                endpoint,
                True,
                "a prompt",
            )
            recorder.open(ex, 10)
            meter = api.stream_meter(endpoint, True)
            recorder.track_stream(ex, meter)
            streams.append((ex, meter))
        monkeypatch.setattr(AppendFiles, "append", recording_append)
        for _, meter in streams:
            meter.observe(chunk("Hello there, "))
        recorder.write_progress()
        [together] = appends  # the three streams' records in one write
        assert ids_in(together) == [ex.request_id for ex, _ in streams]

        appends.clear()
        recorder.write_progress()  # nothing new in any stream: nothing written
        assert appends == []

        (moved, moved_meter), (untracked, untracked_meter), _ = streams
        moved_meter.observe(chunk("general Kenobi."))
        recorder.untrack_stream(untracked)
        untracked_meter.observe(chunk("more text"))
        recorder.write_progress()
        [only] = appends  # the stream that moved; the untracked one is never written again
        assert ids_in(only) == [moved.request_id]
    finally:
        monkeypatch.undo()
        await writer.close()
        await client.aclose()
