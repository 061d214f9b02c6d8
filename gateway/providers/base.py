"""The seam between the proxy and an API family: everything that differs between them.

The proxy, relay and metering never branch on a provider's name; they ask a `ProviderApi`.
One adapter exists per API family (`openai.OpenAIApi` serves every OpenAI-compatible server,
`anthropic.AnthropicApi` serves Anthropic, and so on for each `kind:` of provider). An adapter
is pure: it rewrites requests and reads usage from bodies and stream events, and never does
network I/O. Usage extraction never raises on bad bytes: an unreadable body yields no usage,
and the caller estimates (flagged `estimated`).

What an adapter decides, hook by hook (in the order a request meets them):
- `endpoints`: its routes. A `path` is exact (`/v1/chat/completions`) or a template whose
  `{name}` parameters each fill one path segment, or part of one
  (`/v1beta/models/{model}:generateContent`); `model_param` names the parameter that carries
  the model (else the model is the body's `model`). `registry` matches both kinds of path
  for both servers from one table.
- `client_key(headers, query)`: where the client's Tollbooth key is (the header its SDK puts
  the API key in, or a query parameter).
- `catalog_model(provider, requested)`: the catalog model a requested model (or deployment)
  is priced as under this provider entry; None refuses the request (400) before it is sent.
- `is_streaming`, `prepare_body` (unless `may_ask_usage` says the upstream would refuse
  what it adds), `prompt_text`, `max_output_tokens`: read and adjust the body.
- `upstream_url(endpoint, provider, call)`: the provider URL (path parameters filled in, the
  query the provider needs, never the client's key).
- `upstream_headers(client_headers, api_key)`: the client's key out, the provider's in.
- `sign(provider, method, url, headers, body)`: last, with the final URL and body: a
  request-signing scheme (AWS SigV4) rewrites `headers` in place; most adapters do nothing.
- `stream_content_types` and `stream_framer(endpoint)`: which response types are streams and
  how their bytes split into events (None: SSE, parsed by `gateway.sse.SSEParser`); a framer
  for a binary framing (AWS event-stream) yields `SSEEvent`s whose `raw` is each frame's exact
  bytes, so the relay keeps passing bytes through untouched.
- `stream_meter`, `usage_from_body`: usage from what the provider answered.
- `error_body` and `error_headers`: a gateway error in this API's shape, so its SDK reads it
  (and retries a 429, or stops on one, as the error's headers say).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pricing.models import Usage

if TYPE_CHECKING:
    from gateway.config import ProviderConfig


class SSEEvent(NamedTuple):
    """One server-sent event. `raw` is its exact bytes, terminating blank line included.
    (A tuple: one is made per streamed event, at half a frozen dataclass's cost.)"""

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
    A templated `path` (`/openai/deployments/{deployment}/embeddings`) has `{name}`
    parameters; `upstream_path` may use the same names. `model_param` is the parameter that
    names the model (then `needs_model` is False: the body need not name one).
    """

    name: str
    method: str
    path: str
    upstream_path: str
    metered: bool = True
    streams: bool = False
    needs_model: bool = True
    aliases: tuple[str, ...] = ()
    model_param: str | None = None

    @property
    def templated(self) -> bool:
        return "{" in self.path


@dataclass(frozen=True, slots=True)
class Call:
    """What a client called beyond the route: the path parameters (decoded) and the query
    string's parameters (decoded; the last of a repeated name wins)."""

    params: Mapping[str, str]
    query: Mapping[str, str]


NO_CALL_DETAILS = Call(MappingProxyType({}), MappingProxyType({}))


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


class Framer(Protocol):
    """Splits a stream's bytes into events incrementally (`gateway.sse.SSEParser` for SSE).
    Each event's `raw` is its exact bytes: concatenated, the events give back the stream."""

    @property
    def buffered(self) -> int:
        """Bytes received that belong to no complete event yet."""
        ...

    def feed(self, chunk: bytes) -> list[SSEEvent]: ...

    def flush(self) -> list[SSEEvent]:
        """The stream ended: whatever is buffered, as events (possibly incomplete ones)."""
        ...


class StreamMeter(Protocol):
    """Follows one stream event by event (SSE events, or a framer's events). `finished`
    turns True once the stream's terminal event (`[DONE]`, `message_stop`,
    `response.completed`...) has been observed: the usage is final, and the relay records it
    before letting that event reach the client."""

    finished: bool

    def observe(self, event: SSEEvent) -> bool:
        """Read one event; return False if the client must not see it (the injected usage)."""
        ...

    def result(self) -> StreamResult: ...


class ProviderApi(Protocol):
    kind: str  # the value of `kind:` in config.yaml ("openai", "anthropic", ...)
    endpoints: tuple[Endpoint, ...]
    # Response content types relayed as streams (each a prefix of the Content-Type).
    stream_content_types: tuple[str, ...]

    def client_key(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        """The client's Tollbooth key, from where this API's SDK sends its key; None if absent.
        `headers` is case-insensitive."""
        ...

    def catalog_model(self, provider: ProviderConfig, requested: str) -> str | None:
        """The catalog model `requested` (a model, a deployment name...) is priced and
        recorded as under `provider`; None refuses the request with a 400."""
        ...

    def may_ask_usage(self, endpoint: Endpoint, provider: ProviderConfig, call: Call) -> bool:
        """False when this request's upstream would refuse the usage request `prepare_body`
        adds (an Azure api-version older than streamed usage): `prepare_body` is then not
        called, and a stream without usage is metered by estimate."""
        ...

    def upstream_url(self, endpoint: Endpoint, provider: ProviderConfig, call: Call) -> str:
        """The provider URL of this request: `provider`'s base URL and the endpoint's
        `upstream_path` with `call.params` filled in, plus the query the provider needs (a
        client's key in the query is never passed on)."""
        ...

    def sign(
        self, provider: ProviderConfig, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> None:
        """Called last, with the exact URL and body that will be sent: a signing scheme adds
        its headers to `headers` in place (the others do nothing). Raises a
        `gateway.errors.GatewayError` (503) when it cannot sign (no credentials)."""
        ...

    def stream_framer(self, endpoint: Endpoint) -> Framer | None:
        """The framer of this endpoint's streams; None for SSE (the relay's default parser)."""
        ...

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

    def error_body(
        self, status: int, error_type: str, message: str, code: str | None, param: str | None
    ) -> bytes:
        """A gateway error's body in this API's shape (`error_type` and `code` are OpenAI's
        words, from `gateway.errors`; an adapter maps them, or `status`, to its own)."""
        ...

    def error_headers(self, status: int, error_type: str, code: str | None) -> dict[str, str]:
        """Headers this API's errors carry besides the error's own (AWS `x-amzn-ErrorType`);
        usually none."""
        ...

    def error_status(self, status: int, error_type: str, code: str | None) -> int:
        """The status a gateway error is answered with on this API's routes: `status`, unless
        the API's SDK reads another one as meaning the same (Bedrock: a bad key is a 403, an
        exhausted monthly quota a 400 that botocore does not retry)."""
        ...

    def credential_state(self, provider: ProviderConfig) -> str | None:
        """For /health: the state of the credentials this API signs `provider`'s requests
        with (`set`, `missing`, `resolving`), or None when its key comes from `api_key_env`
        (reported from that variable)."""
        ...

    async def warm_up(self, providers: Mapping[str, ProviderConfig]) -> None:
        """At start and after a reload, with the configured providers: fetch off the request
        path what signing will need (Bedrock: the AWS credential chain, in a thread). Never
        raises: what is missing is logged and the requests that need it answer 503."""
        ...
