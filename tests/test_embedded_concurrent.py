"""`tollbooth serve &` and a command launched at the same moment on a fresh data dir, as a user
runs them (real subprocesses, the embedded default): one set of embedded servers is started,
both succeed, and the command leaves serve's servers running when it exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
import yaml

from tests.helpers.ports import free_port

pytestmark = pytest.mark.slow


def tollbooth(workdir: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLBOOTH_")}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", *args, "--config", "local.yaml"],
        cwd=workdir,
        env=env | {"MOCK_PROVIDER_KEY": "sk-mock"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def embedded_state(workdir: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((workdir / ".tollbooth" / "embedded.json").read_text())
    return state


def running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def started(output: str, server: str) -> int:
    return sum(1 for line in output.splitlines() if server in line and "; started)" in line)


@pytest.mark.parametrize("first", ["serve", "command"])
def test_serve_and_a_command_launched_together_share_one_set_of_servers(
    tmp_path: Path, first: str
) -> None:
    port = free_port()
    (tmp_path / "local.yaml").write_text(
        yaml.safe_dump(
            {
                "server": {"port": port},
                "providers": {
                    "openai": {
                        "kind": "openai",
                        "base_url": "http://127.0.0.1:9/v1",
                        "api_key_env": "MOCK_PROVIDER_KEY",
                    }
                },
                "tiers": {"free": {"limits": {"requests_per_minute": 20}}},
            }
        )
    )
    launch = {
        "serve": lambda: tollbooth(tmp_path, "serve"),
        "command": lambda: tollbooth(tmp_path, "customers", "create", "acme"),
    }
    procs = {first: launch[first]()}
    second = "command" if first == "serve" else "serve"
    procs[second] = launch[second]()
    serve, command = procs["serve"], procs["command"]
    serve_lines: list[str] = []
    assert serve.stdout is not None
    reader = threading.Thread(target=lambda: serve_lines.extend(serve.stdout), daemon=True)
    reader.start()
    try:
        command_output, _ = command.communicate(timeout=120)
        assert command.returncode == 0, command_output
        assert "created customer acme" in command_output
        deadline = time.monotonic() + 120
        while not any("listening on" in line for line in serve_lines):
            assert serve.poll() is None and time.monotonic() < deadline, "".join(serve_lines)
            time.sleep(0.1)
        serve_output = "".join(serve_lines)
        both = command_output + serve_output
        starts = (started(both, "embedded PostgreSQL"), started(both, "embedded Valkey"))
        assert starts == (1, 1), both

        # The command has exited; the servers serve uses still run, and serve is their user.
        state = embedded_state(tmp_path)
        pids = [state[name]["proc"][0] for name in ("postgres", "valkey")]
        assert all(running(pid) for pid in pids)
        assert [user[0] for user in state["postgres"]["users"]] == [serve.pid]
        assert [user[0] for user in state["valkey"]["users"]] == [serve.pid]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
            health = json.loads(reply.read())
        assert (health["postgres"], health["redis"]) == ("ok", "ok")
    finally:
        for proc in (command, serve):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, "".join(serve_lines)
        reader.join(timeout=10)
    # serve was the last user: it stopped them on exit.
    assert not any(running(pid) for pid in pids)
    assert "postgres" not in embedded_state(tmp_path)
