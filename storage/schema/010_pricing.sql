-- 010_pricing: a record of every re-rating run (`tollbooth pricing rerate`).
--
-- Re-rating rewrites cost_usd / price_usd / price_version of stored usage events; this table
-- keeps when that happened, over which events, with which price version, and by how much the
-- money moved, so an invoice or a Stripe sync can be explained afterwards. Dry runs are not
-- recorded.

CREATE TABLE pricing_rerates (
    id              bigserial PRIMARY KEY,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    since           timestamptz NOT NULL,
    model           text,
    price_version   text NOT NULL,
    events_seen     bigint NOT NULL,
    events_changed  bigint NOT NULL,
    cost_delta_usd  numeric NOT NULL,
    price_delta_usd numeric NOT NULL
);

CREATE INDEX pricing_rerates_started_idx ON pricing_rerates (started_at);
