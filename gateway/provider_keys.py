"""Whether each provider's key variable (`providers.NAME.api_key_env`) holds a key.

A provider whose variable is unset (or empty) cannot be called: its requests answer 503
(`gateway.proxy`). So that this shows before the first request, `tollbooth serve` logs one
warning per such provider at start, the config watcher logs them again after each reload, and
`/health` reports every provider's state (`key_states`) and says `degraded` while one is
missing. Only variable names are ever reported, never a value. Nothing here raises.

States: `set`; `missing` (the variable is unset or empty); `not_required` (the provider
names no variable: the gateway sends it no key, as a local OpenAI-compatible server expects).
A provider whose API signs with other credentials (Bedrock: the AWS chain) reports their
state instead (`set`, `missing`, `resolving`: `ProviderApi.credential_state`), with no
variable name; it is not warned about here (the signer logs what it cannot find).
"""

from __future__ import annotations

import logging
import os

from gateway.config import Settings
from gateway.providers.registry import api_for_kind

log = logging.getLogger("tollbooth.providers")

SET = "set"
MISSING = "missing"
NOT_REQUIRED = "not_required"


def key_states(settings: Settings) -> dict[str, dict[str, str]]:
    """Provider name -> {"key": state, "api_key_env": variable name (when one is named)}."""
    states: dict[str, dict[str, str]] = {}
    for name, provider in settings.providers.items():
        signed = api_for_kind(provider.kind).credential_state(provider)
        if signed is not None:
            states[name] = {"key": signed}
            continue
        if not provider.api_key_env:
            states[name] = {"key": NOT_REQUIRED}
            continue
        state = SET if os.environ.get(provider.api_key_env) else MISSING
        states[name] = {"key": state, "api_key_env": provider.api_key_env}
    return states


def missing_keys(settings: Settings) -> dict[str, str]:
    """Provider name -> the name of its unset key variable, for the providers that lack one."""
    return {
        name: state["api_key_env"]
        for name, state in key_states(settings).items()
        if state["key"] == MISSING and "api_key_env" in state
    }


def warn_missing_keys(settings: Settings) -> None:
    """One warning line per provider whose key variable is unset (names only)."""
    for name, variable in missing_keys(settings).items():
        log.warning(
            "provider %s: its key variable %s is not set; requests routed to it answer 503",
            name,
            variable,
        )
