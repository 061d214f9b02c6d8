"""`tollbooth bench` end to end, on a tiny duration: every part runs as its own process, real
Postgres and Valkey (the session's, through TOLLBOOTH_DATABASE_URL / TOLLBOOTH_REDIS_URL),
and the numbers it reports agree with each other. Nothing here asserts a speed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.bench.procs import machine_info
from gateway.bench.profile import summarize
from gateway.bench.report import notes_on, render_text, to_json
from gateway.bench.results import BenchReport, PhaseResult
from gateway.bench.scenarios import BenchOptions, scenarios
from gateway.cli.bench import options_from
from gateway.cli.main import build_parser

pytestmark = pytest.mark.timeout(240)


def bench(*args: str, database_url: str, redis_url: str) -> dict[str, Any]:
    env = {**os.environ, "TOLLBOOTH_DATABASE_URL": database_url, "TOLLBOOTH_REDIS_URL": redis_url}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli.main",
            "bench",
            "--json",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            *args,
        ],
        env=env,
        capture_output=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report: dict[str, Any] = orjson.loads(done.stdout)
    return report


def assert_consistent(phase: dict[str, Any]) -> None:
    """What every phase must satisfy whatever the machine's speed."""
    assert phase["requests"] > 0
    assert phase["window_errors"] == 0 and phase["failures"] == 0
    assert phase["statuses"] == {"200": phase["completed"]}
    assert phase["completed"] >= phase["requests"]  # the window plus warm-up and drain
    assert phase["rps"] == pytest.approx(phase["requests"] / phase["window_s"], abs=0.1)
    assert 0 < phase["p50_ms"] <= phase["p90_ms"] <= phase["p99_ms"]
    assert 0 < phase["ttfb_p50_ms"] <= phase["ttfb_p99_ms"]
    assert phase["cpu_s"]["loadgen"] > 0 and phase["cpu_s"]["upstream"] > 0


@pytest.mark.slow
async def test_bench_counts_one_usage_event_per_request_in_every_scenario(
    fresh_database_url: str, redis_url: str
) -> None:
    report = bench(
        "--concurrency",
        "2",
        "--paced-concurrency",
        "1",
        database_url=fresh_database_url,
        redis_url=redis_url,
    )

    assert report["command"].startswith("tollbooth bench --json")
    assert report["machine"]["nproc"] >= 1 and report["machine"]["memory_gib"] > 0
    phases = report["phases"]
    shapes = {(p["scenario"], p["target"], p["concurrency"]) for p in phases}
    assert shapes == {
        (s, t, c)
        for s, c in (("chat", 2), ("stream", 2), ("paced", 1))
        for t in ("gateway", "direct")
    }
    for phase in phases:
        assert_consistent(phase)
        if phase["target"] == "gateway":
            assert phase["workers"] == 1
            assert phase["events_written"] == phase["completed"]
            assert phase["cpu_s"]["gateway"] > 0
        else:
            assert phase["events_written"] is None and "gateway" not in phase["cpu_s"]

    # A paced stream's first event comes long before its last: 36 pauses of 5 ms.
    paced = next(p for p in phases if p["scenario"] == "paced" and p["target"] == "direct")
    assert paced["ttfb_p50_ms"] < 20 < 150 < paced["p50_ms"]

    comparisons = report["comparisons"]
    assert len(comparisons) == 3
    for row in comparisons:
        gateway = next(
            p for p in phases if p["target"] == "gateway" and p["scenario"] == row["scenario"]
        )
        direct = next(
            p for p in phases if p["target"] == "direct" and p["scenario"] == row["scenario"]
        )
        assert row["added_p50_ms"] == pytest.approx(gateway["p50_ms"] - direct["p50_ms"], abs=1e-3)
        assert row["ratio_gateway_direct"] == pytest.approx(
            gateway["rps"] / direct["rps"], rel=1e-2
        )
        assert row["events_written"] == row["requests_completed"] == gateway["completed"]
    events_target = next(t for t in report["targets"] if t["target"] == "events")
    assert events_target["met"] is True


@pytest.mark.slow
async def test_raw_upstream_and_two_workers_are_metered_alike(
    fresh_database_url: str, redis_url: str
) -> None:
    report = bench(
        "--upstream",
        "raw",
        "--scenarios",
        "chat,stream",
        "--concurrency",
        "4",
        "--compare-workers",
        "1,2",
        "--loadgen-procs",
        "2",
        database_url=fresh_database_url,
        redis_url=redis_url,
    )

    phases = report["phases"]
    gateway = [p for p in phases if p["target"] == "gateway"]
    assert sorted((p["scenario"], p["workers"]) for p in gateway) == [
        ("chat", 1),
        ("chat", 2),
        ("stream", 1),
        ("stream", 2),
    ]
    for phase in phases:
        assert_consistent(phase)
        assert phase["loadgen_procs"] == 2
    for phase in gateway:
        assert phase["events_written"] == phase["completed"]
    assert report["settings"]["upstream"] == "raw"


def test_profile_summary_counts_self_and_cumulative_samples(tmp_path: Path) -> None:
    # py-spy's `--format raw`: one stack per line, root first, then the sample count.
    raw = tmp_path / "profile.txt"
    raw.write_text(
        'process 7:"python -m gateway.cli.main serve";run (gateway/cli/serve.py:50);'
        "handle (gateway/proxy.py:120);admit (gateway/quotas.py:80) 6\n"
        'process 7:"python -m gateway.cli.main serve";run (gateway/cli/serve.py:50);'
        "handle (gateway/proxy.py:131) 3\n"
        'process 7:"python -m gateway.cli.main serve";run (gateway/cli/serve.py:50);'
        "handle (gateway/proxy.py:120);handle (gateway/proxy.py:140) 1\n"
    )

    summary = summarize(raw)

    assert summary.samples == 10
    assert summary.top_self(2) == [
        ("admit (gateway/quotas.py)", 6, 60.0),
        ("handle (gateway/proxy.py)", 4, 40.0),
    ]
    cumulative = dict((f, c) for f, c, _ in summary.top_cumulative(10))
    assert cumulative == {
        "run (gateway/cli/serve.py)": 10,
        "handle (gateway/proxy.py)": 10,
        "admit (gateway/quotas.py)": 6,
    }


def test_a_soak_is_reported_sample_by_sample() -> None:
    settings = BenchOptions(soak_s=60).to_json([])
    report = BenchReport(
        command="tollbooth bench --soak 60",
        machine=machine_info(),
        settings=settings,
        soak=[
            {"elapsed_s": 0.0, "events": 0, "gateway_rss_mib": 187.6},
            {"elapsed_s": 60.0, "events": 58_123, "gateway_rss_mib": 188.9},
        ],
    )
    text = render_text(report)
    assert "soak: steady non-streaming chat" in text
    assert "         60         58,123            188.9" in text
    assert to_json(report)["soak"][1]["gateway_rss_mib"] == 188.9


@pytest.mark.slow
async def test_paced_streams_count_every_event_and_the_gateways_memory(
    fresh_database_url: str, redis_url: str
) -> None:
    tokens, delay_ms = 5, 5
    report = bench(
        "--scenarios",
        "paced-streams",
        "--concurrency",
        "3",
        "--tokens",
        str(tokens),
        "--token-delay-ms",
        str(delay_ms),
        "--stagger-s",
        "0.1",
        database_url=fresh_database_url,
        redis_url=redis_url,
    )

    scenario = report["settings"]["scenarios"]["paced-streams"]
    events_per_stream = tokens + 3  # role, one per token, finish, [DONE]
    assert scenario["events_per_answer"] == events_per_stream
    assert scenario["stagger_s"] == report["settings"]["stagger_s"] == 0.1
    phases = report["phases"]
    assert [(p["scenario"], p["target"], p["concurrency"]) for p in phases] == [
        ("paced-streams", "gateway", 3),
        ("paced-streams", "direct", 3),
        ("paced-streams", "floor", 3),  # through the proxy that only moves bytes
    ]
    for phase in phases:
        assert_consistent(phase)
        # Every stream of the phase (warm-up and drain included) brought all its events,
        # through the gateway exactly as many as straight from the provider.
        assert phase["events"] == phase["completed"] * events_per_stream
        assert 0 < phase["window_events"] <= phase["events"]
        assert phase["events_per_s"] == pytest.approx(
            phase["window_events"] / phase["window_s"], abs=0.1
        )
        # Paced: a stream lasts at least its delays, and its first event comes before.
        assert phase["p50_ms"] >= (tokens + 2) * delay_ms
        assert phase["ttfb_p99_ms"] <= phase["p99_ms"]
        # Run-queue waits are measured for every process group of the phase.
        assert set(phase["wait_s"]) == set(phase["cpu_s"])
        assert all(wait >= 0 for wait in phase["wait_s"].values())
        per_event = phase["cpu_us_per_event"]
        assert per_event["upstream"] == pytest.approx(
            phase["cpu_s"]["upstream"] / phase["window_events"] * 1e6, rel=1e-2
        )
    gateway, direct, floor = phases
    assert gateway["events_written"] == gateway["completed"]
    assert gateway["cpu_us_per_event"]["gateway"] > 0
    assert gateway["rss_before_bytes"] > 0 and gateway["rss_peak_bytes"] > 0
    growth = gateway["rss_peak_bytes"] - gateway["rss_before_bytes"]
    assert gateway["rss_kib_per_stream"] == pytest.approx(growth / 1024 / 3, abs=0.01)
    assert direct["rss_before_bytes"] is None and direct["rss_kib_per_stream"] is None
    # The floor: its own CPU per event, compared with the direct phase run just before it.
    assert floor["cpu_us_per_event"]["floor"] > 0 and "gateway" not in floor["cpu_s"]
    assert floor["events_written"] is None and floor["workers"] is None
    assert floor["versus_direct"]["ratio_to_direct"] == pytest.approx(
        floor["rps"] / direct["rps"], rel=1e-2
    )
    assert floor["versus_direct"]["added_ttfb_p99_ms"] == pytest.approx(
        floor["ttfb_p99_ms"] - direct["ttfb_p99_ms"], abs=1e-3
    )

    (row,) = report["comparisons"]
    assert row["added_ttfb_p99_ms"] == pytest.approx(
        gateway["ttfb_p99_ms"] - direct["ttfb_p99_ms"], abs=1e-3
    )
    assert row["ratio_gateway_direct"] == pytest.approx(gateway["rps"] / direct["rps"], rel=1e-2)
    # Targets at 300, 600, 1 and 2,000 open streams: none of those phases ran here.
    streams_targets = [t for t in report["targets"] if t["target"].startswith("streams_")]
    assert len(streams_targets) == 7
    assert all(t["measured"] is None and t["met"] is False for t in streams_targets)


def test_a_slowed_direct_paced_streams_phase_is_noted() -> None:
    options = BenchOptions(scenarios=("paced-streams",), stream_tokens=100, token_delay_ms=20)
    settings = options.to_json(scenarios(options))

    def direct(concurrency: int, p50_ms: float, ttfb_p99_ms: float) -> PhaseResult:
        return PhaseResult(
            scenario="paced-streams",
            target="direct",
            workers=None,
            concurrency=concurrency,
            loadgen_procs=1,
            window_s=10.0,
            requests=500,
            window_errors=0,
            completed=600,
            statuses={"200": 600},
            failures=0,
            p50_ms=p50_ms,
            p90_ms=p50_ms,
            p99_ms=p50_ms,
            ttfb_p50_ms=0.5,
            ttfb_p99_ms=ttfb_p99_ms,
        )

    report = BenchReport(
        command="tollbooth bench --scenarios paced-streams",
        machine=machine_info(),
        settings=settings,
        # 102 delays of 20 ms: 2.04 s. On time; late first events; streams stretched.
        phases=[direct(100, 2045.0, 3.0), direct(300, 2050.0, 31.0), direct(600, 2300.0, 5.0)],
    )

    notes = [n for n in notes_on(report) if n.startswith("paced streams, direct")]
    assert [n.split(":")[0] for n in notes] == [
        "paced streams, direct at c=300",
        "paced streams, direct at c=600",
    ]
    assert "streams of 2.30 s (paced: 2.04 s)" in notes[1]
    text = render_text(report)
    assert "streams/s  gw/dir  stream s" in text
    (row,) = [line.split() for line in text.splitlines() if line.startswith("  600  direct")]
    assert row[:4] == ["600", "direct", "50.0", "2.30"]  # streams/s, no ratio, stream s


def test_paced_streams_options_from_the_command_line() -> None:
    cpu = min(os.sched_getaffinity(0))
    args = build_parser().parse_args(
        [
            "bench",
            "--scenarios",
            "paced-streams",
            "--concurrency",
            "100,300,600",
            "--tokens",
            "100",
            "--token-delay-ms",
            "20",
            "--pin",
            f"loadgen={cpu}",
            "--profile-concurrency",
            "100",
        ]
    )
    options = options_from(args)

    assert options.scenarios == ("paced-streams",)
    assert options.concurrencies == (100, 300, 600)
    assert options.stream_tokens == 100 and options.token_delay_ms == 20
    # No --stagger-s: one stream's length, 102 delays of 20 ms.
    assert options.stagger() == pytest.approx(2.04)
    assert options.cpus_of("loadgen") == (cpu,) and options.cpus_of("gateway") is None
    assert options.profile_concurrency == 100
    # The floor phase runs unless asked not to.
    assert options.floor is True
    assert options_from(build_parser().parse_args(["bench", "--no-floor"])).floor is False
    # The default scenarios leave the long paced-streams phases out.
    assert "paced-streams" not in options_from(build_parser().parse_args(["bench"])).scenarios
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--pin", "database=0"])
