"""The Azure OpenAI API family (`kind: azure_openai`): OpenAI's API behind Azure's routes.

Two route families, both answered by the OpenAI adapter's body, usage and stream code (this
class subclasses `OpenAIApi` and changes only what Azure does differently):
- deployment routes, `/openai/deployments/{deployment}/chat/completions`, `/completions` and
  `/embeddings`, with `?api-version=`: the deployment is named in the path;
- the v1 routes, `/openai/v1/chat/completions`, `/openai/v1/responses` and
  `/openai/v1/embeddings`: the body's `model` names the deployment.
Either way the deployment is priced as the catalog model the provider entry maps it to
(`deployments: {NAME: MODEL}`); an unmapped deployment is refused (400) before anything is
sent, never priced at $0. The client's key comes in `api-key` (what `openai.AzureOpenAI`
sends; `Authorization: Bearer` works too), the provider's goes upstream as `api-key`.

The upstream `api-version` is the provider entry's `api_version` when set, else the client's.
Streamed usage (`stream_options.include_usage`) arrived in api-version 2024-09-01-preview;
with an older dated version the gateway does not ask for it (Azure would refuse the field),
and the stream is metered by estimate (`usage_source = estimated`). Azure's first chunk,
`choices: []` with `prompt_filter_results`, reaches the client unchanged: only the usage chunk
the gateway asked for is hidden (`openai_stream.ChatStreamMeter`). Never raises on bad bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from gateway.providers.base import Call, Endpoint
from gateway.providers.common import forward_headers
from gateway.providers.defaults import bearer_or_api_key, fill_path, header_key
from gateway.providers.openai import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, OpenAIApi

if TYPE_CHECKING:
    from gateway.config import ProviderConfig

_DEPLOYMENT = "/openai/deployments/{deployment}"


def _deployment_route(endpoint: Endpoint) -> Endpoint:
    path = _DEPLOYMENT + endpoint.upstream_path
    return Endpoint(
        endpoint.name,
        "POST",
        path,
        path,
        streams=endpoint.streams,
        needs_model=False,
        model_param="deployment",
    )


def _v1_route(endpoint: Endpoint) -> Endpoint:
    path = "/openai/v1" + endpoint.upstream_path
    return Endpoint(endpoint.name, "POST", path, path, streams=endpoint.streams)


DEPLOYMENT_CHAT = _deployment_route(CHAT)
DEPLOYMENT_COMPLETIONS = _deployment_route(COMPLETIONS)
DEPLOYMENT_EMBEDDINGS = _deployment_route(EMBEDDINGS)
V1_CHAT = _v1_route(CHAT)
V1_RESPONSES = _v1_route(RESPONSES)
V1_EMBEDDINGS = _v1_route(EMBEDDINGS)

API_VERSION = "api-version"
# The first api-version whose streams report usage when asked (stream_options).
STREAM_USAGE_SINCE = "2024-09-01-preview"
_DATED = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")


def effective_api_version(provider: ProviderConfig, call: Call) -> str | None:
    """The api-version sent upstream: the provider entry's, else the client's."""
    return provider.api_version or call.query.get(API_VERSION) or None


def streams_usage(api_version: str | None) -> bool:
    """Whether `api_version` accepts `stream_options.include_usage`. Undated versions
    (`preview`, `latest`, the v1 routes' none) do; dated ones from 2024-09-01-preview on."""
    if api_version is None or not _DATED.fullmatch(api_version):
        return True
    return api_version[:10] >= STREAM_USAGE_SINCE[:10]  # ISO dates order as strings


class AzureOpenAIApi(OpenAIApi):
    """Adapter for Azure OpenAI. Stateless: one instance serves every request."""

    kind: str = "azure_openai"
    endpoints: tuple[Endpoint, ...] = (
        DEPLOYMENT_CHAT,
        DEPLOYMENT_COMPLETIONS,
        DEPLOYMENT_EMBEDDINGS,
        V1_CHAT,
        V1_RESPONSES,
        V1_EMBEDDINGS,
    )

    def client_key(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        return header_key(headers, "api-key") or bearer_or_api_key(headers)

    def catalog_model(self, provider: ProviderConfig, requested: str) -> str | None:
        return provider.deployments.get(requested)

    def may_ask_usage(self, endpoint: Endpoint, provider: ProviderConfig, call: Call) -> bool:
        return streams_usage(effective_api_version(provider, call))

    def upstream_url(self, endpoint: Endpoint, provider: ProviderConfig, call: Call) -> str:
        url = provider.base_url.rstrip("/") + fill_path(endpoint.upstream_path, call.params)
        version = effective_api_version(provider, call)
        return f"{url}?{urlencode({API_VERSION: version})}" if version else url

    def upstream_headers(
        self, client_headers: Mapping[str, str], api_key: str | None
    ) -> dict[str, str]:
        return forward_headers(client_headers, ("api-key", api_key) if api_key else None)
