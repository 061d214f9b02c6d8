"""What the mock provider keeps between requests: its options, its request log and its RNG.

Everything lives on the `web.Application` under the typed keys below; nothing is global.
The request log is a plain list the tests read directly (`app[MOCK_REQUESTS]`) or over HTTP
(`GET /_mock/requests`). It is bounded by `MockOptions.request_log_limit` so a long benchmark
cannot exhaust memory: past the limit the oldest entries are dropped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True, slots=True)
class MockOptions:
    """How the mock provider behaves for every request.

    `error_rate` is the probability (0..1) that a request answers a provider-shaped 500,
    drawn from a `random.Random(seed)` so a run is reproducible. `api_key=None` accepts any
    non-empty key. `output_tokens` is the default length of an answer when the request does
    not say (`x-mock-output-tokens`) and no max-tokens field caps it. `aws_region` is the
    only region a Bedrock request's SigV4 credential scope may name (None: any region).
    """

    latency_ms: int = 0
    token_delay_ms: int = 0
    error_rate: float = 0.0
    seed: int = 0
    api_key: str | None = None
    output_tokens: int = 20
    request_log_limit: int | None = 10_000  # None: unbounded; 0: record nothing
    aws_region: str | None = None


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as it arrived. Header names are lowercased."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body.decode("utf-8", errors="replace"),
        }


MOCK_OPTIONS = web.AppKey("mock_options", MockOptions)
MOCK_REQUESTS = web.AppKey("mock_requests", list[RecordedRequest])
MOCK_RNG = web.AppKey("mock_rng", random.Random)
