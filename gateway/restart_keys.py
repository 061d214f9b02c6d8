"""Which config keys a running gateway applies on reload, and which wait for a restart.

A reload swaps the settings snapshot every request reads (providers, models, tiers, pricing,
quotas, alerts, admin, billing), so those keys apply on the next request. The keys below are
read once, when the process starts: they build the listener, the connection pools, the
usage writer and journal, the loggers and the maintenance task. A reload keeps their running
values; `restart_required(boot, live)` names those that differ from what the process started
with, for the log and `/health` (`config.restart_required`). Changing one back clears it.

Only key names are ever reported, never values (a `storage.database_url` may hold a password).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gateway.config import Settings

# Read once at start (gateway/app.py, gateway/cli/serve.py); every key under these prefixes.
RESTART_ONLY: tuple[str, ...] = (
    "server",
    "storage",
    "logging",
    "retention",
    "quotas.redis_max_connections",
    "quotas.redis_wait_replicas",
)
# Read from the live snapshot by each request although its section is restart-only.
LIVE_EXCEPTIONS: tuple[str, ...] = ("server.disconnect_drain_s", "server.cors_origins")

_MISSING = object()


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def needs_restart(key: str) -> bool:
    """True for a dotted config key (`server.port`) that a reload does not apply."""
    return _under(key, RESTART_ONLY) and not _under(key, LIVE_EXCEPTIONS)


def _diff(old: Any, new: Any, path: str) -> Iterator[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for name in old.keys() | new.keys():
            child = f"{path}.{name}" if path else str(name)
            yield from _diff(old.get(name, _MISSING), new.get(name, _MISSING), child)
    elif old != new:
        yield path


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Every dotted key whose value differs (a list or a scalar is one key), sorted."""
    return sorted(_diff(old.model_dump(), new.model_dump(), ""))


def restart_required(boot: Settings, live: Settings) -> list[str]:
    """The keys whose live value differs from the one the process started with and runs."""
    return [key for key in changed_keys(boot, live) if needs_restart(key)]
