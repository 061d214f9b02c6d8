"""A worker's tie to the `serve --workers N` supervisor that started it (gateway.cli.supervisor).

Each worker gets one end of a socket pair; the supervisor keeps the other for as long as the
worker runs. Through it:

- `bind()`, first thing in the worker: on Linux the kernel sends the worker SIGTERM when the
  supervisor dies, even SIGKILLed (`prctl(PR_SET_PDEATHSIG)`); a supervisor already gone by
  then (it died while the worker was starting) makes the worker exit at once.
- `watch(on_lost)`, in the worker's event loop: end of file on the link means the supervisor
  is gone (on any OS); `on_lost` starts the same graceful stop as SIGTERM. So a worker never
  outlives its supervisor by more than its drain.
- `ready()`, once the worker listens: the supervisor forwards SIGHUP only to ready workers
  (a starting worker has no reload handler yet and reads the newest file anyway), and a
  worker that exits before it was ready failed to boot (bad port, database down): that is
  not restarted.

Failure semantics: a `ready()` that finds the supervisor gone is ignored (the watch stops the
worker); where prctl is unavailable the watch alone stops the worker once its loop runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection

log = logging.getLogger("tollbooth.worker")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class WorkerLink:
    def __init__(self, conn: Connection, supervisor_pid: int) -> None:
        self._conn = conn
        self._supervisor_pid = supervisor_pid

    def bind(self) -> None:
        """Die with the supervisor (see the module doc); exits if it is already gone."""
        # Ctrl-C and Ctrl-\ reach the whole process group; the supervisor answers them with
        # SIGTERM to each worker, so until its loop handles them a worker leaves them alone.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
                log.warning(
                    "prctl(PR_SET_PDEATHSIG) failed (errno %d); the supervisor link "
                    "alone stops this worker",
                    ctypes.get_errno(),
                )
        # Checked after prctl: a supervisor that died before it would never signal us.
        if os.getppid() != self._supervisor_pid:
            raise SystemExit("tollbooth worker: the supervisor is gone; not starting")

    def watch(self, on_lost: Callable[[], None]) -> None:
        """Call `on_lost` (once) when the supervisor is gone. The supervisor never writes
        to the link, so the only thing to read on it is the end of file."""
        loop = asyncio.get_running_loop()
        fd = self._conn.fileno()

        def readable() -> None:
            loop.remove_reader(fd)
            log.warning("the supervisor is gone; stopping this worker")
            on_lost()

        loop.add_reader(fd, readable)

    def ready(self) -> None:
        # OSError: the supervisor is gone, and the watch is stopping this worker.
        with contextlib.suppress(OSError):
            self._conn.send_bytes(b"ready")
