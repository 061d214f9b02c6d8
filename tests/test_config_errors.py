"""Config problems name the file that was actually read: YAML syntax errors and unknown tiers,
run as a user runs them (`python -m gateway.cli.main ...` in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings

CONFIG = """
providers:
  openai: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
tiers:
  free: {limits: {requests_per_minute: 20}}
"""

BROKEN_YAML = """
providers:
  openai: {kind: openai
tiers: [
"""


def tollbooth(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOLLBOOTH_")}


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    path.write_text(BROKEN_YAML)
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    message = str(raised.value)
    assert "<byte string>" not in message
    assert message.startswith(f"{path} is not valid YAML:")
    assert f'in "{path}", line 3, column 11' in message  # the problem, where it is
    assert "openai: {kind: openai" in message  # the offending line, as PyYAML shows it


@pytest.mark.slow
def test_config_check_names_the_broken_file(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG)  # a valid default that must not be named
    (tmp_path / "local.yaml").write_text("providers: {openai: {kind: openai}: x}\n")
    done = tollbooth(tmp_path, base_env(), "config", "check", "local.yaml")
    assert done.returncode == 2
    assert "<byte string>" not in done.stderr
    assert f'in "{tmp_path / "local.yaml"}", line 1' in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_an_unknown_tier_names_the_config_file_given(
    tmp_path: Path, fresh_database_url: str, redis_url: str
) -> None:
    (tmp_path / "local.yaml").write_text(CONFIG)
    env = base_env() | {
        "TOLLBOOTH_DATABASE_URL": fresh_database_url,
        "TOLLBOOTH_REDIS_URL": redis_url,
    }
    done = tollbooth(
        tmp_path, env, "customers", "create", "acme", "--tier", "gold", "--config", "local.yaml"
    )
    assert done.returncode == 2
    assert done.stderr == (
        f"tollbooth: unknown tier 'gold'; {tmp_path / 'local.yaml'} defines: free\n"
    )
