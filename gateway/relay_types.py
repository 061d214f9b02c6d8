"""What both relays share (`gateway.relay`, the reference, and `gateway.relay_push`): the
callbacks they take and the outcome they return."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

# finalize(client_gone, upstream_broken): record the stream's usage event; awaited once.
Finalize = Callable[[bool, bool], Awaitable[None]]
# progress(): journal what the stream has produced so far; must not raise.
Progress = Callable[[], None]
PROGRESS_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class RelayOutcome:
    client_gone: bool
    upstream_broken: bool
    first_byte_s: float | None
