"""SigV4 signing of upstream requests to AWS (Bedrock) with the standard credential chain.

`AwsSigning` holds one botocore credentials object per AWS profile (`None`: the default
chain — environment, shared files, SSO, container and instance roles) and signs each
forwarded request with `botocore.auth.SigV4Auth`; the signature itself is botocore's, never
ours.

When credentials are resolved: `prepare(profiles)` at start (and after a reload) resolves
those of every `kind: bedrock` provider in a worker thread, since the chain may read files or
call the instance metadata service. `sign` itself never does I/O: a profile it has not seen
(a provider a reload added before `prepare` ran) starts its resolution in a thread and that
request gets a 503. Temporary credentials (roles, SSO) are `RefreshableCredentials`, which
botocore wants refreshed 15 minutes before they expire: once that window opens, `sign` starts
the refresh in a thread and keeps signing with the current credentials (still valid for at
least 10 minutes) until it lands; it never calls a refresh on the event loop.

Cost on the event loop: one SigV4 signature, four HMACs and a SHA-256 of the body (about
30 microseconds for a typical prompt; hashing a 32 MB body would take some 20 ms).

How it fails: no credentials anywhere in the chain make `sign` raise `AwsCredentialsMissing`
(the adapter answers 503; the profile is logged, never a secret); the chain is tried again at
most every `RETRY_MISSING_S`. Botocore's errors while resolving or refreshing (an expired SSO
token, an unreachable metadata service) are logged by their type only: a failed resolution
counts as missing, a failed refresh keeps the current credentials until they expire.
Neither the secret key nor the session token is ever logged or returned; the `Authorization`
header carries only the key id and the signature.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError

log = logging.getLogger("tollbooth.aws")

SERVICE = "bedrock"  # the SigV4 signing name of bedrock-runtime
RETRY_MISSING_S = 10.0


class AwsCredentialsMissing(Exception):
    """No usable AWS credentials for a profile (the message names the profile, no secret)."""


def _resolve(profile: str | None) -> tuple[Credentials, ReadOnlyCredentials] | None:
    """The chain's credentials and a first snapshot of them (blocking: files, SSO, the
    metadata service, a first refresh)."""
    credentials = botocore.session.Session(profile=profile).get_credentials()
    if credentials is None:
        return None
    return credentials, credentials.get_frozen_credentials()


class AwsSigning:
    """Credentials per profile and the signing with them. One per adapter (so per process);
    only the event loop's thread calls it (the blocking parts run in worker threads)."""

    def __init__(self) -> None:
        self._credentials: dict[str | None, Credentials] = {}
        self._frozen: dict[str | None, ReadOnlyCredentials] = {}
        self._missing_until: dict[str | None, float] = {}
        self._pending: dict[str | None, asyncio.Future[None]] = {}

    async def prepare(self, profiles: set[str | None]) -> None:
        """Resolve these profiles' credentials now (at start, after a reload), each in a
        thread, even those resolved before: the chain may have changed (another app in this
        process, rotated files). Until a new resolution lands, the current credentials keep
        signing; one that finds none keeps them too and logs it (never raises): without any,
        requests answer 503."""
        for profile in profiles:
            self._missing_until.pop(profile, None)
            self._start(profile)
            await asyncio.shield(self._pending[profile])

    def state(self, profile: str | None) -> str:
        """For /health: `set` (resolved), `missing` (the chain found none), `resolving`."""
        if profile in self._credentials:
            return "set"
        pending = self._pending.get(profile)
        return "resolving" if pending is not None and not pending.done() else "missing"

    def sign(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes,
        *,
        region: str,
        profile: str | None = None,
        service: str = SERVICE,
    ) -> None:
        """Add the SigV4 headers (`Authorization`, `X-Amz-Date`, and `X-Amz-Security-Token`
        for temporary credentials) to `headers` in place. Every header given is signed, so
        nothing may change them, the URL or the body afterwards. Raises
        `AwsCredentialsMissing` when there are no usable credentials (yet)."""
        frozen = self._frozen_now(profile)
        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        SigV4Auth(frozen, service, region).add_auth(request)
        headers.clear()
        headers.update(request.headers.items())

    def _frozen_now(self, profile: str | None) -> ReadOnlyCredentials:
        """The credentials to sign with now, without blocking: a refresh botocore wants is
        started in a thread and, meanwhile, the current (still valid) ones are used."""
        credentials = self._credentials.get(profile)
        if credentials is None:
            self._start(profile)  # a profile a reload added: resolved for the next request
            raise AwsCredentialsMissing(_missing(profile))
        if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
            frozen = self._frozen.get(profile)
            self._start(profile, credentials)
            if frozen is None or credentials.refresh_needed(0):  # expired: nothing valid
                raise AwsCredentialsMissing(
                    f"AWS credentials of {_name(profile)} expired and are being refreshed"
                )
            return frozen
        frozen = credentials.get_frozen_credentials()  # no refresh due: no I/O
        if not frozen.access_key or not frozen.secret_key:
            raise AwsCredentialsMissing(f"AWS credentials of {_name(profile)} are empty")
        self._frozen[profile] = frozen
        return frozen

    def _start(self, profile: str | None, credentials: Credentials | None = None) -> None:
        """Resolve (or refresh) in a worker thread, once at a time per profile."""
        pending = self._pending.get(profile)
        if pending is not None and not pending.done():
            return
        if credentials is None and time.monotonic() < self._missing_until.get(profile, 0.0):
            return
        loop = asyncio.get_running_loop()
        if credentials is None:
            future = loop.run_in_executor(None, _resolve, profile)
        else:
            future = loop.run_in_executor(None, credentials.get_frozen_credentials)
        done: asyncio.Future[None] = loop.create_future()
        self._pending[profile] = done
        future.add_done_callback(lambda f: self._settled(profile, credentials, f, done))

    def _settled(
        self,
        profile: str | None,
        refreshed: Credentials | None,
        future: asyncio.Future[Any],
        done: asyncio.Future[None],
    ) -> None:
        try:
            result = future.result()
        except BotoCoreError as exc:
            log.error(
                "AWS credentials of %s could not be %s: %s",
                _name(profile),
                "refreshed" if refreshed is not None else "resolved",
                type(exc).__name__,
            )
            result = None
        if refreshed is not None:
            if isinstance(result, ReadOnlyCredentials):
                self._frozen[profile] = result
        elif result is None:
            self._missing_until[profile] = time.monotonic() + RETRY_MISSING_S
            log.error("%s", _missing(profile))
        else:
            credentials, frozen = result
            self._credentials[profile] = credentials
            self._frozen[profile] = frozen
            log.info(
                "AWS credentials of %s resolved (%s)",
                _name(profile),
                getattr(credentials, "method", "unknown source"),
            )
        if not done.done():
            done.set_result(None)


def _name(profile: str | None) -> str:
    return f"profile {profile!r}" if profile else "the default chain"


def _missing(profile: str | None) -> str:
    return (
        f"no AWS credentials found in {_name(profile)} (environment, shared config and "
        "credentials files, SSO, container or instance role)"
    )
