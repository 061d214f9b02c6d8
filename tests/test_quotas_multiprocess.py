"""The quota guarantee across gateway processes: 3 OS processes, 210 concurrent admits, one Redis.

Each worker is a separate Python process (this module run with ``worker`` as argument) with its
own Redis connections and its own `QuotaPolicy`, like a gateway worker. All connect first,
report ready, and fire together on one signal: 70 concurrent admits each (asyncio.gather)
against one customer with a low limit, production 60-second windows. Counted exactly:
- admitted requests == the requests limit, per minute and per month;
- tokens: the month counter never passes the limit by more than the top-ups (actual minus
  reserved) of the requests settled so far, and ends equal to the sum of actual tokens.
The admitted counts are printed so they can be quoted.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from gateway.config import QuotasConfig, TierConfig, TierLimits
from gateway.errors import RateLimitError
from gateway.quotas import QuotaPolicy
from storage.quota.keys import customer_keys
from storage.quota.store import QuotaStore

pytestmark = pytest.mark.slow

PROCESSES = 3
PER_PROCESS = 70


async def _fire(job: dict[str, Any]) -> dict[str, Any]:
    client = Redis.from_url(job["redis_url"])
    policy = QuotaPolicy(QuotaStore(client), QuotasConfig())
    tier = TierConfig(limits=TierLimits.model_validate(job["limits"]))
    rng = random.Random(job["seed"])
    reserve = job["reserve_tokens"]
    actuals = [rng.randint(0, reserve * 3 // 2) for _ in range(job["count"])]
    jitters = [rng.random() * 0.03 for _ in range(job["count"])]
    pauses = [rng.random() * 0.02 for _ in range(job["count"])]
    # Warm a pool of connections so the start is not serialized on connecting.
    await asyncio.gather(*(client.ping() for _ in range(job["count"])))
    print("ready", flush=True)
    # The start signal carries a wall-clock instant shared by all workers on this machine, so
    # they fire together instead of in the order their signals were read.
    start_at = float(await asyncio.to_thread(sys.stdin.readline))
    await asyncio.sleep(max(0.0, start_at - time.time()))

    async def one(i: int) -> dict[str, Any]:
        # All 70 are in flight at once; a few ms of jitter lets the three processes' calls
        # interleave at Redis instead of arriving as three back-to-back blocks.
        await asyncio.sleep(jitters[i])
        try:
            admission = await policy.admit(
                customer_id=job["customer"],
                tier_name="test",
                tier=tier,
                request_id=str(uuid.uuid4()),
                tokens=reserve,
                spend_usd=None,
            )
        except RateLimitError as exc:
            return {"admitted": False, "limit": exc.limit}
        await asyncio.sleep(pauses[i])  # the request "runs", then settles
        await policy.settle(admission, tokens=actuals[i], spend_usd=None)
        return {"admitted": True, "reserved": reserve, "actual": actuals[i]}

    results = await asyncio.gather(*(one(i) for i in range(job["count"])))
    await client.aclose()
    return {
        "results": results,
        "redis_errors": policy.redis_error_admissions + policy.settle_failures,
    }


def worker() -> None:
    job = json.loads(sys.argv[2])
    print(json.dumps(asyncio.run(_fire(job))), flush=True)


def month_counters(client: redis.Redis, customer: str) -> dict[str, int]:
    raw = client.hgetall(customer_keys(customer).month_counters)
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


def run_workers(
    redis_url: str,
    customer: str,
    limits: dict[str, Any],
    reserve_tokens: int,
    watch: redis.Redis | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Start the workers, fire them together; return their reports and the peak month tokens."""
    procs = []
    for n in range(PROCESSES):
        job = {
            "redis_url": redis_url,
            "customer": customer,
            "limits": limits,
            "reserve_tokens": reserve_tokens,
            "count": PER_PROCESS,
            "seed": n,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "worker", json.dumps(job)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"

    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set() and watch is not None:
            values = month_counters(watch, customer)
            for field, value in values.items():
                if field.endswith(":tokens"):
                    peak = max(peak, value)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start_at = time.time() + 0.5
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"{start_at}\n")
        proc.stdin.flush()
    reports = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        done.set()
        sampler.join()
        for proc in procs:
            proc.kill()
    return reports, peak


def admitted_counts(reports: list[dict[str, Any]]) -> list[int]:
    return [sum(r["admitted"] for r in report["results"]) for report in reports]


@pytest.mark.parametrize(
    ("limit_name", "limit"), [("requests_per_minute", 37), ("requests_per_month", 29)]
)
def test_admitted_requests_equal_the_limit_across_processes(
    redis_url: str, capsys: pytest.CaptureFixture[str], limit_name: str, limit: int
) -> None:
    customer = f"mp-{uuid.uuid4().hex[:10]}"
    reports, _ = run_workers(redis_url, customer, {limit_name: limit}, reserve_tokens=10)

    counts = admitted_counts(reports)
    total = PROCESSES * PER_PROCESS
    with capsys.disabled():
        print(
            f"\n[multiprocess] {limit_name}={limit}: admitted per process {counts}, "
            f"{sum(counts)} of {total} requests"
        )
    assert all(report["redis_errors"] == 0 for report in reports)
    assert sum(counts) == limit
    refused = [r for report in reports for r in report["results"] if not r["admitted"]]
    assert len(refused) == total - limit
    assert {r["limit"] for r in refused} == {limit_name}


def test_tokens_pass_the_limit_only_by_the_settle_top_ups(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    customer = f"mp-{uuid.uuid4().hex[:10]}"
    limit, reserve = 20_000, 300
    watch = redis.Redis.from_url(redis_url)
    try:
        reports, peak = run_workers(
            redis_url, customer, {"tokens_per_month": limit}, reserve_tokens=reserve, watch=watch
        )
        final = month_counters(watch, customer)
    finally:
        watch.close()

    admitted = [r for report in reports for r in report["results"] if r["admitted"]]
    top_ups = sum(max(0, r["actual"] - r["reserved"]) for r in admitted)
    actual = sum(r["actual"] for r in admitted)
    final_tokens = next(v for k, v in final.items() if k.endswith(":tokens"))
    counts = admitted_counts(reports)
    with capsys.disabled():
        print(
            f"\n[multiprocess] tokens_per_month={limit} (reserving {reserve} each): admitted "
            f"per process {counts}, {sum(counts)} of {PROCESSES * PER_PROCESS}; peak "
            f"{peak}, final {final_tokens} tokens; settle top-ups {top_ups}"
        )
    assert all(report["redis_errors"] == 0 for report in reports)
    # Without a single refund exactly limit // reserve would fit; refunds only make room.
    assert len(admitted) >= limit // reserve
    assert final_tokens == actual
    assert peak <= limit + top_ups
    assert final_tokens <= limit + top_ups


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker()
