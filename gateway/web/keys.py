"""The typed app keys of the web pages (the gateway's own keys are in gateway/keys.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import jinja2
from aiohttp import web

from gateway.web.sessions import SessionCodec, Signer
from gateway.web.static import StaticFiles

templates = web.AppKey("web_templates", jinja2.Environment)
static_files = web.AppKey("web_static", StaticFiles)
sessions = web.AppKey("web_sessions", SessionCodec)
link_signer = web.AppKey("web_link_signer", Signer)  # portal links (gateway.web.portal_links)
clock = web.AppKey[Callable[[], datetime]]("web_clock")
