"""Requests and quota refusals (429) per minute and tier, for the operator dashboard.

Usage events hold every forwarded request but no refusal: a request the quota refuses is
never forwarded, so it is only counted, here and in the Prometheus counters (which have no
tier label). `MinuteTraffic` is a ring of the last `minutes` UTC minutes, each with
per-tier counts of quota decisions: `requests` (admitted or refused: every request that
reached the quota check) and `refused` (answered 429 by a tier limit). `QuotaPolicy.admit`
feeds it, where refusals are counted.

What it is not: a cluster-wide figure. It lives in one process and is lost on restart; with
`serve --workers N` each worker counts its own requests, and a page shows the worker that
served it. Counting costs one clock read and two dict updates per request; nothing here does
I/O or can fail.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_MINUTES = 60


@dataclass(slots=True)
class _Slot:
    minute: int = -1  # Unix time // 60 of the minute this slot counts
    requests: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    minute: int  # Unix time // 60
    requests: dict[str, int]  # tier -> requests that reached the quota check
    refused: dict[str, int]  # tier -> of those, refused with 429


class MinuteTraffic:
    def __init__(
        self, minutes: int = DEFAULT_MINUTES, clock: Callable[[], float] = time.time
    ) -> None:
        if minutes < 1:
            raise ValueError(f"minutes must be >= 1, got {minutes}")
        self._slots = [_Slot() for _ in range(minutes)]
        self._clock = clock

    def count(self, tier: str, *, refused: bool) -> None:
        minute = int(self._clock() // 60)
        slot = self._slots[minute % len(self._slots)]
        if slot.minute != minute:
            slot.minute = minute
            slot.requests.clear()
            slot.refused.clear()
        slot.requests[tier] += 1
        if refused:
            slot.refused[tier] += 1

    def series(self) -> list[MinuteCounts]:
        """Every minute of the ring up to the current one, oldest first, zeros included."""
        now = int(self._clock() // 60)
        found = {slot.minute: slot for slot in self._slots}
        series = []
        for minute in range(now - len(self._slots) + 1, now + 1):
            slot = found.get(minute)
            series.append(
                MinuteCounts(
                    minute,
                    dict(slot.requests) if slot is not None else {},
                    dict(slot.refused) if slot is not None else {},
                )
            )
        return series

    def tiers(self) -> list[str]:
        """The tiers seen in the ring, sorted."""
        return sorted({tier for slot in self._slots if slot.minute >= 0 for tier in slot.requests})
