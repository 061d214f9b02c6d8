"""Config hot reload: on SIGHUP, and when the file's bytes change on disk (checked every
`interval_s`), the file is read and validated; a valid one is swapped in atomically (a request
already running keeps the snapshot it started with), an invalid one is refused: the old config
keeps running, the error is logged and shown by /health until a valid file arrives.

A file whose bytes are those of the running config (an edit undone, a backup copied back)
clears a refused file's error: what is on disk is what runs.

Limits and prices change on the next request without resetting any usage (counters live in
Redis and Postgres, keyed by customer, not by config). Keys read only at start
(`gateway.restart_keys`: `server.*`, `storage.*`, `logging.*`...) keep their running values; a
change to one is logged at warning and listed in `restart_required` (shown by /health) until a
restart, or until the file has the running value again.
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
from gateway.provider_keys import warn_missing_keys
from gateway.providers.registry import warm_up
from gateway.quotas import QuotaPolicy
from gateway.restart_keys import restart_required
from gateway.runtime import Runtime

log = logging.getLogger("tollbooth.reload")


class ConfigWatcher:
    def __init__(
        self,
        path: Path,
        runtime: Runtime,
        quotas: QuotaPolicy,
        alerts: AlertNotifier,
        metrics: Metrics,
        *,
        interval_s: float = 1.0,
    ) -> None:
        self._path = path
        self._runtime = runtime
        self._quotas = quotas
        self._alerts = alerts
        self._metrics = metrics
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._on_sighup = False  # this watcher's SIGHUP handler is installed
        self.error: str | None = None  # the last refused file's error, until a valid one
        self._refused_hash: str | None = None  # the same bad bytes are refused (counted) once
        self._boot = runtime.current.settings  # what the restart-only keys still run with
        self.restart_required: list[str] = []  # keys changed on disk that wait for a restart
        self._warming: asyncio.Future[None] | None = None  # warm_up after the last reload

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
            self._on_sighup = True
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            log.info("SIGHUP reload unavailable here; watching the file only")
        self._task = asyncio.ensure_future(self._watch())

    async def close(self) -> None:
        if self._on_sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._on_sighup = False
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
            if digest == self._runtime.current.settings.source_hash:
                self._running_file_back()
            elif digest != self._refused_hash:
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
        self._note_restart_only(settings)
        warn_missing_keys(settings)  # a reload may name another provider or key variable
        # A provider the reload added may sign with credentials not fetched yet (Bedrock).
        self._warming = asyncio.ensure_future(warm_up(settings.providers))
        return True

    def _running_file_back(self) -> None:
        """The file holds the running config's bytes again: nothing to apply, nothing wrong."""
        if self.error is not None:
            log.info("config file is the running config again; its previous error is cleared")
        self.error = self._refused_hash = None

    def _refuse(self, error: str) -> None:
        if error != self.error:
            log.error("config reload refused; the previous config stays live: %s", error)
        self.error = error
        self._metrics.config_reloads.labels("refused").inc()

    def _note_restart_only(self, live: Settings) -> None:
        keys = restart_required(self._boot, live)
        if keys == self.restart_required:
            return
        if keys:
            log.warning(
                "config keys that take effect only after a restart changed (their "
                "running values stay until then): %s",
                ", ".join(keys),
            )
        else:
            log.info("config keys that need a restart are back to their running values")
        self.restart_required = keys
