"""storage/usage/journal_format.py: both line encoders, compiled from one column table, write
exactly the bytes the hand-written encoders they replace wrote.

Journals on disk hold lines written by those encoders and must replay, so the references below
are kept verbatim (the format's first version, byte for byte) and compared on many generated
events: odd text (tabs, newlines, backslashes, NUL, lone surrogates), extreme integers, every
kind of Decimal, naive and offset times, nested metadata.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.usage.event import UsageEvent
from storage.usage.journal_format import (
    COLUMNS,
    PROVISIONAL,
    _metadata,
    _plain,
    _text,
    encode_event,
    encode_provisional,
    event_from_line,
)

# -- the references: the encoders as they were written by hand ---------------------------


def reference_event(e: UsageEvent) -> bytes:
    created = orjson.dumps(e.created_at, option=orjson.OPT_NAIVE_UTC)[1:-1].decode()
    line = (
        f"{e.id.hex}\t{created}\t{_text(e.customer_id)}\t"
        f"{_text(e.project_id)}\t{_text(e.user_id)}\t{_text(e.key_id)}\t{_text(e.tier)}\t"
        f"{_text(e.provider)}\t{_text(e.model)}\t{_text(e.endpoint)}\t{e.status_code}\t"
        f"{'t' if e.streamed else 'f'}\t{e.input_tokens}\t{e.output_tokens}\t"
        f"{e.cached_input_tokens}\t{e.cache_write_tokens}\t"
        f"{e.reasoning_tokens}\t{_text(e.usage_source)}\t{_plain(e.cost_usd)}\t"
        f"{_plain(e.price_usd)}\t{_text(e.price_version)}\t{e.latency_ms}\t"
        f"{_text(e.upstream_request_id)}\t{_metadata(e.metadata)}\n"
    )
    return line.encode("utf-8", "surrogatepass")


def reference_provisional(e: UsageEvent) -> bytes:
    """The provisional encoder as written by hand: `reference_event`'s f-string with the
    columns it fixed written as literals (0, estimated, and NULL for the money and the price
    version), which is what `reference_event` writes for the event with those values."""
    return reference_event(replace(e, **PROVISIONAL))  # type: ignore[arg-type]


def outcome(encode: Callable[..., bytes], *args: Any, **kwargs: Any) -> bytes | str:
    """The line, or the error: a lone surrogate inside metadata is refused by orjson, and
    must be refused the same way by both."""
    try:
        return encode(*args, **kwargs)
    except TypeError as exc:
        return f"{type(exc).__name__}: {exc}"


# -- generated events ---------------------------------------------------------------------

ODD = ["", "\t", "\n", "\r", "\\", "\\N", "\x00", "\ud800", "\u2028", "é", "{x}", '"', "'"]
texts = st.one_of(
    st.sampled_from(ODD),
    st.text(),
    st.text(alphabet=st.characters(codec=None, exclude_categories=())),  # surrogates too
    st.lists(st.sampled_from([*ODD, "a", "b"])).map("".join),
)
counts = st.one_of(st.integers(0, 10**6), st.integers(-(2**70), 2**70))
money = st.one_of(st.none(), st.decimals(), st.decimals(allow_nan=False, places=10))
offsets = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
times = st.datetimes(timezones=st.one_of(st.none(), offsets.map(timezone)))
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        texts,
        st.decimals(allow_nan=False, allow_infinity=False),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8,
)
metadata = st.dictionaries(texts, json_values, max_size=4)

events = st.builds(
    UsageEvent,
    id=st.uuids(),
    created_at=times,
    customer_id=texts,
    project_id=st.one_of(st.none(), texts),
    user_id=st.one_of(st.none(), texts),
    key_id=texts,
    tier=texts,
    provider=texts,
    model=texts,
    endpoint=texts,
    status_code=counts,
    streamed=st.booleans(),
    input_tokens=counts,
    output_tokens=counts,
    cached_input_tokens=counts,
    cache_write_tokens=counts,
    reasoning_tokens=counts,
    usage_source=texts,
    cost_usd=money,
    price_usd=money,
    price_version=st.one_of(st.none(), texts),
    latency_ms=counts,
    upstream_request_id=st.one_of(st.none(), texts),
    metadata=metadata,
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_encode_event_writes_the_bytes_of_the_hand_written_encoder(event: UsageEvent) -> None:
    assert outcome(encode_event, event) == outcome(reference_event, event)


def provisional_values(event: UsageEvent) -> list[Any]:
    return [getattr(event, c.name) for c in COLUMNS if c.name not in PROVISIONAL]


@settings(max_examples=300, deadline=None)
@given(events)
def test_encode_provisional_writes_the_bytes_of_the_hand_written_encoder(
    event: UsageEvent,
) -> None:
    values = provisional_values(event)
    line = outcome(reference_provisional, event)
    assert outcome(encode_provisional, *values) == line
    keywords = {c.name: getattr(event, c.name) for c in COLUMNS if c.name not in PROVISIONAL}
    assert outcome(encode_provisional, **keywords) == line


def test_the_columns_are_the_events_fields_in_copy_order() -> None:
    assert tuple(c.name for c in COLUMNS) == UsageEvent.COLUMNS
    assert [f.name for f in fields(UsageEvent)] == list(UsageEvent.COLUMNS)
    assert PROVISIONAL.keys() <= set(UsageEvent.COLUMNS)


def test_encode_provisional_takes_the_columns_it_does_not_fix_in_order() -> None:
    parameters = list(inspect.signature(encode_provisional).parameters)
    assert parameters == [c.name for c in COLUMNS if c.name not in PROVISIONAL]


def test_a_provisional_line_reads_back_as_its_event() -> None:
    values: dict[str, Any] = {
        "id": uuid.UUID("0b6c3a52-3c59-4c43-9a4f-1f6b9d8f0c11"),
        "created_at": datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
        "customer_id": "cust\t1",
        "project_id": None,
        "user_id": "user\\x",
        "key_id": "key_0123456789abcdef",
        "tier": "pro",
        "provider": "openai",
        "model": "gpt-4o\nevil",
        "endpoint": "chat.completions",
        "status_code": 502,
        "streamed": False,
        "input_tokens": 10,
        "output_tokens": 3,
        "cached_input_tokens": 2,
        "cache_write_tokens": 1,
        "latency_ms": 77,
        "upstream_request_id": "chatcmpl-1",
        "metadata": {"config_hash": "abc", "n": Decimal("1.5")},
    }
    event = event_from_line(UsageEvent.COLUMNS, encode_provisional(**values)[:-1])
    assert event == UsageEvent(
        **{**values, **PROVISIONAL, "metadata": {"config_hash": "abc", "n": "1.5"}}
    )
