"""Worker bodies for Supervisor tests: each runs in a process the supervisor spawned."""

from __future__ import annotations

import os
import signal

from gateway.cli.worker_link import WorkerLink


def exits_while_starting(link: WorkerLink) -> None:
    link.bind()
    os._exit(3)


def dies_once_ready(link: WorkerLink) -> None:
    link.bind()
    link.ready()
    os._exit(3)


def serves_until_stopped(link: WorkerLink) -> None:
    """Ready, then wait for SIGTERM (the default action ends the process)."""
    link.bind()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    link.ready()
    while True:
        signal.pause()
