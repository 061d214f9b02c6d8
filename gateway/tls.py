"""TLS termination by the gateway itself: `server.tls_cert` and `server.tls_key`.

When both are set, `serve` listens with HTTPS: the SSL context made here goes on the listening
socket (`web.TCPSite(..., ssl_context=...)`), so every connection is TLS before any protocol
sees it — the fast front (`gateway.front.server`) and aiohttp alike, including a connection the
front hands over to aiohttp. Clients that send a key only over HTTPS (boto3's Bedrock bearer
token) need this, or a TLS-terminating proxy in front of a plain-HTTP `serve`.

Relative paths are read from the config file's directory. The files are read once, when the
worker starts (a reload does not re-read them: `server.*` keys need a restart). A file that
is missing or unreadable, or a key that does not match the certificate, raises `ConfigError`
naming the key and the path, before anything listens.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.config import ConfigError, Settings


def tls_paths(settings: Settings) -> tuple[Path, Path] | None:
    """The certificate chain and key files, resolved; None when TLS is off."""
    server = settings.server
    if server.tls_cert is None or server.tls_key is None:
        return None
    base = Path(settings.source_path).parent if settings.source_path else Path.cwd()
    return (base / server.tls_cert).resolve(), (base / server.tls_key).resolve()


def server_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server-side SSL context of `server.tls_*`, or None when TLS is off."""
    paths = tls_paths(settings)
    if paths is None:
        return None
    cert, key = paths
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        missing = "server.tls_key" if exc.filename == str(key) else "server.tls_cert"
        raise ConfigError(
            f"{settings.source_name()}: {missing}: no such file ({exc.filename}); "
            "point it at a PEM file or remove server.tls_cert and server.tls_key"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{settings.source_name()}: server.tls_cert / server.tls_key: cannot be loaded "
            f"({cert}, {key}): {getattr(exc, 'reason', None) or exc}; they must be a PEM "
            "certificate chain and its matching unencrypted private key"
        ) from None
    return context
