"""`server.tls_cert` / `server.tls_key`: the gateway terminates TLS itself. Requests the fast
front serves and requests it hands to aiohttp (on the same connection) both work over HTTPS;
bad or half TLS settings are refused with the key named."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.cli.serve_preflight import preflight
from gateway.config import ConfigError, parse_settings
from gateway.tls import server_tls_context
from tests.harness import running_gateway
from tests.helpers.tls import self_signed

BASE = b"providers: {openai: {kind: openai, base_url: 'http://127.0.0.1:1/v1'}}\n"


def settings_with(tmp_path: Path, server: str) -> object:
    path = tmp_path / "config.yaml"
    raw = BASE + server.encode()
    path.write_bytes(raw)
    return parse_settings(raw, str(path))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body: its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
    return int(lines[0].split()[1]), await reader.readexactly(int(headers["content-length"]))


def test_tls_needs_both_the_certificate_and_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_cert is set but tls_key is not"):
        settings_with(tmp_path, "server: {tls_cert: gateway.crt}\n")
    with pytest.raises(ConfigError, match="tls_key is set but tls_cert is not"):
        settings_with(tmp_path, "server: {tls_key: gateway.key}\n")


def test_paths_are_read_from_the_config_files_directory(tmp_path: Path) -> None:
    self_signed(tmp_path)
    settings = settings_with(tmp_path, "server: {tls_cert: gateway.crt, tls_key: gateway.key}\n")
    assert isinstance(server_tls_context(settings), ssl.SSLContext)  # type: ignore[arg-type]
    off = settings_with(tmp_path, "server: {port: 0}\n")
    assert server_tls_context(off) is None  # type: ignore[arg-type]


def test_missing_or_mismatched_files_are_refused_before_serving(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, "server: {tls_cert: nope.crt, tls_key: nope.key}\n")
    with pytest.raises(ConfigError, match=r"server.tls_cert: no such file"):
        server_tls_context(settings)  # type: ignore[arg-type]
    problem = preflight(settings, "127.0.0.1", 0)  # type: ignore[arg-type]
    assert problem is not None and "server.tls_cert" in problem
    first = self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    second = self_signed(other)
    mismatched = settings_with(
        tmp_path, f"server: {{tls_cert: {first.cert_path}, tls_key: {second.key_path}}}\n"
    )
    with pytest.raises(ConfigError, match="matching unencrypted private key"):
        server_tls_context(mismatched)  # type: ignore[arg-type]


async def test_front_and_aiohttp_both_serve_over_tls(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    cert = self_signed(tmp_path)
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, tls=cert.server_context()
    ) as gw:
        assert gw.base_url.startswith("https://")
        # One TLS connection: the front serves the POST, then hands the connection over to
        # aiohttp for the GET (a route the front does not serve).
        host, port = gw.base_url.removeprefix("https://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port), ssl=cert.client_context())
        body = orjson.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
        )
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
            b"Authorization: Bearer " + gw.key.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        status, payload = await read_response(reader)
        assert status == 200 and orjson.loads(payload)["usage"]["prompt_tokens"] > 0
        writer.write(
            b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n"
            b"Authorization: Bearer " + gw.key.encode() + b"\r\n\r\n"
        )
        status, payload = await read_response(reader)
        assert status == 200 and orjson.loads(payload)["data"]
        writer.close()
        rows = await gw.events(wait_for=1)
        assert len(rows) == 1 and rows[0]["status_code"] == 200
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gw.base_url}/health", ssl=cert.client_context()) as health:
                assert health.status in (200, 503)
            with pytest.raises(aiohttp.ClientError):
                async with session.get(gw.base_url.replace("https://", "http://") + "/health"):
                    pass
