"""`run_bench(options, command)`: the whole benchmark, each part in its own OS process.

In a work directory (a temp dir unless one is given): resolve Postgres and Valkey (the
configured URLs from the environment, or embedded servers under `WORKDIR/data`, started here
and shared with the children through the data dir), start the upstream (`tollbooth
mock-provider`, or with `upstream="raw"` the replaying `gateway.bench.upstream`), write a
config.yaml with one `bench` tier whose limits are large but finite (so the quota Lua runs on
every request), create a customer and a key with the CLI (`customers create`, `keys create`),
then for each `workers` value start `tollbooth serve`, wait for GET /health 200, and run
every scenario at every concurrency against it; with the first `workers` value, each gateway
phase is followed at once by the same phase directly against the upstream (the gateway idle
meanwhile), so that a pair compared in the report ran under the same load from the rest of
the machine. With `options.floor`, a paced-streams pair is followed by a third phase, "floor",
through `gateway.bench.floor_proxy` (a proxy that only moves bytes, started once for the run
and pinned like the gateway): its CPU per relayed event is what any proxy costs here. A phase
is one or more load generator processes (`gateway.bench.loadgen`) sharing a measured window;
CPU counters of the gateway (or the floor proxy), the upstream, Postgres + Valkey and the
generators are read at the window's edges, and the gateway's RSS before the phase and every
RSS_SAMPLE_S inside the window (its peak). A scenario with a stagger (paced-streams) opens
the window only after every connection has started and the warm-up has passed. After a
gateway phase the runner waits for the usage writer to flush and counts the rows the phase
added to `usage_events`. With `options.cpus`, the gateway (and its workers), the upstream
and the generators run pinned to the CPUs named for them (the floor proxy with the gateway).

How it fails: a child that exits early, a health check or a phase that does not finish in
time raises `BenchError` naming the log file under WORKDIR/logs; every process started here
is stopped (SIGTERM, then SIGKILL) and the embedded servers are released on the way out.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import yaml

from gateway.bench import procs
from gateway.bench.procs import ProcessGroup
from gateway.bench.profile import pyspy_argv, pyspy_available, summarize
from gateway.bench.report import notes_on
from gateway.bench.results import BenchReport, PhaseResult, merge_loadgen, phase_result
from gateway.bench.scenarios import (
    PACED_STREAMS,
    PROVIDER_KEY_ENV,
    BenchOptions,
    Scenario,
    gateway_config,
    scenarios,
)
from gateway.cli.runtime import infrastructure_for
from gateway.config import load_settings
from storage.embedded.servers import EmbeddedError

PROVIDER_KEY = "sk-bench-mock-provider"
STARTUP_S = 1.5  # a generator process is ready well within this (interpreter + uvloop)
HEALTH_TIMEOUT_S = 90.0
FLUSH_TIMEOUT_S = 30.0
FLUSH_QUIET_S = 3.0
SOAK_SAMPLE_S = 30.0
RSS_SAMPLE_S = 0.5
PROFILE_CONCURRENCY = 16


class BenchError(Exception):
    """The benchmark could not run; the message says which process and where its log is."""


@dataclass(frozen=True)
class Target:
    name: str  # "gateway", "direct" or "floor"
    port: int
    authorization: str
    groups: tuple[ProcessGroup, ...]
    workers: int | None = None


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli.main", *args]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="tollbooth-bench-") as tmp:
        yield Path(tmp)


def run_bench(options: BenchOptions, command: str) -> BenchReport:
    """Run every phase; raises BenchError. Prints progress on stderr."""
    with _workdir(options.workdir) as workdir:
        (workdir / "logs").mkdir(exist_ok=True)
        data_dir = workdir / "data"
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(gateway_config(data_dir, 1, _free_port())))
        settings = load_settings(str(config_path))
        try:
            with infrastructure_for(settings) as infra:
                # Embedded servers carry the data dir on their command line; servers named
                # by the environment are not ours to measure (the group stays empty).
                infra_group = ProcessGroup("infra", procs.find_pids(str(data_dir)))
                bench = _Bench(options, workdir, infra.database_url, infra_group)
                return asyncio.run(bench.run(command))
        except EmbeddedError as exc:
            raise BenchError(str(exc)) from exc


def progress(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


class _Bench:
    def __init__(
        self, options: BenchOptions, workdir: Path, database_url: str, infra_group: ProcessGroup
    ) -> None:
        self.options = options
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.database_url = database_url
        self.infra_group = infra_group
        self.config_path = workdir / "config.yaml"
        self.env = {**os.environ, PROVIDER_KEY_ENV: PROVIDER_KEY}
        self.customer = "bench-" + uuid.uuid4().hex[:10]
        self.scenarios = scenarios(options)
        self.upstream_port = 0
        for scenario in self.scenarios:
            (workdir / f"{scenario.name}.json").write_bytes(scenario.body)

    async def run(self, command: str) -> BenchReport:
        report = BenchReport(
            command=command,
            machine=procs.machine_info(),
            settings=self.options.to_json(self.scenarios),
        )
        async with AsyncExitStack() as stack:
            upstream = await self._start_upstream(stack)
            key = await self._create_key()
            db = await asyncpg.connect(self.database_url)
            stack.push_async_callback(db.close)
            direct = Target("direct", self.upstream_port, f"Bearer {PROVIDER_KEY}", (upstream,))
            floor = await self._start_floor(stack, upstream)
            for index, workers in enumerate(self.options.workers):
                async with AsyncExitStack() as gateway_stack:
                    serve, port = await self._start_gateway(gateway_stack, workers)
                    target = Target(
                        "gateway",
                        port,
                        f"Bearer {key}",
                        (ProcessGroup("gateway", [serve.pid]), upstream, self.infra_group),
                        workers,
                    )
                    for scenario in self.scenarios:
                        for concurrency in scenario.concurrencies:
                            report.phases.append(
                                await self._phase(scenario, target, concurrency, db)
                            )
                            if index == 0:
                                report.phases += await self._baselines(
                                    scenario, direct, floor, concurrency
                                )
                    if self.options.profile and index == 0:
                        report.profile, profiled = await self._profile(target, serve.pid, db)
                        report.phases.append(profiled)
                    if self.options.soak_s > 0 and index == 0:
                        report.soak = await self._soak(target)
        report.notes += notes_on(report)
        return report

    async def _start_upstream(self, stack: AsyncExitStack) -> ProcessGroup:
        tokens = str(self.options.stream_tokens)
        if self.options.upstream == "raw":
            argv = [
                sys.executable,
                "-m",
                "gateway.bench.upstream",
                "--port",
                "0",
                "--output-tokens",
                tokens,
            ]
        else:
            argv = _cli(
                "mock-provider",
                "--port",
                "0",
                "--output-tokens",
                tokens,
                "--request-log-limit",
                "0",
            )
        log = self.logs / f"upstream-{self.options.upstream}.log"
        proc = await procs.start(argv, log, self.env, self.options.cpus_of("upstream"))
        stack.push_async_callback(procs.stop, proc)
        line = await procs.wait_for_line(log, "listening on", proc, 60)
        self.upstream_port = int(line.rsplit(":", 1)[1])
        progress(
            f"upstream ({self.options.upstream}) on 127.0.0.1:{self.upstream_port} (pid {proc.pid})"
        )
        return ProcessGroup("upstream", [proc.pid])

    async def _start_floor(self, stack: AsyncExitStack, upstream: ProcessGroup) -> Target | None:
        """The floor proxy in front of the upstream, when a scenario will use it."""
        if not self.options.floor or all(s.name != PACED_STREAMS for s in self.scenarios):
            return None
        argv = [
            sys.executable,
            "-m",
            "gateway.bench.floor_proxy",
            "--port",
            "0",
            "--upstream-port",
            str(self.upstream_port),
        ]
        log = self.logs / "floor-proxy.log"
        proc = await procs.start(argv, log, self.env, self.options.cpus_of("gateway"))
        stack.push_async_callback(procs.stop, proc)
        try:
            line = await procs.wait_for_line(log, "listening on", proc, 60)
        except RuntimeError as exc:
            raise BenchError(str(exc)) from exc
        port = int(line.rsplit(":", 1)[1])
        progress(f"floor proxy on 127.0.0.1:{port} (pid {proc.pid})")
        group = ProcessGroup("floor", [proc.pid])
        return Target("floor", port, f"Bearer {PROVIDER_KEY}", (group, upstream))

    async def _baselines(
        self, scenario: Scenario, direct: Target, floor: Target | None, concurrency: int
    ) -> list[PhaseResult]:
        """The direct phase, then for paced-streams the floor phase compared with it."""
        straight = await self._phase(scenario, direct, concurrency, None)
        if floor is None or scenario.name != PACED_STREAMS:
            return [straight]
        floored = await self._phase(scenario, floor, concurrency, None)
        return [straight, replace(floored, compared_with=straight)]

    async def _create_key(self) -> str:
        await self._tool("customers", "create", self.customer, "--tier", "bench")
        out = await self._tool("keys", "create", "--customer", self.customer, "--name", "bench")
        return out.strip().splitlines()[-1]

    async def _tool(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            *_cli(*args, "--config", str(self.config_path)),
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        if proc.returncode != 0:
            raise BenchError(f"tollbooth {args[0]} {args[1]} failed: {err.decode().strip()}")
        return out.decode()

    async def _start_gateway(
        self, stack: AsyncExitStack, workers: int
    ) -> tuple[asyncio.subprocess.Process, int]:
        port = _free_port()
        self.config_path.write_text(
            yaml.safe_dump(gateway_config(self.workdir / "data", self.upstream_port, port))
        )
        log = self.logs / f"gateway-w{workers}.log"
        proc = await procs.start(
            _cli(
                "serve",
                "--config",
                str(self.config_path),
                "--port",
                str(port),
                "--workers",
                str(workers),
            ),
            log,
            self.env,
            self.options.cpus_of("gateway"),
        )
        stack.push_async_callback(procs.stop, proc)
        await self._wait_healthy(port, proc, log)
        progress(f"gateway on 127.0.0.1:{port}, {workers} worker(s) (pid {proc.pid})")
        return proc, port

    async def _wait_healthy(self, port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if proc.returncode is not None:
                    raise BenchError(f"the gateway exited ({proc.returncode}); see {log}")
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise BenchError(f"the gateway was not healthy within {HEALTH_TIMEOUT_S:.0f} s; see {log}")

    async def _phase(
        self,
        scenario: Scenario,
        target: Target,
        concurrency: int,
        db: asyncpg.Connection | None,
        *,
        label: str = "",
    ) -> PhaseResult:
        opts = self.options
        n_procs = max(1, min(opts.loadgen_procs, concurrency))
        shares = [
            concurrency // n_procs + (1 if i < concurrency % n_procs else 0) for i in range(n_procs)
        ]
        before = await self._events(db) if db is not None else 0
        gateway = target.groups[0] if target.name == "gateway" else None
        rss_before = gateway.rss_bytes() if gateway is not None else None
        measure_at = time.monotonic() + STARTUP_S + scenario.stagger_s + opts.warmup_s
        end = measure_at + opts.duration_s
        results = [self.workdir / f"loadgen-{i}.json" for i in range(n_procs)]
        gens = [
            await asyncio.create_subprocess_exec(
                *self._loadgen_argv(scenario, target, share, measure_at),
                "--output",
                str(path),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=procs.pinned_to(opts.cpus_of("loadgen")),
            )
            for share, path in zip(shares, results, strict=True)
        ]
        # The generators report their own CPU time (they may exit before the last sample).
        groups = tuple(g for g in target.groups if g.pids)
        own = ProcessGroup("runner", [os.getpid()], False)
        await asyncio.sleep(max(0.0, measure_at - time.monotonic()))
        cpu0, busy0, own0 = procs.sample(groups), procs.machine_busy_s(), own.cpu_s()
        wait0 = procs.sample_wait(groups)
        rss_peak = await self._rss_peak(gateway, end)
        cpu1, busy1, own1 = procs.sample(groups), procs.machine_busy_s(), own.cpu_s()
        wait1 = procs.sample_wait(groups)
        outputs = []
        for gen, path in zip(gens, results, strict=True):
            try:
                _, err = await asyncio.wait_for(gen.communicate(), 60)
            except TimeoutError:
                gen.kill()
                raise BenchError("a load generator did not finish 60 s after its window") from None
            if gen.returncode != 0:
                raise BenchError(f"the load generator failed: {err.decode().strip()}")
            outputs.append(orjson.loads(path.read_bytes()))
            path.unlink()
        totals = merge_loadgen(outputs)
        cpu = {name: cpu1[name] - cpu0[name] for name in cpu1}
        cpu["loadgen"] = totals.cpu_s
        other = (busy1 - busy0) - sum(cpu.values()) - (own1 - own0)
        events = None
        if db is not None:
            events = await self._events(db, expect=before + totals.completed) - before
        result = phase_result(
            scenario=scenario.name,
            target=label or target.name,
            workers=target.workers,
            concurrency=concurrency,
            loadgen_procs=n_procs,
            totals=totals,
            cpu_s=cpu,
            other_cpu_s=max(0.0, other),
            events_written=events,
            rss_before_bytes=rss_before,
            rss_peak_bytes=rss_peak,
            wait_s={
                **{name: wait1[name] - wait0[name] for name in wait1},
                "loadgen": totals.wait_s,
            },
        )
        progress(
            f"{result.target:8} w={target.workers or '-'} {scenario.name:6} "
            f"c={concurrency:<3} {result.rps:8.0f} req/s  p50 {result.p50_ms:.2f} ms  "
            f"ttfb p99 {result.ttfb_p99_ms:.2f} ms  {result.events_per_s:8.0f} events/s  "
            f"errors {result.window_errors + result.failures}"
        )
        return result

    async def _rss_peak(self, gateway: ProcessGroup | None, end: float) -> int | None:
        """Sleep until `end`; the gateway's largest RSS sampled meanwhile (None: no gateway)."""
        peak: int | None = None
        while True:
            if gateway is not None:
                peak = max(peak or 0, gateway.rss_bytes())
            left = end - time.monotonic()
            if left <= 0:
                return peak
            await asyncio.sleep(min(RSS_SAMPLE_S if gateway is not None else left, left))

    async def _soak(self, target: Target) -> list[dict[str, Any]]:
        """A steady chat load for `soak_s`, the gateway's RSS sampled every SOAK_SAMPLE_S."""
        chat = next(s for s in self.scenarios if s.name == "chat")
        gateway = target.groups[0]
        duration = self.options.soak_s
        measure_at = time.monotonic() + STARTUP_S
        argv = self._loadgen_argv(
            chat, target, self.options.soak_concurrency, measure_at, duration_s=duration
        )
        output = self.workdir / "loadgen-soak.json"
        gen = await asyncio.create_subprocess_exec(
            *argv,
            "--output",
            str(output),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(max(0.0, measure_at - time.monotonic()))
        rows: list[dict[str, Any]] = []
        before = await self._events_now()
        start = time.monotonic()
        while True:
            elapsed = time.monotonic() - start
            rows.append(
                {
                    "elapsed_s": round(elapsed, 1),
                    "events": await self._events_now() - before,
                    "gateway_rss_mib": round(gateway.rss_bytes() / 2**20, 1),
                }
            )
            progress(f"soak     {elapsed:6.0f} s  rss {rows[-1]['gateway_rss_mib']} MiB")
            if elapsed >= duration:
                break
            await asyncio.sleep(min(SOAK_SAMPLE_S, duration - elapsed))
        _, err = await asyncio.wait_for(gen.communicate(), 120)
        if gen.returncode != 0:
            raise BenchError(f"the soak's load generator failed: {err.decode().strip()}")
        output.unlink(missing_ok=True)
        return rows

    async def _events_now(self) -> int:
        db = await asyncpg.connect(self.database_url)
        try:
            return int(await db.fetchval("SELECT count(*) FROM usage_events"))
        finally:
            await db.close()

    def _loadgen_argv(
        self,
        scenario: Scenario,
        target: Target,
        concurrency: int,
        measure_at: float,
        *,
        duration_s: float | None = None,
    ) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "gateway.bench.loadgen",
            "--port",
            str(target.port),
            "--path",
            scenario.path,
            "--body-file",
            str(self.workdir / f"{scenario.name}.json"),
            "--concurrency",
            str(concurrency),
            "--measure-at",
            repr(measure_at),
            "--duration",
            str(duration_s if duration_s is not None else self.options.duration_s),
            "--header",
            f"Authorization: {target.authorization}",
            "--stagger",
            str(scenario.stagger_s),
        ]
        for header in scenario.headers:
            argv += ["--header", header]
        return argv

    async def _events(self, db: asyncpg.Connection | None, expect: int | None = None) -> int:
        """Rows of the bench customer; with `expect`, wait until the writer has flushed them
        (or the count has not moved for FLUSH_QUIET_S)."""
        assert db is not None
        query = "SELECT count(*) FROM usage_events WHERE customer_id = $1"
        count = int(await db.fetchval(query, self.customer))
        if expect is None:
            return count
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        last, moved_at = count, time.monotonic()
        while count < expect and time.monotonic() < deadline:
            if time.monotonic() - moved_at > FLUSH_QUIET_S:
                break
            await asyncio.sleep(0.1)
            count = int(await db.fetchval(query, self.customer))
            if count != last:
                last, moved_at = count, time.monotonic()
        return count

    async def _profile(
        self, target: Target, serve_pid: int, db: asyncpg.Connection
    ) -> tuple[dict[str, Any] | None, PhaseResult]:
        """A phase of the first scenario run (non-streaming chat when it ran) again, under
        py-spy (its numbers show the sampling's cost; they are not the benchmark's): at
        `profile_concurrency`, by default 16, or for paced-streams its middle concurrency."""
        if pyspy_available() is None:
            raise BenchError("--profile needs py-spy on PATH (pip install py-spy)")
        assert self.options.profile is not None
        scenario = next((s for s in self.scenarios if s.name == "chat"), self.scenarios[0])
        concurrency = self.options.profile_concurrency or PROFILE_CONCURRENCY
        if scenario.name == PACED_STREAMS and self.options.profile_concurrency is None:
            ordered = sorted(scenario.concurrencies)
            concurrency = ordered[(len(ordered) - 1) // 2]
        out = self.options.profile
        # py-spy starts sampling as soon as it attached: give it the warm-up to do so, and a
        # window as long as the phase's.
        argv = pyspy_argv(
            serve_pid,
            out,
            STARTUP_S + scenario.stagger_s + self.options.warmup_s + self.options.duration_s,
            native=self.options.profile_native,
        )
        log = self.logs / "py-spy.log"
        spy = await procs.start(argv, log)
        try:
            phase = await self._phase(scenario, target, concurrency, db, label="profiled")
            await asyncio.wait_for(spy.wait(), 60)
        finally:
            await procs.stop(spy)
        summary = summarize(out)
        if not summary.samples:
            progress(f"py-spy wrote no samples; see {log}")
            return None, phase
        return {"phase": f"{scenario.title} c={concurrency}", **summary.to_json()}, phase
