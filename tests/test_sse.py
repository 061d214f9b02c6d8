"""SSEParser: events survive any chunking, raw bytes round-trip exactly, nothing ever raises."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.providers.base import SSEEvent
from gateway.sse import SSEParser

DATA = Path(__file__).parent / "data"
STREAMS = sorted(DATA.glob("*/*.sse"))

Event = tuple[str | None, bytes, bytes]


def parse(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.flush())
    return events


def as_tuples(events: list[SSEEvent]) -> list[Event]:
    return [(event.event, event.data, event.raw) for event in events]


def reference(stream: bytes) -> list[Event]:
    """A deliberately naive, byte-at-a-time reading of the same grammar, to compare against."""
    blocks: list[tuple[list[bytes], bytes]] = []
    lines: list[bytes] = []
    block_start = line_start = i = 0
    while i < len(stream):
        byte = stream[i : i + 1]
        if byte not in (b"\r", b"\n"):
            i += 1
            continue
        line = stream[line_start:i]
        i += 2 if stream[i : i + 2] == b"\r\n" else 1
        line_start = i
        if line:
            lines.append(line)
        else:
            blocks.append((lines, stream[block_start:i]))
            lines, block_start = [], i
    if block_start < len(stream):
        tail = stream[line_start:]
        blocks.append((lines + ([tail] if tail else []), stream[block_start:]))
    events: list[Event] = []
    for block_lines, raw in blocks:
        name: str | None = None
        data: list[bytes] = []
        for line in block_lines:
            if line.startswith(b":"):
                continue
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"data":
                data.append(value)
            elif field == b"event":
                name = value.decode("utf-8", "replace")
        events.append((name, b"\n".join(data), raw))
    return events


def cut(stream: bytes, offsets: list[int]) -> list[bytes]:
    points = sorted({min(offset, len(stream)) for offset in offsets})
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


_PIECES = [
    b"data: ",
    b"data:",
    b"data",
    b"event: ",
    b"event:x",
    b"id: 1",
    b":",
    b": ping",
    b" ",
    b"\r",
    b"\n",
    b"\r\n",
    b"x",
    b"{}",
    b"[DONE]",
    b"\xc3\xa9",
    b"\xe2\x82",
    b"\xff",
]
sse_like = st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join)
any_stream = st.one_of(sse_like, st.binary(max_size=300))
offsets = st.lists(st.integers(min_value=0, max_value=400), max_size=25)


@settings(max_examples=600)
@given(stream=any_stream, split=offsets)
def test_every_chunking_yields_the_same_events(stream: bytes, split: list[int]) -> None:
    whole = as_tuples(parse([stream]))
    assert as_tuples(parse(cut(stream, split))) == whole
    assert as_tuples(parse([stream[i : i + 1] for i in range(len(stream))])) == whole


@settings(max_examples=600)
@given(stream=any_stream, split=offsets)
def test_raw_of_all_events_reproduces_the_input(stream: bytes, split: list[int]) -> None:
    assert b"".join(event.raw for event in parse(cut(stream, split))) == stream


@settings(max_examples=600)
@given(stream=any_stream)
def test_events_match_a_naive_reference_parser(stream: bytes) -> None:
    assert as_tuples(parse([stream])) == reference(stream)


@given(chunks=st.lists(st.binary(max_size=64), max_size=20))
def test_never_raises_on_arbitrary_bytes(chunks: list[bytes]) -> None:
    parse(chunks)


@pytest.mark.parametrize("path", STREAMS, ids=lambda path: path.name)
def test_recorded_streams_split_into_their_events(path: Path) -> None:
    stream = path.read_bytes()
    events = parse([stream[i : i + 5] for i in range(0, len(stream), 5)])
    assert b"".join(event.raw for event in events) == stream
    assert len(events) == stream.count(b"\n\n")
    assert as_tuples(events) == reference(stream)


def test_named_event_and_data() -> None:
    [event] = parse([b'event: message_start\ndata: {"type":"message_start"}\n\n'])
    assert event.event == "message_start"
    assert event.data == b'{"type":"message_start"}'


def test_multi_line_data_is_joined_with_newlines() -> None:
    [event] = parse([b"data: first\ndata:second\ndata:  third\n\n"])
    assert event.data == b"first\nsecond\n third"


def test_comment_block_is_kept_with_empty_data() -> None:
    stream = b": ping\n\ndata: x\n\n"
    events = parse([stream])
    assert [(e.data, e.raw) for e in events] == [(b"", b": ping\n\n"), (b"x", b"data: x\n\n")]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_all_line_endings(newline: bytes) -> None:
    stream = b"event: a" + newline + b"data: 1" + newline + newline + b"data: 2" + newline * 2
    events = parse([stream])
    assert [(e.event, e.data) for e in events] == [("a", b"1"), (None, b"2")]
    assert b"".join(e.raw for e in events) == stream


def test_crlf_split_between_cr_and_lf_waits_for_the_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\n\r") == []
    [event] = parser.feed(b"\ndata: b")
    assert event.raw == b"data: a\r\n\r\n"
    assert [e.raw for e in parser.flush()] == [b"data: b"]


def test_trailing_cr_blank_line_is_settled_by_flush() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\r") == []
    [event] = parser.flush()
    assert (event.data, event.raw) == (b"a", b"data: a\r\r")


def test_multibyte_character_split_across_chunks() -> None:
    stream = 'event: é\ndata: {"text":"日本"}\n\n'.encode()
    chunks = cut(stream, [8, 26, 27])  # inside "é" and inside "日"
    [event] = parse(chunks)
    assert event.event == "é"
    assert event.data == '{"text":"日本"}'.encode()


def test_flush_returns_an_unterminated_final_event() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n\ndata: [DONE]") == [SSEEvent(None, b"1", b"data: 1\n\n")]
    assert parser.flush() == [SSEEvent(None, b"[DONE]", b"data: [DONE]")]
    assert parser.flush() == []


def test_large_event_split_into_many_small_chunks() -> None:
    big = b"data: " + b"x" * 200_000 + b"\n\n"
    parser = SSEParser()
    events: list[SSEEvent] = []
    for i in range(0, len(big), 512):
        events.extend(parser.feed(big[i : i + 512]))
    assert [e.raw for e in events] == [big]
