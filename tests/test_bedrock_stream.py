"""Bedrock Converse usage, the event-stream framer and the ConverseStream meter: the usage of a
stream is the same however its bytes are cut, a cut or broken stream has none (estimated from
its text), and the framer's events give back the stream byte for byte."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.providers.bedrock_stream import ConverseStreamMeter, EventStreamFramer, converse_usage
from gateway.providers.eventstream import event_message, exception_message
from pricing.models import Usage

USAGE: dict[str, Any] = {
    "inputTokens": 12,
    "outputTokens": 3,
    "totalTokens": 45,
    "cacheReadInputTokens": 20,
    "cacheWriteInputTokens": 10,
    "cacheDetails": [{"ttl": "1h", "inputTokens": 4}, {"ttl": "5m", "inputTokens": 6}],
}
EXPECTED = Usage(
    input_tokens=42,
    output_tokens=3,
    cached_input_tokens=20,
    cache_write_tokens=10,
    cache_write_1h_tokens=4,
)


def stream(
    usage: dict[str, Any] | None = USAGE,
    words: tuple[str, ...] = ("Hi", " there", "!"),
) -> list[bytes]:
    frames = [event_message("messageStart", b'{"role":"assistant"}')]
    frames += [
        event_message(
            "contentBlockDelta", orjson.dumps({"contentBlockIndex": 0, "delta": {"text": word}})
        )
        for word in words
    ]
    frames.append(event_message("contentBlockStop", b'{"contentBlockIndex":0}'))
    frames.append(event_message("messageStop", b'{"stopReason":"end_turn"}'))
    metadata: dict[str, Any] = {"metrics": {"latencyMs": 9}}
    if usage is not None:
        metadata["usage"] = usage
    frames.append(event_message("metadata", orjson.dumps(metadata)))
    return frames


def meter_over(chunks: list[bytes]) -> tuple[ConverseStreamMeter, EventStreamFramer, bytes]:
    framer = EventStreamFramer()
    meter = ConverseStreamMeter()
    raw = b""
    for chunk in chunks:
        for event in framer.feed(chunk):
            assert meter.observe(event)  # nothing is ever hidden
            raw += event.raw
    for event in framer.flush():
        meter.observe(event)
        raw += event.raw
    return meter, framer, raw


def test_usage_maps_cache_reads_writes_and_the_one_hour_split() -> None:
    assert converse_usage(USAGE) == EXPECTED
    assert converse_usage({"inputTokens": 5, "outputTokens": 2, "totalTokens": 7}) == Usage(
        input_tokens=5, output_tokens=2
    )
    assert converse_usage({"inputTokens": 5}) is None
    assert converse_usage("nonsense") is None
    # A 1-hour detail larger than the writes reported is capped at them.
    odd = {**USAGE, "cacheDetails": [{"ttl": "1h", "inputTokens": 99}]}
    assert converse_usage(odd) == Usage(
        input_tokens=42,
        output_tokens=3,
        cached_input_tokens=20,
        cache_write_tokens=10,
        cache_write_1h_tokens=10,
    )


def test_metadata_is_the_terminal_event_and_carries_the_usage() -> None:
    data = b"".join(stream())
    meter, framer, raw = meter_over([data])
    assert meter.finished and not framer.broken and raw == data
    assert meter.result().usage == EXPECTED


def test_every_split_point_gives_the_same_usage() -> None:
    data = b"".join(stream())
    for cut in range(len(data) + 1):
        meter, framer, raw = meter_over([data[:cut], data[cut:]])
        assert meter.result().usage == EXPECTED and raw == data and not framer.broken


@settings(max_examples=150, deadline=None)
@given(
    st.data(),
    st.lists(st.text(min_size=1, max_size=8), max_size=12),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)
def test_any_chunking_gives_the_same_usage_and_bytes(
    data: st.DataObject,
    words: list[str],
    uncached: int,
    output: int,
) -> None:
    usage = {"inputTokens": uncached, "outputTokens": output, "totalTokens": uncached + output}
    whole = b"".join(stream(usage, tuple(words)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=10)))
    chunks = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    meter, framer, raw = meter_over(chunks)
    assert raw == whole and not framer.broken and meter.finished
    assert meter.result().usage == Usage(input_tokens=uncached, output_tokens=output)


def test_a_cut_stream_has_no_usage_and_the_text_produced() -> None:
    frames = stream()
    meter, framer, _ = meter_over([b"".join(frames[:3]) + frames[3][:10]])
    assert framer.broken and not meter.finished
    result = meter.result()
    assert result.usage is None and result.produced_text == "Hi there"


def test_a_stream_error_event_ends_without_usage() -> None:
    frames = stream()
    error = exception_message("modelStreamErrorException", b'{"message":"boom"}')
    meter, framer, _ = meter_over([b"".join(frames[:2]) + error])
    assert not framer.broken and not meter.finished
    assert meter.result().usage is None and meter.result().produced_text == "Hi"


def test_garbage_breaks_the_framing_and_never_raises() -> None:
    frames = stream()
    meter, framer, raw = meter_over([frames[0], b"\x00\x00\x00\x10garbage-garbage", frames[1]])
    assert framer.broken and raw == frames[0]
    assert meter.result().usage is None


def test_metadata_without_usage_is_no_usage() -> None:
    meter, _, _ = meter_over([b"".join(stream(usage=None))])
    assert meter.finished and meter.result().usage is None
    assert meter.result().produced_text == "Hi there!"
