"""storage/quota/scripts.py: each script's KEYS and ARGV, declared once, agree with its Lua.

The Lua headers are parsed here, not trusted: a slot renamed, added, dropped or reordered on
either side fails, and so does a script body that reads a slot its header does not declare.
The store's calls are then checked by name: the command it packs, decoded, puts each declared
name's value in that name's slot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any

import pytest
from redis.asyncio import Redis

from storage.quota.cluster_batcher import command_parts
from storage.quota.keys import customer_keys
from storage.quota.script_batcher import LuaScript, bulk_strings, evalsha_head, pack_evalsha
from storage.quota.scripts import (
    ADMIT,
    CONTRACTS,
    LIBRARY,
    RESERVATION,
    QuotaScript,
    ScriptContract,
    lua_source,
)
from storage.quota.store import QuotaLimits, QuotaStore

_SLOT_LINE = re.compile(r"^-- (KEYS|ARGV)\[(\d+)\]\s+(\S+)(?:\s+(\S+))?")
_SLOT_USE = re.compile(r"\b(KEYS|ARGV)\b(\[(\d+)\])?")
_COMMENT = re.compile(r"--[^\n]*")


def header_and_body(source: str) -> tuple[list[str], str]:
    """The leading block of comment lines, and the rest with its comments removed."""
    lines = source.splitlines()
    end = next(i for i, line in enumerate(lines) if not line.startswith("--"))
    return lines[:end], _COMMENT.sub("", "\n".join(lines[end:]))


def declared(header: list[str], kind: str) -> list[tuple[str, str | None]]:
    """(name, the column after it) of each `-- KIND[i] name ...` line, checked to run 1..n."""
    slots = [m.groups() for m in map(_SLOT_LINE.match, header) if m and m.group(1) == kind]
    assert [int(index) for _, index, _, _ in slots] == list(range(1, len(slots) + 1))
    return [(name, after) for _, _, name, after in slots]


def used_slots(body: str) -> dict[str, set[int]]:
    used: dict[str, set[int]] = {"KEYS": set(), "ARGV": set()}
    for kind, subscript, index in _SLOT_USE.findall(body):
        # Only a literal slot: `#ARGV` or `KEYS[i]` would escape the declared counts.
        assert subscript, f"{kind} read without a literal index"
        used[kind].add(int(index))
    return used


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.file)
def test_the_lua_header_declares_the_python_contract(contract: ScriptContract) -> None:
    header, _ = header_and_body(lua_source(contract.file))
    assert [name for name, _ in declared(header, "KEYS")] == list(contract.keys)
    assert [name for name, _ in declared(header, "ARGV")] == list(contract.argv)


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.file)
def test_each_declared_key_is_the_customer_key_of_that_name(contract: ScriptContract) -> None:
    # The header's key pattern, for customer "c", is the key storage.quota.keys makes.
    keys = customer_keys("c")
    header, _ = header_and_body(lua_source(contract.file))
    for name, pattern in declared(header, "KEYS"):
        made = keys.reservation("<id>") if name == RESERVATION else getattr(keys, name)
        assert made == pattern, name


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.file)
def test_the_body_reads_exactly_the_declared_slots(contract: ScriptContract) -> None:
    _, body = header_and_body(lua_source(contract.file))
    used = used_slots(body)
    assert used["KEYS"] == set(range(1, len(contract.keys) + 1))
    assert used["ARGV"] == set(range(1, len(contract.argv) + 1))


def test_the_library_reads_no_slot_of_its_own() -> None:
    header, body = header_and_body(lua_source(LIBRARY))
    assert used_slots(body) == {"KEYS": set(), "ARGV": set()}
    assert declared(header, "KEYS") == declared(header, "ARGV") == []


def test_the_parser_sees_a_slot_out_of_contract() -> None:
    # The checks above would pass vacuously if the parsing found nothing.
    _, body = header_and_body("-- KEYS[1] pending\nlocal a, b = KEYS[1], ARGV[3]\n-- ARGV[9]")
    assert used_slots(body) == {"KEYS": {1}, "ARGV": {3}}
    with pytest.raises(AssertionError, match="literal index"):
        used_slots("for i = 1, #ARGV do end")


def test_the_limits_are_packed_in_the_order_admit_declares() -> None:
    limit_fields = [f.name for f in dataclasses.fields(QuotaLimits) if f.init]
    start = ADMIT.argv.index(limit_fields[0])
    assert list(ADMIT.argv[start : start + len(limit_fields)]) == limit_fields


def test_the_request_key_must_come_last() -> None:
    with pytest.raises(ValueError, match="last key"):
        ScriptContract("x.lua", keys=(RESERVATION, "pending"), argv=())


def test_a_packed_call_is_the_evalsha_of_its_parts() -> None:
    # QuotaScript.pack (the head packed once) against pack_evalsha (everything each time).
    for contract in CONTRACTS:
        script = QuotaScript.load(contract)
        keys = [f"k{i}" for i in range(len(contract.keys))]
        args: list[str | int] = [i * 7 for i in range(len(contract.argv))]
        assert script.pack(bulk_strings(keys), bulk_strings(args)) == pack_evalsha(
            script.script, keys, args
        )
        assert script.head == evalsha_head(script.script, len(keys), len(args))


SNAPSHOT = [1, b"2026-05", 2, 3, 4, 5, 6, 7, 8, 9]


class Recording:
    """A batcher that records the packed commands and answers a canned reply: admit's, or
    for the status script (sha `status_sha`) the usage snapshot alone."""

    def __init__(self, status_sha: str) -> None:
        self.sent: list[tuple[LuaScript, bytes]] = []
        self.status_sha = status_sha

    async def call_packed(self, script: LuaScript, packed: bytes) -> Any:
        self.sent.append((script, packed))
        return SNAPSHOT if script.sha == self.status_sha else [1, b"", -1, 0, *SNAPSHOT]

    def submit_packed(
        self, script: LuaScript, packed: bytes, *, defer_s: float = 0.0
    ) -> asyncio.Future[Any]:
        self.sent.append((script, packed))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result([1, 0, 0, 0])
        return future


def by_name(script: QuotaScript, packed: bytes) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """A packed EVALSHA's keys and arguments, named by the script's contract."""
    parts = command_parts(packed)
    contract = script.contract
    assert parts[:3] == [b"EVALSHA", script.script.sha.encode(), b"%d" % len(contract.keys)]
    keys, args = parts[3 : 3 + len(contract.keys)], parts[3 + len(contract.keys) :]
    assert len(args) == len(contract.argv)
    return dict(zip(contract.keys, keys, strict=True)), dict(zip(contract.argv, args, strict=True))


async def test_the_store_puts_each_value_in_the_slot_of_its_name() -> None:
    store = QuotaStore(Redis(), window_ms=2_345)
    recording = Recording(store._status.script.sha)
    store._scripts = recording  # type: ignore[assignment]
    customer = "cust_{é}"
    keys = customer_keys(customer)
    limits = QuotaLimits(
        requests_per_minute=11,
        tokens_per_minute=12,
        requests_per_month=13,
        tokens_per_month=14,
        spend_per_month_micros=15,
    )
    await store.admit(
        customer_id=customer,
        request_id="req-1",
        limits=limits,
        tokens=21,
        spend_micros=22,
        reservation_ttl_ms=23,
        shadow=True,
    )
    await store.settle(customer_id=customer, request_id="req-1", tokens=31, spend_micros=32)
    await store.usage(customer)

    customer_key = {
        name: getattr(keys, name)
        for name in ("requests_log", "token_buckets", "month_counters", "pending")
    }
    want_keys = {**customer_key, RESERVATION: keys.reservation("req-1")}
    admit_args = {
        "request_id": "req-1",
        **{f.name: getattr(limits, f.name) for f in dataclasses.fields(limits) if f.init},
        "tokens": 21,
        "spend_micros": 22,
        "reservation_ttl_ms": 23,
        "window_ms": 2_345,
        "shadow": 1,
    }
    want = [
        (store._admit, admit_args),
        (store._settle, {"tokens": 31, "spend_micros": 32}),
        (store._status, {"window_ms": 2_345}),
    ]
    assert [script for script, _ in recording.sent] == [s.script for s, _ in want]
    for (script, args), (_, packed) in zip(want, recording.sent, strict=True):
        got_keys, got_args = by_name(script, packed)
        assert got_keys == {n: want_keys[n].encode() for n in script.contract.keys}
        assert got_args == {n: str(args[n]).encode() for n in script.contract.argv}
