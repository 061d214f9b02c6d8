"""Free loopback ports for the servers tests start, chosen below the kernel's ephemeral range.

A port the kernel picks (`bind(("127.0.0.1", 0))`) or one probed inside the ephemeral range
can be handed to any outgoing connection between the probe and the server's own bind; that
once failed a Sentinel's start ("Address already in use"). Below the range only listeners
compete, and the probe sees them.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port() -> int:
    """A free loopback port below the ephemeral range."""
    return free_ports(1)[0]


def _first_ephemeral_port() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_ports(count: int) -> list[int]:
    """Free loopback ports whose cluster bus port (+10000) is free too, both below the
    kernel's ephemeral range: a port chosen there can be taken by any outgoing connection
    between the probe and the node's bind, which once failed a sentinel's start."""
    top = min(_first_ephemeral_port(), 65536) - 10000
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(10000, top)
        taken = {q for p in ports for q in (p, p + 10000, p - 10000)}
        if port in taken or not _free(port) or not _free(port + 10000):
            continue
        ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
