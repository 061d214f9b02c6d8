"""Every API family the gateway speaks, lookup by the `kind:` of a provider in config.yaml, and
the one table of forwarded routes both HTTP servers serve.

The adapters are stateless, so one instance of each serves the whole process. An unknown
kind raises `KeyError` naming the kinds that exist (config validation should refuse it first).
`FORWARDED` maps every path a client may call to reach a forwarded endpoint (its `path` and
its `aliases`) to the adapter and endpoint serving it: the fast front (`gateway.front`) and
aiohttp's router (`gateway.app`) are both built from it, so they serve the same paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gateway.providers.anthropic import AnthropicApi
from gateway.providers.base import Endpoint, ProviderApi
from gateway.providers.openai import OpenAIApi

ALL_APIS: tuple[ProviderApi, ...] = (OpenAIApi(), AnthropicApi())
KINDS: tuple[str, ...] = tuple(api.kind for api in ALL_APIS)

Route = tuple[ProviderApi, Endpoint]


def api_for_kind(kind: str) -> ProviderApi:
    for api in ALL_APIS:
        if api.kind == kind:
            return api
    raise KeyError(f"unknown provider kind {kind!r}; known kinds: {', '.join(KINDS)}")


def _forwarded() -> dict[str, Route]:
    table: dict[str, Route] = {}
    for api in ALL_APIS:
        for endpoint in api.endpoints:
            if endpoint.name == "models":
                continue  # answered by the gateway itself (operator_routes)
            for path in (endpoint.path, *endpoint.aliases):
                assert path not in table, f"{path} is declared twice"
                table[path] = (api, endpoint)
    return table


FORWARDED: Mapping[str, Route] = MappingProxyType(_forwarded())


def route(method: str, path: str) -> Route | None:
    """The adapter and endpoint serving `method path` on the gateway, if any."""
    for api in ALL_APIS:
        for endpoint in api.endpoints:
            if endpoint.method == method and path in (endpoint.path, *endpoint.aliases):
                return api, endpoint
    return None
