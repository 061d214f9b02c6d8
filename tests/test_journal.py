"""The usage journal on its own: append, rotate, read back, delete only what is committed,
replay what a killed process left (a real SIGKILLed subprocess), cut a torn last line, keep
a live owner's slot, the disk budget, and a disk that refuses writes (RLIMIT_FSIZE)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from storage.usage.event import UsageEvent
from storage.usage.journal import Journal, JournalBatch
from storage.usage.journal_format import encode_event, header

HEADER_BYTES = len(header())


def line(i: int) -> bytes:
    return f"event-{i:06d}\t{'x' * 40}\n".encode()


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*/*.seg"))


def read_all(journal: Journal, max_events: int = 1000) -> list[JournalBatch]:
    batches = []
    while (batch := journal.read(max_events)) is not None:
        batches.append(batch)
    return batches


def test_appended_lines_are_read_back_in_order_and_deleted_once_committed(
    tmp_path: Path,
) -> None:
    journal = Journal.open(tmp_path, segment_bytes=2_000)
    for i in range(200):
        journal.append(line(i))
    assert journal.pending == journal.unread == 200
    assert len(segments(tmp_path)) > 3  # rotated by size

    batches = read_all(journal, max_events=30)
    assert [ln for b in batches for ln in b.lines()] == [line(i)[:-1] for i in range(200)]
    assert all(b.events <= 30 for b in batches)
    assert journal.unread == 0 and journal.pending == 200
    on_disk = len(segments(tmp_path))

    for batch in batches[:3]:  # commit part of the first segment(s)
        journal.commit(batch)
    assert journal.pending == 200 - sum(b.events for b in batches[:3])
    assert len(segments(tmp_path)) < on_disk  # fully committed segments went away
    for batch in batches[3:]:
        journal.commit(batch)
    assert journal.pending == 0
    assert len(segments(tmp_path)) == 1  # the active segment stays until close
    journal.close()
    assert segments(tmp_path) == []
    assert not tmp_path.exists()  # the slot is gone, and the last one out took the directory


def test_a_segment_is_kept_while_any_line_in_it_is_uncommitted(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, segment_bytes=1_000)
    for i in range(60):
        journal.append(line(i))
    batches = read_all(journal, max_events=5)
    first_segment = batches[0].segment
    first_batches = [b for b in batches if b.segment is first_segment]
    for batch in first_batches[:-1]:
        journal.commit(batch)
    assert first_segment.path.exists()
    journal.commit(first_batches[-1])
    assert not first_segment.path.exists()
    journal.close()
    assert segments(tmp_path)  # uncommitted lines stay for the next start


def test_size_and_budget_follow_the_segments_on_disk(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, segment_bytes=1_000, max_bytes=3_000)
    assert journal.size_bytes == HEADER_BYTES
    for i in range(80):
        journal.append(line(i))
    assert journal.size_bytes == sum(p.stat().st_size for p in segments(tmp_path))
    assert journal.over_budget
    for batch in read_all(journal):
        journal.commit(batch)
    assert not journal.over_budget
    assert journal.size_bytes == sum(p.stat().st_size for p in segments(tmp_path))
    journal.close()


def test_a_live_owners_segments_are_not_adopted(tmp_path: Path) -> None:
    first = Journal.open(tmp_path)
    first.append(line(1))
    second = Journal.open(tmp_path)  # a second process on the same directory
    assert second.pending == 0 and second.read(10) is None
    assert first.read(10) is not None
    second.close()
    first.close()


_CRASHING_WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from storage.usage.journal import Journal
    journal = Journal.open(Path(sys.argv[1]), segment_bytes=int(sys.argv[3]))
    for i in range(int(sys.argv[2])):
        journal.append(f"event-{i:06d}\\t{'x' * 40}\\n".encode())
    print(journal.slot, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no fsync: only the page cache has it
""")


def crash_after_appending(directory: Path, count: int, segment_bytes: int = 10_000) -> Path:
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(directory), str(count), str(segment_bytes)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr
    return Path(proc.stdout.strip())


@pytest.mark.slow
def test_a_killed_process_is_replayed_by_the_next_open(tmp_path: Path) -> None:
    dead_slot = crash_after_appending(tmp_path, 500)
    assert dead_slot.exists()
    journal = Journal.open(tmp_path, segment_bytes=10_000)
    assert not dead_slot.exists()  # adopted: its segments moved into the new slot
    assert journal.pending == journal.unread == 500
    replayed = [ln for b in read_all(journal) for ln in b.lines()]
    assert replayed == [line(i)[:-1] for i in range(500)]
    journal.append(line(500))  # new lines come after the replayed ones
    assert [ln for b in read_all(journal) for ln in b.lines()] == [line(500)[:-1]]
    journal.close()


@pytest.mark.slow
def test_a_torn_last_line_is_cut_off_safely(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crash_after_appending(tmp_path, 100)
    last = segments(tmp_path)[-1]
    with open(last, "ab") as f:
        f.write(b"event-999999\txxxx")  # a write cut short: no newline
    with caplog.at_level(logging.WARNING, logger="storage.usage.journal"):
        journal = Journal.open(tmp_path)
    assert any("torn line (17 bytes)" in r.getMessage() for r in caplog.records)
    replayed = [ln for b in read_all(journal) for ln in b.lines()]
    assert replayed == [line(i)[:-1] for i in range(100)]
    # The torn bytes are gone, so the next line cannot be glued to them.
    journal.append(line(100))
    assert [ln for b in read_all(journal) for ln in b.lines()] == [line(100)[:-1]]
    journal.close()


def test_a_segment_of_an_unknown_format_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    orphan = tmp_path / "p1-dead"
    orphan.mkdir()
    (orphan / "000000000001.seg").write_bytes(b"#tollbooth-usage-journal v99\tid\nabc\n")
    with caplog.at_level(logging.ERROR, logger="storage.usage.journal"):
        journal = Journal.open(tmp_path)
    assert journal.pending == 0
    [aside] = (tmp_path / "unreadable").iterdir()
    assert aside.read_bytes().startswith(b"#tollbooth-usage-journal v99")
    assert any("v99" in r.getMessage() for r in caplog.records)
    journal.close()


_FULL_DISK = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    from storage.usage.journal import Journal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    journal = Journal.open(Path(sys.argv[1]), segment_bytes=1_000_000)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4_000, hard))  # every file stops at 4000 bytes
    accepted, refused = [], []
    for i in range(300):
        data = f"event-{i:06d}\\t{'x' * 40}\\n".encode()
        try:
            journal.append(data)
            accepted.append(i)
        except OSError as exc:
            refused.append([i, exc.errno])
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    read = []
    while (batch := journal.read(1000)) is not None:
        read += [ln.decode() for ln in batch.lines()]
    print(json.dumps({"accepted": accepted, "refused": refused, "read": read,
                      "pending": journal.pending}))
""")


@pytest.mark.slow
def test_a_refused_write_leaves_no_partial_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["refused"], "the file size limit never refused a write"
    assert all(errno == 27 for _, errno in result["refused"])  # EFBIG
    # Every accepted line reads back whole, in order; no refused line left a fragment.
    assert result["read"] == [line(i)[:-1].decode() for i in result["accepted"]]
    assert result["pending"] == len(result["accepted"])
    assert len(result["accepted"]) + len(result["refused"]) == 300


def _reference_line(e: UsageEvent) -> bytes:
    """encode_event written the long way: every text field escaped on its own."""

    def text(value: str | None) -> str:
        if value is None:
            return "\\N"
        for raw, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
            value = value.replace(raw, escaped)
        return value

    def plain(value: object) -> str:
        return "\\N" if value is None else str(value)

    created = e.created_at.isoformat()
    fields = [
        e.id.hex,
        created,
        text(e.customer_id),
        text(e.project_id),
        text(e.user_id),
        text(e.key_id),
        text(e.tier),
        text(e.provider),
        text(e.model),
        text(e.endpoint),
        str(e.status_code),
        "t" if e.streamed else "f",
        str(e.input_tokens),
        str(e.output_tokens),
        str(e.cached_input_tokens),
        str(e.cache_write_tokens),
        str(e.reasoning_tokens),
        text(e.usage_source),
        plain(e.cost_usd),
        plain(e.price_usd),
        text(e.price_version),
        str(e.latency_ms),
        text(e.upstream_request_id),
        json.dumps(e.metadata, separators=(",", ":"), ensure_ascii=False).replace("\\", "\\\\")
        if e.metadata
        else "{}",
    ]
    return ("\t".join(fields) + "\n").encode("utf-8", "surrogatepass")


@pytest.mark.parametrize(
    "odd",
    [
        "plain",
        "tab\there",
        "new\nline",
        "back\\slash",
        "cr\rx",
        "é ünïcode",
        "",
        "\x00nul",
        "\u2028sep",
        "\ud800lone",
    ],
)
@pytest.mark.parametrize(
    "field",
    ["customer_id", "project_id", "user_id", "model", "price_version", "upstream_request_id"],
)
def test_encode_event_escapes_exactly_the_fields_that_need_it(odd: str, field: str) -> None:
    event = UsageEvent(
        id=uuid.UUID("0b6c3a52-3c59-4c43-9a4f-1f6b9d8f0c11"),
        created_at=datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
        customer_id="cust_1",
        project_id=None,
        user_id="u",
        key_id="key_1",
        tier="pro",
        provider="openai",
        model="gpt-4o-mini",
        endpoint="chat.completions",
        status_code=200,
        streamed=True,
        input_tokens=20,
        output_tokens=35,
        cached_input_tokens=3,
        cache_write_tokens=0,
        reasoning_tokens=1,
        usage_source="provider",
        cost_usd=Decimal("0.0000240000"),
        price_usd=Decimal("2.88E-8"),
        price_version=None,
        latency_ms=312,
        upstream_request_id="chatcmpl-1",
        metadata={"config_hash": "abc", "n": 1},
    )
    changed: dict[str, Any] = {field: odd}
    event = replace(event, **changed)
    assert encode_event(event) == _reference_line(event)
    assert encode_event(replace(event, cost_usd=None, price_usd=None, metadata={})) == (
        _reference_line(replace(event, cost_usd=None, price_usd=None, metadata={}))
    )
