"""Seed a database with synthetic customers, keys and usage events for the portal benchmark.

Everything is generated inside PostgreSQL (`INSERT ... SELECT` over `generate_series`), so no
row crosses the wire: the 5 million events of the README's run take a few minutes on two
cores. Events go through `usage_events` itself in batches of `batch_size`, one statement
each, so the rollup triggers (statement level, transition tables) maintain
`usage_rollups_hourly` exactly as they do for the writer's COPY batches.

The shape: `customers` customers (`cust-0001`...), three keys each (projects `web`,
`batch-jobs` and none), tiers free / pro / enterprise, a few suspended. Event n of N is
placed at `since + sqrt(n / N) * span` (traffic grows towards `until`), so batches arrive in
time order and the time-ordered ids (a UUID whose first 48 bits are the millisecond) append
to the indexes instead of scattering over them. Customers are skewed (customer k gets a share
of about k^-0.6: the first few dominate); a key calls its own model 80% of the time and any
model otherwise, models weighted (cheap chat models most); about 2%
estimated usage, 1.5% provider errors (no tokens, no money), 0.1% on an unpriced model
(price NULL). Money is computed from per-million rates and stored with the column's 10
decimals, as the writer stores it; every sum is exact in NUMERIC.

The randomness is PostgreSQL's `random()` after `setseed`, on the one connection that seeds,
so a run is repeatable for a given seed. Errors are asyncpg's, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from storage.usage.partitions import ensure_partitions

TIERS = ("free", "pro", "enterprise")
PROJECTS = ("web", "batch-jobs", None)  # key slots 0, 1, 2
DEFAULT_BATCH = 250_000


@dataclass(frozen=True, slots=True)
class SeedModel:
    name: str
    provider: str
    endpoint: str
    weight: float
    input_per_m: str | None  # USD per million tokens; None: unpriced
    output_per_m: str
    cached_per_m: str
    reasoning: bool = False
    embedding: bool = False


MODELS = (
    SeedModel("gpt-4o-mini", "openai", "/v1/chat/completions", 0.33, "0.15", "0.60", "0.075"),
    SeedModel("gpt-4o", "openai", "/v1/chat/completions", 0.14, "2.50", "10.00", "1.25"),
    SeedModel(
        "o3-mini", "openai", "/v1/chat/completions", 0.08, "1.10", "4.40", "0.55", reasoning=True
    ),
    SeedModel("claude-sonnet-4-5", "anthropic", "/v1/messages", 0.16, "3.00", "15.00", "0.30"),
    SeedModel("claude-haiku-4-5", "anthropic", "/v1/messages", 0.16, "1.00", "5.00", "0.10"),
    SeedModel(
        "text-embedding-3-small",
        "openai",
        "/v1/embeddings",
        0.129,
        "0.02",
        "0",
        "0",
        embedding=True,
    ),
    SeedModel("acme-local-llm", "openai", "/v1/chat/completions", 0.001, None, "0", "0"),
)

_ADJECTIVES = (
    "Acme",
    "Blue",
    "Bright",
    "Cedar",
    "Delta",
    "Echo",
    "Falcon",
    "Granite",
    "Harbor",
    "Iris",
    "Juniper",
    "Kite",
    "Lumen",
    "Maple",
    "Nimbus",
    "Orbit",
    "Pine",
    "Quartz",
    "River",
    "Summit",
    "Tidal",
    "Umber",
    "Vertex",
    "Willow",
    "Zephyr",
)
_NOUNS = (
    "Labs",
    "Analytics",
    "Health",
    "Robotics",
    "Media",
    "Logistics",
    "Finance",
    "Studio",
    "Systems",
    "Works",
    "Cloud",
    "Bio",
    "Energy",
    "Learning",
    "Retail",
    "Legal",
)


@dataclass(frozen=True, slots=True)
class SeedPlan:
    events: int
    customers: int
    since: datetime
    until: datetime
    seed: float = 0.42
    batch_size: int = DEFAULT_BATCH


def customer_id(index: int) -> str:
    return f"cust-{index + 1:04d}"


def _customer_rows(count: int) -> list[tuple[str, str, str, str | None, bool]]:
    rows = []
    for k in range(count):
        name = (
            f"{_ADJECTIVES[k % len(_ADJECTIVES)]} {_NOUNS[(k // len(_ADJECTIVES)) % len(_NOUNS)]}"
        )
        if k >= len(_ADJECTIVES) * len(_NOUNS):
            name += f" {k // (len(_ADJECTIVES) * len(_NOUNS)) + 1}"
        tier = "enterprise" if k < max(1, count // 20) else TIERS[k % 3 if k % 3 < 2 else 0]
        stripe = f"cus_bench{k:06d}" if k % 10 < 7 else None
        rows.append((customer_id(k), name, tier, stripe, k % 50 == 49))
    return rows


async def _seed_accounts(conn: asyncpg.Connection, plan: SeedPlan) -> None:
    rows = _customer_rows(plan.customers)
    seeded = [row[0] for row in rows]  # other customers the database holds are left alone
    await conn.executemany(
        "INSERT INTO customers (id, name, email, tier, stripe_customer_id, suspended) "
        "VALUES ($1, $2, $1 || '@example.com', $3, $4, $5)",
        rows,
    )
    # Three keys a customer; the hash is of a made-up key nobody holds.
    await conn.execute(
        """
        INSERT INTO api_keys (id, key_hash, prefix, customer_id, project_id, user_id, name)
        SELECT 'key_' || substr(md5(c.id || ':' || s), 1, 16),
               sha256(convert_to('tb_bench:' || c.id || ':' || s, 'UTF8')),
               substr(md5('prefix' || c.id || s), 1, 8), c.id,
               (ARRAY['web', 'batch-jobs', NULL])[s + 1],
               CASE WHEN s = 0 THEN 'svc-web' END,
               (ARRAY['production web', 'nightly batch', 'notebook'])[s + 1]
        FROM customers c CROSS JOIN generate_series(0, 2) AS s
        WHERE c.id = ANY($1::text[])
        """,
        seeded,
    )
    await conn.execute(
        """
        CREATE TEMP TABLE seed_keys AS
        SELECT dense_rank() OVER (ORDER BY c.id) - 1 AS cust, k.project_id, k.user_id,
               k.id AS key_id, c.id AS customer_id, c.tier,
               CASE k.project_id WHEN 'web' THEN 0 WHEN 'batch-jobs' THEN 1 ELSE 2 END AS slot,
               width_bucket(random(), $1::float8[]) AS primary_model
        FROM customers c JOIN api_keys k ON k.customer_id = c.id
        WHERE c.id = ANY($2::text[]) ORDER BY k.id
        """,
        _thresholds(),
        seeded,
    )
    await conn.execute("CREATE INDEX ON seed_keys (cust, slot)")
    await conn.execute("ANALYZE seed_keys")
    models = [
        (
            i,
            m.name,
            m.provider,
            m.endpoint,
            m.input_per_m,
            m.output_per_m,
            m.cached_per_m,
            m.reasoning,
            m.embedding,
        )
        for i, m in enumerate(MODELS)
    ]
    await conn.execute(
        "CREATE TEMP TABLE seed_models (idx int PRIMARY KEY, name text, provider text, "
        "endpoint text, input_per_m numeric, output_per_m numeric, cached_per_m numeric, "
        "reasoning boolean, embedding boolean)"
    )
    await conn.executemany(
        "INSERT INTO seed_models VALUES ($1, $2, $3, $4, $5::numeric, "
        "$6::numeric, $7::numeric, $8, $9)",
        models,
    )


def _thresholds() -> list[float]:
    total, edges = 0.0, []
    for model in MODELS[:-1]:
        total += model.weight
        edges.append(total)
    return edges


# $1, $2: first and last n of the batch; $3 N; $4 since; $5 span (interval); $6 customers;
# $7 model thresholds (width_bucket: 0 for r below the first, len for r past the last).
_BATCH_SQL = """
INSERT INTO usage_events (
    id, created_at, customer_id, project_id, user_id, key_id, tier, provider, model, endpoint,
    status_code, streamed, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
    reasoning_tokens, usage_source, cost_usd, price_usd, price_version, latency_ms,
    upstream_request_id, metadata)
SELECT (lpad(to_hex((extract(epoch FROM e.at) * 1000)::bigint), 12, '0') || '7'
        || substr(md5(e.n::text || ':tb'), 1, 19))::uuid,
       e.at, e.customer_id, e.project_id, e.user_id, e.key_id, e.tier, e.provider, e.name,
       e.endpoint, e.status, e.streamed, e.input_tokens, e.output_tokens, e.cached,
       e.cache_write, e.reasoning, e.source, money.cost, round(money.cost * 1.25, 10),
       CASE WHEN e.input_per_m IS NOT NULL THEN 'bench-1' END,
       e.latency_ms, 'req_' || substr(md5(e.n::text), 1, 20), '{}'::jsonb
FROM (
    SELECT r.n, r.at, r.status, r.streamed, k.customer_id, k.project_id, k.user_id, k.key_id,
           k.tier, m.name, m.provider, m.endpoint, m.input_per_m, m.output_per_m,
           m.cached_per_m,
           CASE WHEN r.status >= 400 THEN 0 ELSE r.in_raw END AS input_tokens,
           CASE WHEN r.status >= 400 OR m.embedding THEN 0 ELSE r.out_raw END AS output_tokens,
           CASE WHEN r.status < 400 AND r.r_cache < 0.3 AND NOT m.embedding
                THEN floor(r.in_raw * r.r_cache * 2)::bigint ELSE 0 END AS cached,
           CASE WHEN r.status < 400 AND m.provider = 'anthropic' AND r.r_cache > 0.95
                THEN floor(r.in_raw * 0.2)::bigint ELSE 0 END AS cache_write,
           CASE WHEN r.status < 400 AND m.reasoning THEN floor(r.out_raw * 0.6)::bigint
                ELSE 0 END AS reasoning,
           CASE WHEN r.r_source < 0.02 THEN 'estimated' ELSE 'provider' END AS source,
           200 + (r.out_raw * 12 * r.r_cache)::int AS latency_ms
    FROM (
        SELECT n,
               $4::timestamptz + sqrt((n + random()) / $3::float8) * $5::interval AS at,
               floor($6 * power(random(), 2.5))::int AS cust,
               floor(3 * power(random(), 1.6))::int AS slot,
               random() AS r_primary, width_bucket(random(), $7::float8[]) AS any_model,
               (40 + floor(6000 * power(random(), 3)))::bigint AS in_raw,
               (5 + floor(1800 * power(random(), 2)))::bigint AS out_raw,
               random() AS r_cache, random() AS r_source, random() < 0.45 AS streamed,
               CASE WHEN random() < 0.015 THEN 500 ELSE 200 END AS status
        FROM generate_series($1::bigint, $2::bigint) AS n
    ) AS r
    JOIN seed_keys k ON k.cust = r.cust AND k.slot = r.slot
    -- A key mostly calls its own model, as an application does.
    JOIN seed_models m
      ON m.idx = CASE WHEN r.r_primary < 0.8 THEN k.primary_model ELSE r.any_model END
) AS e
CROSS JOIN LATERAL (
    SELECT CASE WHEN e.input_per_m IS NULL THEN NULL::numeric
                WHEN e.status >= 400 THEN 0::numeric
                ELSE round(((e.input_tokens - e.cached) * e.input_per_m
                            + e.cached * e.cached_per_m
                            + e.output_tokens * e.output_per_m) / 1000000, 10) END AS cost
) AS money
ORDER BY e.n
"""


async def seed(
    pool: asyncpg.Pool,
    plan: SeedPlan,
    progress: Callable[[str], None] = lambda line: None,
) -> None:
    """Customers, keys and `plan.events` events in [plan.since, plan.until), into an empty
    (migrated) database."""
    await ensure_partitions(pool, months_ahead=5, now=plan.since - timedelta(days=31))
    span = plan.until - plan.since
    async with pool.acquire() as conn:
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("SELECT setseed($1)", plan.seed)
        async with conn.transaction():
            await _seed_accounts(conn, plan)
        done = 0
        while done < plan.events:
            last = min(done + plan.batch_size, plan.events) - 1
            await conn.execute(
                _BATCH_SQL,
                done,
                last,
                plan.events,
                plan.since,
                span,
                plan.customers,
                _thresholds(),
            )
            done = last + 1
            progress(f"seeded {done:,} of {plan.events:,} events")
        await conn.execute("RESET synchronous_commit")
    await pool.execute("ANALYZE customers")
    await pool.execute("ANALYZE api_keys")
    await pool.execute("ANALYZE usage_events")
    await pool.execute("ANALYZE usage_rollups_hourly")
