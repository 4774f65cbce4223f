"""The live fan-out of a tenant's events to the readers of one worker: Server-Sent
Event streams and consensus long polls (http/streaming.py).

One reader task per tenant with listeners blocks on XREAD on a connection of its
own, so a thousand listeners cost Redis one blocked connection per worker, not a
thousand polls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from concord.server.redis.cluster import SlotMap
from concord.server.store.keys import Keys

log = logging.getLogger("concord")


def entries(reply: Any) -> list[tuple[str, list[str]]]:
    """The (id, flat fields) entries of an XREAD reply for one stream, as either
    protocol gives it (RESP2: [[key, entries]]; RESP3 and fakeredis: {key: entries})."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (item[1] for item in reply)
    return [(entry_id, fields) for found in streams for entry_id, fields in found]


class Listener:
    """One live reader's view of a tenant's new events: a bounded queue of
    (id, flat fields). ``lost`` is set when it fell QUEUE_SIZE entries behind: its
    reader then calls ``resume`` and reads the stream itself (XRANGE after the last
    id it handled), so nothing is missed, only delivered by another path."""

    QUEUE_SIZE = 10_000

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue(self.QUEUE_SIZE)
        self.lost = False  # entries were dropped: resume from the stream, then go on
        self.closed = False  # the feed stopped: nothing more will come

    def resume(self) -> None:
        """Forget what is queued (the caller reads the stream next, which holds it)."""
        self.lost = False
        while not self.queue.empty():
            self.queue.get_nowait()

    def put(self, entry: tuple[str, list[str]]) -> None:
        try:
            self.queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.lost = True

    async def get(self, timeout: float) -> tuple[str, list[str]] | None:
        """The next entry, or None after ``timeout`` seconds without one."""
        try:
            async with asyncio.timeout(timeout):
                return await self.queue.get()
        except TimeoutError:
            return None


@dataclass(eq=False)
class _Tenant:
    listeners: set[Listener] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


class EventFeed:
    """One worker's live fan-out of tenants' event streams.

    ``listen(tenant)`` yields a Listener that receives every entry appended to the
    tenant's stream after ``listen`` returns (and possibly a few from before:
    readers drop ids they have already handled). While a tenant has listeners, its
    reader also settles the tenant's overdue consensus requests about once a second
    (``sweep``), so their ``consensus.expired`` events come without anyone asking.
    """

    SWEEP_SECONDS = 1.0

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        sweep: Callable[[str], Awaitable[None]],
        slots: SlotMap | None = None,
        block_ms: int = 1000,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.sweep = sweep
        self.slots = slots  # a cluster's slot map, learnt again after a failure
        self.block_ms = block_ms
        self._tenants: dict[str, _Tenant] = {}

    async def close(self) -> None:
        """Stop every reader (at shutdown, before the Redis client closes)."""
        tasks = [state.task for state in self._tenants.values() if state.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def listening(self, tenant: str) -> int:
        """How many streams and long polls of ``tenant`` this worker has open."""
        state = self._tenants.get(tenant)
        return len(state.listeners) if state is not None else 0

    @asynccontextmanager
    async def listen(self, tenant: str, timeout: float) -> AsyncIterator[Listener]:
        """A Listener for the block; TimeoutError if the feed cannot reach Redis within ``timeout``."""
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant()
            state.task = asyncio.create_task(self._read(tenant, state), name=f"events:{tenant}")
        listener = Listener()
        state.listeners.add(listener)
        try:
            async with asyncio.timeout(timeout):
                await state.ready.wait()  # the reader knows where the stream ends now
            yield listener
        finally:
            state.listeners.discard(listener)

    async def _read(self, tenant: str, state: _Tenant) -> None:
        key, last, backoff, swept = self.keys.events(tenant), None, 0.05, 0.0
        loop = asyncio.get_running_loop()
        connection, release = None, None
        try:
            while state.listeners:
                try:
                    if connection is None:
                        connection, release = await self._connection(key)
                        connection.socket_timeout = None  # the block is bounded by asyncio.timeout below
                    if last is None:
                        await connection.send_command("XREVRANGE", key, "+", "-", "COUNT", 1)
                        newest = await connection.read_response()
                        last = newest[0][0] if newest else "0-0"
                        state.ready.set()
                    if loop.time() - swept >= self.SWEEP_SECONDS:
                        swept = loop.time()
                        await self.sweep(tenant)
                    await connection.send_command("XREAD", "BLOCK", self.block_ms, "COUNT", 500, "STREAMS", key, last)
                    async with asyncio.timeout(self.block_ms / 1000 + 5):
                        found = entries(await connection.read_response())
                    backoff = 0.05
                except (RedisError, OSError, TimeoutError) as exc:
                    log.warning("Reading the events of tenant %s failed (%r); retrying", tenant, exc)
                    if connection is not None:
                        await connection.disconnect()  # a reply may be half read
                        await release(connection)
                        connection = None  # on a cluster the slot may have moved: ask again
                    if self.slots is not None:
                        await self.slots.refresh()
                    await asyncio.sleep(backoff)  # Redis is down: do not spin
                    backoff = min(backoff * 2, 2.0)
                    continue
                for entry in found:
                    for listener in state.listeners:
                        listener.put(entry)
                if found:
                    last = found[-1][0]
        finally:
            if self._tenants.get(tenant) is state:
                del self._tenants[tenant]
            for listener in state.listeners:
                listener.closed = True
            state.ready.set()
            if connection is not None:
                await connection.disconnect()
                await release(connection)

    async def _connection(self, key: str) -> tuple[Any, Callable[[Any], Awaitable[None]]]:
        """A connection of its own to the server that holds ``key``, and how to give it back."""
        if isinstance(self.redis, RedisCluster):
            await self.redis.initialize()
            node = self.redis.get_node_from_key(key)

            async def release(connection: Any) -> None:
                node.release(connection)

            connection = node.acquire_connection()
            return connection, release
        pool = self.redis.connection_pool
        return await pool.get_connection(), pool.release
