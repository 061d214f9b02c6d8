"""`ScriptBatcher`: Lua script calls from one event loop share a Redis round trip.

Every call made while the previous batch is on the wire (or within the same loop iteration)
joins the next batch: one write of all its EVALSHA commands on one redis-py connection, then
its replies read in order (Redis pipelining; not MULTI: each script is atomic on its own).
Under load this turns N admits and settles into one round trip and one syscall each way,
and skips redis-py's per-command pool checkout, retry wrapper, write-timeout task and
per-reply timer: one timeout (the client's `socket_timeout`) bounds a whole batch. A call
alone on an idle batcher goes out at once, so a quiet gateway pays no extra latency.

The connection is one checked out of the client's pool (so closing the client closes it) and
held for the batcher's life; `aclose()` returns it after the queue is empty.

Failure semantics, per call:
- a reply that is a Redis error raises `redis.exceptions.ResponseError` in that call only;
- NOSCRIPT (Redis restarted, or SCRIPT FLUSH): the script is loaded and the call sent again;
- the connection fails or the batch's replies do not all come within the client's
  `socket_timeout`: the connection is dropped, and the calls still without a reply are sent
  again on a new one, up to `retries` times with a short backoff; then they raise
  `redis.exceptions.ConnectionError` or `TimeoutError`. Sending again is safe only for
  idempotent scripts; the quota scripts are (a second admit of a request id is answered
  `duplicate`, a second settle is a no-op);
- no connection can be checked out of a full pool: `redis.exceptions.MaxConnectionsError`.
A call whose caller was cancelled still runs; its reply is dropped.

Replicated acknowledgement (`wait_replicas` > 0, for a primary that may fail over, as under
Sentinel): each batch ends with `WAIT wait_replicas WAIT_TIMEOUT_MS`, and its replies are
handed out only once that many replicas have the batch's writes. Fewer in time counts as a
broken connection: it is dropped and the whole batch sent again (on a new connection, so
after a failover to the new primary). Without it, an admit the old primary answered but never
shipped is lost when its replica is promoted, and the customer is admitted once more than
its limit.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

log = logging.getLogger(__name__)

MAX_BATCH = 512
RETRY_BACKOFF_S = (0.01, 0.05, 0.1)
WAIT_TIMEOUT_MS = 250  # how long a batch waits for its replicas (wait_replicas > 0)

Arg = bytes | str | int


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A script's source and its SHA1, the name EVALSHA calls it by."""

    source: str
    sha: str = field(init=False)
    # The sha as a RESP bulk string, packed once for every call.
    sha_bulk: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sha = hashlib.sha1(self.source.encode()).hexdigest()
        object.__setattr__(self, "sha", sha)
        object.__setattr__(self, "sha_bulk", _bulk(sha))


def _bulk(value: Arg) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack_evalsha(script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> bytes:
    """The RESP bytes of `EVALSHA sha numkeys *keys *args`."""
    return b"".join(
        (evalsha_head(script, len(keys), len(args)), bulk_strings(keys), bulk_strings(args))
    )


def evalsha_head(script: LuaScript, numkeys: int, numargs: int) -> bytes:
    """The RESP bytes of `EVALSHA sha numkeys` for a call of `numkeys` keys and `numargs`
    arguments: followed by those keys and arguments as `bulk_strings`, in order, it is the
    command `pack_evalsha` makes (so a caller packs the parts that never change once)."""
    return b"".join(
        (b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + numkeys + numargs), script.sha_bulk, _bulk(numkeys))
    )


def bulk_strings(values: Sequence[Arg]) -> bytes:
    """`values` as RESP bulk strings, back to back."""
    return b"".join([_bulk(value) for value in values])


@dataclass(slots=True)
class _Call:
    script: LuaScript
    packed: bytes
    future: asyncio.Future[Any]
    attempts: int = 0


class _Unanswered(Exception):
    """The connection broke: these calls have no reply yet."""

    def __init__(self, calls: list[_Call], cause: redis.exceptions.RedisError) -> None:
        super().__init__(str(cause))
        self.calls = calls
        self.cause = cause


class ScriptBatcher:
    def __init__(self, client: Redis, *, retries: int = 2, wait_replicas: int = 0) -> None:
        self._pool = client.connection_pool
        self._retries = retries
        self._wait = (
            b"*3\r\n$4\r\nWAIT\r\n" + _bulk(wait_replicas) + _bulk(WAIT_TIMEOUT_MS)
            if wait_replicas > 0
            else None
        )
        self._wait_replicas = wait_replicas
        self._queue: collections.deque[_Call] = collections.deque()
        self._connection: AbstractConnection | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # a deferred call's own flush
        self._closed = False
        self._timeout_s: float | None = None  # the connection's socket_timeout, per batch
        self.batches = 0  # round trips made (for tests and metrics)

    async def call(self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run the script (EVALSHA) in the next batch and return its reply."""
        return await self.submit(script, keys, args)

    def submit(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[Arg], *, defer_s: float = 0.0
    ) -> asyncio.Future[Any]:
        """Queue the call and return the future of its reply (for callers that don't wait).

        `defer_s` > 0: the call need not go at once; it joins the next batch another call
        starts, or goes on its own after `defer_s` (a settle rides with the next admit)."""
        return self.submit_packed(script, pack_evalsha(script, keys, args), defer_s=defer_s)

    async def call_packed(self, script: LuaScript, packed: bytes) -> Any:
        """`call` with the command packed already (`pack_evalsha`, `evalsha_head`)."""
        return await self.submit_packed(script, packed)

    def submit_packed(
        self, script: LuaScript, packed: bytes, *, defer_s: float = 0.0
    ) -> asyncio.Future[Any]:
        """`submit` with the command packed already (`pack_evalsha`, `evalsha_head`)."""
        if self._closed:
            raise RuntimeError("ScriptBatcher is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Call(script, packed, future))
        if defer_s > 0 and self._flusher is None:
            if self._timer is None:
                self._timer = loop.call_later(defer_s, self._start_flush)
        else:
            self._start_flush()
        return future

    def _start_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flusher is None and self._queue:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="redis-script-batch"
            )

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def aclose(self) -> None:
        """Let queued calls finish, then give the connection back to the pool."""
        self._closed = True
        self._start_flush()  # deferred calls go now
        if self._flusher is not None:
            await asyncio.wait({self._flusher})
        if self._connection is not None:
            self._connection.socket_timeout = self._timeout_s
            await self._pool.release(self._connection)
            self._connection = None

    async def _flush(self) -> None:
        batch: list[_Call] = []
        try:
            while self._queue:
                count = min(len(self._queue), MAX_BATCH)
                batch = [self._queue.popleft() for _ in range(count)]
                await self._run(batch)
        except BaseException as exc:  # cancelled at shutdown: no caller is left hanging
            error = redis.exceptions.ConnectionError(f"script batch stopped: {exc!r}")
            _fail([*batch, *self._queue], error)
            self._queue.clear()
            if self._connection is not None:
                await self._connection.disconnect(nowait=True)
            raise
        finally:
            self._flusher = None

    async def _run(self, batch: list[_Call]) -> None:
        while batch:
            for call in batch:
                call.attempts += 1
            try:
                if self._connection is None:
                    self._connection = await self._take_connection()
                await self._exchange(self._connection, batch)
                return
            except redis.exceptions.MaxConnectionsError as exc:
                _fail(batch, exc)
                return
            except _Unanswered as broken:
                batch, error = broken.calls, broken.cause
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                error = exc  # no connection at all (get_connection connects)
            _fail([c for c in batch if c.attempts > self._retries], error)
            batch = [c for c in batch if c.attempts <= self._retries]
            if batch:
                log.warning("redis script batch: %d calls sent again after: %s", len(batch), error)
                await asyncio.sleep(
                    RETRY_BACKOFF_S[min(batch[0].attempts, len(RETRY_BACKOFF_S)) - 1]
                )

    async def _take_connection(self) -> AbstractConnection:
        connection: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        # One timeout for a whole batch (below) instead of redis-py's per write (a task) and
        # per reply; given back as it was in aclose().
        self._timeout_s = connection.socket_timeout
        connection.socket_timeout = None
        return connection

    async def _exchange(
        self, connection: AbstractConnection, batch: list[_Call], *, reloaded: bool = False
    ) -> None:
        """Send the batch and hand out its replies, all within the connection's socket
        timeout; raise `_Unanswered` with the calls left without a reply when the connection
        breaks or times out. NOSCRIPT replies: the script is loaded and those calls sent again
        (once: `reloaded`)."""
        self.batches += 1
        unanswered = collections.deque(batch)
        missing_script: list[_Call] = []
        # With `wait_replicas`, replies are held until WAIT confirms them (and the calls stay
        # unanswered: a shortfall sends the whole batch again).
        held: list[tuple[_Call, Any]] | None = [] if self._wait is not None else None
        commands = [c.packed for c in batch]
        if self._wait is not None:
            commands.append(self._wait)
        try:
            async with asyncio.timeout(self._timeout_s):
                await connection.send_packed_command(commands, check_health=False)
                for call in batch:
                    outcome: Any
                    try:
                        outcome = await connection.read_response(timeout=math.inf)
                    except redis.exceptions.NoScriptError as exc:
                        if not reloaded:
                            missing_script.append(call)
                            unanswered.remove(call)
                            continue
                        outcome = exc  # loaded a moment ago and gone again: give up on it
                    except redis.exceptions.ResponseError as exc:
                        outcome = exc
                    if held is None:
                        _resolve(call, outcome)
                        unanswered.popleft()
                    else:
                        held.append((call, outcome))
                if held is not None:
                    acked = await connection.read_response(timeout=math.inf)
                    if not isinstance(acked, int) or acked < self._wait_replicas:
                        raise redis.exceptions.ConnectionError(
                            f"the batch reached {acked} of {self._wait_replicas} replicas "
                            f"within {WAIT_TIMEOUT_MS} ms"
                        )
                    for call, outcome in held:
                        _resolve(call, outcome)
                    unanswered.clear()
                for script in {c.script.sha: c.script for c in missing_script}.values():
                    await connection.send_command(
                        "SCRIPT", "LOAD", script.source, check_health=False
                    )
                    await connection.read_response(timeout=math.inf)
        except (
            TimeoutError,
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        ) as exc:
            await connection.disconnect(nowait=True)
            error: redis.exceptions.RedisError = (
                exc
                if isinstance(exc, redis.exceptions.RedisError)
                else redis.exceptions.TimeoutError(f"no reply within {self._timeout_s}s")
            )
            raise _Unanswered([*missing_script, *unanswered], error) from exc
        if missing_script:  # loaded now; a NOSCRIPT reply is not a failed attempt
            await self._exchange(connection, missing_script, reloaded=True)


def _fail(calls: list[_Call], error: BaseException) -> None:
    for call in calls:
        _resolve(call, error)


def _resolve(call: _Call, outcome: Any) -> None:
    if call.future.done():  # the caller was cancelled; the reply is dropped
        return
    if isinstance(outcome, BaseException):
        call.future.set_exception(outcome)
    else:
        call.future.set_result(outcome)
