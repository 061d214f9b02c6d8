"""A real PgBouncer in transaction pooling mode in front of the test session's Postgres.

`start_pgbouncer(postgres_url)` starts Debian's `pgbouncer` (installed with apt when
missing and this process is root) listening on a loopback port, pooling at most
`pool_size` server connections per database and user, so statements of different clients
really share server connections; `auth_type = trust`. It reaches Postgres over the unix
socket directory named in the embedded URL. The returned `PgBouncer` gives the URL of a
database through it and stops the process on `stop()`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.helpers.ports import free_port


def ensure_installed(binary: str, package: str) -> str:
    """The path of `binary`, installing Debian's `package` first when missing and root."""
    found = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None
    )
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", package],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if shutil.which(binary) is None:
            subprocess.run(
                ["apt-get", "update", "-qq"],
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", package],
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        found = shutil.which(binary)
    if found is None:
        raise RuntimeError(f"{binary} is not installed (apt-get install {package})")
    return found


@dataclass
class PgBouncer:
    process: subprocess.Popen[bytes]
    port: int
    workdir: Path

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        path = self.workdir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_pgbouncer(postgres_url: str, *, pool_size: int = 2) -> PgBouncer:
    binary = ensure_installed("pgbouncer", "pgbouncer")
    # Its own directory under /tmp: when root, PgBouncer runs as the socket's owner, who
    # must reach its log file (a pytest tmp_path sits in a root-only directory).
    workdir = Path(tempfile.mkdtemp(prefix="tollbooth-pgbouncer-"))
    parts = urlsplit(postgres_url)
    socket_dir = parse_qs(parts.query)["host"][0]
    pg_port = parts.port or 5432
    port = free_port()
    (workdir / "userlist.txt").write_text('"postgres" ""\n')
    lines = [
        "[databases]",
        f"* = host={socket_dir} port={pg_port}",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = trust",
        f"auth_file = {workdir / 'userlist.txt'}",
        "pool_mode = transaction",
        f"default_pool_size = {pool_size}",
        "min_pool_size = 0",
        "reserve_pool_size = 0",
        "max_client_conn = 500",
        "server_reset_query =",
        "ignore_startup_parameters = extra_float_digits",
        f"logfile = {workdir / 'pgbouncer.log'}",
        f"pidfile = {workdir / 'pgbouncer.pid'}",
    ]
    if os.geteuid() == 0:
        # PgBouncer refuses to run as root; the socket directory's owner can reach Postgres.
        owner = pwd.getpwuid(os.stat(socket_dir).st_uid).pw_name
        lines.append(f"user = {owner}")
        shutil.chown(workdir, user=owner)
        for name in ("userlist.txt",):
            shutil.chown(workdir / name, user=owner)
    (workdir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
    if os.geteuid() == 0:
        shutil.chown(workdir / "pgbouncer.ini", user=owner)
    process = subprocess.Popen(
        [binary, str(workdir / "pgbouncer.ini")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    bouncer = PgBouncer(process, port, workdir)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            assert process.stderr is not None
            raise RuntimeError(
                f"pgbouncer exited: {process.stderr.read().decode()} {bouncer.log()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return bouncer
        except OSError:
            time.sleep(0.05)
    bouncer.stop()
    raise RuntimeError(f"pgbouncer did not listen on {port}: {bouncer.log()}")
