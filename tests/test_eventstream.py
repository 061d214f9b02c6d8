"""EventStreamDecoder: messages survive any chunking, raw bytes round-trip, garbage never raises,
and every message reads as botocore's own parser reads it."""

from __future__ import annotations

import uuid
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.providers.eventstream import (
    EventStreamDecoder,
    EventStreamMessage,
    HeaderValue,
    encode_message,
    event_message,
    exception_message,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

header_values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(min_value=-(2**40), max_value=2**40).map(
        lambda ms: _EPOCH + timedelta(milliseconds=ms)
    ),
    st.uuids(),
)
messages = st.tuples(
    st.dictionaries(
        st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) < 256),
        header_values,
        max_size=5,
    ),
    st.binary(max_size=300),
)


def decode(chunks: list[bytes]) -> tuple[list[EventStreamMessage], bool]:
    decoder = EventStreamDecoder()
    out: list[EventStreamMessage] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    out.extend(decoder.flush())
    return out, decoder.broken


def bedrock_stream() -> bytes:
    return b"".join(
        [
            event_message("messageStart", b'{"role":"assistant"}'),
            event_message("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"Hi"}}'),
            event_message("contentBlockStop", b'{"contentBlockIndex":0}'),
            event_message("messageStop", b'{"stopReason":"end_turn"}'),
            event_message(
                "metadata",
                b'{"usage":{"inputTokens":3,"outputTokens":1,'
                b'"totalTokens":4},"metrics":{"latencyMs":5}}',
            ),
        ]
    )


def test_bedrock_sequence_decodes_with_names_and_types() -> None:
    found, broken = decode([bedrock_stream()])
    assert not broken
    assert [m.event_type for m in found] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert all(m.message_type == "event" for m in found)
    assert found[-1].headers[":content-type"] == "application/json"
    error = decode([exception_message("throttlingException", b'{"message":"slow"}')])[0][0]
    assert (error.message_type, error.event_type) == ("exception", "throttlingException")


def test_every_split_point_yields_the_same_messages() -> None:
    stream = bedrock_stream()
    whole, _ = decode([stream])
    for cut in range(len(stream) + 1):
        found, broken = decode([stream[:cut], stream[cut:]])
        assert not broken
        assert [m.raw for m in found] == [m.raw for m in whole]
    found, broken = decode([stream[i : i + 1] for i in range(len(stream))])
    assert [m.raw for m in found] == [m.raw for m in whole] and not broken


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, max_size=6), st.data())
def test_any_chunking_round_trips_and_matches_botocore(
    specs: list[tuple[dict[str, HeaderValue], bytes]], data: st.DataObject
) -> None:
    frames = [encode_message(headers, payload) for headers, payload in specs]
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    found, broken = decode(chunks)
    assert not broken
    assert b"".join(m.raw for m in found) == stream
    assert [(dict(m.headers), m.payload) for m in found] == specs

    reference = EventStreamBuffer()
    reference.add_data(stream)
    theirs = list(reference)
    assert len(theirs) == len(found)
    for ours, their in zip(found, theirs, strict=True):
        assert their.payload == ours.payload
        assert their.headers == {name: _as_botocore(value) for name, value in ours.headers.items()}


def _as_botocore(value: HeaderValue) -> Any:
    if isinstance(value, datetime):
        return (value - _EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, uuid.UUID):
        return value.bytes
    return value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_garbage_never_raises(garbage: bytes, step: int) -> None:
    decode([garbage[i : i + step] for i in range(0, len(garbage), step)])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_corrupted_byte_breaks_the_stream_after_the_good_messages(data: st.DataObject) -> None:
    stream = bedrock_stream()
    at = data.draw(st.integers(0, len(stream) - 1))
    flip = data.draw(st.integers(1, 255))
    corrupted = stream[:at] + bytes((stream[at] ^ flip,)) + stream[at + 1 :]
    found, broken = decode([corrupted])
    assert broken
    assert b"".join(m.raw for m in found) == stream[: len(b"".join(m.raw for m in found))]
    assert sum(len(m.raw) for m in found) <= at


def test_a_cut_stream_is_broken_on_flush() -> None:
    stream = bedrock_stream()
    found, broken = decode([stream[:-7]])
    assert broken
    assert [m.event_type for m in found][-1] == "messageStop"


def test_lengths_past_the_limits_break_without_waiting_for_bytes() -> None:
    prelude = (32 * 1024 * 1024).to_bytes(4, "big") + (0).to_bytes(4, "big")
    frame = prelude + zlib.crc32(prelude).to_bytes(4, "big")
    decoder = EventStreamDecoder()
    assert decoder.feed(frame) == []
    assert decoder.broken and decoder.buffered == 0
    assert decoder.feed(bedrock_stream()) == []  # nothing is trusted after a lost boundary


def test_unknown_header_type_breaks() -> None:
    good = encode_message({"a": "b"}, b"x")
    headers = b"\x01a\x0fzz"  # type 15 does not exist
    prelude = (12 + len(headers) + 1 + 4).to_bytes(4, "big") + len(headers).to_bytes(4, "big")
    prelude += zlib.crc32(prelude).to_bytes(4, "big")
    body = prelude + headers + b"x"
    bad = body + zlib.crc32(body).to_bytes(4, "big")
    found, broken = decode([good + bad])
    assert [m.raw for m in found] == [good] and broken
