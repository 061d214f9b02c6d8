"""`BillingMonth`: a calendar month in UTC, the period every invoice and plan covers.

`BillingMonth.parse("2026-10")` accepts exactly YYYY-MM; `start` is the first instant of the
month and `end` the first instant of the next, so a month is the half-open interval
[start, end). A month that does not parse raises ValueError saying what to write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

_FORM = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True, slots=True, order=True)
class BillingMonth:
    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.month <= 12 or not 1970 <= self.year <= 9998:
            raise ValueError(f"not a month: {self.year:04d}-{self.month:02d}")

    @classmethod
    def parse(cls, text: str) -> BillingMonth:
        match = _FORM.match(text.strip())
        if match is None:
            raise ValueError(f"invalid month {text!r}; write YYYY-MM, e.g. 2026-10")
        try:
            return cls(int(match[1]), int(match[2]))
        except ValueError:
            raise ValueError(f"invalid month {text!r}; write YYYY-MM, e.g. 2026-10") from None

    @classmethod
    def of(cls, moment: datetime) -> BillingMonth:
        utc = moment.astimezone(UTC)
        return cls(utc.year, utc.month)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.next().start

    def next(self) -> BillingMonth:
        if self.month == 12:
            return BillingMonth(self.year + 1, 1)
        return BillingMonth(self.year, self.month + 1)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"
