"""The one error renderer and refusal counter (gateway.error_response): the shape per route, the
headers in their order, what counts as a refusal, and a bug answered without its detail."""

from __future__ import annotations

import logging
import uuid

import orjson
import pytest

from gateway.error_response import count_refusal, internal_error, render_error
from gateway.errors import (
    AuthenticationError,
    GatewayError,
    RateLimitError,
    RequestTimeoutError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from gateway.metrics import Metrics

REQUEST_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")


def quota_refusal() -> RateLimitError:
    return RateLimitError(
        "Too many requests.",
        retry_after_ms=1500,
        should_retry=True,
        limit="requests_per_minute",
        extra_headers={"x-ratelimit-limit-requests": "2"},
    )


def test_a_refusal_has_the_openai_shape_and_its_headers_in_order() -> None:
    answer = render_error("/v1/chat/completions", quota_refusal(), REQUEST_ID)
    assert answer.status == 429
    assert list(answer.headers.items()) == [
        ("Content-Type", "application/json"),
        ("retry-after", "2"),
        ("retry-after-ms", "1500"),
        ("x-ratelimit-limit-requests", "2"),
        ("x-request-id", str(REQUEST_ID)),
    ]
    assert orjson.loads(answer.body) == {
        "error": {
            "message": "Too many requests.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/v1/messages", "/v1/messages/batches"])
def test_anthropic_paths_get_the_anthropic_shape(path: str) -> None:
    answer = render_error(path, AuthenticationError("Incorrect API key provided."), REQUEST_ID)
    assert answer.status == 401
    assert orjson.loads(answer.body) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }


def test_a_templated_route_speaks_its_apis_shape() -> None:
    answer = render_error(
        "/model/anthropic.claude-sonnet-4-5/converse", AuthenticationError("No."), REQUEST_ID
    )
    assert answer.status == 403  # Bedrock's clients expect a bad key as 403
    assert answer.headers["x-amzn-ErrorType"]
    assert orjson.loads(answer.body) == {"message": "No."}


def test_a_timeout_asks_to_close_the_connection() -> None:
    answer = render_error("/v1/chat/completions", RequestTimeoutError("Too slow."), REQUEST_ID)
    assert (answer.status, answer.headers["connection"]) == (408, "close")


def refused(metrics: Metrics) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for metric in metrics.refused.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def test_refusals_are_counted_and_upstream_failures_are_not() -> None:
    metrics = Metrics()
    count_refusal(metrics, "/v1/messages", AuthenticationError("No."))
    count_refusal(metrics, "/v1/messages", quota_refusal())
    count_refusal(metrics, "/v1/messages", quota_refusal())
    count_refusal(metrics, "/v1/messages", UpstreamTimeoutError("Slow."))
    count_refusal(metrics, "/v1/messages", UpstreamUnreachableError("Down."))
    assert refused(metrics) == {("/v1/messages", "401"): 1.0, ("/v1/messages", "429"): 2.0}


def test_a_bug_is_logged_and_answered_without_its_detail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="tollbooth.errors"):
        try:
            raise KeyError("sk-secret-detail")
        except KeyError:
            error = internal_error(REQUEST_ID)
    (record,) = caplog.records
    assert record.exc_info is not None and record.request_id == str(REQUEST_ID)  # type: ignore[attr-defined]
    assert type(error) is GatewayError and error.status == 500
    answer = render_error("/v1/chat/completions", error, REQUEST_ID)
    assert answer.status == 500 and b"sk-secret" not in answer.body
