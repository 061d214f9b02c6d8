-- 062_rollups_monthly: usage per (customer, UTC calendar month, model), kept in step with
-- the daily rollups (060_rollups_daily.sql).
--
-- One row per (customer_id, month, model); `month` is the first day of the UTC month whose
-- daily rows it sums. Same columns as usage_rollups_daily. It serves reads across every
-- customer over whole calendar months (the operator dashboard's default period): a month is
-- customers x models rows here, some 4,500 for the README's benchmark month, against 150,000
-- daily rows.
--
-- Maintenance: statement-level AFTER triggers on usage_rollups_daily, in the same transaction
-- as the write that changed the daily rows (which the hourly rollups' triggers changed, which
-- the write to usage_events changed), so in any committed snapshot a month's row equals its
-- days: INSERT adds, UPDATE adds new - old, DELETE subtracts, TRUNCATE empties. One upsert
-- per distinct (customer, month, model) of a statement, in key order.

CREATE TABLE usage_rollups_monthly (
    customer_id         text NOT NULL,
    month               date NOT NULL,  -- the month's first day
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
    PRIMARY KEY (customer_id, month, model)
);

CREATE INDEX usage_rollups_monthly_month_idx ON usage_rollups_monthly (month);

CREATE FUNCTION usage_rollups_monthly_apply() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    source text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        source := 'SELECT 1 AS sign, * FROM monthly_new';
    ELSIF TG_OP = 'DELETE' THEN
        source := 'SELECT -1 AS sign, * FROM monthly_old';
    ELSE
        source := 'SELECT -1 AS sign, * FROM monthly_old UNION ALL SELECT 1, * FROM monthly_new';
    END IF;
    EXECUTE format($sql$
        INSERT INTO usage_rollups_monthly AS d (
            customer_id, month, model, requests, error_requests, estimated_requests,
            unpriced_requests, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
            reasoning_tokens, cost_usd, price_usd)
        SELECT h.customer_id, date_trunc('month', h.day::timestamp)::date, h.model,
               sum(h.sign * h.requests), sum(h.sign * h.error_requests),
               sum(h.sign * h.estimated_requests), sum(h.sign * h.unpriced_requests),
               sum(h.sign * h.input_tokens), sum(h.sign * h.output_tokens),
               sum(h.sign * h.cached_input_tokens), sum(h.sign * h.cache_write_tokens),
               sum(h.sign * h.reasoning_tokens), sum(h.sign * h.cost_usd),
               sum(h.sign * h.price_usd)
        FROM (%s) AS h
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT (customer_id, month, model) DO UPDATE SET
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

CREATE FUNCTION usage_rollups_monthly_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    TRUNCATE usage_rollups_monthly;
    RETURN NULL;
END
$fn$;

-- Backfill from the daily rows already there, then keep up. Same transaction.
INSERT INTO usage_rollups_monthly (
    customer_id, month, model, requests, error_requests, estimated_requests, unpriced_requests,
    input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens,
    cost_usd, price_usd)
SELECT customer_id, date_trunc('month', day::timestamp)::date, model, sum(requests), sum(error_requests),
       sum(estimated_requests), sum(unpriced_requests), sum(input_tokens), sum(output_tokens),
       sum(cached_input_tokens), sum(cache_write_tokens), sum(reasoning_tokens),
       sum(cost_usd), sum(price_usd)
FROM usage_rollups_daily
GROUP BY 1, 2, 3;

CREATE TRIGGER usage_rollups_monthly_on_insert AFTER INSERT ON usage_rollups_daily
    REFERENCING NEW TABLE AS monthly_new
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_monthly_apply();
CREATE TRIGGER usage_rollups_monthly_on_update AFTER UPDATE ON usage_rollups_daily
    REFERENCING OLD TABLE AS monthly_old NEW TABLE AS monthly_new
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_monthly_apply();
CREATE TRIGGER usage_rollups_monthly_on_delete AFTER DELETE ON usage_rollups_daily
    REFERENCING OLD TABLE AS monthly_old
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_monthly_apply();
CREATE TRIGGER usage_rollups_monthly_on_truncate AFTER TRUNCATE ON usage_rollups_daily
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_monthly_truncate();
