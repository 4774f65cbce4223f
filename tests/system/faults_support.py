"""Fault injection on real processes: private redis-server processes and real
`concord serve` processes, broken on purpose under load, then checked. Each kind
of fault has a test module named for it (listed below); this module holds the
overview and what several of those modules share. It is no test module itself.

Each fault records the figures docs/reliability.md quotes (trials, acknowledged
operations, losses, double grants, duplicate votes, flips, the slowest 503): one
line per fault on stdout (``pytest -s``), and a JSON line appended to the file
named by CONCORD_FAULT_REPORT when it is set. The figures are written before the
test asserts on them, so a failing run reports what it saw.

1. Redis SIGKILLed and restarted on its directory with ``appendonly yes`` +
   ``appendfsync always``, five times, under load
   (tests/system/test_fault_redis_restarted_from_aof.py): every lease, vote,
   decision and registration acknowledged (a 2xx received) is there afterwards,
   through the API and in Redis, with its expiry unchanged; a lease whose expiry
   passed while Redis was down is gone; an acknowledged lease still refuses
   another agent.
2. Redis restarted empty: tests/api/test_liveness.py
   (test_fencing_tokens_keep_growing_across_a_redis_restart_that_lost_the_data)
   shows tokens keep growing; tests/system/test_fault_redis_restarted_empty.py
   shows what that means for a live lease's holder: the lease is gone, another
   agent may take the contact, and the old holder's token is refused at
   send-check.
3. Redis stalled under concurrent load, three ways
   (tests/system/test_fault_redis_stalled.py): SIGSTOP; ``DEBUG SLEEP 3``; and
   a proxy that lets every command through but holds the replies back. Every
   request sent during the stall answers 503 store_unavailable (none hangs);
   afterwards nothing was applied twice, and sending each 503'd request again is
   harmless. (Whether a frozen Redis later runs a command that timed out depends
   on whether the client dropped the connection before Redis read it; with held
   replies every 503'd change did happen, so every retry meets it.) Also
   (tests/system/test_fault_redis_reply_lost.py): a script whose reply is lost on
   the wire is run again by redis-py's retry (as the service's client is
   configured), and that second run changes nothing more.
4. One of three `concord serve` processes SIGKILLed under contention
   (tests/system/test_fault_service_process_killed.py): the other two answer
   every request (no error but the expected 409s), and the grants they and the
   killed one made never overlap on a contact; tokens follow grant order.
5. A lease holder that stalls past its lease's expiry
   (tests/system/test_fault_holder_stalled_past_lease.py): another agent takes the
   contact and the stalled holder's token is stale at send-check. (The variant
   where the holder's heartbeats lapse is test_liveness.py's
   test_a_lapsed_agent_loses_its_vote_and_its_lease.)
6. Keys of the wrong type: tests/lua/test_wrong_types.py.
7. An evicting maxmemory-policy: tests/system/test_faults.py (a warning at start-up).

No test sleeps to wait: each polls for its condition with a deadline. Timing is
asserted only as "did not hang" (STALL_BOUND), never finely.

Shared here, by more than one of those modules: the settings of the suite's Redis
and service (REDIS_TIMEOUT, STALL_BOUND, NO_PERSISTENCE); a load of recorded
requests (Call, send, Load, bounded) and the small helpers around it (keys_setting,
register, service_ready); the Redis string of a lease (lease_string); a proxy that
breaks replies (FaultyProxy); and the stall_redis fixture, a Redis that accepts
DEBUG. A test module takes the fixture with ``from tests.system.faults_support
import stall_redis as stall_redis``: pytest finds a fixture by its name in the
module, and the redundant alias tells ruff the import is meant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from tests.support.api import V1, ms
from tests.support.helpers import RedisServer, eventually, redis_server

# The service's deadline for one request's Redis work in these tests (seconds).
REDIS_TIMEOUT = 1
# A request that has not answered within this is hung. It is a generous bound on
# the 1 s deadline, not a timing to meet: only a hang fails it.
STALL_BOUND = 5.0
NO_PERSISTENCE = ("--save", "", "--appendonly", "no")
DEBUG_ENABLED = (*NO_PERSISTENCE, "--enable-debug-command", "local")


# --- requests under load --------------------------------------------------------------


@dataclass
class Call:
    """One HTTP request of a load, and what became of it."""

    kind: str  # register | lease | renew | release | send-check | consensus | vote | heartbeat
    subject: dict[str, Any]  # what it was about, enough to check it or send it again
    process: int  # which service process it went to
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no HTTP answer at all (refused, reset, or hung past the client's timeout)
    body: Any
    error: str | None = None

    @property
    def acked(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.subject} -> {self.status} {self.code or ''} in {self.seconds:.2f}s {self.error or ''}"
        )


async def send(
    client: httpx.AsyncClient,
    kind: str,
    subject: dict[str, Any],
    method: str,
    path: str,
    *,
    json_body: Any = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    process: int = 0,
) -> Call:
    started = time.monotonic()
    try:
        r = await client.request(method, path, json=json_body, params=params, headers=headers)
    except httpx.TransportError as exc:
        return Call(kind, subject, process, started, time.monotonic(), None, None, repr(exc))
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return Call(kind, subject, process, started, time.monotonic(), r.status_code, body)


class Load:
    """Worker coroutines sending requests until stopped; every request is recorded.

    ``async with Load() as load`` cancels whatever is still running when the block
    ends; ``await load.stop()`` lets each worker finish its request and re-raises a
    worker's exception."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.stopping = False
        self.tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stopping = True
        if exc_info[0] is not None:
            for task in self.tasks:
                task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def start(self, *workers: Awaitable[None]) -> None:
        self.tasks += [asyncio.ensure_future(worker) for worker in workers]

    async def send(self, *args: Any, **kwargs: Any) -> Call:
        call = await send(*args, **kwargs)
        self.calls.append(call)
        return call

    async def until(self, predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
        async def check() -> object:
            for task in self.tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            return predicate()

        await eventually(check, timeout=timeout, what=what)

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*self.tasks)

    def count(
        self, kind: str | None = None, *, acked: bool | None = None, since: float | None = None, **subject: Any
    ) -> int:
        return sum(1 for c in self.matching(kind, acked=acked, since=since, **subject))

    def matching(
        self, kind: str | None = None, *, acked: bool | None = None, since: float | None = None, **subject: Any
    ) -> Iterator[Call]:
        for c in self.calls:
            if kind is not None and c.kind != kind:
                continue
            if acked is not None and c.acked != acked:
                continue
            if since is not None and c.started < since:
                continue
            if any(c.subject.get(name) != value for name, value in subject.items()):
                continue
            yield c


async def bounded(coros: Iterable[Awaitable[Any]], limit: int = 32) -> list[Any]:
    """Await many requests, at most ``limit`` at a time."""
    gate = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[Any]) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


def keys_setting(tenants: dict[str, str]) -> str:
    return ",".join(f"{tenant}:{key}" for tenant, key in tenants.items())


async def register(client: httpx.AsyncClient, name: str) -> dict:
    r = await client.post(f"{V1}/register", json={"agentName": name})
    assert r.status_code in (200, 201), r.text
    return r.json()


async def service_ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False


# --- what the checks compare -------------------------------------------------------


def lease_string(lease: dict) -> str:
    """The Redis string of a lease (keys.lease), as the API answered it:
    "<agent uuid>|<fencingToken>|<acquiredAt>|<agentName>|<intent>"; its expiry is the key's own."""
    holder = lease["agentId"].removeprefix("agent_")
    return f"{holder}|{lease['fencingToken']}|{ms(lease['acquiredAt'])}|{lease['agentName']}|{lease['intent'] or ''}"


# --- a Redis that misbehaves on purpose ---------------------------------------------


class FaultyProxy:
    """A TCP proxy in front of one Redis that can break the way back.

    ``lose_next_reply()``: the next script call (EVALSHA) goes through to Redis and
    runs, but instead of its reply the client gets its connection closed; redis-py
    then sends the call again on a new connection. ``hold_replies()``: Redis runs
    every command at once, but no reply goes back until ``release_replies()``, so
    the service times out (503) on changes that were made."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.script_calls = 0  # EVALSHA commands passed to Redis
        self.replies_lost = 0
        self._lose_next = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self._flowing.set()
        for writer in list(self._writers):
            writer.close()  # each connection's pipes see the end and finish
        if self._pipes:
            await asyncio.wait(list(self._pipes), timeout=5)
        await self._server.wait_closed()

    def lose_next_reply(self) -> None:
        self._lose_next = True

    def hold_replies(self) -> None:
        self._flowing.clear()

    def release_replies(self) -> None:
        self._flowing.set()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._pipes.add(asyncio.current_task())  # type: ignore[arg-type]
        self._writers.add(client_writer)
        try:
            redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        self._writers.add(redis_writer)
        cut = asyncio.Event()  # set when this connection's next reply is to be lost

        async def upward() -> None:
            while data := await client_reader.read(1 << 16):
                calls = data.count(b"EVALSHA")
                self.script_calls += calls
                if calls and self._lose_next:
                    self._lose_next = False
                    cut.set()
                redis_writer.write(data)
                await redis_writer.drain()

        async def downward() -> None:
            while data := await redis_reader.read(1 << 16):
                await self._flowing.wait()
                if cut.is_set():
                    if data.startswith(b"-NOSCRIPT"):  # not run: redis-py loads it and calls again
                        cut.clear()
                        self._lose_next = True
                    else:
                        self.replies_lost += 1
                        return
                client_writer.write(data)
                await client_writer.drain()

        try:
            pipes = [asyncio.ensure_future(upward()), asyncio.ensure_future(downward())]
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            for writer in (client_writer, redis_writer):
                writer.close()
                self._writers.discard(writer)
            self._pipes.discard(asyncio.current_task())  # type: ignore[arg-type]


@pytest.fixture
def stall_redis(real_redis_url: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server that accepts DEBUG from localhost. (real_redis_url only
    decides whether a real Redis may be used: skip, or fail if required.)"""
    with redis_server(tmp_path / "redis", *DEBUG_ENABLED) as server:
        yield server
