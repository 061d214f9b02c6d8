"""The gateway never blocks its event loop on the hot paths.

A real gateway (mock provider, embedded Postgres and Valkey) serves every kind of request the
official SDKs make while `blockbuster` watches the loop. Any blocking call it knows (sleep, file
and socket I/O on blocking descriptors, waits on held locks, ...) made on the loop's thread is a
finding, whichever task or callback makes it (a handler, the writer's flush, the Redis batcher,
a timer), except:

- the few the gateway makes on purpose, named one by one in `BLOCKING_BY_DESIGN`;
- the test's own side: the SDK clients and the test's database reads run in the test's task,
  under `drive_traffic`, where no code of the gateway's ever runs; and pytest's log-file
  handler, which receives the gateway's log records only because pytest installs it.

blockbuster raises BlockingError instead of making the call; the gateway may catch that (its
`/health` reports errors, background tasks log them) and then behave differently. So the
checks are wrapped to record each finding with its stack and make the call anyway: the gateway
runs exactly as it would unwatched, and the test fails at the end listing every finding.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from traceback import StackSummary, walk_stack
from typing import Any
from unittest import mock

import aiohttp
import anthropic
import blockbuster.blockbuster as blockbuster_module
import boto3
import openai
import pytest
from anthropic.types import MessageParam
from blockbuster import BlockBuster, BlockingError
from botocore.config import Config
from openai.types.chat import ChatCompletionMessageParam

from gateway import keys
from gateway.mock_provider import MockOptions
from storage.accounts import AccountStore
from tests.harness import Gateway, running_gateway
from tests.helpers.tls import self_signed

CHAT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Count the stars in the sky tonight please"}
]
MESSAGES: list[MessageParam] = [{"role": "user", "content": "Name three rivers please"}]
CLAUDE = "claude-sonnet-4-5"
BEDROCK_MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
FILE_WRITES = ("io.TextIOWrapper.write", "io.BufferedWriter.write")

# (blockbuster's name for the call, file, functions under which the gateway may make it)
BLOCKING_BY_DESIGN: list[tuple[str, str, str]] = [
    # The usage journal's append is one os.write of one line to a regular file: it lands in
    # the page cache in microseconds, and making it inline is what lets an event survive a
    # SIGKILL the moment the request completes (storage/usage/journal.py's docstring).
    ("os.write", "storage/usage/journal.py", "append"),
    # The same for the provisional record of an exchange in flight, written as it is
    # admitted (and once a second for all open streams together) so a gateway killed
    # mid-request still bills it: one os.write of its lines to the slot's `.open` file (the
    # header line too when that file rotates, inside `record_many`);
    # storage/usage/journal_open.py's docstring.
    ("os.write", "storage/usage/journal_open.py", "record_many"),
    # The access log writes its buffered lines to stderr in one write per batch, at most
    # every FLUSH_INTERVAL_S (gateway/logs.py's docstring); blockbuster lets writes to the
    # sys.stderr object itself pass, not those to its buffer when stderr is a pipe or file.
    *((call, "gateway/logs.py", "flush") for call in FILE_WRITES),
    # asyncpg looks for ~/.pgpass (one stat) when it opens a pool connection to a DSN without
    # a password (the embedded default's): once per new connection, which the pool keeps and
    # reuses; never per request.
    ("os.stat", "asyncpg/connect_utils.py", "_read_password_from_pgpass"),
]


@dataclass(frozen=True)
class Blocked:
    call: str
    stack: StackSummary

    def __str__(self) -> str:
        # From the loop's callback (the task step) down to the call: the frames above it
        # (pytest, the loop) and blockbuster's and this module's below it say nothing.
        frames = list(self.stack)
        starts = [i for i, f in enumerate(frames) if f.filename.endswith("asyncio/events.py")]
        frames = frames[starts[-1] + 1 if starts else 0 :]
        while frames and frames[-1].filename.endswith((__file__, "blockbuster.py")):
            frames.pop()
        return f"blocking call to {self.call} on the event loop:\n" + "".join(
            StackSummary.from_list(frames).format()
        )


def report(found: list[Blocked]) -> str:
    counted = collections.Counter(map(str, found))
    return "\n".join(f"{times}x {where}" for where, times in counted.items())


def recording_checks(found: list[Blocked]) -> Callable[..., Callable[..., Any]]:
    """A stand-in for blockbuster's `_wrap_blocking` that records instead of raising."""
    wrap = blockbuster_module._wrap_blocking

    def wrap_recording(
        modules: Any,
        excluded: Any,
        func: Callable[..., Any],
        func_name: str,
        can_block: Any,
        predicate: Any,
    ) -> Callable[..., Any]:
        check = wrap(modules, excluded, func, func_name, can_block, predicate)

        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                return check(*args, **kwargs)
            except BlockingError:  # raised instead of calling `func`: call it now
                # lookup_lines=False: reading source lines here would be file I/O too.
                stack = StackSummary.extract(walk_stack(None), lookup_lines=False)
                stack.reverse()
                found.append(Blocked(func_name, stack))
                return func(*args, **kwargs)

        return checked

    return wrap_recording


@contextmanager
def watching_the_loop(
    monkeypatch: pytest.MonkeyPatch, config: pytest.Config
) -> Iterator[list[Blocked]]:
    """Every blocking call made on the loop while inside, with its stack."""
    found: list[Blocked] = []
    monkeypatch.setattr(blockbuster_module, "_wrap_blocking", recording_checks(found))
    buster = BlockBuster()
    for call, filename, function in BLOCKING_BY_DESIGN:
        buster.functions[call].can_block_in(filename, function)
    for check in buster.functions.values():
        check.can_block_in(__file__, "drive_traffic")  # the SDK clients, the test's reads
        check.can_block_in(__file__, "drive_bedrock_traffic")
        check.can_block_in("_pytest/logging.py", "emit")  # pytest's live log, if enabled
    # pytest's log-file handler (os.devnull unless --log-file) is handed every record the
    # gateway logs; in production those go to a StreamHandler on sys.stderr instead.
    logging_plugin = config.pluginmanager.get_plugin("logging-plugin")
    assert logging_plugin is not None
    log_file = logging_plugin.log_file_handler.stream
    for call in FILE_WRITES:
        check = buster.functions[call]
        allowed = check.can_block_predicate

        def to_log_file(file: Any, *args: Any, allowed: Any = allowed, **kwargs: Any) -> bool:
            return file in (log_file, log_file.buffer) or bool(allowed(file, *args, **kwargs))

        check.can_block_predicate = to_log_file
    buster.activate()
    try:
        yield found
    finally:
        buster.deactivate()


@pytest.fixture
async def gw(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    tiers: dict[str, Any] = {
        "free": {"limits": {}},
        "capped": {"limits": {"requests_per_minute": 1}},
    }
    async with running_gateway(fresh_database_url, redis_url, monkeypatch, tiers=tiers) as gateway:
        yield gateway


async def capped_key(gw: Gateway) -> str:
    """A key of a second customer, allowed one request a minute."""
    accounts: AccountStore = gw.app[keys.accounts]
    customer_id = gw.customer_id + "_capped"
    await accounts.create_customer(customer_id, tier="capped")
    _, key = await accounts.create_key(customer_id, project_id="web", user_id="u1", name="capped")
    return key


async def drive_traffic(gw: Gateway, capped: str) -> None:
    oai = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
    claude = anthropic.AsyncAnthropic(api_key=gw.key, base_url=gw.anthropic_base_url, max_retries=0)
    reply = await oai.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert reply.choices[0].message.content

    stream = await oai.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks and all(chunk.usage is None for chunk in chunks)
    stream = await oai.chat.completions.create(
        model="gpt-4o", messages=CHAT, stream=True, stream_options={"include_usage": True}
    )
    assert [chunk async for chunk in stream][-1].usage is not None

    embedded = await oai.embeddings.create(model="text-embedding-3-small", input=["one two"])
    assert embedded.data[0].embedding

    response = await oai.responses.create(model="gpt-5", input="Write one short line")
    assert response.usage is not None
    events = await oai.responses.create(model="gpt-5", input="Write one short line", stream=True)
    assert "response.completed" in [event.type async for event in events]

    message = await claude.messages.create(model=CLAUDE, max_tokens=16, messages=MESSAGES)
    assert message.usage.output_tokens > 0
    async with claude.messages.stream(model=CLAUDE, max_tokens=16, messages=MESSAGES) as s:
        assert (await s.get_final_message()).usage.output_tokens > 0

    limited = openai.AsyncOpenAI(api_key=capped, base_url=gw.openai_base_url, max_retries=0)
    await limited.chat.completions.create(model="gpt-4o", messages=CHAT)
    with pytest.raises(openai.RateLimitError):  # the gateway's own 429
        await limited.chat.completions.create(model="gpt-4o", messages=CHAT)

    stranger = openai.AsyncOpenAI(api_key="tb_wrong", base_url=gw.openai_base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await stranger.chat.completions.create(model="gpt-4o", messages=CHAT)

    with pytest.raises(openai.InternalServerError):
        await oai.chat.completions.create(
            model="gpt-4o", messages=CHAT, extra_headers={"x-mock-error": "500"}
        )

    # A client that hangs up after the first chunk of a paced stream (20 tokens, 20 ms apart).
    slow = await oai.chat.completions.create(
        model="gpt-4o",
        messages=CHAT,
        stream=True,
        extra_headers={"x-mock-token-delay-ms": "20", "x-mock-output-tokens": "20"},
    )
    async for _ in slow:
        break
    await slow.close()

    async with aiohttp.ClientSession() as session:
        async with session.get(gw.base_url + "/health") as health:
            assert health.status == 200, await health.text()
        async with session.get(gw.base_url + "/metrics") as metrics:
            assert metrics.status == 200

    # Still watching while the writer flushes: every exchange of this customer is written,
    # the provider's 500 and the one the client left mid-stream included.
    rows = await gw.events(wait_for=10)
    assert len(rows) == 10
    assert [row["status_code"] for row in rows].count(500) == 1


async def drive_bedrock_traffic(gw: Gateway, ca: str) -> None:
    """boto3 runs in worker threads (it blocks by design); the gateway's side, SigV4 signing
    and the event-stream relay included, runs on the watched loop."""

    def make() -> Any:
        with mock.patch.dict(os.environ, {"AWS_BEARER_TOKEN_BEDROCK": gw.key}):
            return boto3.client(
                "bedrock-runtime",
                region_name="us-east-1",
                endpoint_url=gw.base_url,
                verify=ca,
                config=Config(
                    signature_version="bearer", retries={"max_attempts": 1, "mode": "standard"}
                ),
            )

    client = await asyncio.to_thread(make)
    messages: Any = [{"role": "user", "content": [{"text": "Name three rivers please"}]}]
    reply = await asyncio.to_thread(client.converse, modelId=BEDROCK_MODEL, messages=messages)
    assert reply["usage"]["outputTokens"] > 0

    def stream() -> list[Any]:
        return list(client.converse_stream(modelId=BEDROCK_MODEL, messages=messages)["stream"])

    assert "metadata" in (await asyncio.to_thread(stream))[-1]
    rows = await gw.events(wait_for=2)
    assert [row["usage_source"] for row in rows] == ["provider", "provider"]


async def test_bedrock_signing_and_relay_make_no_blocking_call_in_the_event_loop(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    pytestconfig: pytest.Config,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDLOOPTEST00000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "loop-test-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    cert = self_signed(tmp_path)
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        tls=cert.server_context(),
        mock_options=MockOptions(aws_region="us-east-1"),
        providers=lambda url: {
            "bedrock": {"kind": "bedrock", "region": "us-east-1", "endpoint_url": url}
        },
    ) as gw:
        with watching_the_loop(monkeypatch, pytestconfig) as found:
            try:
                await drive_bedrock_traffic(gw, str(cert.cert_path))
            except Exception as exc:
                if found:
                    exc.add_note(report(found))
                raise
    if found:
        pytest.fail(report(found), pytrace=False)


async def test_hot_paths_make_no_blocking_call_in_the_event_loop(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config
) -> None:
    capped = await capped_key(gw)
    with watching_the_loop(monkeypatch, pytestconfig) as found:
        try:
            await drive_traffic(gw, capped)
        except Exception as exc:  # the traffic failed: show what blocked on the way too
            if found:
                exc.add_note(report(found))
            raise
    if found:
        pytest.fail(report(found), pytrace=False)
