-- 001_init: customers, their API keys, and one row per forwarded request.
--
-- Applied once by storage.postgres.migrate() inside a transaction that holds an advisory lock,
-- and recorded in schema_migrations. Never edit an applied migration: add 002_*.sql instead.

CREATE TABLE customers (
    id                 text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    name               text,
    email              text,
    tier               text NOT NULL,
    stripe_customer_id text,
    suspended          boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- A key is stored only as the SHA-256 of the full key ("tb_..."); `prefix` is 8 characters
-- after "tb_", enough to recognise a key in a listing and useless to authenticate with.
CREATE TABLE api_keys (
    id          text PRIMARY KEY CHECK (id ~ '^key_[0-9a-f]{16}$'),
    key_hash    bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    prefix      text NOT NULL,
    customer_id text NOT NULL REFERENCES customers (id),
    project_id  text,
    user_id     text,
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE INDEX api_keys_customer_idx ON api_keys (customer_id);

-- Columns exactly as storage/usage/event.py UsageEvent.COLUMNS. No foreign keys and no CHECK
-- constraints here on purpose: an event must never be refused by the database (the writer
-- retries a refused batch, so a constraint would stall metering); values are validated in
-- Python before they are queued. `id` stays the primary key until monthly partitioning.
CREATE TABLE usage_events (
    id                  uuid PRIMARY KEY,
    created_at          timestamptz NOT NULL,
    customer_id         text NOT NULL,
    project_id          text,
    user_id             text,
    key_id              text NOT NULL,
    tier                text NOT NULL,
    provider            text NOT NULL,
    model               text NOT NULL,
    endpoint            text NOT NULL,
    status_code         integer NOT NULL,
    streamed            boolean NOT NULL,
    input_tokens        bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cached_input_tokens bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    reasoning_tokens    bigint NOT NULL DEFAULT 0,
    usage_source        text NOT NULL,
    cost_usd            numeric(20, 10),
    price_usd           numeric(20, 10),
    price_version       text,
    latency_ms          integer NOT NULL,
    upstream_request_id text,
    metadata            jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX usage_events_customer_created_idx ON usage_events (customer_id, created_at);
CREATE INDEX usage_events_created_idx ON usage_events (created_at);
