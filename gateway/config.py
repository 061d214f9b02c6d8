"""config.yaml, validated: the one settings object every part of Tollbooth is built from.

`load_settings(path)` reads the YAML, overlays the environment (`TOLLBOOTH_DATABASE_URL`,
`TOLLBOOTH_REDIS_URL` win over `storage.*`), and validates with pydantic (`extra="forbid"`).
Every problem becomes one `ConfigError` whose message names the YAML path, the bad value and
what to do, e.g. ``tiers.free.limits.requests_per_minute: got 'ten'; expected a whole number``.
Nothing here does network I/O; provider keys are read from the environment only when a
request is forwarded (`ProviderConfig.api_key`), so they never sit in the settings dump.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

DATABASE_URL_ENV = "TOLLBOOTH_DATABASE_URL"
REDIS_URL_ENV = "TOLLBOOTH_REDIS_URL"


class ConfigError(Exception):
    """config.yaml is missing, unreadable or invalid; the message says where and what to do."""


def _exact_decimal(value: Any) -> Any:
    # Money is written as strings ("5.00") so YAML never turns it into a float. A bare int is
    # exact too; a float is refused because its decimal value is already rounded.
    if isinstance(value, bool):
        raise ValueError("expected a decimal amount written as a string, e.g. \"5.00\"")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        raise ValueError(
            f"got the float {value!r}; write money as a quoted string, e.g. \"{value}\""
        )
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    return value


ExactDecimal = Annotated[Decimal, BeforeValidator(_exact_decimal)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_mb: int = Field(default=32, ge=1)
    workers: int = Field(default=1, ge=1)
    upstream_connect_timeout_s: float = Field(default=10.0, gt=0)
    upstream_read_timeout_s: float = Field(default=600.0, gt=0)
    # After a client disconnects mid-stream, keep reading upstream this long for its usage.
    disconnect_drain_s: float = Field(default=30.0, ge=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)


class StorageConfig(_Model):
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: str = ".tollbooth"
    writer_batch_size: int = Field(default=500, ge=1)
    writer_flush_interval_s: float = Field(default=0.2, gt=0)
    writer_queue_max: int = Field(default=100_000, ge=1)

    @model_validator(mode="after")
    def _check_urls(self) -> StorageConfig:
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("database_url must be a postgresql:// DSN")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return self


class ProviderConfig(_Model):
    kind: Literal["openai", "anthropic"]
    base_url: str
    api_key_env: str | None = None

    @model_validator(mode="after")
    def _check_base_url(self) -> ProviderConfig:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        return self

    def api_key(self) -> str | None:
        """The provider key, read from the environment at call time (never stored)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ModelRoute(_Model):
    match: str
    provider: str

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.match)


class TierLimits(_Model):
    """-1 or omitted means unlimited (stored as None)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    requests_per_month: int | None = None
    tokens_per_month: int | None = None
    spend_per_month_usd: ExactDecimal | None = None

    @model_validator(mode="before")
    @classmethod
    def _minus_one_is_unlimited(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: (None if v in (-1, "-1") else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _non_negative(self) -> TierLimits:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be -1 (unlimited) or >= 0, got {value}")
        return self


class TierConfig(_Model):
    limits: TierLimits = TierLimits()
    shadow: bool = False


class PricingConfig(_Model):
    markup_percent: ExactDecimal = Decimal("0")
    per_request_usd: ExactDecimal = Decimal("0")
    unknown_model: Literal["reject", "allow_unpriced"] = "reject"


class QuotasConfig(_Model):
    on_redis_error: Literal["allow", "reject"] = "allow"
    # Output tokens reserved when a request names no max_tokens.
    default_max_output_tokens: int = Field(default=4096, ge=0)
    # A reservation not settled within this many seconds is released.
    reservation_ttl_s: int = Field(default=900, ge=1)


class Settings(_Model):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    providers: dict[str, ProviderConfig]
    models: list[ModelRoute] = []
    tiers: dict[str, TierConfig] = {"default": TierConfig()}
    pricing: PricingConfig = PricingConfig()
    quotas: QuotasConfig = QuotasConfig()
    # Not part of the YAML: where the file was read from and the hash of its bytes.
    source_path: str | None = Field(default=None, exclude=True)
    source_hash: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        if not self.providers:
            raise ValueError("at least one provider is required")
        for i, route in enumerate(self.models):
            if route.provider not in self.providers:
                known = ", ".join(sorted(self.providers))
                raise ValueError(
                    f"models[{i}].provider: {route.provider!r} is not a provider "
                    f"(known: {known})"
                )
        if not self.tiers:
            raise ValueError("at least one tier is required")
        return self

    def provider_for(self, model: str, kind: str) -> str | None:
        """The provider that serves `model` on an API of `kind` ("openai" or "anthropic").

        The first `models:` rule that matches and names a provider of that kind wins; an
        unmatched model goes to the first provider of that kind.
        """
        for route in self.models:
            if route.matches(model) and self.providers[route.provider].kind == kind:
                return route.provider
        for name, provider in self.providers.items():
            if provider.kind == kind:
                return name
        return None

    def data_dir(self) -> Path:
        base = Path(self.source_path).parent if self.source_path else Path.cwd()
        return (base / self.storage.data_dir).resolve()


def _format_errors(exc: ValidationError, path: str) -> str:
    lines = [f"{path} is invalid:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        message = err["msg"].removeprefix("Value error, ")
        hint = ""
        if err["type"] == "extra_forbidden":
            hint = "; remove it or check its spelling against the README's config reference"
        elif err["type"] == "missing":
            hint = "; add it"
        lines.append(f"  {where}: {message}{shown}{hint}")
    return "\n".join(lines)


def parse_settings(raw: bytes, source: str = "config.yaml") -> Settings:
    """Validate YAML bytes into Settings, with the environment overlaid."""
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    storage = dict(data.get("storage") or {})
    if os.environ.get(DATABASE_URL_ENV):
        storage["database_url"] = os.environ[DATABASE_URL_ENV]
    if os.environ.get(REDIS_URL_ENV):
        storage["redis_url"] = os.environ[REDIS_URL_ENV]
    data["storage"] = storage
    data["source_path"] = source
    data["source_hash"] = hashlib.sha256(raw).hexdigest()[:16]
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_settings(path: str | Path = "config.yaml") -> Settings:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: no such file; pass --config PATH or create it from the README's example"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot be read ({exc.strerror})") from None
    return parse_settings(raw, str(p.resolve()))
