"""The README's "Try it" section, run as written in a fresh directory: its shell lines (but the
`pip install`, done already), its Python snippet in the same shell, the usage summary, and its
way to stop everything. Only the two ports change (to free ones), so the test never collides
with anything already listening on 8080 or 9000."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def try_it_section() -> str:
    return README.read_text(encoding="utf-8").split("## Try it")[1].split("\n## ")[0]


def running_in(directory: Path) -> list[int]:
    """Processes whose command line names `directory` (the embedded Postgres does)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(directory) in part for part in process.info["cmdline"] or []):
            found.append(int(process.pid))
    return found


def test_the_try_it_flow_runs_as_written(tmp_path: Path) -> None:
    section = try_it_section()
    [(setup), (snippet), (summary)] = re.findall(r"```(?:bash|python)\n(.*?)```", section, re.S)
    pip_line, *shell_lines = setup.splitlines()
    assert pip_line.startswith("pip install -e .")
    assert {"openai", "anthropic"} <= set(pip_line.split("#")[0].split())
    stop = re.search(r"To stop, in the same shell: `([^`]+)`", section)
    assert stop is not None

    mock_port, gateway_port = free_port(), free_port()

    def ported(text: str) -> str:
        return text.replace("9000", str(mock_port)).replace("8080", str(gateway_port))

    serve_line = "tollbooth serve --config local.yaml &"
    assert serve_line in shell_lines
    shell = ported("\n".join(shell_lines)).replace(
        serve_line, f"tollbooth serve --config local.yaml --port {gateway_port} &"
    )
    script = "\n".join(
        [
            "set -e -m",  # job control: `kill %2 %1` names the background jobs
            shell,
            f"{sys.executable} - <<'PY'\n{ported(snippet)}PY",
            ported(summary).strip() + " > summary.json",
            stop.group(1),
            "wait",
        ]
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOLLBOOTH_") and k != "MOCK_PROVIDER_KEY"
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    assert shutil.which("tollbooth", path=env["PATH"]) is not None
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr

    summary_json = json.loads((tmp_path / "summary.json").read_text())
    assert summary_json["requests"] == 2
    assert {m["model"] for m in summary_json["by_model"]} == {"gpt-4o", "claude-sonnet-4-5"}
    # Stopped as the README says: serve stopped the embedded servers it started.
    state = json.loads((tmp_path / ".tollbooth" / "embedded.json").read_text())
    assert "postgres" not in state and "valkey" not in state
    assert running_in(tmp_path) == []
