"""A fake OpenAI + Anthropic provider served as a real HTTP app (`tollbooth mock-provider`).

The gateway's tests and `tollbooth bench` point the gateway at it; the official SDKs work
against it directly. See `app.py` for the routes, `tokens.py` for the deterministic token
counts and `controls.py` for the `x-mock-*` fault-injection headers.
"""

from __future__ import annotations

from gateway.mock_provider.app import create_mock_app
from gateway.mock_provider.state import MOCK_REQUESTS, MockOptions, RecordedRequest

__all__ = ["MOCK_REQUESTS", "MockOptions", "RecordedRequest", "create_mock_app"]
