-- 060_rollups_daily: usage per (customer, UTC day, model), kept in step with the hourly rollups.
--
-- One row per (customer_id, day, model) that ever had usage; `day` is the UTC date of the
-- hourly rollup rows it sums (their projects added together). The columns are the hourly rollups' counts and money (compute_ms left
-- out): requests, error_requests, estimated_requests, unpriced_requests, the token sums,
-- cost_usd and price_usd, exact. It exists for reads across every customer over long
-- windows (the operator dashboard's customer table and models: a month is customers x days x
-- the models each uses here, against one row per customer, hour, project and model in
-- usage_rollups_hourly, some 20 times more for a month of 5 million events).
--
-- Maintenance: statement-level AFTER triggers on usage_rollups_hourly, in the same
-- transaction as the write that changed the hourly rows, so in any committed snapshot a
-- day's row equals the sum of that day's hourly rows: INSERT adds the new rows, UPDATE
-- (the hourly triggers' ON CONFLICT DO UPDATE, and re-rating through them) adds new - old,
-- DELETE subtracts (rebuild_rollups deletes then inserts: both pass through here), TRUNCATE
-- empties. Each statement aggregates its transition table first: one upsert per distinct
-- (customer, day, model) of the statement, in key order (no deadlock between writers). Retention
-- never deletes hourly rows, so it never touches this table either.

CREATE TABLE usage_rollups_daily (
    customer_id         text NOT NULL,
    day                 date NOT NULL,
    model               text NOT NULL,
    requests            bigint NOT NULL DEFAULT 0,
    error_requests      bigint NOT NULL DEFAULT 0,
    estimated_requests  bigint NOT NULL DEFAULT 0,
    unpriced_requests   bigint NOT NULL DEFAULT 0,
    input_tokens        bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cached_input_tokens bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    reasoning_tokens    bigint NOT NULL DEFAULT 0,
    cost_usd            numeric NOT NULL DEFAULT 0,
    price_usd           numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (customer_id, day, model)
);

CREATE INDEX usage_rollups_daily_day_idx ON usage_rollups_daily (day);

CREATE FUNCTION usage_rollups_daily_apply() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    source text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        source := 'SELECT 1 AS sign, * FROM daily_new';
    ELSIF TG_OP = 'DELETE' THEN
        source := 'SELECT -1 AS sign, * FROM daily_old';
    ELSE
        source := 'SELECT -1 AS sign, * FROM daily_old UNION ALL SELECT 1, * FROM daily_new';
    END IF;
    EXECUTE format($sql$
        INSERT INTO usage_rollups_daily AS d (
            customer_id, day, model, requests, error_requests, estimated_requests,
            unpriced_requests, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
            reasoning_tokens, cost_usd, price_usd)
        SELECT h.customer_id, (h.hour AT TIME ZONE 'UTC')::date, h.model,
               sum(h.sign * h.requests), sum(h.sign * h.error_requests),
               sum(h.sign * h.estimated_requests), sum(h.sign * h.unpriced_requests),
               sum(h.sign * h.input_tokens), sum(h.sign * h.output_tokens),
               sum(h.sign * h.cached_input_tokens), sum(h.sign * h.cache_write_tokens),
               sum(h.sign * h.reasoning_tokens), sum(h.sign * h.cost_usd),
               sum(h.sign * h.price_usd)
        FROM (%s) AS h
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT (customer_id, day, model) DO UPDATE SET
            requests            = d.requests + excluded.requests,
            error_requests      = d.error_requests + excluded.error_requests,
            estimated_requests  = d.estimated_requests + excluded.estimated_requests,
            unpriced_requests   = d.unpriced_requests + excluded.unpriced_requests,
            input_tokens        = d.input_tokens + excluded.input_tokens,
            output_tokens       = d.output_tokens + excluded.output_tokens,
            cached_input_tokens = d.cached_input_tokens + excluded.cached_input_tokens,
            cache_write_tokens  = d.cache_write_tokens + excluded.cache_write_tokens,
            reasoning_tokens    = d.reasoning_tokens + excluded.reasoning_tokens,
            cost_usd            = d.cost_usd + excluded.cost_usd,
            price_usd           = d.price_usd + excluded.price_usd
    $sql$, source);
    RETURN NULL;
END
$fn$;

CREATE FUNCTION usage_rollups_daily_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    TRUNCATE usage_rollups_daily;
    RETURN NULL;
END
$fn$;

-- Backfill from the hourly rows already there, then keep up. Same transaction.
INSERT INTO usage_rollups_daily (
    customer_id, day, model, requests, error_requests, estimated_requests, unpriced_requests,
    input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens,
    cost_usd, price_usd)
SELECT customer_id, (hour AT TIME ZONE 'UTC')::date, model, sum(requests), sum(error_requests),
       sum(estimated_requests), sum(unpriced_requests), sum(input_tokens), sum(output_tokens),
       sum(cached_input_tokens), sum(cache_write_tokens), sum(reasoning_tokens),
       sum(cost_usd), sum(price_usd)
FROM usage_rollups_hourly
GROUP BY 1, 2, 3;

CREATE TRIGGER usage_rollups_daily_on_insert AFTER INSERT ON usage_rollups_hourly
    REFERENCING NEW TABLE AS daily_new
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_daily_apply();
CREATE TRIGGER usage_rollups_daily_on_update AFTER UPDATE ON usage_rollups_hourly
    REFERENCING OLD TABLE AS daily_old NEW TABLE AS daily_new
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_daily_apply();
CREATE TRIGGER usage_rollups_daily_on_delete AFTER DELETE ON usage_rollups_hourly
    REFERENCING OLD TABLE AS daily_old
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_daily_apply();
CREATE TRIGGER usage_rollups_daily_on_truncate AFTER TRUNCATE ON usage_rollups_hourly
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_daily_truncate();
