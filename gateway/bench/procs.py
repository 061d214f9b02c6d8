"""The benchmark's processes: starting them, stopping them, and reading their CPU time.

`start(argv, log)` starts a child with its output in a log file (a full pipe would stall
the gateway), optionally pinned to some CPUs (`pinned_to(cpus)`, like `taskset -c`; its
children inherit the mask); `stop(proc)` sends SIGTERM, waits, and kills it if it
lingers. Only processes this module started are ever signalled, each by its own pid.

`ProcessGroup` is a named set of processes whose CPU time (user + system, read from
/proc/PID/stat in clock ticks) is summed: given root pids, with or without their descendants
(the gateway's workers are children of `serve`; Postgres backends are children of the
postmaster). Descendants are found again at every sample, so a process born during a phase
counts from zero. A process that exits during a phase loses what it used since the last
sample: the groups measured here (workers, backends of a pool, generators that outlive the
window) do not exit mid-phase.

`ProcessGroup.wait_s()` is how long the groups' main threads (a gateway worker's event loop)
were runnable but waited for a CPU (/proc/PID/schedstat's run delay): on a shared machine
it says how much of a phase's latency was the scheduler's, not the process's own work.

`machine_info()` is the machine's size for the report's header. `machine_busy_s()` is the
CPU time every process on the machine used (from /proc/stat), so the runner can tell how much
of a phase went to processes that are not the benchmark's. Linux only (/proc).
"""

from __future__ import annotations

import asyncio
import os
import platform
import signal
from asyncio.subprocess import Process
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STOP_TIMEOUT_S = 15.0


def pinned_to(cpus: Sequence[int] | None) -> Callable[[], None] | None:
    """A `preexec_fn` that pins the child to `cpus` (None: no pinning)."""
    if not cpus:
        return None
    mask = set(cpus)

    def pin() -> None:
        os.sched_setaffinity(0, mask)

    return pin


async def start(
    argv: Sequence[str],
    log: Path,
    env: dict[str, str] | None = None,
    cpus: Sequence[int] | None = None,
) -> Process:
    """Start `argv` with stdout and stderr appended to `log`, pinned to `cpus` if given."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            preexec_fn=pinned_to(cpus),
        )


async def stop(proc: Process, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def wait_for_line(log: Path, needle: str, proc: Process, timeout_s: float) -> str:
    """The first line of `log` holding `needle`; RuntimeError if `proc` exits or time runs out."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        text = await asyncio.to_thread(_read, log)
        for line in text.splitlines():
            if needle in line:
                return line
        if proc.returncode is not None:
            raise RuntimeError(f"{log.name}: the process exited ({proc.returncode}); see {log}")
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"{log.name}: no {needle!r} after {timeout_s:.0f} s; see {log}")
        await asyncio.sleep(0.05)


_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) from /proc/PID/stat; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) * _TICK_S


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (VmRSS); 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_delay_s(pid: int) -> float:
    """Seconds the process's main thread was runnable but not running; 0 if it is gone."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


@dataclass
class ProcessGroup:
    name: str
    pids: list[int] = field(default_factory=list)
    descendants: bool = True

    def members(self) -> list[int]:
        found = set(self.pids)
        if self.descendants and found:
            children: dict[int, list[int]] = {}
            for pid in _all_pids():
                stat = _stat(pid)
                if stat is not None:
                    children.setdefault(stat[0], []).append(pid)
            todo = list(found)
            while todo:
                for child in children.get(todo.pop(), []):
                    if child not in found:
                        found.add(child)
                        todo.append(child)
        return sorted(found)

    def rss_bytes(self) -> int:
        return sum(rss_bytes(pid) for pid in self.members())

    def cpu_s(self) -> float:
        return sum(stat[1] for pid in self.members() if (stat := _stat(pid)) is not None)

    def wait_s(self) -> float:
        return sum(run_delay_s(pid) for pid in self.members())


def find_pids(marker: str) -> list[int]:
    """Pids of processes whose command line mentions `marker` (e.g. an embedded data dir)."""
    pids = []
    for pid in _all_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and pid != os.getpid():
            pids.append(pid)
    return pids


def sample(groups: Iterable[ProcessGroup]) -> dict[str, float]:
    return {group.name: group.cpu_s() for group in groups}


def sample_wait(groups: Iterable[ProcessGroup]) -> dict[str, float]:
    return {group.name: group.wait_s() for group in groups}


def machine_busy_s() -> float:
    """CPU seconds spent not idle by the whole machine since boot (all cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _mem_total_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def machine_info() -> dict[str, Any]:
    """The machine's size, so a table is never quoted without it."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load1, load5, _ = os.getloadavg()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(_mem_total_kib() / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_1m_5m": [round(load1, 2), round(load5, 2)],
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
