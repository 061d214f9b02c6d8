"""What `tollbooth serve` checks before it starts anything: the listen address, the TLS
certificate and key (`server.tls_*`, loaded once to prove they work), the keys.

`preflight(settings, host, port)` returns the one line `serve` prints before exiting 1 when it
cannot listen, and starts nothing then (no embedded server, no worker). Otherwise it sets up
logging and warns, one line per provider, about key variables that are unset
(`gateway.provider_keys`; names only, never a value), and returns None.

`listen_problem(host, port)` binds a throwaway socket to every address `host` resolves to,
the way the server will (SO_REUSEADDR, so a port whose old connections linger in TIME_WAIT is
free; IPv6 sockets v6-only), and closes it at once. A port in use says so and how to pick
another; any other refusal (an address not on this machine, a privileged port) gives the
system's reason. Port 0 (any free port) always passes. A process that takes the port between
this check and the real bind is not caught here.
"""

from __future__ import annotations

import errno
import socket

from gateway.config import ConfigError, Settings
from gateway.logs import setup_logging
from gateway.provider_keys import warn_missing_keys
from gateway.tls import server_tls_context


def preflight(settings: Settings, host: str, port: int) -> str | None:
    """The reason serve cannot start (one line), or None after warning about missing keys."""
    problem = listen_problem(host, port)
    if problem is not None:
        return problem
    try:
        server_tls_context(settings)  # a missing or mismatched certificate refuses now
    except ConfigError as exc:
        return f"tollbooth serve: {exc}"
    setup_logging(settings.logging.level, settings.logging.format, settings.logging.requests)
    warn_missing_keys(settings)
    return None


def listen_problem(host: str, port: int) -> str | None:
    where = f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"tollbooth serve: cannot listen on {where}: {exc.strerror}; check --host"
    for family, kind, proto, _name, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (
                        f"tollbooth serve: {where} is in use (another serve?); "
                        "pick another with --port"
                    )
                return f"tollbooth serve: cannot listen on {where}: {exc.strerror or exc}"
    return None
