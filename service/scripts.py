"""Loads lua/*.lua once and registers them with a Redis client.

Each script is sent to Redis as ``lib.lua`` + the script, so the shared helpers and
reply codes exist once in the source tree. The KEYS/ARGV lines of a script's
header are parsed, and every call is checked against them: a header cannot drift
from what the store passes without the first call failing.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

from .metrics import METRICS, redis_error_kind

# "KEYS[3] lease_key ..." or "ARGV[2..] contacts ..." in a script's header.
_DECLARATION = re.compile(r"^\s+(KEYS|ARGV)\[(\d+)(\.\.)?\]\s+(\w+)", re.MULTILINE)
LIB = "lib"
# An installed wheel carries the scripts as service/lua/ (pyproject.toml maps them
# there); a checkout or an editable install reads the top-level lua/.
_HERE = Path(__file__).resolve().parent
LUA_DIR = next(p for p in (_HERE / "lua", _HERE.parent / "lua") if (p / "lib.lua").is_file())


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    text: str
    keys: tuple[str, ...]  # declared names, in order
    args: tuple[str, ...]
    variadic_keys: bool  # the last KEYS entry is "KEYS[n..]"
    variadic_args: bool

    @property
    def header(self) -> str:
        return self.text.split("]]", 1)[0]


def _parse(name: str, text: str) -> Source:
    declared: dict[str, list[tuple[int, str, bool]]] = {"KEYS": [], "ARGV": []}
    header = text.split("]]", 1)[0]
    for kind, index, rest, var in _DECLARATION.findall(header):
        declared[kind].append((int(index), var, bool(rest)))
    for kind, items in declared.items():
        if [i for i, _, _ in items] != list(range(1, len(items) + 1)):
            raise ValueError(f"lua/{name}.lua: {kind} in the header are not numbered 1..n")
    return Source(
        name=name,
        text=text,
        keys=tuple(var for _, var, _ in declared["KEYS"]),
        args=tuple(var for _, var, _ in declared["ARGV"]),
        variadic_keys=bool(declared["KEYS"]) and declared["KEYS"][-1][2],
        variadic_args=bool(declared["ARGV"]) and declared["ARGV"][-1][2],
    )


@cache
def sources() -> dict[str, Source]:
    """Every script of lua/ except the shared lib, by name."""
    return {path.stem: _parse(path.stem, path.read_text(encoding="utf-8")) for path in sorted(LUA_DIR.glob("*.lua"))}


@cache
def lib_text() -> str:
    return sources()[LIB].text


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
    """

    def __init__(self, client: Redis, timeout: float | None = None, in_flight: int = 2) -> None:
        self._client = client
        self._timeout = timeout
        # Connections taken from the client's pool on first use and kept; closing
        # the client closes them (a pool disconnects its in-use connections too).
        self._idle: list[Any] = [None] * in_flight
        self._running: set[asyncio.Task] = set()
        self._waiting: list[tuple[bytes, tuple[Any, ...], str, asyncio.Future]] = []
        self._scheduled = False

    def call(self, command: tuple[Any, ...], source: str) -> asyncio.Future:
        """Queue ``command`` (an EVALSHA of ``source``); the future gets its reply.
        A command Redis cannot take raises TypeError here, before anything is sent."""
        packed = pack(command)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((packed, command, source, future))
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

    async def _send(self, connection: Any, batch: list[tuple[bytes, tuple[Any, ...], str, asyncio.Future]]) -> None:
        batch = [call for call in batch if not call[3].done()]
        replies: list[Any] = []
        started = time.perf_counter()
        try:
            if batch and connection is None:
                connection = await self._client.connection_pool.get_connection()
                connection.socket_timeout = None  # bounded per batch instead, by _run
            if batch:
                replies = await self._run(connection, [packed for packed, _, _, _ in batch])
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
        for (_, command, source, future), reply in zip(batch, replies):
            if isinstance(reply, NoScriptError):
                # Redis lost its script cache (a restart): load the script, run the call again.
                METRICS.redis_error("no_script")
                try:
                    await self._client.script_load(source)
                    reply = await self._client.execute_command(*command)
                except Exception as exc:
                    reply = exc
            if future.done():  # its request went away
                continue
            if isinstance(reply, Exception):
                METRICS.redis_error(redis_error_kind(reply))
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _run(self, connection: Any, commands: list[bytes]) -> list[Any]:
        packed = b"".join(commands)
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    return await _exchange(connection, packed, len(commands))
                except ConnectionError:  # dropped: once more, on a fresh connection
                    await connection.disconnect()
                    return await _exchange(connection, packed, len(commands))
        except BaseException:
            await connection.disconnect(nowait=True)  # a reply may be half read
            raise


def pack(command: tuple[Any, ...]) -> bytes:
    """One command in the Redis protocol: an array of bulk strings. redis-py's
    packer does the same for any argument; this one knows only the types the store
    passes (str, bytes, int, float), and takes a third of the time."""
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


async def _exchange(connection: Any, packed: bytes, count: int) -> list[Any]:
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


class Script:
    """One registered script; calls check the header's arity, then run by SHA in the
    next pipeline of the Batcher, or in the given pipeline."""

    __slots__ = ("name", "_n_keys", "_n_args", "_variadic_keys", "_variadic_args", "_script", "_batcher")

    def __init__(self, source: Source, script: AsyncScript, batcher: Batcher | None) -> None:
        self.name = source.name
        self._n_keys, self._n_args = len(source.keys), len(source.args)
        self._variadic_keys, self._variadic_args = source.variadic_keys, source.variadic_args
        self._script = script
        self._batcher = batcher

    def __call__(self, keys: list[str], args: list[Any], client: Any = None):
        if not _arity_ok(len(keys), self._n_keys, self._variadic_keys) or not _arity_ok(
            len(args), self._n_args, self._variadic_args
        ):
            raise TypeError(
                f"lua/{self.name}.lua declares {self._n_keys} KEYS and {self._n_args} ARGV, "
                f"called with {len(keys)} and {len(args)}"
            )
        if client is not None or self._batcher is None:
            return self._script(keys, args, client)
        script = self._script
        return self._batcher.call(("EVALSHA", script.sha, len(keys), *keys, *args), script.script)


def _arity_ok(given: int, declared: int, variadic: bool) -> bool:
    # A variadic last entry "X[n..]" may be empty: at least n - 1 are required.
    return given >= declared - 1 if variadic else given == declared


class Scripts:
    """The scripts registered with one client, as attributes: ``scripts.lease_acquire``."""

    def __init__(self, client: Redis, timeout: float | None = None) -> None:
        # On a cluster each call goes through the cluster client, which routes it by
        # its keys' slot and follows redirections; the batcher speaks to one server.
        batcher = None if isinstance(client, RedisCluster) else Batcher(client, timeout)
        for name, source in sources().items():
            if name != LIB:
                setattr(self, name, Script(source, client.register_script(lib_text() + "\n" + source.text), batcher))

    def __getattr__(self, name: str) -> Script:  # for type checkers; real attributes win
        raise AttributeError(f"no script lua/{name}.lua")
