"""Usage events numbered 0, 1, 2, ...: each differs from the others in every column a writer
copies, so a test that writes thousands can tell which ones were lost, doubled or mangled."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from storage.usage.event import UsageEvent


def numbered_event(i: int, **changes: object) -> UsageEvent:
    """Event number `i`: its tokens, money, latency and ids follow from `i` (so a lost or
    doubled one shows), today, for one of seven customers; `changes` replace fields."""
    event = UsageEvent(
        id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        customer_id=f"cust_{i % 7}",
        project_id="proj" if i % 2 else None,
        user_id=None,
        key_id="key_0123456789abcdef",
        tier="pro",
        provider="openai",
        model="gpt-4o-mini",
        endpoint="/v1/chat/completions",
        status_code=200,
        streamed=bool(i % 3),
        input_tokens=i,
        output_tokens=2 * i,
        cached_input_tokens=0,
        cache_write_tokens=0,
        reasoning_tokens=0,
        usage_source="provider",
        cost_usd=Decimal("0.0000001234") * i,
        price_usd=Decimal("0.0000001500") * i,
        price_version="test-1",
        latency_ms=i % 1000,
        upstream_request_id=f"chatcmpl-{i}",
        metadata={"i": i},
    )
    return replace(event, **changes)  # type: ignore[arg-type]
