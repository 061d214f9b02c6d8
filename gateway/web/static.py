"""The files under gateway/web/static/, served at `/static/NAME` with long cache lifetimes.

The folder is read once at startup: only the files found then are served (no path from the
URL ever reaches the filesystem, so there is no traversal to defend against), each with a
content hash. Pages link to `url(NAME)` = `/static/NAME?v=HASH`, so a cached copy is never
stale: a new file has a new URL. A name not in the folder answers 404.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".txt": "text/plain",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_CACHE = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    version: str


class StaticFiles:
    def __init__(self, files: dict[str, StaticFile]) -> None:
        self._files = files

    @classmethod
    def load(cls) -> StaticFiles:
        folder = resources.files("gateway.web").joinpath("static")
        files: dict[str, StaticFile] = {}
        for entry in folder.iterdir():
            if not entry.is_file():
                continue
            body = entry.read_bytes()
            suffix = "." + entry.name.rpartition(".")[2]
            ctype = _TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0] or "text/plain"
            files[entry.name] = StaticFile(body, ctype, hashlib.sha256(body).hexdigest()[:12])
        return cls(files)

    def url(self, name: str) -> str:
        """The cache-busting URL of a static file; a missing one is a bug (KeyError)."""
        return f"/static/{name}?v={self._files[name].version}"

    def response(self, name: str) -> web.Response:
        found = self._files.get(name)
        if found is None:
            raise web.HTTPNotFound()
        charset = "utf-8" if found.content_type.startswith(("text/", "image/svg")) else None
        return web.Response(
            body=found.body,
            content_type=found.content_type,
            charset=charset,
            headers={"Cache-Control": _CACHE, "X-Content-Type-Options": "nosniff"},
        )
