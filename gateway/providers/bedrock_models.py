"""Bedrock model ids, as they arrive in the path of a Converse call, to catalog model names.

Bedrock names a model `[REGION.]VENDOR.NAME[-DATE]-vN[:M]`: an optional cross-region
inference-profile prefix (`us.`, `eu.`, `apac.`, `global.`, and the smaller geographies
`us-gov.`, `jp.`, `au.`, `ca.`), the vendor (`anthropic.`, `amazon.`, `meta.`...), the model,
an optional date and the version (`-v1:0`, `-v2:0:200k` for a context-window variant).
The catalog names the model alone, so `catalog_model` drops the rest:

    anthropic.claude-sonnet-4-5-20250929-v1:0     -> claude-sonnet-4-5
    us.anthropic.claude-haiku-4-5-20251001-v1:0  -> claude-haiku-4-5
    amazon.nova-pro-v1:0                         -> nova-pro
    meta.llama3-3-70b-instruct-v1:0              -> llama3-3-70b-instruct

An ARN (`arn:aws:bedrock:REGION:ACCOUNT:inference-profile/us.anthropic...` or
`...::foundation-model/amazon.nova-lite-v1:0`) resolves by its last path segment. An id
that follows none of this (an application inference profile's opaque id, a provisioned
model ARN) is returned as it came, minus the ARN part: the pricing then does not know it and
`pricing.unknown_model` decides. Pure string work; never raises.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

REGION_PREFIXES = ("us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.")
# `-v1`, `-v1:0`, `-v2:0:200k`; also `-1:0` (openai.gpt-oss-120b-1:0 has no `v`).
_VERSION = re.compile(r"(?:-v\d+(?::[0-9a-z]+)*|-\d+(?::[0-9a-z]+)+)$")
_DATE = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2})$")
_VENDOR = re.compile(r"^[a-z0-9-]+\.")


def model_id_from_path(segment: str) -> str:
    """The model id of a `/model/{MODEL_ID}/...` path segment. boto3 percent-encodes it
    (`:` as `%3A`, an ARN's `/` as `%2F`); a client that did not is read as sent."""
    return unquote(segment, errors="replace")


def catalog_model(model_id: str) -> str:
    """The catalog model a Bedrock model id (or inference profile, or ARN) prices as."""
    name = model_id.strip()
    if name.startswith("arn:"):
        name = name.rsplit("/", 1)[-1]
    lowered = name.lower()
    for prefix in REGION_PREFIXES:
        if lowered.startswith(prefix) and _VENDOR.match(lowered[len(prefix) :]):
            lowered = lowered[len(prefix) :]
            break
    vendor = _VENDOR.match(lowered)
    if vendor is None:
        return name  # not a Bedrock foundation-model id: left for the pricing to refuse
    lowered = lowered[vendor.end() :]
    lowered = _VERSION.sub("", lowered)
    lowered = _DATE.sub("", lowered)
    return lowered or name
