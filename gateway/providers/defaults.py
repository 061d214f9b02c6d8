"""`DefaultHooks`: what an adapter does at the seam's newer hooks unless it says otherwise.

OpenAI and Anthropic (and any adapter whose API works like theirs) inherit these: the client's
key in `Authorization: Bearer` or `x-api-key`, the requested model priced as itself, the
upstream URL as the base URL plus the endpoint's path (path parameters filled in, percent-
encoded; the client's query string is not forwarded), no signing, SSE streams, no extra error
headers. None of them raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

from gateway.providers.base import Call, Endpoint, Framer

if TYPE_CHECKING:
    from gateway.config import ProviderConfig

SSE_CONTENT_TYPES = ("text/event-stream",)


def bearer_or_api_key(headers: Mapping[str, str]) -> str | None:
    """The key in `Authorization: Bearer KEY` or `x-api-key: KEY` (case-insensitive names)."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def header_key(headers: Mapping[str, str], name: str) -> str | None:
    """The key in header `name`, stripped; None when absent or blank."""
    value = headers.get(name)
    return value.strip() if value and value.strip() else None


def fill_path(template: str, params: Mapping[str, str]) -> str:
    """`template` with each `{name}` replaced by its parameter, percent-encoded as one path
    segment (a model id's `:` is kept: providers accept it raw)."""
    if "{" not in template:
        return template
    path = template
    for name, value in params.items():
        path = path.replace("{" + name + "}", quote(value, safe=":@!$&'()*+,;=-._~"))
    return path


class DefaultHooks:
    """Mixed into an adapter class for the hooks it does not change."""

    stream_content_types: tuple[str, ...] = SSE_CONTENT_TYPES

    def client_key(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        return bearer_or_api_key(headers)

    def catalog_model(self, provider: ProviderConfig, requested: str) -> str | None:
        return requested

    def may_ask_usage(self, endpoint: Endpoint, provider: ProviderConfig, call: Call) -> bool:
        return True

    def upstream_url(self, endpoint: Endpoint, provider: ProviderConfig, call: Call) -> str:
        return provider.base_url.rstrip("/") + fill_path(endpoint.upstream_path, call.params)

    def sign(
        self, provider: ProviderConfig, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> None:
        return None

    def stream_framer(self, endpoint: Endpoint) -> Framer | None:
        return None

    def error_headers(self, status: int, error_type: str, code: str | None) -> dict[str, str]:
        return {}

    def error_status(self, status: int, error_type: str, code: str | None) -> int:
        return status

    def credential_state(self, provider: ProviderConfig) -> str | None:
        return None

    async def warm_up(self, providers: Mapping[str, ProviderConfig]) -> None:
        return None
