"""What the benchmark runs: its options and the scenarios (request shapes) they produce.

Scenarios, all `POST /v1/chat/completions` with one short user message on `gpt-4o-mini`:
- `chat`: non-streaming; the mock answers `stream_tokens` output tokens.
- `stream`: `"stream": true`, the same number of tokens, one SSE event per token plus the
  role, finish and `[DONE]` events; unpaced, so it measures relay throughput.
- `paced`: the same stream with `x-mock-token-delay-ms` between events, like a real model;
  it measures time to first byte (the first event) through the gateway vs direct.
- `paced-streams`: the paced stream held open at scale. Each concurrency is a number of open
  streams; the connections start spread evenly over `stagger_s` (by default one stream's
  length), so streams arrive at a steady rate instead of in a burst, and each connection
  starts its next stream as soon as the last one ended. It reports streams/s, time to first
  byte, CPU per relayed event and the gateway's RSS per open stream. Not in the default set
  (its phases are long and its concurrencies large): ask for it with `--scenarios`. With
  `floor` (the default), each concurrency also runs through a proxy that only moves bytes
  (`gateway.bench.floor_proxy`): the machine's own cost per relayed event.
Each runs at every concurrency of `concurrencies` (`paced_concurrencies` for `paced`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

PROVIDER_KEY_ENV = "TOLLBOOTH_BENCH_PROVIDER_KEY"
MODEL = "gpt-4o-mini"
CHAT_PATH = "/v1/chat/completions"
DEFAULT_SCENARIOS = ("chat", "stream", "paced")
PACED_STREAMS = "paced-streams"
SCENARIO_NAMES = (*DEFAULT_SCENARIOS, PACED_STREAMS)


@dataclass(frozen=True)
class BenchOptions:
    duration_s: float = 10.0
    warmup_s: float = 1.0
    concurrencies: tuple[int, ...] = (1, 16, 64)
    paced_concurrencies: tuple[int, ...] = (1, 16)
    workers: tuple[int, ...] = (1,)  # one gateway run per value (--compare-workers)
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    stream_tokens: int = 35
    token_delay_ms: int = 5
    stagger_s: float | None = None  # paced-streams' start spread; None: one stream's length
    loadgen_procs: int = 1  # generator processes sharing a phase's concurrency
    upstream: str = "mock"  # "mock": tollbooth mock-provider; "raw": gateway.bench.upstream
    profile: Path | None = None  # py-spy's collapsed stacks of a c=16 phase go here
    profile_concurrency: int | None = None  # None: 16, or paced-streams' middle concurrency
    profile_native: bool = False
    workdir: Path | None = None  # default: a temp dir, removed at the end
    soak_s: float = 0.0  # > 0: a steady chat load this long after the phases, RSS sampled
    soak_concurrency: int = 16
    floor: bool = True  # paced-streams: a third phase per concurrency, through the floor proxy
    # Role ("gateway", "upstream", "loadgen") -> the CPUs its processes are pinned to.
    cpus: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def cpus_of(self, role: str) -> tuple[int, ...] | None:
        return next((cpus for name, cpus in self.cpus if name == role), None)

    @property
    def stream_s(self) -> float:
        """One paced stream's nominal length: a delay before every event after the first."""
        return (self.stream_tokens + 2) * self.token_delay_ms / 1000

    def to_json(self, scenarios: list[Scenario]) -> dict[str, Any]:
        return {
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "concurrencies": list(self.concurrencies),
            "paced_concurrencies": list(self.paced_concurrencies),
            "workers": list(self.workers),
            "stream_tokens": self.stream_tokens,
            "token_delay_ms": self.token_delay_ms,
            "stagger_s": self.stagger(),
            "loadgen_procs": self.loadgen_procs,
            "cpus": {name: list(cpus) for name, cpus in self.cpus},
            "upstream": self.upstream,
            "soak_s": self.soak_s,
            "floor": self.floor,
            "scenarios": {s.name: s.to_json() for s in scenarios},
        }

    def stagger(self) -> float:
        return self.stream_s if self.stagger_s is None else self.stagger_s


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    body: bytes
    headers: tuple[str, ...]
    concurrencies: tuple[int, ...]
    path: str = CHAT_PATH
    stagger_s: float = 0.0  # the connections' starts spread over this many seconds
    events_per_answer: int = 0  # SSE events a client receives per stream; 0: not a stream

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "path": self.path,
            "stagger_s": self.stagger_s,
            "events_per_answer": self.events_per_answer,
            "headers": list(self.headers),
            "body": self.body.decode(),
        }


def _body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a short greeting for the benchmark."}],
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def scenarios(options: BenchOptions) -> list[Scenario]:
    tokens = options.stream_tokens
    events = tokens + 3  # role, one per token, finish, [DONE]
    every = {
        "chat": Scenario(
            "chat",
            f"non-streaming chat ({tokens} output tokens)",
            _body(False),
            (),
            options.concurrencies,
        ),
        "stream": Scenario(
            "stream",
            f"streaming chat ({tokens} tokens, {events} SSE events, unpaced)",
            _body(True),
            (),
            options.concurrencies,
            events_per_answer=events,
        ),
        "paced": Scenario(
            "paced",
            f"paced stream ({tokens} tokens, {options.token_delay_ms} ms between events)",
            _body(True),
            (f"x-mock-token-delay-ms: {options.token_delay_ms}",),
            options.paced_concurrencies,
            events_per_answer=events,
        ),
        PACED_STREAMS: Scenario(
            PACED_STREAMS,
            f"paced streams held open ({tokens} tokens, {options.token_delay_ms} ms between "
            f"events, starts spread over {options.stagger():g} s)",
            _body(True),
            (f"x-mock-token-delay-ms: {options.token_delay_ms}",),
            options.concurrencies,
            stagger_s=options.stagger(),
            events_per_answer=events,
        ),
    }
    return [every[name] for name in options.scenarios]


def gateway_config(data_dir: Path, upstream_port: int, port: int) -> dict[str, object]:
    """The gateway's config.yaml: one OpenAI-kind provider (the upstream) and a `bench`
    tier whose limits are huge but finite, so the quota script runs on every request."""
    huge = 10**12
    return {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_s": 10},
        "storage": {"data_dir": str(data_dir)},
        "providers": {
            "mock": {
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                "api_key_env": PROVIDER_KEY_ENV,
            }
        },
        "tiers": {
            "bench": {
                "limits": {
                    "requests_per_minute": huge,
                    "tokens_per_minute": huge,
                    "requests_per_month": huge,
                    "tokens_per_month": huge,
                    "spend_per_month_usd": str(huge),
                }
            }
        },
        "pricing": {"markup_percent": "20"},
    }
