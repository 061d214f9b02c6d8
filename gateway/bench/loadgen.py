"""The load generator: a raw HTTP/1.1 client on uvloop, cheap enough not to be what is measured.

`python -m gateway.bench.loadgen --port P --path /v1/chat/completions --body-file F
--concurrency C --measure-at T --duration D` opens C keep-alive connections, and each sends
the same hand-built request bytes back to back: the next request leaves from the protocol's
`data_received` as soon as the previous answer is complete, with no task switch in between.
The response parser is minimal: the head up to `\\r\\n\\r\\n`, then a `Content-Length`
body or a chunked body (SSE) up to its 0-length chunk; nothing else is decoded.

Timing: the connections start at once, or with `--stagger S` one after another evenly over
S seconds (so paced streams arrive at a steady rate; that is the warm-up); the measured window is
[T, T + D] on `time.monotonic()` (CLOCK_MONOTONIC, shared by every process on the machine), so
the runner can read CPU counters at the same instants and several generator processes can
share one window. A request counts in the window when it completes inside it. At the window's
end each connection finishes the request in flight and closes, so every request sent gets
its answer.

Output: one JSON object on stdout or `--output FILE` (`Result.to_json`): completions in the
window, their latency and time to first body byte in microseconds, status counts over the
whole run, and the generator's own CPU time inside the window (and how long it waited for a
CPU then). Time to first byte is measured
to the first byte after the response head (for a stream: its first event). For chunked
(SSE) bodies it counts events, i.e. blank-line separators (`\\n\\n`) in the chunks' data,
over the whole run and inside the window (counted when their chunk is complete).

How it fails: a connection that breaks mid-answer or an answer it cannot frame is counted in
`failures` and a new connection replaces it; a refused connect is counted too and ends that
connection's share of the load.
Exit 2 when `--measure-at` has already passed when the generator is ready (the window would
be wrong), 0 otherwise; the runner judges the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

from gateway.bench.procs import run_delay_s

_HEAD_END = b"\r\n\r\n"
_CRLF = b"\r\n"


class FramingError(Exception):
    """A response this client cannot frame (no status line, bad chunk size)."""


def build_request(
    host: str, port: int, method: str, path: str, headers: list[str], body: bytes
) -> bytes:
    """The exact request bytes every worker sends (keep-alive, fixed Content-Length)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += headers
    lines += [f"Content-Length: {len(body)}", "Connection: keep-alive"]
    if body:
        lines.append("Content-Type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Client(asyncio.Protocol):
    """One keep-alive connection that sends the next request from `data_received` as soon as
    the previous answer is complete: no task switch per request, which keeps this cheap."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._status = 0
        self._sent = 0.0
        self._first_body = 0.0
        self._in_body = False
        self._busy = False  # a request is out and its answer is not complete
        self._remaining = -1  # bytes left of a Content-Length body; -1 while chunked
        self._closing = False  # the server said `Connection: close`
        self._last_byte = 0  # of the body's chunk data so far: an event may end across chunks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._busy:
            self._run.result.failures += 1
        self._run.connection_closed()

    def _send(self) -> None:
        assert self._transport is not None
        if time.monotonic() >= self._run.end:
            self._transport.close()
            return
        self._in_body = False
        self._first_body = 0.0
        self._last_byte = 0
        self._busy = True
        self._sent = time.perf_counter()
        self._transport.write(self._run.request)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            done = self._parse()
        except (FramingError, ValueError):
            self._run.result.failures += 1
            self._busy = False
            if self._transport is not None:
                self._transport.abort()
            return
        if not done:
            return
        self._busy = False
        self._run.record(self._status, self._sent, self._first_body)
        if self._closing:
            if self._transport is not None:
                self._transport.close()
        else:
            self._send()

    def _parse(self) -> bool:
        buf = self._buf
        if not self._in_body:
            end = buf.find(_HEAD_END)
            if end < 0:
                return False
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            if not head.startswith(b"http/1.") or len(head) < 12:
                raise FramingError(f"not an HTTP/1 response: {head[:40]!r}")
            self._status = int(head[9:12])
            self._closing = b"\r\nconnection: close" in head
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(_CRLF, at + 2)
                self._remaining = int(head[at + 17 : stop if stop >= 0 else None])
            elif b"\r\ntransfer-encoding: chunked" in head:
                self._remaining = -1
            else:
                raise FramingError("a response with neither Content-Length nor chunked body")
            self._in_body = True
        if buf and not self._first_body:
            self._first_body = time.perf_counter()
        if self._remaining >= 0:
            if len(buf) < self._remaining:
                return False
            del buf[: self._remaining]
            return True
        return self._parse_chunks()

    def _parse_chunks(self) -> bool:
        buf = self._buf
        pos = 0
        events = 0
        try:
            while True:
                eol = buf.find(_CRLF, pos)
                if eol < 0:
                    return False
                size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
                if size == 0:
                    if len(buf) < eol + 4:
                        return False
                    if buf[eol + 2 : eol + 4] != _CRLF:
                        raise FramingError("chunked trailers are not supported")
                    pos = eol + 4
                    return True
                nxt = eol + 2 + size + 2
                if len(buf) < nxt:
                    return False
                data = eol + 2
                events += buf.count(b"\n\n", data, data + size)
                if self._last_byte == 10 and buf[data] == 10:
                    events += 1
                self._last_byte = buf[data + size - 1]
                pos = nxt
        finally:
            del buf[:pos]
            if events:
                self._run.count_events(events)


@dataclass
class Result:
    """What one generator process measured (times in microseconds)."""

    concurrency: int
    window_s: float
    latency_us: list[int] = field(default_factory=list)
    ttfb_us: list[int] = field(default_factory=list)
    window_errors: int = 0  # completions in the window with a status other than 200
    statuses: Counter[int] = field(default_factory=Counter)  # the whole run, warm-up included
    failures: int = 0  # broken connections or unframeable responses, the whole run
    cpu_s: float = 0.0  # this process's CPU time inside the window
    events: int = 0  # SSE events received, the whole run
    window_events: int = 0  # of those, received inside the window
    wait_s: float = 0.0  # inside the window, runnable but waiting for a CPU

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "window_s": self.window_s,
            "cpu_s": round(self.cpu_s, 6),
            "latency_us": self.latency_us,
            "ttfb_us": self.ttfb_us,
            "window_errors": self.window_errors,
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "failures": self.failures,
            "events": self.events,
            "window_events": self.window_events,
            "wait_s": round(self.wait_s, 6),
        }


class _Run:
    """The state the connections of one generator share."""

    def __init__(
        self, host: str, port: int, request: bytes, concurrency: int, start: float, end: float
    ) -> None:
        self.host, self.port, self.request = host, port, request
        self.start, self.end = start, end
        self.result = Result(concurrency=concurrency, window_s=end - start)
        self._open = 0
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reconnects: set[asyncio.Task[None]] = set()

    def count_events(self, n: int) -> None:
        self.result.events += n
        if self.start <= time.monotonic() <= self.end:
            self.result.window_events += n

    def record(self, status: int, sent: float, first_body: float) -> None:
        done = time.perf_counter()
        result = self.result
        result.statuses[status] += 1
        if self.start <= time.monotonic() <= self.end:
            result.latency_us.append(int((done - sent) * 1e6))
            result.ttfb_us.append(int(((first_body or done) - sent) * 1e6))
            if status != 200:
                result.window_errors += 1

    def open_connections(self, concurrency: int, stagger_s: float) -> list[asyncio.Task[None]]:
        """Start `concurrency` connections, the i-th `i * stagger_s / concurrency` s from now.
        They count as open from now, so the run cannot end while some have yet to start."""
        self._open += concurrency
        step = stagger_s / concurrency
        return [asyncio.ensure_future(self._connect_after(i * step)) for i in range(concurrency)]

    async def _connect_after(self, delay_s: float) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        await self.connect()

    async def connect(self) -> None:
        """Open one connection; the caller has counted it in `_open`."""
        try:
            await asyncio.get_running_loop().create_connection(
                lambda: _Client(self), self.host, self.port
            )
        except OSError:
            self.result.failures += 1
            self._open -= 1  # a refused connect ends this connection's worker
            self._maybe_done()

    def connection_closed(self) -> None:
        """A connection ended: open another while the run lasts (the server may close)."""
        self._open -= 1
        if time.monotonic() < self.end:
            self._open += 1
            task = asyncio.ensure_future(self.connect())
            self._reconnects.add(task)
            task.add_done_callback(self._reconnected)
        self._maybe_done()

    def _reconnected(self, task: asyncio.Task[None]) -> None:
        self._reconnects.discard(task)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._open == 0 and not self._reconnects and not self._done.done():
            self._done.set_result(None)

    async def wait(self) -> None:
        await self._done


async def generate(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    measure_at: float,
    duration_s: float,
    stagger_s: float = 0.0,
) -> Result:
    """Run `concurrency` connections until `measure_at + duration_s` (monotonic clock), their
    starts spread over `stagger_s`."""
    end = measure_at + duration_s
    run = _Run(host, port, request, concurrency, measure_at, end)
    # The generator reads its own CPU time at the window's edges: it may have exited before
    # the runner's last sample.
    loop = asyncio.get_running_loop()
    marks: list[tuple[float, float]] = []

    def mark() -> None:
        marks.append((time.process_time(), run_delay_s(os.getpid())))

    for edge in (measure_at, end):
        loop.call_later(edge - time.monotonic(), mark)
    await asyncio.gather(*run.open_connections(concurrency, stagger_s))
    await run.wait()
    await asyncio.sleep(max(0.0, end - time.monotonic()) + 0.001)
    if len(marks) == 2:
        run.result.cpu_s = marks[1][0] - marks[0][0]
        run.result.wait_s = marks[1][1] - marks[0][1]
    return run.result


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.bench.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", default="POST")
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'")
    parser.add_argument("--body-file", type=Path, help="request body (default: none)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument(
        "--measure-at",
        type=float,
        help="time.monotonic() when the window opens (default: now + --warmup)",
    )
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--stagger", type=float, default=0.0, help="spread the connections' starts over S seconds"
    )
    parser.add_argument("--output", type=Path, help="write the JSON here (default: stdout)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    body = args.body_file.read_bytes() if args.body_file else b""
    request = build_request(args.host, args.port, args.method, args.path, args.header, body)
    measure_at = args.measure_at if args.measure_at is not None else time.monotonic() + args.warmup
    if time.monotonic() >= measure_at:
        print("loadgen: the measured window opened before the generator was ready", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        runner = asyncio.Runner()
    else:
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with runner:
        result = runner.run(
            generate(
                args.host,
                args.port,
                request,
                args.concurrency,
                measure_at,
                args.duration,
                args.stagger,
            )
        )
    data = orjson.dumps(result.to_json()) + b"\n"
    if args.output is not None:
        args.output.write_bytes(data)
    else:
        _write_all(sys.stdout.fileno(), data)
    return 0


def _write_all(fd: int, data: bytes) -> None:
    # A plain sys.stdout write was seen returning short after a uvloop run once the pipe
    # was full, so write in a loop on a blocking descriptor.
    os.set_blocking(fd, True)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    sys.exit(main())
