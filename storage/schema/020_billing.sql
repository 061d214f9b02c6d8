-- 020_billing: what the Stripe sync sent, and which Stripe webhook events were applied.
--
-- billing_sync holds one row per meter event the sync decided to send: the first event of a
-- (customer, dimension, window) has seq 0; usage that arrives after it was sent is sent as a
-- correction with the next seq and its own identifier. A row is written 'pending' before its
-- event is sent and becomes 'sent' (Stripe accepted it, or already had its identifier),
-- 'failed' (Stripe refused it; resent as recorded on the next run) or 'skipped' (never
-- sendable: older than Stripe's 35 days, or a decrease Stripe cannot take). `value` is what
-- the event carries, so the window's total recorded so far is sum(value) over its rows.
CREATE TABLE billing_sync (
    identifier         text PRIMARY KEY CHECK (length(identifier) <= 100),
    customer_id        text NOT NULL,
    stripe_customer_id text NOT NULL,
    dimension          text NOT NULL,
    event_name         text NOT NULL,
    window_start       timestamptz NOT NULL,
    window_end         timestamptz NOT NULL,
    version            integer NOT NULL,
    seq                integer NOT NULL CHECK (seq >= 0),
    value              bigint NOT NULL,
    status             text NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'skipped')),
    attempts           integer NOT NULL DEFAULT 0,
    stripe_response    jsonb,
    error              text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    sent_at            timestamptz,
    UNIQUE (customer_id, dimension, window_start, version, seq)
);

CREATE INDEX billing_sync_open_idx ON billing_sync (window_start, customer_id, dimension, seq)
    WHERE status IN ('pending', 'failed');
CREATE INDEX billing_sync_window_idx ON billing_sync (window_start);

-- One row per Stripe webhook event id ever received: a redelivered event finds its row and is
-- not applied twice. `family` groups the events whose order matters per Stripe customer
-- ('subscription', 'invoice'), so an older event arriving late is recorded but not applied.
CREATE TABLE stripe_webhook_events (
    event_id           text PRIMARY KEY,
    event_type         text NOT NULL,
    family             text NOT NULL,
    stripe_customer_id text,
    event_created      timestamptz NOT NULL,
    received_at        timestamptz NOT NULL DEFAULT now(),
    customer_id        text,
    action             text NOT NULL,
    detail             text
);

CREATE INDEX stripe_webhook_events_customer_idx
    ON stripe_webhook_events (stripe_customer_id, family, event_created);
