"""Bedrock model ids (plain, inference profiles, ARNs, URL-encoded) resolve to catalog models."""

from __future__ import annotations

import pytest
from botocore.utils import percent_encode
from hypothesis import given
from hypothesis import strategies as st

from gateway.providers.bedrock_models import catalog_model, model_id_from_path
from pricing.catalog import Catalog


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("eu.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("apac.anthropic.claude-3-7-sonnet-20250219-v1:0", "claude-3-7-sonnet"),
        ("global.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
        ("anthropic.claude-opus-4-1-20250805-v1:0", "claude-opus-4-1"),
        ("anthropic.claude-3-haiku-20240307-v1:0:200k", "claude-3-haiku"),
        ("amazon.nova-pro-v1:0", "nova-pro"),
        ("us.amazon.nova-premier-v1:0", "nova-premier"),
        ("amazon.nova-micro-v1", "nova-micro"),
        ("meta.llama3-3-70b-instruct-v1:0", "llama3-3-70b-instruct"),
        ("us.meta.llama4-maverick-17b-instruct-v1:0", "llama4-maverick-17b-instruct"),
        ("openai.gpt-oss-120b-1:0", "gpt-oss-120b"),
        ("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0", "nova-lite"),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "claude-sonnet-4-5",
        ),
        ("Anthropic.Claude-Sonnet-4-5-20250929-V1:0", "claude-sonnet-4-5"),
    ],
)
def test_model_ids_resolve_to_catalog_names(model_id: str, expected: str) -> None:
    assert catalog_model(model_id) == expected


def test_resolved_names_are_priced_by_the_catalog() -> None:
    catalog = Catalog.load_default()
    for model_id in (
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "amazon.nova-pro-v1:0",
        "amazon.nova-lite-v1:0",
        "amazon.nova-micro-v1:0",
        "us.amazon.nova-premier-v1:0",
        "meta.llama3-1-8b-instruct-v1:0",
        "meta.llama4-scout-17b-instruct-v1:0",
    ):
        assert catalog.lookup(catalog_model(model_id)) is not None, model_id


def test_ids_that_are_not_foundation_models_stay_as_they_are() -> None:
    # An application inference profile's opaque id: the pricing refuses it (unknown model).
    assert catalog_model("a1b2c3d4e5") == "a1b2c3d4e5"
    assert (
        catalog_model(
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5"
        )
        == "a1b2c3d4e5"
    )
    assert catalog_model("") == ""


def test_path_segments_are_percent_decoded_as_boto3_encodes_them() -> None:
    model_id = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert percent_encode(model_id) == "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0"
    assert model_id_from_path(percent_encode(model_id)) == model_id
    arn = "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0"
    assert model_id_from_path(percent_encode(arn)) == arn
    assert model_id_from_path("amazon.nova-pro-v1:0") == "amazon.nova-pro-v1:0"


@given(st.text(max_size=80))
def test_resolution_never_raises(model_id: str) -> None:
    assert isinstance(catalog_model(model_id), str)
    assert isinstance(model_id_from_path(model_id), str)
