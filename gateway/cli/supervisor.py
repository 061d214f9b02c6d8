"""`serve --workers N`: the supervisor process, which starts N workers on one port and keeps
them running until it is told to stop. It never leaves a worker behind.

Signals to the supervisor:

- SIGHUP: forwarded to every ready worker; each reloads config.yaml (gateway.reload). The
  supervisor and its workers keep running.
- SIGTERM, SIGINT, SIGQUIT: stop. Every worker gets SIGTERM and drains (what SIGTERM does to
  `serve` with one worker); a worker still running `stop_timeout_s` later is killed with
  SIGKILL (its journal keeps its usage events for the next start). The exit code is 0 only if
  every worker drained and exited 0. Further stop signals change nothing.

A worker that dies on its own (a crash, the OOM killer, a stray SIGKILL) is started again
after a back-off (`RestartPolicy`: 0.5 s, doubled for each death of that worker within the
last 60 s, at most 10 s). More than 5 deaths of one worker within 60 s is a crash loop:
everything is stopped and the exit code is 1. A worker that exits before it
listens failed to boot (port taken, database unreachable): it is not restarted; the others
are stopped and the exit code is 1.

If the supervisor itself dies (even SIGKILLed), its workers notice and drain (WorkerLink).

Metrics: the workers write prometheus-client's per-process files into a directory made fresh
for this run (gateway.metrics_multiprocess), so any worker's /metrics is the sum over all of
them; a worker's gauges are dropped when it exits and the directory is removed at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from gateway import metrics_multiprocess
from gateway.cli.worker_link import WorkerLink
from gateway.config import Settings
from gateway.drain import EXIT_MARGIN_S
from gateway.logs import setup_logging

log = logging.getLogger("tollbooth.supervisor")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
KILL_SLACK_S = 10.0  # past a worker's drain bound, before it is killed
# Exit codes of a worker that stopped as asked (a signal that came before its handlers).
_STOPPED = (0, -signal.SIGTERM, -signal.SIGINT)

Target = Callable[[WorkerLink], None]  # a worker's body; runs in the new process


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    delay_s: float = 0.5
    max_delay_s: float = 10.0
    crash_limit: int = 5  # deaths of one worker within window_s; one more is a crash loop
    window_s: float = 60.0

    def delay_after(self, recent_deaths: int) -> float:
        """The back-off before restarting a worker that died `recent_deaths` times lately."""
        return float(min(self.delay_s * 2 ** max(recent_deaths - 1, 0), self.max_delay_s))


def describe(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


@dataclass
class _Worker:
    index: int
    proc: BaseProcess | None = None
    conn: Connection | None = None  # the supervisor's end of the worker's link
    ready: bool = False
    deaths: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


class Supervisor:
    def __init__(
        self,
        count: int,
        target: Target,
        *,
        stop_timeout_s: float,
        policy: RestartPolicy = RestartPolicy(),
        on_exit: Callable[[int], None] = lambda pid: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`on_exit(pid)` runs after each worker exits; `clock` is monotonic seconds."""
        self._target = target
        self._policy = policy
        self._stop_timeout_s = stop_timeout_s
        self._on_exit = on_exit
        self._clock = clock
        self._ctx = get_context("spawn")
        self._workers = [_Worker(i) for i in range(count)]
        self._stop_deadline: float | None = None
        self._failed = False

    def run(self) -> int:
        """Start the workers and supervise them until they are all gone; the exit code."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        # The handlers do nothing: the signal's number arrives on the wake-up pipe and is
        # handled by the loop below, between two waits.
        previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        previous = {
            s: signal.signal(s, lambda _s, _f: None) for s in (*STOP_SIGNALS, signal.SIGHUP)
        }
        try:
            for worker in self._workers:
                self._start(worker)
            while any(w.proc is not None or w.restart_at is not None for w in self._workers):
                self._step(wake_r)
            return 1 if self._failed else 0
        finally:
            self._kill_all()  # only if the loop itself failed: no worker is left behind
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(wake_r)
            os.close(wake_w)

    def _start(self, worker: _Worker) -> None:
        mine, theirs = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(self._target, WorkerLink(theirs, os.getpid())),
            name=f"tollbooth-worker-{worker.index}",
        )
        proc.start()
        theirs.close()  # the worker holds it now: its end of file is our death
        worker.proc, worker.conn, worker.ready, worker.restart_at = proc, mine, False, None

    def _step(self, wake_r: int) -> None:
        waitables: list[Connection | int] = [wake_r]
        for w in self._workers:
            if w.proc is not None:
                waitables.append(w.proc.sentinel)
                if not w.ready and w.conn is not None:
                    waitables.append(w.conn)
        woke = wait(waitables, self._timeout())
        for w in self._workers:  # before the signals: a SIGHUP also reaches who just got ready
            if w.conn is not None and w.conn in woke:
                self._hear(w)
        if wake_r in woke:
            self._signals(wake_r)
        for w in self._workers:
            if w.proc is not None and w.proc.exitcode is not None:
                self._reap(w)
        now = self._clock()
        for w in self._workers:
            if w.restart_at is not None and now >= w.restart_at and not self._stopping:
                log.info("restarting worker %d", w.index)
                self._start(w)
        if self._stop_deadline is not None and now >= self._stop_deadline:
            self._kill_all()

    @property
    def _stopping(self) -> bool:
        return self._stop_deadline is not None

    def _timeout(self) -> float | None:
        moments = [w.restart_at for w in self._workers if w.restart_at is not None]
        if self._stop_deadline is not None:
            moments.append(self._stop_deadline)
        return max(0.0, min(moments) - self._clock()) if moments else None

    def _signals(self, wake_r: int) -> None:
        try:
            received = os.read(wake_r, 512)
        except BlockingIOError:
            return
        for signum in received:
            if signum == signal.SIGHUP and not self._stopping:
                self._send_ready(signal.SIGHUP)
            elif signum in STOP_SIGNALS and not self._stopping:
                log.info("%s: stopping the workers", signal.Signals(signum).name)
                self._stop()

    def _send_ready(self, signum: int) -> None:
        for w in self._workers:
            if w.ready:
                _send(w, signum)

    def _hear(self, w: _Worker) -> None:
        assert w.conn is not None
        try:
            w.ready = w.conn.recv_bytes() == b"ready"
        except (EOFError, OSError):  # the worker is gone; its sentinel says so too
            w.conn.close()
            w.conn = None

    def _reap(self, w: _Worker) -> None:
        assert w.proc is not None
        code, pid, ready = w.proc.exitcode, w.proc.pid, w.ready
        w.proc.close()
        if w.conn is not None:
            w.conn.close()
        w.proc, w.conn, w.ready = None, None, False
        if pid is not None:
            self._on_exit(pid)
        if self._stopping:
            if code not in _STOPPED:
                log.error("worker %d (pid %s) did not drain: %s", w.index, pid, describe(code))
                self._failed = True
            return
        if not ready:
            log.error(
                "worker %d (pid %s) exited while starting (%s); stopping",
                w.index,
                pid,
                describe(code),
            )
            self._fail()
            return
        now = self._clock()
        w.deaths.append(now)
        policy = self._policy
        while w.deaths and w.deaths[0] < now - policy.window_s:
            w.deaths.popleft()
        if len(w.deaths) > policy.crash_limit:
            log.error(
                "worker %d died %d times within %.0f s; stopping",
                w.index,
                len(w.deaths),
                policy.window_s,
            )
            self._fail()
            return
        delay = policy.delay_after(len(w.deaths))
        log.error(
            "worker %d (pid %s) died (%s); restarting it in %.1f s",
            w.index,
            pid,
            describe(code),
            delay,
        )
        w.restart_at = now + delay

    def _fail(self) -> None:
        self._failed = True
        if not self._stopping:
            self._stop()

    def _stop(self) -> None:
        self._stop_deadline = self._clock() + self._stop_timeout_s
        for w in self._workers:
            w.restart_at = None
            _send(w, signal.SIGTERM)

    def _kill_all(self) -> None:
        """SIGKILL every worker still running (past the stop deadline, or the loop failed)."""
        if self._stop_deadline is None:
            self._stop_deadline = self._clock()
        for w in self._workers:
            if w.proc is not None and w.proc.exitcode is None:
                log.error("worker %d (pid %s) still running; killing it", w.index, w.proc.pid)
                w.proc.kill()
                w.proc.join()
            if w.proc is not None:
                self._reap(w)


def _worker_main(target: Target, link: WorkerLink) -> None:
    """What a new worker process runs."""
    metrics_multiprocess.prepare_worker()
    target(link)


def _send(w: _Worker, signum: int) -> None:
    if w.proc is not None and w.proc.pid is not None:
        # Not reaped yet, so the pid is still this worker's; gone only in a race with exit.
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.proc.pid, signum)


def supervise(settings: Settings, count: int, target: Target) -> int:
    """Run `count` workers of `target` under a Supervisor, with metrics summed over them.
    A worker's drain ends within `server.drain_timeout_s` + EXIT_MARGIN_S of its SIGTERM
    (gateway.drain): one still running KILL_SLACK_S after that is killed."""
    setup_logging(settings.logging.level, settings.logging.format, settings.logging.requests)
    stop_timeout_s = settings.server.drain_timeout_s + EXIT_MARGIN_S + KILL_SLACK_S
    metrics_dir = metrics_multiprocess.fresh_dir()
    # Read by prometheus-client when a worker imports it (workers are new interpreters).
    os.environ[metrics_multiprocess.ENV] = str(metrics_dir)
    try:
        return Supervisor(
            count,
            target,
            stop_timeout_s=stop_timeout_s,
            on_exit=lambda pid: metrics_multiprocess.forget_process(metrics_dir, pid),
        ).run()
    finally:
        del os.environ[metrics_multiprocess.ENV]
        metrics_multiprocess.remove_dir(metrics_dir)
