"""The seam between the proxy and an API family: what differs between OpenAI and Anthropic.

The proxy, relay and metering never branch on a provider's name; they ask a `ProviderApi`.
One adapter exists per API family (`openai.OpenAIApi` serves every OpenAI-compatible server,
`anthropic.AnthropicApi` serves Anthropic). An adapter is pure: it rewrites requests and reads
usage from bodies and SSE events, and never does I/O. Usage extraction never raises on bad
bytes: an unreadable body yields no usage, and the caller estimates (flagged `estimated`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pricing.models import Usage


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One server-sent event. `raw` is its exact bytes, terminating blank line included."""

    event: str | None
    data: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A route one API family serves.

    `path` is what clients call on the gateway; `upstream_path` is appended to the provider's
    `base_url` (OpenAI base URLs end in /v1, Anthropic's do not). `metered` is False only for
    routes that are forwarded but never billed nor recorded (Anthropic count_tokens).
    `aliases` are other paths served exactly as `path` (recorded and counted as `path`): what
    an SDK calls when its base URL is written in another family's habit.
    """

    name: str
    method: str
    path: str
    upstream_path: str
    metered: bool = True
    streams: bool = False
    needs_model: bool = True
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ResponseUsage:
    """What a complete (non-streaming) response body says about usage. `produced_text` (the
    output, for an estimate) is filled only when the body carries no usage."""

    usage: Usage | None
    upstream_id: str | None
    produced_text: str = ""


@dataclass(frozen=True, slots=True)
class StreamResult:
    """What a stream said once it ended (or was cut): usage if the provider sent it, the
    provider's response id, and the text produced so far (for an estimate).

    `produced_text` is filled only when `usage` is None (nobody needs it otherwise).
    `partial_usage` is what a cut stream did report before it ended: Anthropic sends input
    and cache tokens in `message_start` but output only in `message_delta`s; the estimate
    keeps the reported input side and counts the output, never below an output count the
    provider already reported (`TokenCounter.estimate_usage(..., reported=partial_usage)`).
    """

    usage: Usage | None
    upstream_id: str | None
    produced_text: str
    partial_usage: Usage | None = None


class StreamMeter(Protocol):
    """Follows one SSE stream event by event. `finished` turns True once the stream's terminal
    event (`[DONE]`, `message_stop`, `response.completed`...) has been observed: the usage is
    final, and the relay records it before letting that event reach the client."""

    finished: bool

    def observe(self, event: SSEEvent) -> bool:
        """Read one event; return False if the client must not see it (the injected usage)."""
        ...

    def result(self) -> StreamResult: ...


class ProviderApi(Protocol):
    kind: str  # "openai" or "anthropic": the value of `kind:` in config.yaml
    endpoints: tuple[Endpoint, ...]

    def upstream_headers(
        self, client_headers: Mapping[str, str], api_key: str | None
    ) -> dict[str, str]:
        """Headers to send upstream: the client's key removed, the provider key added,
        hop-by-hop headers dropped, API headers (anthropic-version, ...) passed through."""
        ...

    def is_streaming(self, endpoint: Endpoint, body: Mapping[str, Any]) -> bool: ...

    def prepare_body(self, endpoint: Endpoint, body: dict[str, Any]) -> bool:
        """Adjust the request body in place before forwarding. Returns True when the gateway
        asked for usage the client did not (OpenAI include_usage): the stream meter must then
        strip that usage chunk from what the client sees."""
        ...

    def usage_from_body(self, endpoint: Endpoint, body: bytes) -> ResponseUsage: ...

    def stream_meter(self, endpoint: Endpoint, strip_usage: bool) -> StreamMeter: ...

    def prompt_text(self, endpoint: Endpoint, body: Mapping[str, Any]) -> str:
        """The text of the prompt, for a token estimate when the provider reports none."""
        ...

    def max_output_tokens(self, body: Mapping[str, Any]) -> int | None: ...

    def error_body(self, status: int, error_type: str, message: str,
                   code: str | None, param: str | None) -> bytes:
        """An error body in this API's shape."""
        ...
