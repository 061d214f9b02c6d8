"""AwsSigning: botocore's SigV4 with the credential chain, resolved off the event loop, refreshed
off it too, and a clear refusal when there are no credentials."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, RefreshableCredentials

import gateway.aws_signing as aws_signing
from gateway.aws_signing import AwsCredentialsMissing, AwsSigning

URL = "https://bedrock-runtime.eu-west-1.amazonaws.com/model/amazon.nova-pro-v1%3A0/converse"
BODY = b'{"messages":[]}'
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=AKIDTESTSIGNING0001/(\d{8})/eu-west-1/"
    r"bedrock/aws4_request, SignedHeaders=([a-z0-9;-]+), Signature=[0-9a-f]{64}"
)


@pytest.fixture
def no_aws_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_BEARER_TOKEN_BEDROCK",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


async def test_signs_with_the_environments_credentials(
    no_aws_config: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTSIGNING0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-never-logged")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "test-session-token")
    signing = AwsSigning()
    await signing.prepare({None})
    headers = {"Content-Type": "application/json", "x-mock-output-tokens": "3"}
    signing.sign("POST", URL, headers, BODY, region="eu-west-1")
    found = _AUTH.fullmatch(headers["Authorization"])
    assert found is not None
    assert found[1] == headers["X-Amz-Date"][:8]
    assert found[2] == "content-type;host;x-amz-date;x-amz-security-token;x-mock-output-tokens"
    assert headers["X-Amz-Security-Token"] == "test-session-token"
    assert "test-secret-never-logged" not in repr(headers)
    # The same request signed by botocore directly, at the same instant, signs the same.
    unsigned = {name: value for name, value in headers.items() if name != "Authorization"}
    request = AWSRequest(method="POST", url=URL, data=BODY, headers=unsigned)
    request.context["timestamp"] = headers["X-Amz-Date"]
    credentials = Credentials(
        "AKIDTESTSIGNING0001", "test-secret-never-logged", "test-session-token"
    )
    expected = SigV4Auth(credentials, "bedrock", "eu-west-1")
    string_to_sign = expected.string_to_sign(request, expected.canonical_request(request))
    assert headers["Authorization"].endswith(expected.signature(string_to_sign, request))


async def test_no_credentials_refuse_and_are_retried_later(
    no_aws_config: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(aws_signing, "RETRY_MISSING_S", 0.2)
    signing = AwsSigning()
    await signing.prepare({None})
    assert "no AWS credentials found in the default chain" in caplog.text
    with pytest.raises(AwsCredentialsMissing):
        signing.sign("POST", URL, {}, BODY, region="eu-west-1")
    await asyncio.sleep(0.3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTSIGNING0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "later")
    with pytest.raises(AwsCredentialsMissing):  # starts the resolution, in a thread
        signing.sign("POST", URL, {}, BODY, region="eu-west-1")
    for _ in range(100):
        await asyncio.sleep(0.02)
        try:
            headers: dict[str, str] = {}
            signing.sign("POST", URL, headers, BODY, region="eu-west-1")
            break
        except AwsCredentialsMissing:
            continue
    assert _AUTH.fullmatch(headers["Authorization"])


async def test_a_due_refresh_runs_in_a_thread_while_signing_goes_on(
    no_aws_config: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop_thread = threading.get_ident()
    refreshed_in: list[int] = []
    generation = iter(range(1, 100))

    def refresh() -> dict[str, str]:
        refreshed_in.append(threading.get_ident())
        time.sleep(0.2)  # a slow STS call: must not stall the loop
        # 12 minutes left: inside botocore's advisory window (15), outside the mandatory (10).
        expiry = datetime.now(UTC) + timedelta(minutes=12)
        return {
            "access_key": f"AKIDTESTSIGNING000{next(generation)}",
            "secret_key": "s",
            "token": "t",
            "expiry_time": expiry.isoformat(),
        }

    credentials = RefreshableCredentials.create_from_metadata(
        refresh(), refresh_using=refresh, method="sts-assume-role"
    )
    refreshed_in.clear()
    monkeypatch.setattr(
        aws_signing, "_resolve", lambda profile: (credentials, credentials.get_frozen_credentials())
    )
    signing = AwsSigning()
    await signing.prepare({None})
    refreshed_in.clear()
    started = time.perf_counter()
    headers: dict[str, str] = {}
    signing.sign("POST", URL, headers, BODY, region="eu-west-1")
    assert time.perf_counter() - started < 0.1  # signed with the current credentials at once
    first = headers["Authorization"].split("/")[0]
    await asyncio.sleep(0.4)
    assert refreshed_in and loop_thread not in refreshed_in
    headers = {}
    signing.sign("POST", URL, headers, BODY, region="eu-west-1")
    assert headers["Authorization"].split("/")[0] != first  # the refreshed credentials
