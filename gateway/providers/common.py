"""Helpers every adapter shares: header rewriting, tolerant JSON reading, lazy produced text.

Nothing here raises on bad input: unreadable JSON reads as None, a count that is not a
non-negative number reads as 0, and the produced-text buffer skips events it cannot parse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

# RFC 9110 §7.6.1 hop-by-hop headers, plus what the gateway owns: the client's credentials,
# the body framing aiohttp recomputes, the cookie jar, and our own x-tollbooth-* headers.
_DROPPED = frozenset(
    {
        "content-encoding",  # aiohttp decodes request bodies; we forward the decoded bytes
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
        "x-api-key",
        "api-key",  # Azure OpenAI's SDK key header
        "x-goog-api-key",  # Google's
        "cookie",
        "accept-encoding",
    }
)
_OWN_PREFIX = "x-tollbooth-"


def forward_headers(
    client_headers: Mapping[str, str], credential: tuple[str, str] | None
) -> dict[str, str]:
    """The client's headers minus hop-by-hop and credential headers, plus `credential`.

    Headers named in the client's `Connection` header are hop-by-hop too. The provider is
    asked for an identity encoding so the gateway can read usage from the bytes it relays.
    """
    listed = {
        token.strip().lower()
        for name, value in client_headers.items()
        if name.lower() == "connection"
        for token in value.split(",")
    }
    headers: dict[str, str] = {}
    for name, value in client_headers.items():
        lowered = name.lower()
        if lowered in _DROPPED or lowered in listed or lowered.startswith(_OWN_PREFIX):
            continue
        headers[name] = value
    headers["accept-encoding"] = "identity"
    if credential is not None:
        headers[credential[0]] = credential[1]
    return headers


def load_object(data: bytes) -> dict[str, Any] | None:
    """`data` as a JSON object, or None when it is not one."""
    try:
        value = orjson.loads(data)
    except ValueError:  # orjson.JSONDecodeError, also raised past its nesting limit
        return None
    return value if isinstance(value, dict) else None


def obj(value: Any) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else an empty one (so lookups can chain)."""
    return value if isinstance(value, dict) else {}


def items(value: Any) -> list[Any]:
    """`value` if it is a JSON array, else an empty list (never raises on odd shapes)."""
    return value if isinstance(value, list) else []


def count(value: Any) -> int:
    """A token count as reported: null, negative or nonsense reads as 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, float) and math.isfinite(value):
        return max(0, int(value))
    return 0


def text_id(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def dump_json(value: Any) -> str:
    """`value` serialized as JSON text (for counting tool definitions), or "" if it can't be."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError
        return ""


def token_placeholder(tokens: Any) -> str:
    """Text that counts as len(tokens) tokens in cl100k_base and o200k_base.

    OpenAI endpoints accept pre-tokenized input (a list of token ids). Each id becomes " x",
    which both encodings map to exactly one token, so a token array counts by its length.
    """
    return " x" * len(tokens)


def function_texts(function: Any) -> Iterator[str]:
    """Name and arguments of an OpenAI function call (`tool_calls[].function`)."""
    function = obj(function)
    for field in ("name", "arguments"):
        value = function.get(field)
        if isinstance(value, str):
            yield value


def strings_or_tokens(value: Any) -> Iterator[str]:
    """Texts of an OpenAI `prompt` / `input`: a string, strings, token ids, or token arrays."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        if value and all(isinstance(item, int) for item in value):
            yield token_placeholder(value)
            return
        for item in value:
            if isinstance(item, str):
                yield item
            elif isinstance(item, list):
                yield token_placeholder(item)


class LazyText:
    """Keeps the raw data of content events and decodes their text only when asked.

    Parsing every streamed delta would cost JSON work per chunk on the hot path, and the
    text is needed only when the provider sends no usage. Raw events are held up to
    `compact_bytes`; past that they are parsed into text, which is far smaller than the JSON
    around it, so memory stays proportional to what the model produced.
    """

    __slots__ = ("_compact_bytes", "_extract", "_pending", "_pending_bytes", "_pieces")

    def __init__(
        self,
        extract: Callable[[Mapping[str, Any]], Iterable[str]],
        compact_bytes: int = 1 << 20,
    ) -> None:
        self._extract = extract
        self._compact_bytes = compact_bytes
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._pieces: list[str] = []

    def add(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes > self._compact_bytes:
            self._compact()

    def add_parsed(self, event: Mapping[str, Any]) -> None:
        """An event already parsed for another reason: take its text now."""
        self._compact()
        self._pieces.extend(self._extract(event))

    def text(self) -> str:
        self._compact()
        return "".join(self._pieces)

    def _compact(self) -> None:
        for data in self._pending:
            event = load_object(data)
            if event is not None:
                self._pieces.extend(self._extract(event))
        self._pending.clear()
        self._pending_bytes = 0
