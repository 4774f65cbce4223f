"""Script calls on a Redis Cluster.

redis-py's cluster client routes a command by its keys' slot and follows the
cluster's redirections, but it sends ASKING and the command it allows on two
connections of the node's pool (the command can then meet MOVED instead), and it
cannot send WAIT on the connection that made the write, which is the only one WAIT
waits for. So script calls take their own path here, on redis-py's slot map and
node connections. A call goes to the master of its slot through that master's
own Batcher (batcher.py), which pipelines concurrent calls and ends a batch of
state changes with WAIT, as on one server; the reply decides what comes next:

- MOVED (the slot has a new owner: a resharding, a failover): note the owner, go there;
- ASK (the slot is being migrated and these keys are gone): the same call to the
  importing node, as ``ASKING EVALSHA [WAIT]`` in one write on one connection;
- TRYAGAIN (some keys of the call moved, some not yet): again after a pause;
- CLUSTERDOWN: learn the slot map again, then again after a pause;
- NOSCRIPT (a promoted replica, a restarted node): load the script on that node, again.

Every script is safe to run twice, so following a redirection never applies a
change twice. A connection error fails the call (the request answers 503) and has
the slot map learnt again in the background, once for all the calls that failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from concord.server.metrics import METRICS, redis_error_kind
from concord.server.redis.batcher import Batcher, Replication, exchange, pack

log = logging.getLogger("concord")

# As many redirections as redis-py follows for one command before giving up.
MAX_REDIRECTS = 16
# The pause before trying a call again after TRYAGAIN or CLUSTERDOWN.
PAUSE_SECONDS = 0.05
ASKING = b"*1\r\n$6\r\nASKING\r\n"


class ConcordCluster(RedisCluster):
    """redis-py's cluster client, for the reads that do not go through the scripts'
    path: a command that runs out of redirections while its slot is being migrated
    (redis-py sends ASKING and the command on two connections, so the importing
    node may answer MOVED, back to the old owner, until the migration ends) is
    tried again after a pause, as are TRYAGAIN and CLUSTERDOWN; the request's
    deadline bounds the whole. Every such command is a read, safe to repeat."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(MAX_REDIRECTS):
            try:
                return await super().execute_command(*args, **kwargs)
            except (ClusterError, TryAgainError, AskError) as exc:  # ClusterError: also CLUSTERDOWN, "TTL exhausted"
                if attempt == MAX_REDIRECTS - 1:
                    raise
                METRICS.redis_error(redis_error_kind(exc))
                await asyncio.sleep(PAUSE_SECONDS)
        raise AssertionError("unreachable")


class SlotMap:
    """redis-py's slot map of one cluster, learnt again after failures; one refresh
    at a time, however many calls fail together."""

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        self._refresh: asyncio.Future | None = None

    def refresh(self) -> asyncio.Future:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._learn())
        return asyncio.shield(self._refresh)

    async def _learn(self) -> None:
        try:
            await self.client.nodes_manager.initialize()
        except (RedisError, OSError) as exc:
            log.warning("Refreshing the cluster's slots failed (%r)", exc)


class ClusterCaller:
    """Runs script calls on the master of their keys' slot (see the module's docstring)."""

    def __init__(self, client: RedisCluster, slots: SlotMap, timeout: float | None, replication: Replication) -> None:
        self._client = client
        self._slots = slots
        self._timeout = timeout
        self._replication = replication
        self._batchers: dict[str, Batcher] = {}  # by node name (host:port)
        self._loading: dict[tuple[str, str], asyncio.Future] = {}  # (node name, script) -> its SCRIPT LOAD
        # The batchers' connections: made here, never taken from redis-py's node pools,
        # whose connections redis-py may close at any moment on a topology change.
        self._connections: list[Any] = []

    async def call(self, command: tuple[Any, ...], source: str, durable: bool) -> Any:
        """``command`` is ``EVALSHA sha numkeys key ...``: its first key picks the slot."""
        client = self._client
        await client.initialize()  # the slot map, once: a no-op afterwards
        slot = client.keyslot(command[3])
        asking = None
        for _ in range(MAX_REDIRECTS):
            node = asking or client.nodes_manager.get_node_from_slot(slot)
            try:
                if asking is None:
                    return await self._batcher(node).call(command, source, durable)
                asking = None
                return await self._asking(node, command, durable)
            except MovedError as moved:  # before AskError, its base class
                await client.nodes_manager.move_slot(moved)
            except AskError as ask:
                asking = client.get_node(host=ask.host, port=ask.port)
                if asking is None:  # a node the map does not know yet
                    await self._slots.refresh()
            except TryAgainError:
                await asyncio.sleep(PAUSE_SECONDS)
            except ClusterDownError:
                await self._slots.refresh()
                await asyncio.sleep(PAUSE_SECONDS)
            except NoScriptError:
                await self._load(node, source)
            except (OSError, RedisError) as exc:
                if not isinstance(exc, ResponseError):  # the node may be gone: learn who serves its slots now
                    self._slots.refresh()
                raise
        raise ClusterError(f"the cluster redirected a call {MAX_REDIRECTS} times; its slots are moving")

    def _batcher(self, node: Any) -> Batcher:
        batcher = self._batchers.get(node.name)
        if batcher is None:

            async def connect() -> Any:
                connection = _connection(node)
                self._connections.append(connection)
                return connection

            batcher = Batcher(None, self._timeout, replication=self._replication, connect=connect)
            self._batchers[node.name] = batcher
        return batcher

    async def aclose(self) -> None:
        """Close the batchers' connections (the client's own close does not know them)."""
        for connection in self._connections:
            await connection.disconnect()

    async def _load(self, node: Any, source: str) -> None:
        """SCRIPT LOAD on the node, once however many calls met NOSCRIPT there at once
        (a promoted replica meets every call with it): each load takes a connection."""
        key = (node.name, source)
        loading = self._loading.get(key)
        if loading is None or loading.done():
            loading = asyncio.ensure_future(self._exchange(node, pack(("SCRIPT", "LOAD", source)), 1))
            self._loading[key] = loading  # a few per node: kept
        await asyncio.shield(loading)

    async def _asking(self, node: Any, command: tuple[Any, ...], durable: bool) -> Any:
        """The call on the node importing its slot, ASKING first on the same connection."""
        wait = self._replication.wait_command() if durable else None
        packed = ASKING + pack(command) + (pack(wait) if wait else b"")
        _, reply, *acknowledged = await self._exchange(node, packed, 3 if wait else 2)
        if isinstance(reply, Exception):
            METRICS.redis_error(redis_error_kind(reply))
            raise reply
        if wait:
            try:
                self._replication.check(acknowledged[0])
            except Exception as exc:
                METRICS.redis_error(redis_error_kind(exc))
                raise
        return reply

    async def _exchange(self, node: Any, packed: bytes, count: int) -> list[Any]:
        """One exchange on a connection of its own to the node (ASK and NOSCRIPT are
        rare: a connection per exchange costs less than sharing one)."""
        connection = _connection(node)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                replies = await exchange(connection, packed, count)
            METRICS.redis(time.perf_counter() - started)
            return replies
        except BaseException as exc:
            METRICS.redis(time.perf_counter() - started, redis_error_kind(exc))
            raise
        finally:
            await connection.disconnect(nowait=True)


def _connection(node: Any) -> Any:
    """A new connection to the node, configured as the cluster client's own are."""
    return node.connection_class(**node.connection_kwargs)
