"""Every API family the gateway speaks, lookup by the `kind:` of a provider in config.yaml, and
the one table of forwarded routes both HTTP servers serve.

The adapters are stateless, so one instance of each serves the whole process. An unknown
kind raises `KeyError` naming the kinds that exist (config validation should refuse it first).
`FORWARDED` maps every exact path a client may call to reach a forwarded endpoint (its `path`
and its `aliases`) to the adapter and endpoint serving it; `TEMPLATED` holds the paths with
`{name}` parameters (`/v1beta/models/{model}:generateContent`), each a compiled pattern behind
its literal prefix. `match(target)` resolves a request target (path and query, as sent) for
both servers: the fast front (`gateway.front.server`) and aiohttp's router (`gateway.app`). An exact
path costs one dict lookup; only a miss tries the templates. A path parameter never matches
an empty segment, `.` or `..` (it is put back into the provider's URL).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

from gateway.providers.anthropic import AnthropicApi
from gateway.providers.azure_openai import AzureOpenAIApi
from gateway.providers.base import NO_CALL_DETAILS, Call, Endpoint, ProviderApi
from gateway.providers.bedrock import BedrockApi
from gateway.providers.gemini import GeminiApi
from gateway.providers.openai import OpenAIApi

ALL_APIS: tuple[ProviderApi, ...] = (
    OpenAIApi(),
    AnthropicApi(),
    AzureOpenAIApi(),
    GeminiApi(),
    BedrockApi(),
)
KINDS: tuple[str, ...] = tuple(api.kind for api in ALL_APIS)

if TYPE_CHECKING:
    from gateway.config import ProviderConfig

Route = tuple[ProviderApi, Endpoint]
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


async def warm_up(providers: Mapping[str, ProviderConfig]) -> None:
    """Let every adapter fetch what it signs with (`ProviderApi.warm_up`); never raises."""
    for api in ALL_APIS:
        await api.warm_up(providers)


def api_for_kind(kind: str) -> ProviderApi:
    for api in ALL_APIS:
        if api.kind == kind:
            return api
    raise KeyError(f"unknown provider kind {kind!r}; known kinds: {', '.join(KINDS)}")


@dataclass(frozen=True, slots=True)
class Template:
    """A templated path: its literal start (a cheap pre-check) and its full pattern."""

    path: str
    prefix: str
    pattern: re.Pattern[str]
    route: Route


def compile_template(path: str) -> re.Pattern[str]:
    """`path` as a pattern whose `{name}` groups each match within one segment."""
    pattern, last = [], 0
    for found in _PARAM.finditer(path):
        pattern.append(re.escape(path[last : found.start()]))
        pattern.append(f"(?P<{found.group(1)}>[^/]+)")
        last = found.end()
    pattern.append(re.escape(path[last:]))
    return re.compile("".join(pattern))


def aiohttp_path(path: str) -> str:
    """A templated path in aiohttp's router syntax, each parameter within one segment."""
    return _PARAM.sub(lambda found: "{" + found.group(1) + ":[^/]+}", path)


def _tables() -> tuple[dict[str, Route], tuple[Template, ...]]:
    exact: dict[str, Route] = {}
    templated: list[Template] = []
    for api in ALL_APIS:
        for endpoint in api.endpoints:
            if endpoint.name == "models":
                continue  # answered by the gateway itself (operator_routes)
            for path in (endpoint.path, *endpoint.aliases):
                if "{" in path:
                    assert all(t.path != path for t in templated), f"{path} is declared twice"
                    prefix = path[: path.index("{")]
                    templated.append(
                        Template(path, prefix, compile_template(path), (api, endpoint))
                    )
                else:
                    assert path not in exact, f"{path} is declared twice"
                    exact[path] = (api, endpoint)
    return exact, tuple(templated)


_EXACT, TEMPLATED = _tables()
FORWARDED: Mapping[str, Route] = MappingProxyType(_EXACT)


def match_path(path: str) -> tuple[Route, dict[str, str]] | None:
    """The route serving `path` (no query) and its decoded path parameters, if any."""
    route = _EXACT.get(path)
    if route is not None:
        return route, {}
    for template in TEMPLATED:
        if not path.startswith(template.prefix):
            continue
        found = template.pattern.fullmatch(path)
        if found is None:
            continue
        params = {name: unquote(value) for name, value in found.groupdict().items()}
        if any(value in ("", ".", "..") for value in params.values()):
            return None
        return template.route, params
    return None


def match(target: str) -> tuple[Route, Call] | None:
    """The route serving a request target (`/path?query` as the client sent it) and what the
    client called: decoded path parameters and query parameters."""
    path, _, query = target.partition("?")
    found = match_path(path)
    if found is None:
        return None
    route, params = found
    if not params and not query:
        return route, NO_CALL_DETAILS
    query_params = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    return route, Call(MappingProxyType(params), MappingProxyType(query_params))


def route(method: str, path: str) -> Route | None:
    """The adapter and endpoint serving `method path` on the gateway, if any."""
    found = match_path(path)
    if found is not None and found[0][1].method == method:
        return found[0]
    return None
