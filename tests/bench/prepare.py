"""The data each operation needs, made beforehand through the public Store methods
on the benchmark's private Redis, and written to files the wrk scripts read.

Only Store methods and INFO are used, never key names: the key layout may change
without the benchmark noticing. At most CONCURRENCY calls are in flight at once,
so one client pool of that size is never exceeded. As a fleet does it, the
tenant's admin key registers the agents (the grant `concord serve` makes of it,
so the events name that key), and each agent then acts with its own credential:
its leases, its consensus requests and its votes are made with it, and the wrk
scripts send each agent's requests with it (credentials.txt).

Files of a tenant (one line per item, fields separated by spaces):
    names.txt       agent names, as registered
    agents.txt      their agent ids, in the same order
    credentials.txt "agentId credential": each agent's current credential, in the same order
    leases.txt      "leaseId agentId contact fencingToken": one lease per agent (renew, send-check)
    contenders.txt  the agents that do not hold CONTENDED_CONTACT
    reads.txt       consensus ids, pending, with a few votes each (consensus read)
    votes-<tag>.txt "consensusId requesterIndex": fresh requests for one vote run
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio

from concord.server.principals import KeyGrant
from concord.server.settings import QUOTA_MAX, Quotas, key_digest
from concord.server.store import Store
from concord.server.store.keys import Keys

T = TypeVar("T")

CONCURRENCY = 64
KEY_PREFIX = "bench"
# Agents stay active for the whole run without being kept alive by hand.
WINDOW_SECONDS = 86_400
# The in-process rate limits stay on, so their cost is measured, but far above any
# rate here: the defaults (2,000 a second per key, 100 per agent) would throttle
# register (one admin key, ~10,000 a second) and, with --agents 50, the agents.
RATE_LIMITS = "principal=1000000/s,key=1000000/s"
LONG_MS = 24 * 3600 * 1000  # leases and consensus requests that outlive the run
CONTENDED_CONTACT = "contended@bench.example"
# A vote run gives each consensus request at most this many votes, so a vote's
# answer (which lists the votes so far) stays the size of a real one.
VOTES_PER_REQUEST = 10
READ_REQUESTS = 100


@dataclass
class Tenant:
    """One tenant's API key and its data files."""

    name: str
    api_key: str
    directory: Path
    agents: int = 0
    key_id: str = "cfg-1"  # the id `concord serve` gives api_key: cfg-<its place in CONCORD_API_KEYS>

    @property
    def admin(self) -> KeyGrant:
        """The admin key as the service grants it: what registers the agents."""
        return KeyGrant(id=self.key_id, tenant=self.name)

    def file(self, name: str) -> Path:
        return self.directory / name

    def files(self) -> dict[str, str]:
        """Every standard data file that exists, as wrk script arguments."""
        names = ("names", "agents", "credentials", "leases", "contenders", "reads")
        found = {name: self.file(f"{name}.txt") for name in names}
        args = {name: str(path) for name, path in found.items() if path.exists()}
        if self.file("leases.txt").exists():
            args["contact"] = CONTENDED_CONTACT
        return args


async def each(items: Iterable[T], call: Callable[[T], Awaitable[Any]], limit: int = CONCURRENCY) -> list[Any]:
    """``call(item)`` for every item, at most ``limit`` at a time; results in item order."""
    todo = list(enumerate(items))
    results: list[Any] = [None] * len(todo)
    position = iter(todo)

    async def worker() -> None:
        for index, item in position:
            results[index] = await call(item)

    await asyncio.gather(*(worker() for _ in range(min(limit, len(todo)) or 1)))
    return results


UNBOUNDED = Quotas(QUOTA_MAX, QUOTA_MAX, QUOTA_MAX, QUOTA_MAX)


def with_store(redis_url: str, work: Callable[[Store, redis.asyncio.Redis], Awaitable[T]], cluster: bool = False) -> T:
    """Run ``work(store, client)`` on a fresh client of at most CONCURRENCY connections
    (per node, with ``cluster``: ``redis_url`` names a node of a Redis Cluster)."""

    async def main() -> T:
        kind = redis.asyncio.RedisCluster if cluster else redis.asyncio.Redis
        client = kind.from_url(redis_url, decode_responses=True, max_connections=CONCURRENCY)
        # The data is made as fast as Redis takes it, whatever the tenant's quotas would allow.
        store = Store(client, Keys(KEY_PREFIX), WINDOW_SECONDS, quotas=UNBOUNDED)
        try:
            return await work(store, client)
        finally:
            await store.aclose()
            await client.aclose()

    return asyncio.run(main())


def write_rows(path: Path, rows: Iterable[Iterable[Any]]) -> Path:
    path.write_text("".join(" ".join(str(field) for field in row) + "\n" for row in rows))
    return path


def read_column(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()]


def digests(tenant: Tenant) -> dict[str, str]:
    """Each agent's id -> the digest of its current credential (what a script checks)."""
    rows = (line.split() for line in tenant.file("credentials.txt").read_text().splitlines())
    return {agent_id: key_digest(credential) for agent_id, credential in rows}


async def register(store: Store, admin: KeyGrant, names: list[str]) -> list[tuple[str, str]]:
    """Register every name (role "sdr") with the admin key; (agent id, its credential), in order."""

    async def one(name: str) -> tuple[str, str]:
        agent, _ = await store.agents.register(admin.tenant, name, "sdr", None, admin)
        return agent.id, agent.credential

    return await each(names, one)


def agents(redis_url: str, tenant: Tenant, count: int, cluster: bool = False) -> None:
    """Register ``count`` agents of the tenant; names.txt, agents.txt and credentials.txt."""
    names = [f"{tenant.name}-agent-{i:06d}" for i in range(count)]
    made = with_store(redis_url, lambda store, _: register(store, tenant.admin, names), cluster)
    tenant.directory.mkdir(parents=True, exist_ok=True)
    write_rows(tenant.file("names.txt"), ([name] for name in names))
    write_rows(tenant.file("agents.txt"), ([agent_id] for agent_id, _ in made))
    write_rows(tenant.file("credentials.txt"), made)
    tenant.agents = count


def new_credentials(redis_url: str, tenant: Tenant, cluster: bool = False) -> None:
    """Every agent's credential rotated with the admin key; credentials.txt rewritten.
    Re-registering an agent (the register run) gives it a new credential and refuses
    the earlier one, and wrk keeps no answers: this is how the runs after it learn
    the agents' credentials again, as a fleet's processes would from their answers."""
    ids = read_column(tenant.file("agents.txt"))

    async def work(store: Store, _: Any) -> list[tuple[str, str]]:
        async def one(agent_id: str) -> tuple[str, str]:
            return agent_id, (await store.agents.rotate(tenant.name, agent_id, tenant.admin)).credential

        return await each(ids, one)

    write_rows(tenant.file("credentials.txt"), with_store(redis_url, work, cluster))


def hot_path(redis_url: str, tenant: Tenant, cluster: bool = False) -> None:
    """A lease per agent (renew, send-check), the contended contact held by the first
    agent, and READ_REQUESTS pending consensus requests with a few votes each."""
    ids, own = read_column(tenant.file("agents.txt")), digests(tenant)

    async def work(store: Store, _: Any) -> None:
        async def lease(i: int) -> list[Any]:
            contact = f"renew-{i:06d}@bench.example"
            granted, _ = await store.leases.acquire(
                tenant.name, ids[i], contact, "outbound_sales", LONG_MS, own[ids[i]]
            )
            return [granted.id, ids[i], contact, granted.fencing_token]

        write_rows(tenant.file("leases.txt"), await each(range(len(ids)), lease))
        await store.leases.acquire(tenant.name, ids[0], CONTENDED_CONTACT, "outbound_sales", LONG_MS, own[ids[0]])
        write_rows(tenant.file("contenders.txt"), ([agent_id] for agent_id in ids[1:]))
        reads = await open_requests(store, tenant.name, ids, own, READ_REQUESTS)

        async def votes(index: int) -> None:
            consensus_id, requester = reads[index]
            for j in range(VOTES_PER_REQUEST // 2):
                voter = ids[(requester + 1 + j) % len(ids)]
                await store.consensus.vote(
                    tenant.name, consensus_id, voter, "approve" if j % 2 == 0 else "reject", None, own[voter]
                )

        await each(range(len(reads)), votes)
        write_rows(tenant.file("reads.txt"), ([consensus_id] for consensus_id, _ in reads))

    with_store(redis_url, work, cluster)


async def open_requests(
    store: Store, tenant: str, ids: list[str], own: dict[str, str], count: int
) -> list[tuple[str, int]]:
    """``count`` pending consensus requests, the agents taking turns as requester, each
    with its own credential (``own``: id -> digest): (consensus id, index of its
    requester in ``ids``)."""

    async def one(index: int) -> tuple[str, int]:
        requester = index % len(ids)
        consensus, _ = await store.consensus.request(
            tenant, ids[requester], "send_pricing_override", None, None, LONG_MS, own[ids[requester]]
        )
        return consensus.id, requester

    return await each(range(count), one)


def vote_requests(redis_url: str, tenant: Tenant, votes: int, tag: str, cluster: bool = False) -> Path:
    """Fresh consensus requests enough for ``votes`` votes of VOTES_PER_REQUEST each;
    the file for the vote run ``tag``."""
    ids, own = read_column(tenant.file("agents.txt")), digests(tenant)
    count = math.ceil(votes / VOTES_PER_REQUEST)
    rows = with_store(redis_url, lambda store, _: open_requests(store, tenant.name, ids, own, count), cluster)
    return write_rows(tenant.file(f"votes-{tag}.txt"), rows)


@dataclass
class LeaseMemory:
    agents: int
    leases_per_agent: int
    before: int  # INFO used_memory, bytes, with the agents registered
    after: int  # the same with every lease held

    @property
    def leases(self) -> int:
        return self.agents * self.leases_per_agent

    @property
    def per_lease(self) -> float:
        return (self.after - self.before) / self.leases


def lease_memory(redis_url: str, agent_count: int, per_agent: int) -> LeaseMemory:
    """used_memory before and after ``agent_count * per_agent`` leases on fresh
    contacts, agent i holding contacts i*per_agent ... (i+1)*per_agent-1. Run it on a
    Redis of its own: the delta is everything those leases cost."""

    async def work(store: Store, client: redis.asyncio.Redis) -> LeaseMemory:
        admin = KeyGrant(id="cfg-1", tenant="memory")
        made = await register(store, admin, [f"memory-agent-{i:06d}" for i in range(agent_count)])
        ids, own = [agent_id for agent_id, _ in made], [key_digest(credential) for _, credential in made]

        async def lease(n: int) -> None:
            # A contact address of ordinary length (24 characters).
            await store.leases.acquire(
                "memory",
                ids[n // per_agent],
                f"lead-{n:07d}@example.com",
                "outbound_sales",
                LONG_MS,
                own[n // per_agent],
            )

        before = (await client.info("memory"))["used_memory"]
        await each(range(agent_count * per_agent), lease)
        after = (await client.info("memory"))["used_memory"]
        return LeaseMemory(agent_count, per_agent, before, after)

    return with_store(redis_url, work)
