"""`UsageEvent`: one row of `usage_events`, built by the gateway, written by storage.

Money is Decimal (NUMERIC in Postgres) and None when the model is unpriced
(`pricing.unknown_model: allow_unpriced`); time is UTC and timezone-aware.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class UsageEvent:
    id: uuid.UUID
    created_at: datetime
    customer_id: str
    project_id: str | None
    user_id: str | None
    key_id: str
    tier: str
    provider: str
    model: str
    endpoint: str
    status_code: int
    streamed: bool
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    usage_source: str
    cost_usd: Decimal | None
    price_usd: Decimal | None
    price_version: str | None
    latency_ms: int
    upstream_request_id: str | None
    metadata: dict[str, Any] = field(default_factory=dict)

    # Column order used by COPY and by every INSERT of events.
    COLUMNS = (
        "id",
        "created_at",
        "customer_id",
        "project_id",
        "user_id",
        "key_id",
        "tier",
        "provider",
        "model",
        "endpoint",
        "status_code",
        "streamed",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "usage_source",
        "cost_usd",
        "price_usd",
        "price_version",
        "latency_ms",
        "upstream_request_id",
        "metadata",
    )
