"""A config mistake is refused with a message that names where it is and what was written:
each line of a ConfigError reads `yaml.path: what is wrong`, with the refused value in it,
whichever check found it (a field's type, an unknown key, a whole section's rule). A value
that may hold a secret (a database or Redis URL) is named by its path only."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, load_settings, parse_settings

VALID = """
providers:
  openai: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
tiers:
  free: {limits: {requests_per_minute: 20}}
"""


def refusal(config: str) -> str:
    """The one problem line of the ConfigError `config` raises, without its indent."""
    with pytest.raises(ConfigError) as raised:
        parse_settings(config.encode(), "config.yaml")
    head, *problems = str(raised.value).splitlines()
    assert head == "config.yaml is invalid:"
    assert len(problems) == 1, problems
    return problems[0].strip()


def test_the_valid_config_loads() -> None:
    assert parse_settings(VALID.encode()).tiers["free"].limits.requests_per_minute == 20


@pytest.mark.parametrize(
    ("replace", "by", "path", "value"),
    [
        # a limit below -1 (-1 is "unlimited")
        (
            "requests_per_minute: 20",
            "requests_per_minute: -5",
            "tiers.free.limits.requests_per_minute",
            "-5",
        ),
        # the wrong type
        (
            "requests_per_minute: 20",
            "requests_per_minute: ten",
            "tiers.free.limits.requests_per_minute",
            "'ten'",
        ),
        ("{limits:", "{shadow: maybe, limits:", "tiers.free.shadow", "'maybe'"),
        # an unknown key, in a section and at the top
        (
            "requests_per_minute: 20",
            "requests_per_day: 20",
            "tiers.free.limits.requests_per_day",
            "20",
        ),
        ("tiers:", "tierz: 3\ntiers:", "tierz", "3"),
        # a provider of no known kind, or with a URL that is not one
        ("kind: openai", "kind: openia", "providers.openai.kind", "'openia'"),
        (
            "https://api.openai.com/v1",
            "api.openai.com",
            "providers.openai.base_url",
            "'api.openai.com'",
        ),
        (
            "api_key_env: OPENAI_API_KEY",
            "api_key_env: OPENAI_API_KEY, deployments: {prod: gpt-4o}",
            "providers.openai.deployments",
            "openai",
        ),
    ],
)
def test_a_bad_value_is_named_by_its_yaml_path_and_value(
    replace: str, by: str, path: str, value: str
) -> None:
    assert replace in VALID
    line = refusal(VALID.replace(replace, by, 1))
    assert line.startswith(f"{path}: "), line
    assert value in line.removeprefix(f"{path}: "), line


@pytest.mark.parametrize(
    ("pricing", "path", "value"),
    [
        ({"markup_percent": 12.5}, "pricing.markup_percent", "12.5"),  # a float: not exact
        ({"per_request_usd": "cheap"}, "pricing.per_request_usd", "'cheap'"),
        ({"per_request_usd": "-0.01"}, "pricing.per_request_usd", "'-0.01'"),
        ({"markup_percent": "-101"}, "pricing.markup_percent", "'-101'"),
        (
            {"models": {"gpt-4o": {"input_per_mtok": 2.5}}},
            "pricing.models.gpt-4o.input_per_mtok",
            "2.5",
        ),
        (
            {"models": {"gpt-4.1": {"output_per_mtok": "0.00001"}}},
            "pricing.models.gpt-4.1.output_per_mtok",
            "'0.00001'",
        ),
        (
            {"customers": {"acme": {"per_request_usd": "-1"}}},
            "pricing.customers.acme.per_request_usd",
            "'-1'",
        ),
    ],
)
def test_a_bad_price_is_named_by_its_yaml_path_and_value(
    pricing: dict[str, object], path: str, value: str
) -> None:
    line = refusal(VALID + yaml.safe_dump({"pricing": pricing}))
    assert line.startswith(f"{path}: "), line
    assert value in line.removeprefix(f"{path}: "), line


def test_a_money_float_in_a_tier_limit_says_how_to_write_it() -> None:
    line = refusal(VALID.replace("requests_per_minute: 20", "spend_per_month_usd: 5.5"))
    assert line.startswith("tiers.free.limits.spend_per_month_usd: got the float 5.5"), line
    assert 'write money as a quoted string, e.g. "5.5"' in line


def test_a_route_to_an_unknown_provider_names_the_route_and_the_provider() -> None:
    line = refusal(VALID + "models: [{match: 'gpt-*', provider: nope}]\n")
    assert line.startswith("models[0].provider: 'nope' is not a provider"), line
    assert "(known: openai)" in line


def test_a_bedrock_provider_without_its_region_names_the_region() -> None:
    line = refusal(
        VALID.replace("kind: openai, base_url: https://api.openai.com/v1, ", "kind: bedrock, ")
    )
    assert line.startswith("providers.openai.region: a bedrock provider needs its AWS region"), line


@pytest.mark.parametrize(
    ("storage", "path"),
    [
        ({"database_url": "mysql://app:hunter2@db.internal/usage"}, "storage.database_url"),
        ({"redis_url": "redis-x://:hunter2@cache.internal:6379/0"}, "storage.redis_url"),
    ],
)
def test_a_bad_url_that_may_hold_a_password_is_named_but_not_repeated(
    storage: dict[str, str], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOLLBOOTH_DATABASE_URL", raising=False)
    monkeypatch.delenv("TOLLBOOTH_REDIS_URL", raising=False)
    line = refusal(VALID + yaml.safe_dump({"storage": storage}))
    assert line.startswith(f"{path}: must "), line
    assert "hunter2" not in line


def test_every_problem_in_one_section_gets_its_own_line() -> None:
    config = VALID.replace(
        "requests_per_minute: 20", "requests_per_minute: ten, tokens_per_minute: many"
    )
    with pytest.raises(ConfigError) as raised:
        parse_settings(config.encode(), "config.yaml")
    problems = [line.strip() for line in str(raised.value).splitlines()[1:]]
    assert [p.split(": ", 1)[0] for p in problems] == [
        "tiers.free.limits.requests_per_minute",
        "tiers.free.limits.tokens_per_minute",
    ]
    assert "'ten'" in problems[0] and "'many'" in problems[1]


def test_a_file_is_named_by_the_path_it_was_read_from(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    path.write_text(VALID.replace("requests_per_minute: 20", "requests_per_minute: -2"))
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert str(raised.value).splitlines() == [
        f"{path.resolve()} is invalid:",
        "  tiers.free.limits.requests_per_minute: must be -1 (unlimited) or >= 0, got -2",
    ]
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'missing.yaml'}: no such file"):
        load_settings(tmp_path / "missing.yaml")
