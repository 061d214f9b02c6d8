"""The Stripe client for the running config: rebuilt when a reload changes how Stripe is reached.

`StripeClients.get(config)` answers the `StripeApi` for `billing.stripe` as the request's
snapshot has it. The client is built once per (`api_key_env`, the key it holds, `api_base`,
`request_timeout_s`) and reused; when a reload changes one of them, the next call builds a
new client and the old one is closed once every request it may still be serving is over (its
own `request_timeout_s` bounds each call). So a reload applies Stripe settings without a
restart, and a request never has its client closed under it.

How it fails: no key in the named variable gives None (the portal answers 503), with a warning
naming the variable (never a value) once per change. The key itself is kept only inside the
client and as a SHA-256 digest for the comparison.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os

from gateway.config import StripeConfig
from storage.stripe.client import StripeApi

log = logging.getLogger("tollbooth.billing")

_CLOSE_MARGIN_S = 1.0

_Identity = tuple[str, str, str | None, float]


class StripeClients:
    def __init__(self) -> None:
        self._identity: _Identity | None = None
        self._api: StripeApi | None = None
        self._retired: dict[StripeApi, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, config: StripeConfig) -> StripeApi | None:
        """The client for `config`, or None while its API key variable is unset."""
        key = os.environ.get(config.api_key_env) or ""
        identity = (
            config.api_key_env,
            hashlib.sha256(key.encode()).hexdigest(),
            config.api_base,
            config.request_timeout_s,
        )
        if identity == self._identity:
            return self._api
        if self._api is not None and self._identity is not None:
            self._retire(self._api, self._identity[3] + _CLOSE_MARGIN_S)
        self._identity = identity
        self._api = None
        if not key:
            log.warning("%s is not set: POST /billing/portal answers 503", config.api_key_env)
            return None
        self._api = StripeApi(key, api_base=config.api_base, timeout_s=config.request_timeout_s)
        return self._api

    def _retire(self, api: StripeApi, after_s: float) -> None:
        def close() -> None:
            del self._retired[api]
            task = asyncio.ensure_future(api.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

        self._retired[api] = asyncio.get_running_loop().call_later(after_s, close)

    async def close(self) -> None:
        """Close every client, the retired ones at once."""
        retired = list(self._retired)
        for handle in self._retired.values():
            handle.cancel()
        self._retired.clear()
        for api in retired:
            await api.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._api is not None:
            await self._api.close()
            self._api = None
        self._identity = None
