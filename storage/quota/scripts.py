"""The quota scripts, loaded once, and the calling contract of each, declared once.

A script's KEYS and ARGV are a contract between two languages. Each script in
storage/quota/lua/ states it in its header, one line per slot (``-- KEYS[1] requests_log ...``,
``-- ARGV[1] request_id ...``); `ADMIT`, `SETTLE` and `STATUS` declare the same lists for
Python, a key by its `CustomerKeys` field (``reservation``: the request's own key, always
last) and an argument by the name of the value the store passes. Python derives from the
declaration what it used to write by hand: the counts in the EVALSHA command
(`QuotaScript.head`, packed once per script) and the order of a customer's keys
(`ScriptContract.pack_customer_keys`). tests/test_quota_scripts.py parses every header and
fails when it and the declaration disagree, or when a script's body reads a KEYS or ARGV slot
its header does not declare.

`quota_lib.lua` is prepended to every script (Lua has no include); it reads no KEYS or ARGV
of its own. Loading reads package files: a missing script is a broken install and raises
`FileNotFoundError` when the store is built, never on a call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

from storage.quota.keys import CustomerKeys
from storage.quota.script_batcher import LuaScript, bulk_strings, evalsha_head

LIBRARY = "quota_lib.lua"
# The one key that is not the customer's own but the request's (`CustomerKeys.reservation`).
RESERVATION = "reservation"


@dataclass(frozen=True, slots=True)
class ScriptContract:
    """The KEYS and ARGV of one script in storage/quota/lua/, by name, in slot order."""

    file: str
    keys: tuple[str, ...]
    argv: tuple[str, ...]
    # The keys that are the customer's own (all but `RESERVATION`), packed once per customer.
    customer_keys: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        own = tuple(name for name in self.keys if name != RESERVATION)
        if RESERVATION in self.keys and self.keys[-1] != RESERVATION:
            # The request's key follows the customer's keys, packed once (see the store).
            raise ValueError(f"{self.file}: {RESERVATION} must be the last key")
        object.__setattr__(self, "customer_keys", own)

    def pack_customer_keys(self, keys: CustomerKeys) -> bytes:
        """The customer's own keys of this script as RESP bulk strings, in slot order."""
        return bulk_strings([getattr(keys, name) for name in self.customer_keys])


ADMIT = ScriptContract(
    "admit.lua",
    keys=("requests_log", "token_buckets", "month_counters", "pending", RESERVATION),
    argv=(
        "request_id",
        # The five limits, in `QuotaLimits` field order (its packed_args).
        "requests_per_minute",
        "tokens_per_minute",
        "requests_per_month",
        "tokens_per_month",
        "spend_per_month_micros",
        "tokens",
        "spend_micros",
        "reservation_ttl_ms",
        "window_ms",
        "shadow",
    ),
)
SETTLE = ScriptContract(
    "settle.lua",
    keys=("token_buckets", "month_counters", "pending", RESERVATION),
    argv=("tokens", "spend_micros"),
)
STATUS = ScriptContract(
    "status.lua",
    keys=("requests_log", "token_buckets", "month_counters", "pending"),
    argv=("window_ms",),
)
CONTRACTS = (ADMIT, SETTLE, STATUS)


def lua_source(name: str) -> str:
    """The text of one file in storage/quota/lua/, e.g. ``lua_source("admit.lua")``."""
    return resources.files("storage.quota").joinpath("lua", name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class QuotaScript:
    """One script as sent: its source (quota_lib.lua first), and the head of every EVALSHA
    of it, ``*N EVALSHA sha numkeys`` with the counts its contract declares."""

    contract: ScriptContract
    script: LuaScript
    head: bytes = field(repr=False)

    @classmethod
    def load(cls, contract: ScriptContract) -> QuotaScript:
        script = LuaScript(lua_source(LIBRARY) + "\n" + lua_source(contract.file))
        return cls(contract, script, evalsha_head(script, len(contract.keys), len(contract.argv)))

    def pack(self, *bulks: bytes) -> bytes:
        """The EVALSHA command of the keys then the arguments, packed by `bulk_strings` in
        the contract's order (the caller's part of the bargain: a test checks it by name)."""
        return b"".join((self.head, *bulks))
