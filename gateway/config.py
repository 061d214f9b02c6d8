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
import re
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pricing.overrides import check_override
from pricing.plans import Dimension, OveragePrice, Plan, PriceTier
from pricing.rules import RateOverride
from storage.quota.redis_connect import REDIS_URL_SCHEMES
from storage.reports.usage_windows import DIMENSIONS

DATABASE_URL_ENV = "TOLLBOOTH_DATABASE_URL"
REDIS_URL_ENV = "TOLLBOOTH_REDIS_URL"


class ConfigError(Exception):
    """config.yaml is missing, unreadable or invalid; the message says where and what to do."""


def _exact_decimal(value: Any) -> Any:
    # Money is written as strings ("5.00") so YAML never turns it into a float. A bare int is
    # exact too; a float is refused because its decimal value is already rounded.
    if isinstance(value, bool):
        raise ValueError('expected a decimal amount written as a string, e.g. "5.00"')
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        raise ValueError(f'got the float {value!r}; write money as a quoted string, e.g. "{value}"')
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    return value


ExactDecimal = Annotated[Decimal, BeforeValidator(_exact_decimal)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A page's origin as browsers send it: scheme://host[:port], lowercase, no path (gateway.cors).
ORIGIN_PATTERN = re.compile(r"[a-z][a-z0-9+.-]*://[a-z0-9._~%!$&'()*+;=:\[\]-]+", re.ASCII)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_mb: int = Field(default=32, ge=1)
    workers: int = Field(default=1, ge=1)
    upstream_connect_timeout_s: float = Field(default=10.0, gt=0)
    upstream_read_timeout_s: float = Field(default=600.0, gt=0)
    # After a client disconnects mid-stream, keep reading upstream this long for its usage.
    disconnect_drain_s: float = Field(default=30.0, ge=0)
    # SIGTERM: not ready at once, new requests served for drain_grace_s, then the listener
    # closes; what runs at drain_timeout_s (from the signal, the grace included) is cut.
    drain_grace_s: float = Field(default=5.0, ge=0)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    # The former name of drain_timeout_s, still accepted (used when drain_timeout_s is not set).
    shutdown_grace_s: float | None = Field(default=None, ge=0)
    client_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "The longest a client may take to send a request. Headers: counted from the "
            "connection's opening or its previous response (also how long an idle keep-alive "
            "connection is kept); a client still sending them is disconnected. Body: counted "
            "from the end of the headers; a body not complete by then is answered 408 and the "
            "connection closed. Responses are not bounded by it."
        ),
    )
    # TLS termination by the gateway (gateway.tls): a PEM certificate chain and its key.
    # Both or neither; relative paths are read from the config file's directory.
    tls_cert: str | None = None
    tls_key: str | None = None
    cors_origins: tuple[str, ...] = Field(
        default=(),
        description=(
            "Origins whose pages may call the gateway from a browser (CORS), each "
            "scheme://host[:port] as the browser sends it, or '*' for any origin. Empty: no "
            "CORS headers at all. Applies on reload."
        ),
    )

    @model_validator(mode="after")
    def _tls_both_or_neither(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = (
                ("tls_cert", "tls_key") if self.tls_key is None else ("tls_key", "tls_cert")
            )
            raise ValueError(
                f"{given} is set but {missing} is not; TLS needs both (a PEM "
                "certificate chain and its private key), or neither"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _shutdown_grace_is_drain_timeout(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("shutdown_grace_s") is not None:
            data = {**data}
            data.setdefault("drain_timeout_s", data["shutdown_grace_s"])
        return data

    @model_validator(mode="after")
    def _grace_within_timeout(self) -> ServerConfig:
        # The default grace shrinks to fit a short timeout; one set explicitly must fit.
        if "drain_grace_s" in self.model_fields_set and self.drain_grace_s > self.drain_timeout_s:
            raise ValueError(
                f"drain_grace_s ({self.drain_grace_s:g}) must not exceed drain_timeout_s "
                f"({self.drain_timeout_s:g}): the timeout counts from SIGTERM, the grace "
                "included; raise drain_timeout_s or lower drain_grace_s"
            )
        return self

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        checked: list[str] = []
        for origin in origins:
            lowered = origin.strip().lower()
            if lowered.endswith("/") and lowered.count("/") == 3:
                lowered = lowered[:-1]  # "https://app.example.com/": browsers send no slash
            if lowered != "*" and not ORIGIN_PATTERN.fullmatch(lowered):
                raise ValueError(
                    f"{origin!r} is not an origin; write scheme://host[:port] with no path "
                    "(e.g. 'https://app.example.com' or 'http://localhost:5173'), or '*' for "
                    "any origin"
                )
            checked.append(lowered)
        return tuple(checked)


class StorageConfig(_Model):
    """`journal_*`: the usage journal (storage.usage.journal); `writer_*`: the usage writer.
    `writer_queue_max` bounds the events kept in memory when the journal's disk refuses a
    write; `journal_max_mb` is the journal's disk budget, past which `journal_full_policy`
    applies: `serve` keeps serving and alerts, `refuse` answers 503 to new requests."""

    database_url: str | None = None
    # database_url is a PgBouncer in transaction pooling mode: no named prepared statements.
    pgbouncer: bool = False
    redis_url: str | None = None  # storage.quota.redis_connect: one node, Cluster or Sentinel
    data_dir: str = ".tollbooth"
    writer_batch_size: int = Field(default=5000, ge=1)
    writer_flush_interval_s: float = Field(default=0.2, gt=0)
    writer_queue_max: int = Field(default=100_000, ge=1)
    journal_dir: str | None = None  # default <data_dir>/journal; relative paths are in data_dir
    journal_fsync_interval_s: float = Field(default=0.05, gt=0)
    journal_segment_mb: int = Field(default=64, ge=1)
    journal_max_mb: int = Field(default=4096, ge=1)
    journal_full_policy: Literal["serve", "refuse"] = "serve"

    def journal_path(self, data_dir: Path) -> Path:
        """Where the usage journal lives, given the resolved data dir."""
        return (data_dir / (self.journal_dir or "journal")).resolve()

    @model_validator(mode="after")
    def _check_urls(self) -> StorageConfig:
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            # The URL is not repeated: it may hold a password.
            raise ValueError("database_url: must be a postgresql:// DSN")
        if self.redis_url and not self.redis_url.startswith(REDIS_URL_SCHEMES):
            raise ValueError("redis_url: must start with " + ", ".join(REDIS_URL_SCHEMES))
        return self


ProviderKind = Literal["openai", "anthropic", "azure_openai", "gemini", "bedrock"]
# Keys only some kinds take, and the kinds that take them.
_KIND_KEYS: dict[str, frozenset[str]] = {
    "api_version": frozenset({"azure_openai"}),
    "deployments": frozenset({"azure_openai"}),
    "region": frozenset({"bedrock"}),
    "endpoint_url": frozenset({"bedrock"}),
}
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")


class ProviderConfig(_Model):
    """One `providers:` entry. `base_url` is required except for `bedrock`, whose upstream is
    `endpoint_url` or `https://bedrock-runtime.{region}.amazonaws.com` (and which signs with
    AWS credentials, so it takes no `api_key_env`). `azure_openai` takes `api_version` (sent
    upstream in place of the client's) and `deployments` (deployment name -> the catalog model
    it is priced as)."""

    kind: ProviderKind
    base_url: str
    api_key_env: str | None = None
    api_version: str | None = None
    deployments: dict[str, str] = {}
    region: str | None = None
    endpoint_url: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bedrock_base_url(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("kind") != "bedrock":
            return data
        if "base_url" in data:
            raise ValueError(
                "base_url: a bedrock provider takes endpoint_url (or region) "
                "instead; remove base_url"
            )
        region, endpoint = data.get("region"), data.get("endpoint_url")
        if not isinstance(region, str) or not _REGION.fullmatch(region):
            raise ValueError(
                f"region: a bedrock provider needs its AWS region, e.g. us-east-1 (got {region!r})"
            )
        return {**data, "base_url": endpoint or f"https://bedrock-runtime.{region}.amazonaws.com"}

    @model_validator(mode="after")
    def _check_base_url(self) -> ProviderConfig:
        if not self.base_url.startswith(("http://", "https://")):
            where = "endpoint_url" if self.kind == "bedrock" else "base_url"
            raise ValueError(f"{where}: must start with http:// or https://, got {self.base_url!r}")
        for key, kinds in _KIND_KEYS.items():
            if key in self.model_fields_set and self.kind not in kinds:
                raise ValueError(
                    f"{key}: only a provider of kind {' or '.join(sorted(kinds))} "
                    f"takes it (this one is {self.kind}); remove it"
                )
        if self.kind == "bedrock" and self.api_key_env is not None:
            raise ValueError(
                "api_key_env: a bedrock provider signs with the AWS credentials "
                "of the environment (env, profile, role); remove it"
            )
        for name, model in self.deployments.items():
            if not name.strip() or "/" in name or not model.strip():
                raise ValueError(
                    f"deployments.{name}: a deployment name (no '/') maps to "
                    f"the catalog model it is priced as, got {model!r}"
                )
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
                raise ValueError(f"{name}: must be -1 (unlimited) or >= 0, got {value}")
        return self


class RatesConfig(_Model):
    """`tiers.<name>.pricing` and `pricing.customers.<id>`: rates that replace the global ones.

    Each rate left out falls back to the next level: customer > tier > global `pricing:`.
    """

    markup_percent: ExactDecimal | None = Field(default=None, ge=-100)
    per_request_usd: ExactDecimal | None = Field(default=None, ge=0)
    per_compute_minute_usd: ExactDecimal | None = Field(default=None, ge=0)

    def to_override(self) -> RateOverride:
        return RateOverride(
            markup_percent=self.markup_percent,
            per_request_usd=self.per_request_usd,
            per_compute_minute_usd=self.per_compute_minute_usd,
        )


class PriceTierConfig(_Model):
    """One tier of an overage price; `up_to` omitted (or null) on the last one."""

    up_to: ExactDecimal | None = Field(default=None, gt=0)
    unit_price_usd: ExactDecimal = Field(ge=0)


class OverageConfig(_Model):
    """`tiers.<name>.plan.overage.<dimension>`: a flat `unit_price_usd` (a bare "0.50" is
    short for it) or `tiers` applied `graduated` or `volume`; prices are per `per_units`."""

    unit_price_usd: ExactDecimal | None = Field(default=None, ge=0)
    tiers: list[PriceTierConfig] | None = None
    mode: Literal["graduated", "volume"] = "graduated"
    per_units: int = Field(default=1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str | int | float) and not isinstance(data, bool):
            return {"unit_price_usd": data}
        return data

    @model_validator(mode="after")
    def _one_price(self) -> OverageConfig:
        if (self.unit_price_usd is None) == (self.tiers is None):
            raise ValueError("give either unit_price_usd or tiers (a list), not both or neither")
        self.to_overage().check(None)
        return self

    def to_overage(self) -> OveragePrice:
        if self.tiers is None:
            return OveragePrice.flat(self.unit_price_usd or Decimal(0), self.per_units)
        tiers = tuple(PriceTier(t.up_to, t.unit_price_usd) for t in self.tiers)
        return OveragePrice(tiers, self.mode, self.per_units)


class PlanConfig(_Model):
    """`tiers.<name>.plan`: a monthly base fee, included units and overage prices
    (docs/metering-and-pricing.md)."""

    base_price_usd: ExactDecimal = Field(default=Decimal("0"), ge=0)
    included: dict[Dimension, ExactDecimal | None] = {}  # -1 = unlimited (None)
    overage: dict[Dimension, OverageConfig] = {}

    @field_validator("included", mode="before")
    @classmethod
    def _minus_one_is_unlimited(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: (None if v in (-1, "-1") else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _valid_plan(self) -> PlanConfig:
        self.to_plan("plan")
        return self

    def to_plan(self, name: str) -> Plan:
        return Plan(
            name=name,
            base_price_usd=self.base_price_usd,
            included={str(d): units for d, units in self.included.items()},
            overage={d: o.to_overage() for d, o in self.overage.items()},
        )


class TierConfig(_Model):
    limits: TierLimits = TierLimits()
    shadow: bool = False
    pricing: RatesConfig | None = None  # this tier's rates (override `pricing:`)
    plan: PlanConfig | None = None  # base fee, included units, overage (invoices)
    alert_thresholds_percent: list[int] | None = None  # overrides alerts.thresholds_percent


class PricingConfig(_Model):
    """`pricing:` — global rates, model price overrides and per-customer rates
    (docs/metering-and-pricing.md)."""

    markup_percent: ExactDecimal = Field(default=Decimal("0"), ge=-100)
    per_request_usd: ExactDecimal = Field(default=Decimal("0"), ge=0)
    per_compute_minute_usd: ExactDecimal = Field(default=Decimal("0"), ge=0)
    unknown_model: Literal["reject", "allow_unpriced"] = "reject"
    # model name -> catalog fields to override, or a whole new model (pricing.overrides).
    models: dict[str, dict[str, Any]] = {}
    customers: dict[str, RatesConfig] = {}

    @field_validator("models")
    @classmethod
    def _check_models(cls, models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, entry in models.items():
            check_override(name, entry, where=name)
        return models


class QuotasConfig(_Model):
    on_redis_error: Literal["allow", "reject"] = "allow"
    # Output tokens reserved when a request names no max_tokens.
    default_max_output_tokens: int = Field(default=4096, ge=0)
    # A reservation not settled within this many seconds is released.
    reservation_ttl_s: int = Field(default=900, ge=1)
    # Redis connections per gateway process; a burst waits for a free one.
    redis_max_connections: int = Field(default=64, ge=1)
    # Answer a quota call only once this many replicas have its writes (Redis WAIT), so a
    # Sentinel or Cluster failover cannot lose an admission; 0 = the primary's word suffices.
    redis_wait_replicas: int = Field(default=0, ge=0)


class AlertsConfig(_Model):
    """`alerts:` — usage threshold webhooks (per tier: `tiers.<name>.alert_thresholds_percent`)."""

    webhook_url: str | None = None
    secret_env: str = "TOLLBOOTH_ALERT_SECRET"
    thresholds_percent: list[int] = [80, 100]
    max_attempts: int = Field(default=5, ge=1)
    timeout_s: float = Field(default=5.0, gt=0)


class AdminConfig(_Model):
    # The admin API (/admin/...) is on only while this variable holds a token.
    token_env: str = "TOLLBOOTH_ADMIN_TOKEN"


class PortalConfig(_Model):
    """The customer usage portal (/portal): links, sessions, embedding, sign-in limits."""

    # Who may frame the portal (CSP frame-ancestors), e.g. ["https://app.example.com"];
    # empty: only the gateway's own pages ('self').
    frame_ancestors: list[str] = []
    # The gateway's public URL in printed links (default http://server.host:server.port).
    base_url: str | None = None
    link_ttl_s: int = Field(default=86_400, ge=60, le=90 * 86_400)  # default link lifetime
    session_ttl_s: int = Field(default=43_200, ge=60, le=30 * 86_400)
    login_attempts_per_minute: int = Field(default=10, ge=1)  # per client IP, in Redis
    # Mark session cookies Secure even when the gateway sees plain HTTP: set it when a
    # TLS-terminating proxy is in front (cookies over TLS are always Secure).
    secure_cookies: bool = False

    @field_validator("frame_ancestors")
    @classmethod
    def _check_sources(cls, sources: list[str]) -> list[str]:
        for source in sources:
            if not source or any(c in source for c in ";,'\"") or source.split() != [source]:
                raise ValueError(
                    f"{source!r} is not a CSP source; write an origin such as "
                    "'https://app.example.com' (no quotes, spaces, ';' or ',')"
                )
        return sources


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
    # One line per forwarded request on the `tollbooth.access` logger.
    requests: bool = True


class StripeConfig(_Model):
    """`billing.stripe` (docs/billing.md): the meter-event sync, the billing
    portal and the webhooks.

    Durations (`window`, `settle_delay`) are written "90s", "15m", "1h" or "1d";
    `window_s` and `settle_delay_s` give them in seconds. A window must divide a day, so
    windows line up with UTC days and months. `meters` maps a usage dimension to the Stripe
    meter `event_name` it is sent as; a dimension left out is not sent. Secrets (the API key,
    the webhook signing secret) are read from the environment variables named here, when used.
    """

    api_key_env: str = "STRIPE_API_KEY"
    api_base: str | None = None  # e.g. http://127.0.0.1:12111 for a local fake Stripe
    window: str = "1h"
    # A window is sent once it closed this long ago, so late-written events land before it goes.
    settle_delay: str = "15m"
    meters: dict[str, str] = {
        "input_tokens": "tollbooth_input_tokens",
        "output_tokens": "tollbooth_output_tokens",
        "requests": "tollbooth_requests",
        "price_micros": "tollbooth_price_micros",
    }
    version: int = Field(default=1, ge=1, le=999)  # part of every meter event identifier
    use_v2_stream: bool = False
    max_retries: int = Field(default=5, ge=0, le=20)
    request_timeout_s: float = Field(default=30.0, gt=0)
    webhook_secret_env: str = "STRIPE_WEBHOOK_SECRET"
    webhook_tolerance_s: int = Field(default=300, ge=1)
    portal_return_url: str | None = None
    price_tiers: dict[str, str] = {}  # Stripe price id -> tier
    canceled_tier: str | None = None  # tier after a subscription ends (default: first tier)
    suspend_on_payment_failure: bool = True
    # Imported usage (`tollbooth usage import`, marked metadata.imported) is sent only from
    # this instant on (an ISO time, UTC unless it has an offset); null: never. History that
    # a previous system already billed must not reach Stripe a second time.
    import_since: datetime | None = None

    @field_validator("import_since", mode="before")
    @classmethod
    def _utc_instant(cls, value: Any) -> Any:
        if isinstance(value, date) and not isinstance(value, datetime):  # YAML 2026-01-01
            value = datetime(value.year, value.month, value.day)
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an ISO time, e.g. 2026-01-01T00:00:00Z"
                ) from None
        if isinstance(value, datetime):
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value
        return value

    @staticmethod
    def parse_duration(text: str) -> int:
        """Seconds in "90s", "15m", "1h" or "1d"; ValueError for anything else."""
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        value = text.strip().lower()
        if len(value) < 2 or value[-1] not in units or not value[:-1].isdigit():
            raise ValueError(f'{text!r} is not a duration; write e.g. "30s", "15m", "1h"')
        return int(value[:-1]) * units[value[-1]]

    @property
    def window_s(self) -> int:
        return self.parse_duration(self.window)

    @property
    def settle_delay_s(self) -> int:
        return self.parse_duration(self.settle_delay)

    @model_validator(mode="after")
    def _check_stripe(self) -> StripeConfig:
        window_s = self.window_s
        if not 60 <= window_s <= 86400 or 86400 % window_s or window_s % 60:
            raise ValueError(
                f"window: got {self.window!r}; use whole minutes that divide a day, "
                'e.g. "15m", "1h", "1d"'
            )
        self.parse_duration(self.settle_delay)
        for dimension, event_name in self.meters.items():
            if dimension not in DIMENSIONS:
                raise ValueError(
                    f"meters: unknown dimension {dimension!r}; use {', '.join(DIMENSIONS)}"
                )
            if not event_name or len(event_name) > 100:
                raise ValueError(f"meters.{dimension}: an event_name of 1 to 100 characters")
        for url_field in ("api_base", "portal_return_url"):
            url = getattr(self, url_field)
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"{url_field}: must start with http:// or https://, got {url!r}")
        for price, tier in self.price_tiers.items():
            if not price.startswith("price_") or not tier:
                raise ValueError(f"price_tiers: expected price_...: TIER, got {price!r}: {tier!r}")
        return self


class TaxConfig(_Model):
    """`billing.tax`: the rate invoices add to their subtotal, by default and per customer."""

    rate_percent: ExactDecimal = Field(default=Decimal("0"), ge=0, le=100)
    customers: dict[str, Annotated[ExactDecimal, Field(ge=0, le=100)]] = {}

    def rate_for(self, customer_id: str) -> Decimal:
        return self.customers.get(customer_id, self.rate_percent)


class BillingConfig(_Model):
    """`billing:` — invoices (currency, tax) and the Stripe sync."""

    currency: str = "usd"
    tax: TaxConfig = TaxConfig()
    stripe: StripeConfig | None = None


class RetentionConfig(_Model):
    """`retention:` — how long raw usage events are kept, how far ahead partitions exist.

    Raw events older than `raw_events_days` are removed by dropping whole month partitions
    (null keeps them forever); the hourly rollups are kept regardless.
    """

    raw_events_days: int | None = Field(default=90, ge=1)
    partitions_ahead_months: int = Field(default=2, ge=1, le=24)


class Settings(_Model):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    providers: dict[str, ProviderConfig]
    models: list[ModelRoute] = []
    tiers: dict[str, TierConfig] = {"default": TierConfig()}
    pricing: PricingConfig = PricingConfig()
    quotas: QuotasConfig = QuotasConfig()
    billing: BillingConfig = BillingConfig()
    logging: LoggingConfig = LoggingConfig()
    admin: AdminConfig = AdminConfig()
    portal: PortalConfig = PortalConfig()
    alerts: AlertsConfig = AlertsConfig()
    retention: RetentionConfig = RetentionConfig()
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
                    f"models[{i}].provider: {route.provider!r} is not a provider (known: {known})"
                )
        if not self.tiers:
            raise ValueError("at least one tier is required")
        return self

    def provider_for(self, model: str, kind: str) -> str | None:
        """The provider that serves `model` on an API of `kind` ("openai", "gemini"...).

        The first `models:` rule that matches and names a provider of that kind wins; an
        unmatched model goes to the first provider of that kind that lists it among its
        `deployments` (Azure: `model` is then a deployment name), else to the first provider
        of that kind.
        """
        for route in self.models:
            if route.matches(model) and self.providers[route.provider].kind == kind:
                return route.provider
        first: str | None = None
        for name, provider in self.providers.items():
            if provider.kind == kind:
                if model in provider.deployments:
                    return name
                if first is None:
                    first = name
        return first

    def source_name(self) -> str:
        """The file these settings were read from, for messages (config.yaml when unknown)."""
        return self.source_path or "config.yaml"

    def data_dir(self) -> Path:
        base = Path(self.source_path).parent if self.source_path else Path.cwd()
        return (base / self.storage.data_dir).resolve()


# A check of a whole section names the key it refuses first ("region: ..."): that key joins
# the YAML path, so every line reads `yaml.path: what is wrong`.
_LEADING_KEY = re.compile(r"([A-Za-z_][\w.\-\[\]]*): (.+)", re.DOTALL)


def _format_errors(exc: ValidationError, path: str) -> str:
    lines = [f"{path} is invalid:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {_as_written(value)})"
        message = err["msg"].removeprefix("Value error, ")
        leading = _LEADING_KEY.fullmatch(message) if isinstance(value, dict) else None
        if leading is not None:
            where = leading[1] if where == "(top level)" else f"{where}.{leading[1]}"
            message = leading[2]
        hint = ""
        if err["type"] == "extra_forbidden":
            hint = "; remove it or check its spelling against docs/configuration.md"
        elif err["type"] == "missing":
            hint = "; add it"
        lines.append(f"  {where}: {message}{shown}{hint}")
    return "\n".join(lines)


def _as_written(value: Any) -> str:
    """A refused value as the YAML gave it: a Decimal as its digits, anything else as repr."""
    return repr(str(value)) if isinstance(value, Decimal) else repr(value)


def _yaml_error(exc: yaml.YAMLError, source: str) -> str:
    """PyYAML's message (problem, line, column, the line itself), naming the file: parsed
    from bytes, its marks would say `in "<byte string>"`."""
    if isinstance(exc, yaml.MarkedYAMLError):
        for mark in (exc.context_mark, exc.problem_mark):
            if mark is not None:
                mark.name = source
    return f"{source} is not valid YAML: {exc}"


def parse_settings(raw: bytes, source: str = "config.yaml") -> Settings:
    """Validate YAML bytes into Settings, with the environment overlaid."""
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(exc, source)) from None
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
