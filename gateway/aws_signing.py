"""SigV4 signing of upstream requests to AWS (Bedrock) with the standard credential chain.

`AwsSigning` holds one botocore credentials object per AWS profile (`None`: the default
chain — environment, shared files, SSO, container and instance roles) and signs each
forwarded request with `botocore.auth.SigV4Auth`; the signature itself is botocore's, never
ours.

When credentials are resolved: `prepare(settings)` at start (and after a reload) resolves
those of every `kind: bedrock` provider, in a worker thread, since the chain may read files
or call the instance metadata service. A profile first seen by a request (a provider a
reload added) is resolved then, also in a thread. Temporary credentials (roles, SSO) are
`RefreshableCredentials`: botocore refreshes them 15 minutes before they expire; when a
refresh is due the signing waits for it in a thread, so the event loop never blocks on it.

Cost on the event loop: one SigV4 signature (four HMACs and a SHA-256 of the body), tens of
microseconds for a typical prompt; a body over `THREAD_SIGNING_BYTES` is hashed and signed in
a thread instead.

How it fails: no credentials anywhere in the chain raise `AwsCredentialsMissing` (the proxy
answers 503 and logs which profile); the chain is tried again at most every
`RETRY_MISSING_S`. Botocore's own errors while resolving or refreshing (an expired SSO token,
an unreachable metadata service) are translated here into the same exception, their message
logged without any secret. Neither the access key's secret nor the session token is ever
logged or returned; the `Authorization` header carries only the key id and the signature.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError

log = logging.getLogger("tollbooth.aws")

SERVICE = "bedrock"  # the SigV4 signing name of bedrock-runtime
THREAD_SIGNING_BYTES = 256 * 1024
RETRY_MISSING_S = 10.0


class AwsCredentialsMissing(Exception):
    """No usable AWS credentials for a profile (the message names the profile, no secret)."""


def _resolve(profile: str | None) -> Credentials | None:
    """The chain's credentials (blocking: files, SSO, the metadata service)."""
    session = botocore.session.Session(profile=profile)
    return session.get_credentials()


class AwsSigning:
    def __init__(self) -> None:
        self._credentials: dict[str | None, Credentials] = {}
        self._missing_until: dict[str | None, float] = {}
        self._locks: dict[str | None, asyncio.Lock] = {}

    async def prepare(self, profiles: set[str | None]) -> None:
        """Resolve the credentials of these profiles now; log (never raise) what is missing."""
        for profile in profiles:
            try:
                await self._credentials_for(profile)
            except AwsCredentialsMissing as exc:
                log.error("%s", exc)

    async def sign(self, method: str, url: str, headers: Mapping[str, str], body: bytes, *,
                   region: str, profile: str | None = None,
                   service: str = SERVICE) -> dict[str, str]:
        """`headers` plus the SigV4 headers (`Authorization`, `X-Amz-Date`, and
        `X-Amz-Security-Token` for temporary credentials). Every header given is signed,
        so nothing may change them (or the URL or body) before they are sent."""
        frozen = await self._frozen(profile)
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
        signer = SigV4Auth(frozen, service, region)
        if len(body) > THREAD_SIGNING_BYTES:
            await asyncio.to_thread(signer.add_auth, request)
        else:
            signer.add_auth(request)
        return dict(request.headers.items())

    async def _frozen(self, profile: str | None) -> ReadOnlyCredentials:
        credentials = await self._credentials_for(profile)
        try:
            if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
                frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
            else:
                frozen = credentials.get_frozen_credentials()
        except BotoCoreError as exc:
            raise AwsCredentialsMissing(
                f"AWS credentials of {_name(profile)} could not be refreshed "
                f"({type(exc).__name__})") from exc
        if not frozen.access_key or not frozen.secret_key:
            raise AwsCredentialsMissing(f"AWS credentials of {_name(profile)} are empty")
        return frozen

    async def _credentials_for(self, profile: str | None) -> Credentials:
        credentials = self._credentials.get(profile)
        if credentials is not None:
            return credentials
        lock = self._locks.setdefault(profile, asyncio.Lock())
        async with lock:  # one resolution at a time per profile, however many requests wait
            credentials = self._credentials.get(profile)
            if credentials is not None:
                return credentials
            if time.monotonic() < self._missing_until.get(profile, 0.0):
                raise AwsCredentialsMissing(_missing(profile))
            try:
                credentials = await asyncio.to_thread(_resolve, profile)
            except BotoCoreError as exc:
                log.error("AWS credentials of %s could not be resolved: %s",
                          _name(profile), type(exc).__name__)
                credentials = None
            if credentials is None:
                self._missing_until[profile] = time.monotonic() + RETRY_MISSING_S
                raise AwsCredentialsMissing(_missing(profile))
            self._credentials[profile] = credentials
            log.info("AWS credentials of %s resolved (%s)", _name(profile),
                     getattr(credentials, "method", "unknown source"))
            return credentials


def _name(profile: str | None) -> str:
    return f"profile {profile!r}" if profile else "the default chain"


def _missing(profile: str | None) -> str:
    return (f"no AWS credentials found in {_name(profile)} (environment, shared config and "
            "credentials files, SSO, container or instance role)")
