"""Deterministic token accounting for the mock provider, so tests can predict every count.

Input rule. `words(text)` is the number of whitespace-separated words (`len(text.split())`);
the text of a content value is the string itself, or the `text` of every part of a content
list (tool results: their nested `content`; other parts count 0).
- Conversations (chat messages, Anthropic messages, Responses input):
  `3 + sum(4 + words(content))` over the messages, where Anthropic's `system` and the
  Responses API's `instructions` count as one more message. A Responses `input` string is
  one message.
- Prompts (legacy completions, embeddings): `words(s)` per string, `len(ids)` per token-id
  list, summed over a batch; no overhead.
- A cached prefix is extra prompt the rule does not see: with `x-mock-cached-tokens: N`,
  OpenAI reports `prompt_tokens = rule + N` and `cached_tokens = N` (OpenAI's count includes
  the cache), while Anthropic reports `input_tokens = rule` and `cache_read_input_tokens = N`
  (Anthropic's excludes it); `x-mock-cache-write-tokens: W` is Anthropic's
  `cache_creation_input_tokens = W`, again outside `input_tokens`.

Output rule. `output_tokens = min(x-mock-output-tokens or MockOptions.output_tokens,
max-tokens field if given)`; when the max-tokens field is what limited it, the answer stops
for length. On the OpenAI chat and Responses APIs, models named `o1*`, `o3*`, `o4*`, `gpt-5*`
reason: `reasoning_tokens =
output_tokens // 2`, included in `output_tokens` as OpenAI does, so the visible answer has
`output_tokens - reasoning_tokens` words. The visible text is `tok0 tok1 tok2 ...`, one word
per token and one streamed delta per word (`"tok0"`, `" tok1"`, ...).

These functions never raise on odd JSON: a value of an unexpected type counts 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

REQUEST_OVERHEAD_TOKENS = 3
MESSAGE_OVERHEAD_TOKENS = 4
REASONING_MODEL_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def count_words(text: str) -> int:
    return len(text.split())


def content_words(content: object) -> int:
    """Words in a message `content`: a string, or a list of parts with `text`."""
    if isinstance(content, str):
        return count_words(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if isinstance(part, str):
            total += count_words(part)
        elif isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, str):
                total += count_words(text)
            elif "content" in part:  # an Anthropic tool_result block
                total += content_words(part["content"])
    return total


def conversation_tokens(contents: Iterable[object]) -> int:
    """Input tokens of a conversation given each message's `content`."""
    return REQUEST_OVERHEAD_TOKENS + sum(
        MESSAGE_OVERHEAD_TOKENS + content_words(content) for content in contents
    )


def message_contents(messages: object) -> list[object]:
    """The `content` of every message in a chat/Anthropic `messages` list."""
    if not isinstance(messages, list):
        return []
    return [m.get("content") for m in messages if isinstance(m, dict)]


def responses_contents(input_value: object) -> list[object]:
    """The contents a Responses API `input` holds: a string is one user message."""
    if isinstance(input_value, str):
        return [input_value]
    if not isinstance(input_value, list):
        return []
    contents: list[object] = []
    for item in input_value:
        if isinstance(item, dict):
            contents.append(item.get("content", item.get("output")))
    return contents


def prompt_tokens(prompt: object) -> int:
    """Input tokens of a completions prompt or an embeddings input."""
    if isinstance(prompt, str):
        return count_words(prompt)
    if not isinstance(prompt, list):
        return 0
    if all(isinstance(item, int) for item in prompt):
        return len(prompt)
    return sum(prompt_tokens(item) for item in prompt)


def is_reasoning_model(model: str) -> bool:
    return model.startswith(REASONING_MODEL_PREFIXES)


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """How long the answer is: `output_tokens` includes `reasoning_tokens`."""

    output_tokens: int
    reasoning_tokens: int
    hit_max_tokens: bool

    @property
    def visible_tokens(self) -> int:
        return self.output_tokens - self.reasoning_tokens

    @property
    def text(self) -> str:
        return "".join(output_words(self.visible_tokens))

    @property
    def words(self) -> tuple[str, ...]:
        return output_words(self.visible_tokens)


def plan_output(
    model: str, wanted_tokens: int, max_tokens: int | None, *, reasons: bool = True
) -> OutputPlan:
    """`reasons=False` for APIs that never report reasoning (legacy completions, Anthropic)."""
    if max_tokens is not None and max_tokens < wanted_tokens:
        output_tokens, hit_max_tokens = max_tokens, True
    else:
        output_tokens, hit_max_tokens = wanted_tokens, False
    reasoning_tokens = output_tokens // 2 if reasons and is_reasoning_model(model) else 0
    return OutputPlan(output_tokens, reasoning_tokens, hit_max_tokens)


@lru_cache(maxsize=64)
def output_words(count: int) -> tuple[str, ...]:
    """The streamed deltas of a `count`-token answer: "tok0", " tok1", ..."""
    return tuple(f"tok{i}" if i == 0 else f" tok{i}" for i in range(count))
