"""A row of a LiteLLM `SpendLogs` export (the proxy's LiteLLM_SpendLogs table) as a `UsageEvent`.

Columns read (names as in LiteLLM's schema.prisma; any other column is ignored):

    request_id            -> upstream_request_id, and the event id: UUIDv5 of "litellm" and
                             request_id (so the same request exported twice is one event)
    startTime             -> created_at (UTC when it has no offset)
    endTime, request_duration_ms -> latency_ms (the duration, else endTime - startTime)
    model (else model_group) -> model
    custom_llm_provider   -> provider ("unknown" when empty)
    call_type             -> endpoint (/v1/chat/completions, /v1/embeddings, ...)
    prompt_tokens         -> input_tokens (see below for cached tokens)
    completion_tokens     -> output_tokens
    spend                 -> cost_usd and price_usd, rounded half to even to 10 places
    status                -> status_code: 500 for "failure", else 200
    api_key               -> key_id "litellm:" + 16 hex digits of its SHA-256 (never the value)
    user                  -> user_id
    metadata.user_api_key_project_id (or metadata.project_id) -> project_id
    customer_id column, or the `customer_from` choice (user, team_id, end_user, or
    metadata.KEY, a dotted path) -> customer_id

Cached tokens: LiteLLM_SpendLogs has no cache columns; LiteLLM keeps them in `metadata`
(`additional_usage_values`: cache_read_input_tokens, cache_creation_input_tokens,
prompt_tokens_details.cached_tokens, completion_tokens_details.reasoning_tokens). Where
present they become cached_input_tokens, cache_write_tokens and reasoning_tokens. LiteLLM
folds cached tokens into prompt_tokens (OpenAI's convention, which is Tollbooth's
input_tokens); a row whose cache counts exceed its prompt_tokens comes from a version that
did not, and they are added to input_tokens. Without them, cached tokens count as plain
input tokens (only `--reprice` is affected: it charges them at the input price).

What is lost: streamed (false), usage_source (provider), the request and response bodies,
cache_key, requester_ip_address; team_id, end_user, user, organization_id, model_group,
call_type, status, cache_hit, session_id and request_tags are kept under metadata.litellm.
Failure semantics: `litellm_values` raises storage.imports.values.RowError; no I/O.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from storage.imports import values as v
from storage.imports.rows import DEFAULT_PROVIDER, customer_id, derived_id
from storage.usage.event import UsageEvent

SOURCE = "litellm"
CUSTOMER_COLUMNS = ("user", "team_id", "end_user")
_ENDPOINTS = {
    "completion": "/v1/chat/completions",
    "acompletion": "/v1/chat/completions",
    "text_completion": "/v1/completions",
    "atext_completion": "/v1/completions",
    "embedding": "/v1/embeddings",
    "aembedding": "/v1/embeddings",
    "responses": "/v1/responses",
    "aresponses": "/v1/responses",
    "anthropic_messages": "/v1/messages",
}
_KEPT = (
    "team_id",
    "end_user",
    "user",
    "organization_id",
    "model_group",
    "call_type",
    "status",
    "cache_hit",
    "session_id",
    "request_tags",
)


def check_customer_from(choice: str | None) -> str | None:
    """What is wrong with a `customer_from` choice; None if it is usable."""
    if choice is None or choice in CUSTOMER_COLUMNS:
        return None
    if choice.startswith("metadata.") and all(choice.split(".")[1:]):
        return None
    return f"expected metadata.KEY, {', '.join(CUSTOMER_COLUMNS)}; got {choice!r}"


def _metadata(fields: dict[str, Any]) -> dict[str, Any]:
    return v.json_object(fields.get("metadata"), "metadata")


def _path(data: Any, path: list[str]) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _count(data: dict[str, Any], *paths: str) -> int:
    for path in paths:
        raw = _path(data, path.split("."))
        if raw not in (None, ""):
            return v.integer(raw, f"metadata.{path}")
    return 0


def _customer(fields: dict[str, Any], metadata: dict[str, Any], choice: str | None) -> str:
    if choice is None:
        return customer_id(fields.get("customer_id"))
    if choice.startswith("metadata."):
        raw = _path(metadata, choice.split(".")[1:])
        return customer_id(raw if isinstance(raw, str) else None, choice)
    return customer_id(fields.get(choice), choice)


def litellm_event(
    fields: dict[str, Any], *, customer_from: str | None, now: datetime
) -> UsageEvent:
    """`litellm_values` as a UsageEvent."""
    return UsageEvent(**litellm_values(fields, customer_from=customer_from, now=now))


def litellm_values(
    fields: dict[str, Any], *, customer_from: str | None, now: datetime
) -> dict[str, Any]:
    """The columns of the event a LiteLLM spend log row describes (UsageEvent's fields);
    RowError if it cannot be stored."""
    metadata = _metadata(fields)
    usage = metadata.get("additional_usage_values")
    usage = usage if isinstance(usage, dict) else metadata
    created_at = v.moment(fields.get("startTime"), "startTime", now=now)
    latency_ms = 0
    if fields.get("request_duration_ms") not in (None, ""):
        latency_ms = v.integer(fields["request_duration_ms"], "request_duration_ms", high=v.INT_MAX)
    elif fields.get("endTime") not in (None, ""):
        ended = v.moment(fields["endTime"], "endTime", now=now)
        latency_ms = min(max(0, int((ended - created_at).total_seconds() * 1000)), v.INT_MAX)
    model = fields.get("model") or fields.get("model_group")
    prompt = v.integer(fields.get("prompt_tokens") or 0, "prompt_tokens")
    cached = _count(usage, "cache_read_input_tokens", "prompt_tokens_details.cached_tokens")
    written = _count(usage, "cache_creation_input_tokens")
    if cached + written > prompt:
        prompt += cached + written
    request_id = v.text(fields.get("request_id"), "request_id", nullable=True, empty_is_null=True)
    api_key = v.text(fields.get("api_key"), "api_key", nullable=True, empty_is_null=True)
    spend = v.decimal(fields.get("spend"), "spend", round_to_column=True)
    project = metadata.get("user_api_key_project_id") or metadata.get("project_id")
    kept = {name: fields[name] for name in _KEPT if fields.get(name) not in (None, "", [])}
    if request_id is not None:
        kept["request_id"] = request_id
    call_type = str(fields.get("call_type") or "")
    values: dict[str, Any] = {
        "created_at": created_at,
        "customer_id": _customer(fields, metadata, customer_from),
        "project_id": project if isinstance(project, str) and project else None,
        "user_id": v.text(fields.get("user"), "user", nullable=True, empty_is_null=True),
        "key_id": "litellm:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
        if api_key
        else "litellm",
        "tier": "",
        "provider": v.required_text(
            fields.get("custom_llm_provider") or DEFAULT_PROVIDER, "custom_llm_provider"
        ),
        "model": v.required_text(model, "model", empty_is_null=True),
        "endpoint": _ENDPOINTS.get(call_type, call_type),
        "status_code": 500 if str(fields.get("status") or "").lower() == "failure" else 200,
        "streamed": False,
        "input_tokens": prompt,
        "output_tokens": v.integer(fields.get("completion_tokens") or 0, "completion_tokens"),
        "cached_input_tokens": cached,
        "cache_write_tokens": written,
        "reasoning_tokens": _count(
            usage, "completion_tokens_details.reasoning_tokens", "reasoning_tokens"
        ),
        "usage_source": "provider",
        "cost_usd": spend,
        "price_usd": spend,
        "price_version": None,
        "latency_ms": latency_ms,
        "upstream_request_id": request_id,
        "metadata": {"litellm": v.json_object(kept, "metadata")} if kept else {},
    }
    if request_id is not None:
        values["id"] = derived_id(SOURCE, {"request_id": request_id})
    else:
        values["id"] = derived_id(SOURCE, values)
    return values
