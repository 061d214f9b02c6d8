"""Config hot reload: on SIGHUP, and when the file's bytes change on disk (checked every
`interval_s`), the file is read and validated; a valid one is swapped in atomically (a request
already running keeps the snapshot it started with), an invalid one is refused: the old config
keeps running, the error is logged and shown by /health until a valid file arrives.

Limits and prices change on the next request without resetting any usage (counters live in
Redis and Postgres, keyed by customer, not by config). Keys that need a restart (`server.*`,
`storage.*`) are reported in the log when they change and keep their running values.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
from pathlib import Path

from gateway.alerts import AlertNotifier
from gateway.config import ConfigError, Settings, parse_settings
from gateway.metrics import Metrics
from gateway.quotas import QuotaPolicy
from gateway.runtime import Runtime

log = logging.getLogger("tollbooth.reload")


class ConfigWatcher:
    def __init__(self, path: Path, runtime: Runtime, quotas: QuotaPolicy, alerts: AlertNotifier,
                 metrics: Metrics, *, interval_s: float = 1.0) -> None:
        self._path = path
        self._runtime = runtime
        self._quotas = quotas
        self._alerts = alerts
        self._metrics = metrics
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.error: str | None = None  # the last refused file's error, until a valid one
        self._refused_hash: str | None = None  # the same bad bytes are refused (counted) once

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            log.info("SIGHUP reload unavailable here; watching the file only")
        self._task = asyncio.ensure_future(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                raw = await asyncio.to_thread(self._path.read_bytes)
            except OSError as exc:
                self._refuse(f"{self._path}: cannot be read ({exc.strerror})")
                continue
            digest = hashlib.sha256(raw).hexdigest()[:16]
            if digest not in (self._runtime.current.settings.source_hash, self._refused_hash):
                self._apply(raw)

    async def reload(self) -> bool:
        """Read and apply the file now (what SIGHUP does). True if a new config is live."""
        try:
            raw = await asyncio.to_thread(self._path.read_bytes)
        except OSError as exc:
            self._refuse(f"{self._path}: cannot be read ({exc.strerror})")
            return False
        return self._apply(raw)

    def _apply(self, raw: bytes) -> bool:
        try:
            settings = parse_settings(raw, str(self._path))
            old = self._runtime.current.settings
            self._runtime.swap(settings)
        except ConfigError as exc:
            self._refused_hash = hashlib.sha256(raw).hexdigest()[:16]
            self._refuse(str(exc))
            return False
        self._quotas.reconfigure(settings.quotas)
        self._alerts.settings = settings.alerts
        self.error = self._refused_hash = None
        self._metrics.config_reloads.labels("ok").inc()
        log.info("config reloaded", extra={"fields": {"hash": settings.source_hash}})
        self._warn_restart_only(old, settings)
        return True

    def _refuse(self, error: str) -> None:
        if error != self.error:
            log.error("config reload refused; the previous config stays live: %s", error)
        self.error = error
        self._metrics.config_reloads.labels("refused").inc()

    @staticmethod
    def _warn_restart_only(old: Settings, new: Settings) -> None:
        for section in ("server", "storage"):
            if getattr(old, section) != getattr(new, section):
                log.warning("config section %r changed; it takes effect on restart", section)
