"""The one route table: exact paths by dict lookup, templated paths (`{name}` within a
segment, `:verb` suffixes) after, path parameters decoded and never `.`/`..`, query parsed;
aiohttp's spelling of a template; every kind's config keys validated with the YAML path."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_settings
from gateway.providers.defaults import fill_path
from gateway.providers.registry import FORWARDED, TEMPLATED, aiohttp_path, match, match_path


def test_exact_paths_need_no_template() -> None:
    assert "/v1/chat/completions" in FORWARDED
    found = match("/v1/chat/completions")
    assert found is not None and found[0][1].name == "chat.completions"
    assert not found[1].params and not found[1].query
    assert all("{" in template.path for template in TEMPLATED)


def test_templates_match_within_a_segment_and_decode() -> None:
    found = match("/v1beta/models/gemini%2D2.5-flash:countTokens?alt=sse&x=1&x=2")
    assert found is not None
    (api, endpoint), call = found
    assert (api.kind, endpoint.name) == ("gemini", "countTokens")
    assert call.params == {"model": "gemini-2.5-flash"} and call.query == {"alt": "sse", "x": "2"}
    assert match_path("/v1beta/models/a/b:generateContent") is None  # one segment only
    assert match_path("/v1beta/models/x:noSuchVerb") is None


@pytest.mark.parametrize("segment", ["..", ".", "%2E%2E", "%2e"])
def test_dot_segments_never_match(segment: str) -> None:
    assert match_path(f"/openai/deployments/{segment}/chat/completions") is None


def test_parameters_go_back_percent_encoded() -> None:
    path = fill_path("/model/{model_id}/converse", {"model_id": "a/b c:d"})
    assert path == "/model/a%2Fb%20c:d/converse"


def test_aiohttp_spelling_keeps_each_parameter_in_one_segment() -> None:
    assert (
        aiohttp_path("/v1/models/{model}:embedContent") == "/v1/models/{model:[^/]+}:embedContent"
    )


def settings(provider: str) -> None:
    parse_settings(f"providers:\n  p:\n{provider}".encode(), "cfg.yaml")


def test_kind_keys_are_validated_naming_the_yaml_path() -> None:
    settings(
        "    kind: azure_openai\n    base_url: https://r.openai.azure.com\n"
        "    api_version: '2024-10-21'\n    deployments: {prod: gpt-4o}\n"
    )
    settings("    kind: bedrock\n    region: us-east-1\n")
    with pytest.raises(
        ConfigError,
        match=r"providers\.p\.deployments: only a provider of kind "
        r"azure_openai",
    ):
        settings("    kind: gemini\n    base_url: https://g\n    deployments: {a: b}\n")
    with pytest.raises(ConfigError, match=r"providers\.p\.region: "):
        settings("    kind: bedrock\n")
    with pytest.raises(ConfigError, match=r"providers\.p\.api_key_env: "):
        settings("    kind: bedrock\n    region: us-east-1\n    api_key_env: X\n")
    with pytest.raises(ConfigError, match=r"providers\.p\.kind"):
        settings("    kind: vertex\n    base_url: https://g\n")


def test_azure_deployment_routes_to_the_entry_that_maps_it() -> None:
    raw = (
        b"providers:\n"
        b"  a: {kind: azure_openai, base_url: 'https://a', deployments: {x: gpt-4o}}\n"
        b"  b: {kind: azure_openai, base_url: 'https://b', deployments: {y: gpt-4o}}\n"
    )
    config = parse_settings(raw, "cfg.yaml")
    assert config.provider_for("y", "azure_openai") == "b"
    assert config.provider_for("z", "azure_openai") == "a"  # then refused: not mapped
