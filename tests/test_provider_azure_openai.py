"""The Azure OpenAI adapter: deployment routes and v1 routes, the deployment priced as its
mapped model (unmapped: refused), which api-version goes upstream and whether it can stream
usage, the key headers, and Azure's opening content-filter chunk kept while the injected usage
chunk is hidden."""

from __future__ import annotations

import orjson

from gateway.config import ProviderConfig
from gateway.providers.azure_openai import AzureOpenAIApi, streams_usage
from gateway.providers.base import Call, Endpoint
from gateway.providers.registry import match
from gateway.sse import SSEParser

API = AzureOpenAIApi()
PROVIDER = ProviderConfig(
    kind="azure_openai",
    base_url="https://res.openai.azure.com/",
    api_key_env="AZURE_KEY",
    deployments={"prod": "gpt-4o"},
)
PINNED = PROVIDER.model_copy(update={"api_version": "2024-10-21"})


def route(target: str) -> tuple[Endpoint, Call]:
    found = match(target)
    assert found is not None and found[0][0].kind == "azure_openai"
    return found[0][1], found[1]


def test_deployment_routes_name_the_model_in_the_path() -> None:
    endpoint, call = route("/openai/deployments/prod/chat/completions?api-version=2024-06-01")
    assert endpoint.name == "chat.completions" and endpoint.model_param == "deployment"
    assert call.params == {"deployment": "prod"}
    assert API.catalog_model(PROVIDER, "prod") == "gpt-4o"
    assert API.catalog_model(PROVIDER, "other") is None  # refused, never priced at $0
    v1, _ = route("/openai/v1/responses")
    assert v1.name == "responses" and v1.needs_model and v1.model_param is None


def test_upstream_api_version_is_the_entrys_else_the_clients() -> None:
    endpoint, call = route("/openai/deployments/prod/embeddings?api-version=2024-06-01")
    assert API.upstream_url(endpoint, PROVIDER, call) == (
        "https://res.openai.azure.com/openai/deployments/prod/embeddings?api-version=2024-06-01"
    )
    assert API.upstream_url(endpoint, PINNED, call).endswith("?api-version=2024-10-21")
    v1, bare = route("/openai/v1/chat/completions")
    assert API.upstream_url(v1, PROVIDER, bare) == (
        "https://res.openai.azure.com/openai/v1/chat/completions"
    )


def test_usage_is_asked_for_only_where_the_api_version_streams_it() -> None:
    assert not streams_usage("2024-06-01") and not streams_usage("2024-08-01-preview")
    assert streams_usage("2024-09-01-preview") and streams_usage("2024-10-21")
    assert streams_usage("preview") and streams_usage(None)
    endpoint, old = route("/openai/deployments/prod/chat/completions?api-version=2024-06-01")
    assert not API.may_ask_usage(endpoint, PROVIDER, old)
    assert API.may_ask_usage(endpoint, PINNED, old)


def test_key_headers() -> None:
    assert API.client_key({"api-key": "tb_a"}, {}) == "tb_a"
    assert API.client_key({"Authorization": "Bearer tb_b"}, {}) == "tb_b"
    headers = API.upstream_headers({"api-key": "tb_a", "Authorization": "Bearer tb_a"}, "az")
    assert headers["api-key"] == "az" and "Authorization" not in headers


FILTER = {
    "choices": [],
    "created": 0,
    "id": "",
    "model": "",
    "object": "",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
}


def event(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def test_filter_chunk_is_kept_and_the_injected_usage_chunk_hidden() -> None:
    endpoint, _ = route("/openai/deployments/prod/chat/completions?api-version=2024-10-21")
    content = {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "delta": {"content": "hi"}}],
        "usage": None,
    }
    usage = {
        "id": "chatcmpl-1",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }
    stream = event(FILTER) + event(content) + event(usage) + b"data: [DONE]\n\n"
    meter = API.stream_meter(endpoint, strip_usage=True)
    kept = [e.raw for e in SSEParser().feed(stream) if meter.observe(e)]
    assert kept == [event(FILTER), event(content), b"data: [DONE]\n\n"]
    result = meter.result()
    assert result.usage is not None and result.usage.input_tokens == 9
    assert result.upstream_id == "chatcmpl-1"
