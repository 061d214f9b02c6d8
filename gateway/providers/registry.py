"""Every API family the gateway speaks, and lookup by the `kind:` of a provider in config.yaml.

The adapters are stateless, so one instance of each serves the whole process. An unknown
kind raises `KeyError` naming the kinds that exist (config validation should refuse it first).
"""

from __future__ import annotations

from gateway.providers.anthropic import AnthropicApi
from gateway.providers.base import Endpoint, ProviderApi
from gateway.providers.openai import OpenAIApi

ALL_APIS: tuple[ProviderApi, ...] = (OpenAIApi(), AnthropicApi())
KINDS: tuple[str, ...] = tuple(api.kind for api in ALL_APIS)


def api_for_kind(kind: str) -> ProviderApi:
    for api in ALL_APIS:
        if api.kind == kind:
            return api
    raise KeyError(f"unknown provider kind {kind!r}; known kinds: {', '.join(KINDS)}")


def route(method: str, path: str) -> tuple[ProviderApi, Endpoint] | None:
    """The adapter and endpoint serving `method path` on the gateway, if any."""
    for api in ALL_APIS:
        for endpoint in api.endpoints:
            if endpoint.method == method and endpoint.path == path:
                return api, endpoint
    return None
