"""What every part of the store shares: the Redis client, the key schema, the
scripts, the settings the scripts take, and Redis's clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster

from concord.server.settings import Quotas
from concord.server.store.keys import Keys
from concord.server.store.replies import ms
from concord.server.store.scripts import Scripts


@dataclass(eq=False, slots=True)
class Context:
    redis: Redis
    keys: Keys
    scripts: Scripts
    window_ms: int  # the heartbeat window: an agent without a heartbeat this long is inactive
    events_max: int  # the cap of each tenant's event stream (0: no events)
    quotas: Quotas = Quotas()  # each tenant's, unless an admin set its own (quotas.py)

    async def now(self, tenant: str) -> int:
        """Redis's time in ms, on the server that holds ``tenant`` (its scripts' clock)."""
        return await self.now_at(self.keys.heartbeats(tenant))

    async def now_at(self, key: str) -> int:
        """Redis's time in ms, on the server that holds ``key``."""
        if isinstance(self.redis, RedisCluster):
            await self.redis.initialize()  # the slot map, once: a no-op afterwards
            node = self.redis.get_node_from_key(key)
            return ms(await self.redis.execute_command("TIME", target_nodes=node))
        return ms(await self.redis.time())

    async def with_time(self, pipe: Any, tenant: str) -> list[Any]:
        """The pipeline's answers, then Redis's time in ms: in the same round trip on
        one server; on a cluster (which refuses a keyless TIME in a pipeline) asked of
        the tenant's node just before."""
        if isinstance(self.redis, RedisCluster):
            now = await self.now(tenant)
            return [*await pipe.execute(), now]
        pipe.time()
        *answers, now = await pipe.execute()
        return [*answers, ms(now)]
