"""The embedded default, on real servers in a data dir of each test's own."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import asyncpg
import psutil  # type: ignore[import-untyped]
import pytest
import redis

from storage.embedded.default import EmbeddedError, infrastructure

CHILD_PRELUDE = """
import asyncio, json, os, signal, sys
from pathlib import Path
import asyncpg, psutil, redis
from storage.embedded.default import infrastructure
data_dir = Path(sys.argv[1])
announce = lambda line: print(line, file=sys.stderr, flush=True)
"""

REUSE_AND_REPORT = """
with infrastructure(None, None, data_dir, announce) as infra:
    print(json.dumps({"database_url": infra.database_url, "redis_url": infra.redis_url,
                      "started": infra.started}), flush=True)
    if len(sys.argv) > 2:  # hold the servers until told to go
        sys.stdin.readline()
"""

WRITE_THEN_CRASH = """
with infrastructure(None, None, data_dir, announce) as infra:
    async def write():
        conn = await asyncpg.connect(infra.database_url)
        await conn.execute("CREATE TABLE kept (v text)")
        await conn.execute("INSERT INTO kept VALUES ('before the crash')")
        await conn.close()
    asyncio.run(write())
    client = redis.Redis.from_url(infra.redis_url)
    client.set("kept", "before the crash")
    client.execute_command("WAITAOF", 1, 0, 2000)
    if sys.argv[2] == "kill-servers":
        state = json.loads((data_dir / "embedded.json").read_text())
        for name in ("postgres", "valkey"):
            pid = state[name]["proc"][0]
            os.kill(pid, signal.SIGKILL)
            try:  # a SIGKILL is delivered asynchronously: wait until the server is really gone
                while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    pass
            except psutil.NoSuchProcess:
                pass
    os.kill(os.getpid(), signal.SIGKILL)
"""


def child(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(CHILD_PRELUDE + script), *args]


def pg_fetch(url: str, query: str) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return asyncio.run(run())


def pg_execute(url: str, *statements: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def valkey(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2)


def server_pids(data_dir: Path) -> dict[str, int]:
    state = json.loads((data_dir / "embedded.json").read_text())
    return {name: state[name]["proc"][0] for name in ("postgres", "valkey") if name in state}


def running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_starts_both_servers_on_loopback_and_stops_them_on_exit(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    lines: list[str] = []
    with infrastructure(None, None, data_dir, lines.append) as infra:
        assert infra.started == ["postgres", "valkey"]
        assert pg_fetch(infra.database_url, "SELECT current_database()") == "tollbooth"
        assert valkey(infra.redis_url).ping() is True
        assert infra.redis_url.startswith("redis://127.0.0.1:")
        pids = server_pids(data_dir)
        valkey_listeners = [
            c.laddr.ip
            for c in psutil.Process(pids["valkey"]).net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert valkey_listeners == ["127.0.0.1"]
        postgres_listeners = [
            c
            for c in psutil.Process(pids["postgres"]).net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert postgres_listeners == []  # a unix socket in the data dir only
        assert (data_dir / "valkey" / "valkey.conf").read_text().count("appendonly yes") == 1
    assert len(lines) == 2
    assert "embedded PostgreSQL" in lines[0] and infra.database_url in lines[0]
    assert "embedded Valkey" in lines[1] and infra.redis_url in lines[1]
    assert str(data_dir / "postgres") in lines[0]
    assert not any(running(pid) for pid in pids.values())
    assert server_pids(data_dir) == {}


def test_a_restart_keeps_the_data_and_the_valkey_port(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with infrastructure(None, None, data_dir, lambda _: None) as first:
        pg_execute(first.database_url, "CREATE TABLE kept (v int)", "INSERT INTO kept VALUES (42)")
        valkey(first.redis_url).incrby("counter", 7)
    with infrastructure(None, None, data_dir, lambda _: None) as second:
        assert second.started == ["postgres", "valkey"]
        assert pg_fetch(second.database_url, "SELECT v FROM kept") == 42
        assert valkey(second.redis_url).get("counter") == b"7"
        assert second.redis_url == first.redis_url


@pytest.mark.slow
def test_a_second_process_reuses_the_servers_and_leaves_them_running(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with infrastructure(None, None, data_dir, lambda _: None) as infra:
        done = subprocess.run(
            child(REUSE_AND_REPORT, str(data_dir)), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout.splitlines()[-1])
        assert seen == {
            "database_url": infra.database_url,
            "redis_url": infra.redis_url,
            "started": [],
        }
        assert "reused" in done.stderr
        # The child is gone; the servers it borrowed still serve this process.
        assert pg_fetch(infra.database_url, "SELECT 1") == 1
        assert valkey(infra.redis_url).ping() is True
        pids = server_pids(data_dir)
    assert not any(running(pid) for pid in pids.values())


@pytest.mark.slow
def test_the_last_user_out_stops_servers_another_process_started(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with infrastructure(None, None, data_dir, lambda _: None) as infra:
        holder = subprocess.Popen(
            child(REUSE_AND_REPORT, str(data_dir), "hold"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdin is not None
        assert json.loads(holder.stdout.readline())["started"] == []
        pids = server_pids(data_dir)
    # This process started them, but the holder still uses them: they keep running.
    assert all(running(pid) for pid in pids.values())
    assert valkey(infra.redis_url).ping() is True
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.wait(timeout=60) == 0
    assert not any(running(pid) for pid in pids.values())


@pytest.mark.slow
def test_servers_of_a_killed_process_are_adopted(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    crashed = subprocess.run(
        child(WRITE_THEN_CRASH, str(data_dir), "orphan"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crashed.returncode == -9, crashed.stderr
    pids = server_pids(data_dir)
    assert all(running(pid) for pid in pids.values())
    with infrastructure(None, None, data_dir, lambda _: None) as infra:
        assert infra.started == []
        assert pg_fetch(infra.database_url, "SELECT v FROM kept") == "before the crash"
        assert valkey(infra.redis_url).get("kept") == b"before the crash"
    assert not any(running(pid) for pid in pids.values())


@pytest.mark.slow
def test_killed_servers_restart_on_the_same_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    crashed = subprocess.run(
        child(WRITE_THEN_CRASH, str(data_dir), "kill-servers"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crashed.returncode == -9, crashed.stderr
    with infrastructure(None, None, data_dir, lambda _: None) as infra:
        assert infra.started == ["postgres", "valkey"]
        assert pg_fetch(infra.database_url, "SELECT v FROM kept") == "before the crash"
        assert valkey(infra.redis_url).get("kept") == b"before the crash"


def test_given_urls_start_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    data_dir = tmp_path / "never-created"
    with infrastructure(
        "postgresql://u@db.example/app", "redis://cache.example:6379/0", data_dir, lines.append
    ) as infra:
        assert (infra.database_url, infra.redis_url, infra.started) == (
            "postgresql://u@db.example/app",
            "redis://cache.example:6379/0",
            [],
        )
    assert lines == []
    assert not data_dir.exists()


def test_only_the_missing_server_is_embedded(tmp_path: Path) -> None:
    with infrastructure("postgresql://u@db.example/app", None, tmp_path, lambda _: None) as infra:
        assert infra.started == ["valkey"]
        assert infra.database_url == "postgresql://u@db.example/app"
        assert valkey(infra.redis_url).ping() is True
    assert not (tmp_path / "postgres").exists()


def test_an_unwritable_data_dir_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with (
        pytest.raises(EmbeddedError, match=r"not writable.*TOLLBOOTH_DATABASE_URL"),
        infrastructure(None, None, blocker / "data", lambda _: None),
    ):
        pass
