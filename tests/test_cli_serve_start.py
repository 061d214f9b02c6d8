"""What `tollbooth serve` says at start, run as a user runs it (a real subprocess): a port in use
is one line and exit 1 with nothing started; a provider whose key variable is unset is one
warning line at start and after a reload that names it, and shows in /health."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.ports import free_port
from tests.helpers.serve_process import serve_popen

pytestmark = pytest.mark.slow

SECRET = "sk-live-do-not-print-0123456789"


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOLLBOOTH_")}


def write_config(path: Path, providers: dict[str, Any]) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "providers": providers,
                "tiers": {"free": {"limits": {"requests_per_minute": 20}}},
            }
        )
    )


def openai_provider(variable: str) -> dict[str, str]:
    return {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": variable}


@contextmanager
def serving(config: Path, port: int, env: dict[str, str]) -> Iterator[list[str]]:
    """`tollbooth serve` until it listens; yields its output lines (stdout and stderr)."""
    proc = serve_popen(config, port, env, cwd=config.parent)
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True
    )  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(
            lambda: any("listening on" in line for line in lines) or proc.poll() is not None,
            "serve listening",
            lines,
        )
        assert proc.poll() is None, "".join(lines)
        yield lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)
        reader.join(timeout=10)


def wait_for(ready: Callable[[], bool], what: str, lines: list[str]) -> None:
    deadline = time.monotonic() + 90
    while not ready():
        assert time.monotonic() < deadline, f"never saw {what}:\n{''.join(lines)}"
        time.sleep(0.1)


def health(port: int) -> tuple[int, dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        return response.status, json.loads(response.read())


def missing_key_lines(lines: list[str], variable: str) -> list[str]:
    return [line for line in lines if variable in line and "is not set" in line]


def test_serve_on_a_port_in_use_says_so_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    config = tmp_path / "local.yaml"
    write_config(config, {"openai": openai_provider("OPENAI_API_KEY")})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli.main",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
            ],
            cwd=tmp_path,
            env=base_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert done.stderr == (
        f"tollbooth serve: 127.0.0.1:{port} is in use (another serve?); pick another with --port\n"
    )
    assert done.stdout == ""
    state_file = tmp_path / ".tollbooth" / "embedded.json"  # no embedded server left running
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    assert "postgres" not in state and "valkey" not in state


def test_an_unset_provider_key_is_warned_at_start_shown_in_health_and_rechecked_on_reload(
    tmp_path: Path, fresh_database_url: str, redis_url: str
) -> None:
    config = tmp_path / "local.yaml"
    write_config(
        config,
        {"openai": openai_provider("TB_UNSET_OPENAI_KEY"), "backup": openai_provider("TB_SET_KEY")},
    )
    env = base_env() | {
        "TOLLBOOTH_DATABASE_URL": fresh_database_url,
        "TOLLBOOTH_REDIS_URL": redis_url,
        "TB_SET_KEY": SECRET,
    }
    env.pop("TB_UNSET_OPENAI_KEY", None)
    env.pop("TB_UNSET_AGAIN", None)
    port = free_port()
    with serving(config, port, env) as lines:
        [warning] = missing_key_lines(lines, "TB_UNSET_OPENAI_KEY")
        assert "openai" in warning
        assert missing_key_lines(lines, "TB_SET_KEY") == []
        status, body = health(port)
        assert status == 200
        assert body["status"] == "degraded"
        assert body["providers"] == {
            "openai": {"key": "missing", "api_key_env": "TB_UNSET_OPENAI_KEY"},
            "backup": {"key": "set", "api_key_env": "TB_SET_KEY"},
        }

        write_config(config, {"openai": openai_provider("TB_SET_KEY")})  # reloaded from disk
        wait_for(lambda: health(port)[1]["status"] == "ok", "the reload", lines)
        assert health(port)[1]["providers"] == {
            "openai": {"key": "set", "api_key_env": "TB_SET_KEY"},
        }

        write_config(config, {"openai": openai_provider("TB_UNSET_AGAIN")})
        wait_for(lambda: missing_key_lines(lines, "TB_UNSET_AGAIN") != [], "a warning", lines)
        status, body = health(port)
        assert (status, body["status"]) == (200, "degraded")
        assert body["providers"]["openai"] == {"key": "missing", "api_key_env": "TB_UNSET_AGAIN"}
        assert len(missing_key_lines(lines, "TB_UNSET_AGAIN")) == 1
    assert all(SECRET not in line for line in lines)
