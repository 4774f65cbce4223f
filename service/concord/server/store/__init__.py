"""The store: Concord's operations on Redis, one part per domain.

Every state change is one Lua script (lua/), so it is atomic and uses Redis's
clock; a part builds the keys (keys.py), runs the script (scripts.py) and turns
its reply into a response value or a ConcordError (replies.py). Reads that span
many keys (lists) are pipelined and checked item by item. No HTTP type crosses
into the store.

    store.agents      register, heartbeat, get, page, remove     (agents.py)
    store.leases      acquire, renew, release, get, page, send_check   (leases.py)
    store.consensus   request, vote, get, page, expire_due       (consensus.py)
    store.events      page, after, last_id                       (events.py)
    store.feed        live fan-out to streams and long polls     (feed.py)
    store.limits      take_token                                 (limits.py)
    store.apikeys     grant_of, create, revoke, all              (apikeys.py)
    store.quotas      get, set, reset: a tenant's quotas          (quotas.py)
    store.policies    get, all, set, delete: consensus policies  (policies.py)
    store.suppressions  put, load, get, remove, page             (suppressions.py)
"""

from __future__ import annotations

from redis.asyncio import Redis

from concord.server.redis.batcher import Replication
from concord.server.settings import Quotas
from concord.server.store.agents import Agents
from concord.server.store.apikeys import ApiKeys
from concord.server.store.consensus import ConsensusRequests
from concord.server.store.context import Context
from concord.server.store.events import EventLog
from concord.server.store.feed import EventFeed
from concord.server.store.keys import Keys
from concord.server.store.leases import Leases
from concord.server.store.limits import RateLimits
from concord.server.store.policies import ConsensusPolicies
from concord.server.store.quotas import TenantQuotas
from concord.server.store.scripts import Scripts
from concord.server.store.suppressions import Suppressions


class Store:
    """Concord's operations for any number of tenants on one Redis (or Cluster).

    Scripts are registered once here; each operation makes one script call per
    state change. Scripts are safe to run twice, because a batch of script calls
    is sent again after a connection error (redis/batcher.py) and the first run
    may already have happened.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        heartbeat_window_seconds: int = 300,
        timeout: float | None = None,
        events_max_length: int = 10_000,
        replication: Replication = Replication(),
        quotas: Quotas = Quotas(),
    ) -> None:
        # ``timeout`` bounds each batch of script calls (redis/batcher.py); with
        # ``replication``, every state change waits for replicas before its answer.
        scripts = Scripts(redis, timeout, replication)
        self.ctx = Context(redis, keys, scripts, heartbeat_window_seconds * 1000, events_max_length, quotas)
        self.redis, self.keys, self.scripts = redis, keys, scripts
        self.agents = Agents(self.ctx)
        self.leases = Leases(self.ctx)
        self.consensus = ConsensusRequests(self.ctx)
        self.events = EventLog(self.ctx)
        self.limits = RateLimits(self.ctx)
        self.apikeys = ApiKeys(self.ctx)
        self.quotas = TenantQuotas(self.ctx)
        self.policies = ConsensusPolicies(self.ctx)
        self.suppressions = Suppressions(self.ctx)
        self.feed = EventFeed(redis, keys, self.consensus.expire_due, scripts.slots)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def aclose(self) -> None:
        """Stop the event feed and close the connections the store made itself (the
        scripts' own, on a cluster); the Redis client is the caller's to close."""
        await self.feed.close()
        await self.scripts.aclose()
