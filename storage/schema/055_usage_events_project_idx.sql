-- 055_usage_events_project_idx: events of one project, newest first, without reading the
-- customer's other projects.
--
-- The usage portal lists a project's events (a project link always filters by project)
-- newest first with keyset paging on (created_at, id). With only (customer_id, created_at),
-- a small project of a large customer is found by reading the whole customer's window; this
-- index reads that project's rows alone. Created on the partitioned parent, so every month
-- partition (and the default one) gets it, as will partitions created later. Building it
-- locks usage_events against writes while it runs (the writer's journal absorbs the pause).

CREATE INDEX IF NOT EXISTS usage_events_customer_project_created_idx
    ON usage_events (customer_id, project_id, created_at);
