"""The official `openai` SDK as an Azure OpenAI client through Tollbooth (`kind: azure_openai`):
`AzureOpenAI(azure_endpoint=GATEWAY)` on the deployment routes and `OpenAI(base_url=GATEWAY +
"/openai/v1")` on the v1 routes, against the mock provider. Each call leaves one usage event
priced as the catalog model its deployment maps to, with the provider's token counts; the
provider sees its own key in `api-key`, never the client's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from gateway.mock_provider.app import MockOptions
from tests.harness import PROVIDER_KEY, Gateway, running_gateway
from tests.helpers.hand_priced import expected_money

API_VERSION = "2024-10-21"
OLD_API_VERSION = "2024-06-01"  # before streamed usage (stream_options)
DEPLOYMENTS = {
    "prod-4o": "gpt-4o",
    "mini": "gpt-4o-mini",
    "embed": "text-embedding-3-small",
    "instruct": "gpt-3.5-turbo-instruct",
}
MESSAGES: Any = [{"role": "user", "content": "Name three rivers of Europe please"}]


def azure_providers(**entry: Any) -> Callable[[str], dict[str, Any]]:
    """The `azure` provider entry, beside the harness's OpenAI and Anthropic ones."""

    def providers(mock_url: str) -> dict[str, Any]:
        return {
            "azure": {
                "kind": "azure_openai",
                "base_url": mock_url,
                "api_key_env": "TB_TEST_OPENAI_KEY",
                "deployments": DEPLOYMENTS,
                **entry,
            }
        }

    return providers


async def start(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, **entry: Any
) -> Any:
    return running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        mock_options=MockOptions(api_key=PROVIDER_KEY, token_delay_ms=0),
        providers=azure_providers(**entry),
    )


@pytest.fixture
async def gw(fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch):
    async with await start(fresh_database_url, redis_url, monkeypatch) as gateway:
        yield gateway


def azure(gw: Gateway, api_version: str = API_VERSION) -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(
        azure_endpoint=gw.base_url, api_key=gw.key, api_version=api_version, max_retries=0
    )


def v1(gw: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/openai/v1", api_key=gw.key, max_retries=0)


def assert_priced(row: Any, model: str) -> None:
    assert row["provider"] == "azure"
    assert row["model"] == model
    assert row["status_code"] == 200
    cost, charged = expected_money(model, row)
    assert row["cost_usd"] == cost and row["price_usd"] == charged


def assert_no_client_key_upstream(gw: Gateway) -> None:
    assert gw.mock_requests, "the provider was called"
    for sent in gw.mock_requests:
        assert sent.headers.get("api-key") == PROVIDER_KEY
        assert "authorization" not in sent.headers
        assert gw.key not in repr(sent.headers) and gw.key not in sent.query
        assert gw.key.encode() not in sent.body


async def test_deployment_chat_is_priced_as_the_mapped_model(gw: Gateway) -> None:
    reply = await azure(gw).chat.completions.create(
        model="prod-4o", messages=MESSAGES, extra_headers={"x-mock-cached-tokens": "3"}
    )
    assert reply.usage is not None
    [row] = await gw.events()
    assert_priced(row, "gpt-4o")
    assert row["endpoint"] == "chat.completions" and row["streamed"] is False
    assert row["input_tokens"] == reply.usage.prompt_tokens
    assert row["output_tokens"] == reply.usage.completion_tokens
    assert row["cached_input_tokens"] == 3
    assert row["usage_source"] == "provider"
    assert row["upstream_request_id"] == reply.id
    assert orjson.loads(row["metadata"])["requested_model"] == "prod-4o"
    [sent] = gw.mock_requests
    assert sent.path == "/openai/deployments/prod-4o/chat/completions"
    assert sent.query == f"api-version={API_VERSION}"
    assert_no_client_key_upstream(gw)


async def test_deployment_stream_keeps_the_filter_chunk_and_hides_injected_usage(
    gw: Gateway,
) -> None:
    stream = await azure(gw).chat.completions.create(model="mini", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices == []
    assert chunks[0].model_extra and "prompt_filter_results" in chunks[0].model_extra
    assert all(chunk.usage is None for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    [row] = await gw.events()
    assert_priced(row, "gpt-4o-mini")
    assert row["streamed"] is True and row["usage_source"] == "provider"
    assert row["output_tokens"] == len(text.split())
    assert b'"include_usage":true' in gw.mock_requests[-1].body
    assert row["upstream_request_id"] == chunks[1].id


async def test_stream_with_include_usage_passes_it_through(gw: Gateway) -> None:
    stream = await azure(gw).chat.completions.create(
        model="prod-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    usage = chunks[-1].usage
    assert usage is not None
    [row] = await gw.events()
    assert row["input_tokens"] == usage.prompt_tokens
    assert row["output_tokens"] == usage.completion_tokens


async def test_old_api_version_stream_is_estimated_never_zero(gw: Gateway) -> None:
    stream = await azure(gw, OLD_API_VERSION).chat.completions.create(
        model="prod-4o", messages=MESSAGES, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks
    [row] = await gw.events()
    assert b"stream_options" not in gw.mock_requests[-1].body  # Azure would refuse it
    assert gw.mock_requests[-1].query == f"api-version={OLD_API_VERSION}"
    assert row["usage_source"] == "estimated"
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert row["price_usd"] > 0 and row["model"] == "gpt-4o"


async def test_entry_api_version_wins_over_the_clients(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await start(
        fresh_database_url, redis_url, monkeypatch, api_version=API_VERSION
    ) as gw:
        await azure(gw, OLD_API_VERSION).chat.completions.create(model="prod-4o", messages=MESSAGES)
        stream = await azure(gw, OLD_API_VERSION).chat.completions.create(
            model="prod-4o", messages=MESSAGES, stream=True
        )
        _ = [chunk async for chunk in stream]
        rows = await gw.events(wait_for=2)
        assert [sent.query for sent in gw.mock_requests] == [f"api-version={API_VERSION}"] * 2
        assert b'"include_usage":true' in gw.mock_requests[-1].body
        assert [row["usage_source"] for row in rows] == ["provider", "provider"]


async def test_deployment_embeddings_and_completions(gw: Gateway) -> None:
    client = azure(gw)
    embedded = await client.embeddings.create(model="embed", input=["one two", "three"])
    completed = await client.completions.create(model="instruct", prompt="Say it")
    rows = await gw.events(wait_for=2)
    assert [row["endpoint"] for row in rows] == ["embeddings", "completions"]
    assert_priced(rows[0], "text-embedding-3-small")
    assert rows[0]["input_tokens"] == embedded.usage.prompt_tokens
    assert_priced(rows[1], "gpt-3.5-turbo-instruct")
    assert completed.usage is not None
    assert rows[1]["output_tokens"] == completed.usage.completion_tokens
    assert [sent.path for sent in gw.mock_requests] == [
        "/openai/deployments/embed/embeddings",
        "/openai/deployments/instruct/completions",
    ]


async def test_v1_routes_take_the_deployment_from_the_body(gw: Gateway) -> None:
    client = v1(gw)
    chat = await client.chat.completions.create(model="prod-4o", messages=MESSAGES)
    response = await client.responses.create(model="mini", input="Hello there")
    stream = await client.chat.completions.create(model="mini", messages=MESSAGES, stream=True)
    _ = [chunk async for chunk in stream]
    embedded = await client.embeddings.create(model="embed", input="a b c")
    rows = await gw.events(wait_for=4)
    assert [(r["endpoint"], r["model"]) for r in rows] == [
        ("chat.completions", "gpt-4o"),
        ("responses", "gpt-4o-mini"),
        ("chat.completions", "gpt-4o-mini"),
        ("embeddings", "text-embedding-3-small"),
    ]
    assert chat.usage is not None and rows[0]["input_tokens"] == chat.usage.prompt_tokens
    assert response.usage is not None
    assert rows[1]["output_tokens"] == response.usage.output_tokens
    assert rows[2]["usage_source"] == "provider"
    assert rows[3]["input_tokens"] == embedded.usage.prompt_tokens
    assert [sent.path for sent in gw.mock_requests] == [
        "/openai/v1/chat/completions",
        "/openai/v1/responses",
        "/openai/v1/chat/completions",
        "/openai/v1/embeddings",
    ]
    assert_no_client_key_upstream(gw)


async def test_unmapped_deployment_is_refused_before_the_provider(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await azure(gw).chat.completions.create(model="not-mapped", messages=MESSAGES)
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "model_not_found"
    assert "not-mapped" in error["message"]
    with pytest.raises(openai.BadRequestError):
        await v1(gw).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert gw.mock_requests == []
    assert await gw.events(wait_for=0, timeout_s=0.2) == []


async def test_wrong_key_is_refused_in_openai_shape(gw: Gateway) -> None:
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=gw.base_url, api_key="tb_wrong", api_version=API_VERSION, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as refused:
        await client.chat.completions.create(model="prod-4o", messages=MESSAGES)
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["code"] == "invalid_api_key"
    assert gw.mock_requests == []


@pytest.mark.parametrize("drain_s, source", [(5, "provider"), (0, "estimated")])
async def test_client_leaving_mid_stream_is_drained_and_metered(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    drain_s: float,
    source: str,
) -> None:
    extra = {"server": {"host": "127.0.0.1", "port": 0, "disconnect_drain_s": drain_s}}
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        mock_options=MockOptions(token_delay_ms=30, output_tokens=20),
        extra_config=extra,
        providers=azure_providers(),
    ) as gw:
        body = orjson.dumps({"messages": MESSAGES, "stream": True})
        url = f"{gw.base_url}/openai/deployments/prod-4o/chat/completions?api-version={API_VERSION}"
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                url, data=body, headers={"api-key": gw.key, "content-type": "application/json"}
            )
            await response.content.readany()  # the first bytes, then hang up
            response.close()
        [row] = await gw.events()
        assert row["usage_source"] == source
        assert orjson.loads(row["metadata"]).get("client_disconnected") is True
        assert row["price_usd"] > 0
        if source == "provider":
            assert row["output_tokens"] == 20


async def test_stream_cut_by_the_provider_is_estimated_and_flagged(gw: Gateway) -> None:
    stream = await azure(gw).chat.completions.create(
        model="prod-4o", messages=MESSAGES, stream=True, extra_headers={"x-mock-error": "truncate"}
    )
    _ = [chunk async for chunk in stream]
    [row] = await gw.events()
    assert row["usage_source"] == "estimated"
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0 and row["price_usd"] > 0
