"""Events: what the scripts append to each tenant's Redis Stream, and how it is read.

Every script that changes state appends its event to ``keys.events(tenant)`` in the
same script (lua/lib.lua ``emit``), so a change and its event are one atomic step.
The stream entry id (``<ms>-<seq>``, Redis's clock) is the event's id: ids only
grow, so a reader that remembers the last id it saw misses nothing when it comes
back, as long as the stream (capped at CONCORD_EVENTS_MAX_LENGTH) still holds it.

``EventFeed`` fans a tenant's new events out to the live readers of one worker
(Server-Sent Event streams, consensus long polls): one reader task per tenant with
listeners, blocking on XREAD on a connection of its own, so a thousand listeners
cost Redis one blocked connection per worker, not a thousand polls.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from concord.protocol.schemas import Event, iso
from concord.server.redis.cluster import SlotMap
from concord.server.store.keys import Keys, lease_id

log = logging.getLogger("concord")

# Every event type; a family ("lease") selects all of its types in a filter.
EVENT_TYPES = (
    "agent.registered",
    "agent.removed",
    "lease.acquired",
    "lease.renewed",
    "lease.released",
    "lease.taken_over",
    "consensus.requested",
    "consensus.voted",
    "consensus.resolved",
    "consensus.expired",
)
FAMILIES = frozenset(t.partition(".")[0] for t in EVENT_TYPES)
# A stream id as a client may give it: "<ms>-<seq>", "<ms>", or "0" for the start.
STREAM_ID = re.compile(r"\d{1,20}(-\d{1,20})?")
_INTS = frozenset({"fencingToken", "previousFencingToken", "releasedLeases", "approve", "reject", "eligible", "needed"})
_ATTRS = dict(zip(Event.__struct_encode_fields__, Event.__struct_fields__))


def event(tenant: str, entry_id: str, fields: Iterable[str] | dict[str, str]) -> Event:
    """The API's Event for one stream entry (its fields flat, or as a dict)."""
    pairs = fields.items() if isinstance(fields, dict) else zip(*[iter(fields)] * 2)
    values: dict[str, Any] = {}
    for name, value in pairs:
        if value == "" or name not in _ATTRS:
            continue  # '' is "none" (a consensus without a contact); unknown fields are from a newer version
        if name in _INTS:
            values[_ATTRS[name]] = int(value)
        elif name == "expiresAt":
            values["expires_at"] = iso(value)
        elif name == "created":
            values["created"] = value == "1"
        else:
            values[_ATTRS[name]] = value
    if values.get("type", "").startswith("lease.") and "fencing_token" in values:
        values["lease_id"] = lease_id(values["agent_id"], values["fencing_token"])
    if "previous_fencing_token" in values:
        values["previous_lease_id"] = lease_id(values["previous_agent_id"], values["previous_fencing_token"])
    values["at"] = iso(int(entry_id.partition("-")[0]))
    return Event(id=entry_id, tenant_id=tenant, **values)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a reader wants: types (exact or a family), and an agent or a contact."""

    types: frozenset[str] = frozenset()
    agent_id: str | None = None
    contact: str | None = None

    def __call__(self, e: Event) -> bool:
        if self.types and e.type not in self.types and e.type.partition(".")[0] not in self.types:
            return False
        if self.agent_id is not None and self.agent_id not in (e.agent_id, e.previous_agent_id):
            return False
        return self.contact is None or e.contact_email == self.contact


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable (ms, seq)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


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
