"""Supervisor policy with trivial workers (real spawned processes, no gateway): a worker that
exits before it is ready is not restarted, a worker that keeps dying is restarted with a
growing back-off until the crash limit stops everything, and a stop signal ends every worker.
The gateway under the supervisor is in tests/test_serve_supervisor.py."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from gateway.cli.supervisor import RestartPolicy, Supervisor
from tests.helpers import supervised

FAST = RestartPolicy(delay_s=0.01, max_delay_s=0.05, crash_limit=2, window_s=60)


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(delay_s=0.5, max_delay_s=10.0)
    assert [policy.delay_after(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_a_worker_that_exits_while_starting_is_not_restarted() -> None:
    exited: list[int] = []
    supervisor = Supervisor(
        2, supervised.exits_while_starting, stop_timeout_s=10, policy=FAST, on_exit=exited.append
    )
    assert supervisor.run() == 1
    assert len(exited) == 2  # each worker started once


def test_a_crash_loop_stops_everything(caplog: pytest.LogCaptureFixture) -> None:
    exited: list[int] = []
    supervisor = Supervisor(
        1, supervised.dies_once_ready, stop_timeout_s=10, policy=FAST, on_exit=exited.append
    )
    assert supervisor.run() == 1
    assert len(exited) == FAST.crash_limit + 1  # started, restarted twice, then given up
    assert "died 3 times within 60 s; stopping" in caplog.text


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=["TERM", "INT", "QUIT"]
)
def test_a_stop_signal_ends_every_worker(signum: signal.Signals) -> None:
    exited: list[int] = []
    supervisor = Supervisor(
        2, supervised.serves_until_stopped, stop_timeout_s=10, on_exit=exited.append
    )
    me = psutil.Process()

    def signal_once_ready() -> None:
        for _ in range(200):
            if len(me.children()) >= 2:  # the resource tracker may be among them
                break
            time.sleep(0.05)
        time.sleep(1.0)  # the workers say they are ready
        os.kill(os.getpid(), signal.SIGHUP)  # forwarded, ignored by these workers
        os.kill(os.getpid(), signum)

    threading.Thread(target=signal_once_ready, daemon=True).start()
    assert supervisor.run() == 0
    assert len(exited) == 2
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in exited
    )
