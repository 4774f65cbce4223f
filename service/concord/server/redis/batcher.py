"""How script calls reach Redis: commands packed by hand and exchanged on one
connection, the Batcher that carries concurrent calls in pipelines (on one
server, and on each master of a cluster: cluster.py), and the WAIT that makes a
state change durable on replicas before it is answered (CONCORD_MIN_REPLICAS)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

from concord.server.errors import NotReplicated
from concord.server.metrics import METRICS, redis_error_kind


def pack(command: tuple[Any, ...]) -> bytes:
    """One command in the Redis protocol: an array of bulk strings. redis-py's
    packer does the same for any argument; this one knows only the types the store
    passes (str, bytes, int, float), and takes a third of the time. The usual
    command, ASCII text and numbers only, is built as one str and encoded once, as
    its characters are its bytes; anything else takes the bytes path."""
    try:
        text = "".join([f"${len(arg)}\r\n{arg}\r\n" if type(arg) is str else _number(arg) for arg in command])
    except TypeError:
        return _pack_bytes(command)
    return f"*{len(command)}\r\n{text}".encode() if text.isascii() else _pack_bytes(command)


def _number(arg: Any) -> str:
    if type(arg) is int or type(arg) is float:
        digits = repr(arg)
        return f"${len(digits)}\r\n{digits}\r\n"
    raise TypeError


def _pack_bytes(command: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} {arg!r} to Redis")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def exchange(connection: Any, packed: bytes, count: int) -> list[Any]:
    """Send the packed commands, read their ``count`` replies; an error reply is
    that command's own, and does not fail the others."""
    await connection.send_packed_command(packed, check_health=False)
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await connection.read_response())
        except ResponseError as error:
            replies.append(error)
    return replies


@dataclass(frozen=True, slots=True)
class Replication:
    """How many replicas must hold a state change before it is answered.

    WAIT blocks until the replicas have acknowledged every write made so far *on
    its connection*, so it is sent right after the writes, on their connection.
    With ``replicas`` 0 nothing waits: Redis replicates asynchronously, and a
    failover may lose the last writes a master acknowledged."""

    replicas: int = 0
    timeout_ms: int = 0

    @classmethod
    def within(cls, replicas: int, deadline_seconds: float) -> Replication:
        """WAIT for ``replicas`` (CONCORD_MIN_REPLICAS), for half the request's Redis
        deadline: the other half is left for the request's own Redis work, so a late
        WAIT answers NotReplicated rather than the deadline's plainer 503."""
        return cls(replicas, max(int(deadline_seconds * 500), 1))

    def wait_command(self) -> tuple[Any, ...] | None:
        return ("WAIT", self.replicas, self.timeout_ms) if self.replicas else None

    def check(self, acknowledged: Any) -> None:
        """WAIT's reply: NotReplicated (a 503) when fewer replicas than asked hold the writes."""
        if isinstance(acknowledged, Exception):
            raise acknowledged
        if int(acknowledged) < self.replicas:
            raise NotReplicated(int(acknowledged), self.replicas, self.timeout_ms)


class Batcher:
    """Runs the script calls of concurrent requests as pipelines.

    Calls made while ``in_flight`` batches are out wait for the next one, which
    carries them all in one write and one read on a connection the batcher keeps:
    per call, the client work of a round trip is shared by every request of the
    batch. Each caller gets its own reply or its own error, and a call whose
    caller gave up (its request timed out) before its batch left is never sent.

    A batch is bounded as a whole by ``timeout`` (CONCORD_REDIS_TIMEOUT_SECONDS),
    not reply by reply, which would start a timer per reply. A batch whose
    connection drops is sent once more on a new connection; that re-runs its
    scripts, which is safe: every script is idempotent.

    With ``replication`` (CONCORD_MIN_REPLICAS), a batch holding a durable call
    (a state change) ends with WAIT, on the batch's connection, and its durable
    calls fail with NotReplicated when too few replicas confirm them.

    On a Redis Cluster each master has a batcher of its own (cluster.py), given
    ``connect`` (a connection of that node) instead of a client: a call meeting
    NOSCRIPT, or a redirection, then fails with that error for the caller to follow.
    """

    def __init__(
        self,
        client: Redis | None,
        timeout: float | None = None,
        in_flight: int = 2,
        replication: Replication = Replication(),
        connect: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self._client = client
        self._connect = connect or client.connection_pool.get_connection  # type: ignore[union-attr]
        self._timeout = timeout
        self._replication = replication
        # Connections taken from the client's pool on first use and kept; closing
        # the client closes them (a pool disconnects its in-use connections too).
        self._idle: list[Any] = [None] * in_flight
        self._running: set[asyncio.Task] = set()
        self._waiting: list[tuple[bytes, tuple[Any, ...], str, bool, asyncio.Future]] = []
        self._scheduled = False

    def call(self, command: tuple[Any, ...], source: str, durable: bool = False) -> asyncio.Future:
        """Queue ``command`` (an EVALSHA of ``source``); the future gets its reply.
        A command Redis cannot take raises TypeError here, before anything is sent."""
        packed = pack(command)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((packed, command, source, durable, future))
        if not self._scheduled and self._idle:
            # Send on the next turn of the loop, with every call made in this one.
            self._scheduled = True
            loop.call_soon(self._send_waiting)
        return future

    def _send_waiting(self) -> None:
        self._scheduled = False
        if self._waiting and self._idle:
            batch, self._waiting = self._waiting, []
            task = asyncio.ensure_future(self._send(self._idle.pop(), batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _send(
        self, connection: Any, batch: list[tuple[bytes, tuple[Any, ...], str, bool, asyncio.Future]]
    ) -> None:
        batch = [call for call in batch if not call[4].done()]
        wait = self._replication.wait_command()  # None without CONCORD_MIN_REPLICAS: nothing to scan
        if wait and not any(call[3] for call in batch):
            wait = None  # reads only: nothing to wait for
        replies: list[Any] = []
        started = time.perf_counter()
        try:
            if batch and connection is None:
                connection = await self._connect()
                connection.socket_timeout = None  # bounded per batch instead, by _run
            if batch:
                commands = [packed for packed, *_ in batch]
                replies = await self._run(connection, commands + [pack(wait)] if wait else commands)
                METRICS.redis(time.perf_counter() - started)
        except BaseException as exc:  # no connection, or it failed or timed out: so did every call of the batch
            if batch:
                METRICS.redis(time.perf_counter() - started, redis_error_kind(exc))
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._idle.append(connection)
            self._send_waiting()
        acknowledged = replies.pop() if wait else None
        for (_, command, source, durable, future), reply in zip(batch, replies):
            if isinstance(reply, NoScriptError) and self._client is not None:
                # Redis lost its script cache (a restart): load the script, run the call again.
                METRICS.redis_error("no_script")
                reply = await self._again(command, source, durable)
            elif durable and wait and not isinstance(reply, Exception):
                try:
                    self._replication.check(acknowledged)
                except Exception as exc:  # NotReplicated, or WAIT's own error
                    reply = exc
            if future.done():  # its request went away
                continue
            if isinstance(reply, Exception):
                METRICS.redis_error(redis_error_kind(reply))
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _again(self, command: tuple[Any, ...], source: str, durable: bool) -> Any:
        """The call once more after loading its script, with its WAIT on the same
        connection (a pipeline takes one); its reply, or the error it met."""
        wait = self._replication.wait_command() if durable else None
        try:
            await self._client.script_load(source)
            pipe = self._client.pipeline(transaction=False)
            pipe.execute_command(*command)
            if wait:
                pipe.execute_command(*wait)
            reply, *acknowledged = await pipe.execute(raise_on_error=False)
            if wait and not isinstance(reply, Exception):
                self._replication.check(acknowledged[0])
            return reply
        except Exception as exc:
            return exc

    async def _run(self, connection: Any, commands: list[bytes]) -> list[Any]:
        packed = b"".join(commands)
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    return await exchange(connection, packed, len(commands))
                except ConnectionError:  # dropped: once more, on a fresh connection
                    await connection.disconnect()
                    return await exchange(connection, packed, len(commands))
        except BaseException:
            await connection.disconnect(nowait=True)  # a reply may be half read
            raise
