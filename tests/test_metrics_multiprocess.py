"""Multiprocess metrics in one fresh interpreter per case (prometheus-client picks its mode at
import): a worker prepared by the supervisor (its pid read once) writes the same files and
renders the same text as prometheus-client's default, which reads the pid at every update."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RECORD = """
import sys
from decimal import Decimal
from gateway import metrics_multiprocess
if sys.argv[1] == "prepared":
    metrics_multiprocess.prepare_worker()
from gateway.metrics import Metrics
from pricing.models import Usage
metrics = Metrics()
for status in (200, 200, 429):
    metrics.observe_request("chat.completions", "openai", "gpt-4o", status, 0.02)
metrics.observe_usage("openai", Usage(input_tokens=7, output_tokens=3), Decimal("0.001"),
                      Decimal("0.0012"))
sys.stdout.write(metrics.render().decode())
"""


def record(directory: Path, how: str) -> tuple[list[str], list[str]]:
    """The /metrics lines and the file names (pid as PID) of a process that recorded. The
    lines come sorted: the collector reads the files in the directory's listing order, which
    differs between two directories, and so does the order of the families it renders."""
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    text = subprocess.run(
        [sys.executable, "-c", RECORD, how],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return sorted(text.splitlines()), sorted(
        re.sub(r"_\d+\.db$", "_PID.db", name) for name in os.listdir(directory)
    )


def test_a_prepared_worker_records_what_prometheus_client_records(tmp_path: Path) -> None:
    default = record(tmp_path / "default", "default")
    prepared = record(tmp_path / "prepared", "prepared")
    assert prepared == default
    lines, files = prepared
    assert files == ["counter_PID.db", "histogram_PID.db"]
    assert (
        'tollbooth_requests_total{model="gpt-4o",provider="openai",route="chat.completions",'
        'status="200"} 2.0' in lines
    )
