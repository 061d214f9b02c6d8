"""Per-request behaviour chosen by `x-mock-*` headers (the gateway passes them through).

- `x-mock-error: NNN` answers status NNN with the provider's error body (429 adds
  `retry-after` and rate-limit headers; 529 is Anthropic's `overloaded_error`);
  `insufficient-quota` is OpenAI's exhausted-quota 429. The other modes answer 200 but break:
  `reset` closes the connection (mid-stream half-way through the text, or before any byte);
  `truncate` ends the stream cleanly but without the final usage/terminal events and without
  `[DONE]` (a plain body is cut in half); `invalid-json` sends a body (or one stream event)
  that is not JSON; `stream-error` sends the provider's in-stream error event half-way
  through the text (a plain answer is unaffected); `slow` waits `x-mock-delay-ms`
  (default 30 s) before answering normally.
- `x-mock-no-usage: 1` omits usage everywhere, like some OpenAI-compatible servers.
- `x-mock-output-tokens: N`, `x-mock-cached-tokens: N`, `x-mock-cache-write-tokens: N`:
  see `tokens.py`. `x-mock-token-delay-ms: N` paces this stream (overrides the option).
  `x-mock-retry-after: S` is the `retry-after` of an injected 429/529 (default 1).

A malformed value raises `ControlError`, which the caller answers with a 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MODES = frozenset(
    {"reset", "truncate", "slow", "invalid-json", "stream-error", "insufficient-quota"}
)
DEFAULT_SLOW_DELAY_MS = 30_000


class ControlError(ValueError):
    """An `x-mock-*` header this mock cannot understand."""


@dataclass(frozen=True, slots=True)
class Controls:
    error_status: int | None = None
    mode: str | None = None
    delay_ms: int = DEFAULT_SLOW_DELAY_MS
    no_usage: bool = False
    output_tokens: int | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    token_delay_ms: int | None = None
    retry_after_s: int = 1


NO_CONTROLS = Controls()


def read_controls(headers: Mapping[str, str]) -> Controls:
    if not any(name[:7].lower() == "x-mock-" for name in headers):
        return NO_CONTROLS  # the common case, kept cheap for the benchmark
    error_status: int | None = None
    mode: str | None = None
    error = headers.get("x-mock-error")
    if error is not None:
        error = error.strip().lower()
        if error.isdigit() and 400 <= int(error) <= 599:
            error_status = int(error)
        elif error in MODES:
            mode = error
        else:
            raise ControlError(
                f"x-mock-error must be a 4xx/5xx status or one of {sorted(MODES)}, not {error!r}"
            )
    output_tokens = _count(headers, "x-mock-output-tokens")
    token_delay_ms = _count(headers, "x-mock-token-delay-ms")
    return Controls(
        error_status=error_status,
        mode=mode,
        delay_ms=_count_or(headers, "x-mock-delay-ms", DEFAULT_SLOW_DELAY_MS),
        no_usage=headers.get("x-mock-no-usage", "").strip().lower() in {"1", "true", "yes"},
        output_tokens=output_tokens,
        cached_tokens=_count_or(headers, "x-mock-cached-tokens", 0),
        cache_write_tokens=_count_or(headers, "x-mock-cache-write-tokens", 0),
        token_delay_ms=token_delay_ms,
        retry_after_s=_count_or(headers, "x-mock-retry-after", 1),
    )


def _count(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        raise ControlError(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


def _count_or(headers: Mapping[str, str], name: str, default: int) -> int:
    value = _count(headers, name)
    return default if value is None else value
