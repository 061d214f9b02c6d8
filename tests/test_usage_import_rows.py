"""Reading and checking import rows, with no database: the file shapes and their line numbers,
each refusal's reason, exact money, derived ids, the import marks and the LiteLLM mapping."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from storage.imports.fast import fast_line
from storage.imports.litellm import check_customer_from, litellm_event
from storage.imports.read import ImportFileError, guess_format, read_records
from storage.imports.rows import derived_id, mark_imported, tollbooth_event, tollbooth_values
from storage.imports.values import RowError
from storage.usage.event import UsageEvent
from storage.usage.journal_format import encode_event

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
ROW = {
    "id": "0b5c3f0e-8f55-4c8e-9d6f-0a5d0b7e6a11",
    "created_at": "2026-03-01T10:00:00.250000+00:00",
    "customer_id": "acme",
    "project_id": "",
    "user_id": "u1",
    "key_id": "key_0123456789abcdef",
    "tier": "pro",
    "provider": "openai",
    "model": "gpt-4o",
    "endpoint": "/v1/chat/completions",
    "status_code": "200",
    "streamed": "true",
    "input_tokens": "1200",
    "output_tokens": "80",
    "cached_input_tokens": "1000",
    "cache_write_tokens": "0",
    "reasoning_tokens": "0",
    "usage_source": "provider",
    "cost_usd": "0.0012345678",
    "price_usd": "0.0014814814",
    "price_version": "cat-1",
    "latency_ms": "420",
    "upstream_request_id": "chatcmpl-9",
    "metadata": '{"config_hash":"abc","ratio":0.1}',
}


def test_csv_records_carry_the_line_they_start_on() -> None:
    text = 'a,b\n1,"two\nlines"\n3\n\n4,5\n'
    records = list(read_records(io.StringIO(text), "csv"))
    assert [(r.line, r.fields, r.error) for r in records] == [
        (2, {"a": "1", "b": "two\nlines"}, None),
        (4, {}, "1 fields, the header has 2"),
        (6, {"a": "4", "b": "5"}, None),
    ]


def test_json_export_shape_is_streamed_with_line_numbers_and_decimal_numbers() -> None:
    text = (
        '{"customer_id":null,"period_days":30,"events":[\n{"n":1,"m":0.10}\n,{"n":2}\n'
        "{broken\n,[3]\n]}\n"
    )
    records = list(read_records(io.StringIO(text), "json"))
    assert [(r.line, r.fields, r.error) for r in records] == [
        (2, {"n": 1, "m": Decimal("0.10")}, None),
        (3, {"n": 2}, None),
        (4, {}, records[2].error),
        (5, {}, "expected a JSON object, got list"),
    ]
    assert records[2].error and records[2].error.startswith("not valid JSON")
    plain = list(read_records(io.StringIO('[{"a":1},\n{"a":2}]'), "json"))
    assert [(r.line, r.fields) for r in plain] == [(1, {"a": 1}), (2, {"a": 2})]
    with pytest.raises(ImportFileError):
        list(read_records(io.StringIO('"just a string"'), "json"))


def test_jsonl_bad_line_is_refused_alone() -> None:
    records = list(read_records(io.StringIO('{"a":1}\nnope\n\n{"a":2}\n'), "jsonl"))
    assert [(r.line, r.error is None) for r in records] == [(1, True), (2, False), (4, True)]


def test_format_is_guessed_from_the_extension() -> None:
    assert [guess_format(p) for p in ("x.csv", "x.JSON", "x.jsonl", "x.ndjson", "x")] == [
        "csv",
        "json",
        "jsonl",
        "jsonl",
        "csv",
    ]


def test_export_row_keeps_every_value_exactly() -> None:
    event = tollbooth_event(dict(ROW), csv=True, now=NOW)
    assert event.id == uuid.UUID(ROW["id"])
    assert event.created_at == datetime(2026, 3, 1, 10, 0, 0, 250000, tzinfo=UTC)
    assert event.project_id is None  # an empty CSV cell is NULL
    assert event.streamed is True and event.input_tokens == 1200
    assert event.cost_usd == Decimal("0.0012345678") and event.price_usd == Decimal("0.0014814814")
    assert event.metadata == {"config_hash": "abc", "ratio": 0.1}
    as_json = tollbooth_event(
        {
            **ROW,
            "project_id": "",
            "streamed": True,
            "input_tokens": 1200,
            "metadata": {"config_hash": "abc"},
        },
        csv=False,
        now=NOW,
    )
    assert as_json.project_id == "" and as_json.streamed is True


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("created_at", "yesterday", "created_at: 'yesterday' is not an ISO 8601 time"),
        ("created_at", "2026-04-01T00:00:00Z", "is in the future"),
        ("customer_id", "a b", "is not a customer id"),
        ("input_tokens", "-1", "input_tokens: -1 is out of range"),
        ("input_tokens", "1.5", "expected a whole number"),
        ("output_tokens", str(2**63), "out of range"),
        ("status_code", "99", "out of range (100 to 599)"),
        ("price_usd", "0.12345678901", "more than 10 decimal places"),
        ("price_usd", "-0.1", "not an amount from 0 to 10^10"),
        ("cost_usd", "1e10", "not an amount from 0 to 10^10"),
        ("cost_usd", "NaN", "not an amount"),
        ("streamed", "maybe", "expected true or false"),
        ("usage_source", "guessed", "expected provider or estimated"),
        ("id", "42", "is not a UUID"),
        ("model", "", "model: required"),
        ("user_id", "a\x00b", "NUL character"),
        ("metadata", "[1]", "expected a JSON object"),
        ("metadata", '{"a":"\\u0000"}', "NUL character"),
        ("colour", "red", "unknown field(s): colour"),
    ],
)
def test_bad_values_are_refused_with_the_field_and_why(field: str, value: str, reason: str) -> None:
    with pytest.raises(
        RowError,
        match=reason.replace("(", r"\(")
        .replace(")", r"\)")
        .replace(".", r"\.")
        .replace("^", r"\^"),
    ):
        tollbooth_event({**ROW, field: value}, csv=True, now=NOW)


def test_money_with_trailing_zeros_past_ten_places_is_exact_not_refused() -> None:
    event = tollbooth_event({**ROW, "price_usd": "0.001200000000000"}, csv=True, now=NOW)
    assert event.price_usd == Decimal("0.0012")


def test_a_row_without_id_gets_the_same_derived_id_every_time() -> None:
    bare = {k: v for k, v in ROW.items() if k != "id"}
    first = tollbooth_event(dict(bare), csv=True, now=NOW)
    again = tollbooth_event({**bare, "price_usd": "0.00148148140"}, csv=True, now=NOW)
    other = tollbooth_event({**bare, "output_tokens": "81"}, csv=True, now=NOW)
    assert first.id == again.id != other.id
    assert first.id.version == 5


def test_marks_are_added_once() -> None:
    marked = tollbooth_values(dict(ROW), csv=True, now=NOW)
    mark_imported(marked, "tollbooth", money_kept=True)
    assert marked["metadata"]["imported"] == "tollbooth"
    assert marked["price_version"] == "imported:cat-1"
    again = dict(marked)
    mark_imported(again, "litellm", money_kept=True)
    assert again == marked
    repriced = tollbooth_values(dict(ROW), csv=True, now=NOW)
    mark_imported(repriced, "tollbooth", money_kept=False)
    assert repriced["price_version"] == "cat-1" and repriced["metadata"]["imported"] == "tollbooth"


def litellm_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "request_id": "chatcmpl-abc",
        "call_type": "acompletion",
        "api_key": "88dc28d0f030c5",
        "spend": "0.000123456789012345",
        "total_tokens": "1100",
        "prompt_tokens": "1000",
        "completion_tokens": "100",
        "startTime": "2026-03-01 10:00:00.5",
        "endTime": "2026-03-01 10:00:02",
        "request_duration_ms": "",
        "model": "gpt-4o",
        "model_group": "gpt-4o",
        "custom_llm_provider": "openai",
        "user": "ann",
        "metadata": json.dumps(
            {
                "tenant": "acme",
                "additional_usage_values": {"prompt_tokens_details": {"cached_tokens": 600}},
            }
        ),
        "team_id": "team-1",
        "end_user": "",
        "status": "success",
    }
    row.update(changes)
    return row


def test_litellm_row_maps_onto_an_event() -> None:
    event = litellm_event(litellm_row(), customer_from="metadata.tenant", now=NOW)
    assert event.id == derived_id("litellm", {"request_id": "chatcmpl-abc"})
    assert event.customer_id == "acme" and event.user_id == "ann"
    assert event.created_at == datetime(2026, 3, 1, 10, 0, 0, 500000, tzinfo=UTC)
    assert event.latency_ms == 1500 and event.endpoint == "/v1/chat/completions"
    assert (event.input_tokens, event.cached_input_tokens, event.output_tokens) == (1000, 600, 100)
    assert event.cost_usd == event.price_usd == Decimal("0.0001234568")
    assert event.upstream_request_id == "chatcmpl-abc" and event.tier == ""
    assert event.key_id.startswith("litellm:") and "88dc28d0f030c5" not in event.key_id
    assert event.metadata["litellm"]["team_id"] == "team-1"
    by_team = litellm_event(litellm_row(), customer_from="team_id", now=NOW)
    assert by_team.customer_id == "team-1"


def test_litellm_cache_tokens_not_folded_in_are_added() -> None:
    meta = json.dumps(
        {
            "additional_usage_values": {
                "cache_read_input_tokens": 3000,
                "cache_creation_input_tokens": 200,
            }
        }
    )
    event = litellm_event(
        litellm_row(metadata=meta, customer_id="acme"), customer_from=None, now=NOW
    )
    assert (event.input_tokens, event.cached_input_tokens, event.cache_write_tokens) == (
        4200,
        3000,
        200,
    )


def test_litellm_row_without_customer_or_time_is_refused() -> None:
    with pytest.raises(RowError, match="customer_id: required"):
        litellm_event(litellm_row(), customer_from=None, now=NOW)
    with pytest.raises(RowError, match="startTime"):
        litellm_event(litellm_row(startTime=""), customer_from="user", now=NOW)
    assert check_customer_from("metadata.") is not None
    assert check_customer_from("metadata.a.b") is None
    assert check_customer_from("org") is not None


def test_litellm_row_without_request_id_still_gets_a_stable_id() -> None:
    first = litellm_event(litellm_row(request_id=""), customer_from="user", now=NOW)
    again = litellm_event(
        litellm_row(request_id=""), customer_from="user", now=NOW + timedelta(days=1)
    )
    assert first.id == again.id


def general_line(fields: dict[str, Any], customers: dict[str, str]) -> bytes:
    values = tollbooth_values(dict(fields), csv=True, now=NOW)
    values["tier"] = values["tier"] or customers[values["customer_id"]]
    mark_imported(values, "tollbooth", money_kept=True)
    return encode_event(UsageEvent(**values))


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"tier": "", "project_id": "", "price_version": "", "upstream_request_id": ""},
        {"cost_usd": "", "price_usd": "", "metadata": "{}", "streamed": "false"},
        {"user_id": 'a "quoted",\ttabbed\\ line\nbreak', "model": "é漢字"},
        {"created_at": "2026-03-01T10:00:00+00:00", "price_version": "imported:cat-0"},
        {"metadata": '{"imported":"litellm","n":[1,2.5]}', "price_usd": "9999999999.9999999999"},
    ],
)
def test_fast_path_writes_the_general_paths_bytes(changes: dict[str, str]) -> None:
    fields = {**ROW, **changes}
    customers = {"acme": "free"}
    fast = fast_line(fields, customers, NOW)
    assert fast is not None
    assert fast[0] == general_line(fields, customers)
    assert fast[1] == tollbooth_event(dict(fields), csv=True, now=NOW).created_at


@pytest.mark.parametrize(
    "changes",
    [
        {"id": ""},
        {"id": ROW["id"].upper()},
        {"created_at": "2026-03-01T10:00:00"},
        {"created_at": "2026-03-01T11:00:00+01:00"},
        {"created_at": "2026-04-01T00:00:00+00:00"},
        {"customer_id": "unknown"},
        {"input_tokens": "007"},
        {"input_tokens": ""},
        {"price_usd": "1e-3"},
        {"price_usd": "0.12345678901"},
        {"streamed": "t"},
        {"metadata": ""},
        {"metadata": "[]"},
        {"usage_source": "x"},
        {"user_id": "a\x00"},
        {"status_code": "99"},
        {"latency_ms": "-1"},
        {"model": ""},
    ],
)
def test_fast_path_declines_what_is_not_in_the_exports_form(changes: dict[str, str]) -> None:
    assert fast_line({**ROW, **changes}, {"acme": "free"}, NOW) is None
