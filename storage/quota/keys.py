"""Every Redis key the quota store uses, in one place, under a versioned layout.

Layout version ``q1``. All of a customer's keys carry the customer id as a Redis Cluster hash
tag (``q1:{acme}:rpm``), so they live in one slot and one Lua call can touch them all:

    q1:{cust}:rpm        sorted set  sliding request log: member request id, score admit time (ms)
    q1:{cust}:tpm        hash        tokens per sub-bucket of the minute window: "<n>" -> tokens,
                                     "<n>:t" -> the last admission time in bucket n (ms)
    q1:{cust}:month      hash        calendar-month counters: "<YYYY-MM>:requests", ":tokens",
                                     ":spend_micros" (the current and the previous month)
    q1:{cust}:pending    sorted set  unsettled reservations by release deadline (ms); a member
                                     holds what to give back:
                                     "<tokens>|<spend_micros>|<bucket>|<month>|<request id>"
    q1:{cust}:r:<id>     hash        one request's reservation: state (reserved | settled), tokens,
                                     spend_micros, bucket, month, deadline_ms, member (its pending
                                     entry), settled_tokens, settled_spend_micros; expires 2 x ttl
                                     after admission
    q1:{cust}:alert:<limit>:<pct>:<YYYY-MM>
                         string      set once (SET NX) when a usage alert fired for that limit,
                                     threshold and month; expires after 40 days

A change of layout gets a new prefix (``q2``) rather than a migration: counters under the old
prefix simply expire. Nothing here talks to Redis; it cannot fail except on a request id that
would make an ambiguous key (`ValueError`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

LAYOUT_VERSION = "q1"

REQUESTS_LOG = "rpm"
TOKEN_BUCKETS = "tpm"
MONTH_COUNTERS = "month"
PENDING = "pending"
RESERVATION = "r"
ALERT = "alert"

# Characters escaped in a customer id so that it can never close the hash tag early or make two
# ids collide: "{" and "}" end or open a tag, "%" is the escape character itself.
_TAG_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})
_UNUSABLE_IN_ID = re.compile(r"[|\s]")


def customer_tag(customer_id: str) -> str:
    """The Redis Cluster hash tag for a customer, e.g. ``{acme}``."""
    if not customer_id:
        raise ValueError("customer_id must not be empty")
    return "{" + customer_id.translate(_TAG_ESCAPES) + "}"


@dataclass(frozen=True, slots=True)
class CustomerKeys:
    """The keys of one customer; all share the customer's hash tag."""

    requests_log: str
    token_buckets: str
    month_counters: str
    pending: str
    reservation_prefix: str
    alert_prefix: str

    def alert(self, limit: str, threshold_percent: int, month: str) -> str:
        return f"{self.alert_prefix}{limit}:{threshold_percent}:{month}"

    def reservation(self, request_id: str) -> str:
        # "|" separates the fields of a pending member; whitespace would make logs ambiguous.
        if not request_id or _UNUSABLE_IN_ID.search(request_id):
            raise ValueError(f"unusable request id {request_id!r}")
        return self.reservation_prefix + request_id


@functools.lru_cache(maxsize=65_536)  # pure, and asked for twice per request
def customer_keys(customer_id: str) -> CustomerKeys:
    base = f"{LAYOUT_VERSION}:{customer_tag(customer_id)}:"
    return CustomerKeys(
        requests_log=base + REQUESTS_LOG,
        token_buckets=base + TOKEN_BUCKETS,
        month_counters=base + MONTH_COUNTERS,
        pending=base + PENDING,
        reservation_prefix=base + RESERVATION + ":",
        alert_prefix=base + ALERT + ":",
    )
