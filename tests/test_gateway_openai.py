"""The official `openai` SDK through Tollbooth: every OpenAI route, streaming and not, leaves
exactly one usage event whose tokens equal what the provider reported and whose money equals
the catalog price computed by hand here (markup 20 %, fee $0.001)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.harness import PROVIDER_KEY, Gateway, running_gateway
from tests.helpers.hand_priced import expected_money


def assert_row(
    row: Any, *, model: str, endpoint: str, streamed: bool, usage: dict[str, int], gw: Gateway
) -> None:
    assert row["customer_id"] == gw.customer_id
    assert row["project_id"] == "web"
    assert row["user_id"] == "u1"
    assert row["provider"] == "openai"
    assert row["model"] == model
    assert row["endpoint"] == endpoint
    assert row["status_code"] == 200
    assert row["streamed"] is streamed
    assert row["usage_source"] == "provider"
    for field, value in usage.items():
        assert row[field] == value, field
    cost, charged = expected_money(model, row)
    assert row["cost_usd"] == cost
    assert row["price_usd"] == charged
    assert row["price_version"]


@pytest.fixture
async def gw(fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch):
    async with running_gateway(fresh_database_url, redis_url, monkeypatch) as gateway:
        yield gateway


def clients(gw: Gateway) -> tuple[openai.AsyncOpenAI, openai.AsyncOpenAI]:
    through = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
    direct = openai.AsyncOpenAI(api_key=PROVIDER_KEY, base_url=gw.mock_url + "/v1", max_retries=0)
    return through, direct


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Count the stars in the sky tonight please"},
]


async def test_chat_completion_is_metered_exactly(gw: Gateway) -> None:
    through, direct = clients(gw)
    headers = {"x-mock-cached-tokens": "4"}
    reply = await through.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=12, extra_headers=headers
    )  # type: ignore[arg-type]
    reference = await direct.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=12, extra_headers=headers
    )  # type: ignore[arg-type]
    assert reply.choices[0].message.content == reference.choices[0].message.content
    assert reply.usage == reference.usage
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    [row] = await gw.events()
    assert_row(
        row,
        model="gpt-4o",
        endpoint="chat.completions",
        streamed=False,
        gw=gw,
        usage={
            "input_tokens": reply.usage.prompt_tokens,
            "output_tokens": reply.usage.completion_tokens,
            "cached_input_tokens": 4,
            "reasoning_tokens": 0,
        },
    )
    assert row["upstream_request_id"] == reply.id


async def test_stream_without_include_usage_is_metered_and_usage_chunk_hidden(
    gw: Gateway,
) -> None:
    through, direct = clients(gw)
    stream = await through.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )  # type: ignore[arg-type]
    chunks = [chunk async for chunk in stream]
    assert chunks, "the client received the stream"
    assert all(chunk.usage is None for chunk in chunks), "injected usage chunk leaked"
    assert all(chunk.choices for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    reference = await direct.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert text == reference.choices[0].message.content
    assert reference.usage is not None
    [row] = await gw.events()
    assert_row(
        row,
        model="gpt-4o-mini",
        endpoint="chat.completions",
        streamed=True,
        gw=gw,
        usage={
            "input_tokens": reference.usage.prompt_tokens,
            "output_tokens": reference.usage.completion_tokens,
        },
    )
    # The gateway asked upstream for the usage the client did not ask for.
    sent = gw.mock_requests[-2]
    assert b'"include_usage":true' in sent.body.replace(b" ", b"")


async def test_stream_with_include_usage_passes_usage_through(gw: Gateway) -> None:
    through, _ = clients(gw)
    stream = await through.chat.completions.create(
        model="gpt-4.1",
        messages=MESSAGES,
        stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    [row] = await gw.events()
    assert_row(
        row,
        model="gpt-4.1",
        endpoint="chat.completions",
        streamed=True,
        gw=gw,
        usage={"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
    )


async def test_reasoning_tokens_are_recorded_apart(gw: Gateway) -> None:
    through, _ = clients(gw)
    reply = await through.chat.completions.create(model="o3", messages=MESSAGES)  # type: ignore[arg-type]
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    reasoning = reply.usage.completion_tokens_details.reasoning_tokens
    assert reasoning and reasoning > 0
    [row] = await gw.events()
    assert row["reasoning_tokens"] == reasoning
    assert row["output_tokens"] == reply.usage.completion_tokens  # includes reasoning
    assert_row(row, model="o3", endpoint="chat.completions", streamed=False, gw=gw, usage={})


async def test_legacy_completions_plain_and_streamed(gw: Gateway) -> None:
    through, _ = clients(gw)
    reply = await through.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Say this is a test", max_tokens=7
    )
    stream = await through.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Say this is a test", max_tokens=7, stream=True
    )
    streamed_text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert streamed_text == reply.choices[0].text
    assert reply.usage is not None
    rows = await gw.events(wait_for=2)
    assert [r["streamed"] for r in rows] == [False, True]
    for row in rows:
        assert_row(
            row,
            model="gpt-3.5-turbo-instruct",
            endpoint="completions",
            streamed=row["streamed"],
            gw=gw,
            usage={
                "input_tokens": reply.usage.prompt_tokens,
                "output_tokens": reply.usage.completion_tokens,
            },
        )


async def test_embeddings_are_metered(gw: Gateway) -> None:
    through, _ = clients(gw)
    result = await through.embeddings.create(
        model="text-embedding-3-small", input=["one two three", "four five"]
    )
    assert len(result.data) == 2 and result.data[0].embedding
    [row] = await gw.events()
    assert_row(
        row,
        model="text-embedding-3-small",
        endpoint="embeddings",
        streamed=False,
        gw=gw,
        usage={"input_tokens": result.usage.prompt_tokens, "output_tokens": 0},
    )


async def test_responses_plain_and_streamed(gw: Gateway) -> None:
    through, _ = clients(gw)
    reply = await through.responses.create(
        model="gpt-5", input="Write one short line", extra_headers={"x-mock-cached-tokens": "2"}
    )
    assert reply.usage is not None
    stream = await through.responses.create(
        model="gpt-5", input="Write one short line", stream=True
    )
    final = None
    async for event in stream:
        if event.type == "response.completed":
            final = event.response
    assert final is not None and final.usage is not None
    rows = await gw.events(wait_for=2)
    plain, streamed = rows
    assert_row(
        plain,
        model="gpt-5",
        endpoint="responses",
        streamed=False,
        gw=gw,
        usage={
            "input_tokens": reply.usage.input_tokens,
            "output_tokens": reply.usage.output_tokens,
            "cached_input_tokens": 2,
            "reasoning_tokens": reply.usage.output_tokens_details.reasoning_tokens,
        },
    )
    assert_row(
        streamed,
        model="gpt-5",
        endpoint="responses",
        streamed=True,
        gw=gw,
        usage={
            "input_tokens": final.usage.input_tokens,
            "output_tokens": final.usage.output_tokens,
        },
    )
    assert plain["upstream_request_id"] == reply.id


async def test_client_key_never_reaches_provider(gw: Gateway) -> None:
    through, _ = clients(gw)
    await through.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers={"OpenAI-Organization": "org-abc"},
    )
    sent = gw.mock_requests[-1]
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert headers["openai-organization"] == "org-abc"
    assert gw.key not in str(sent.headers) and gw.key.encode() not in sent.body


async def test_models_lists_routable_models(gw: Gateway) -> None:
    through, _ = clients(gw)
    ids = [m.id async for m in through.models.list()]
    assert "gpt-4o" in ids and "text-embedding-3-small" in ids
    assert not any(i.startswith("claude") for i in ids)


async def test_refusals_reach_no_provider_and_record_nothing(gw: Gateway) -> None:
    through, _ = clients(gw)
    bad_key = openai.AsyncOpenAI(api_key="tb_wrong", base_url=gw.openai_base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth_err:
        await bad_key.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert auth_err.value.status_code == 401
    assert auth_err.value.response.headers["x-request-id"]
    with pytest.raises(openai.BadRequestError) as unknown:
        await through.chat.completions.create(model="gpt-unknown-9", messages=MESSAGES)  # type: ignore[arg-type]
    assert unknown.value.code == "model_not_found"
    assert gw.mock_requests == []
    assert await gw.events(wait_for=1, timeout_s=0.5) == []
