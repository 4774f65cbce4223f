"""The store: one async method per operation, on Redis.

Every state change is one Lua script (lua/), so it is atomic and uses Redis's
clock; this module builds the keys, runs the script and turns its reply into a
response value or a ConcordError. Reads that span many keys (lists) are pipelined
and checked item by item. No HTTP type crosses into this module.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from enum import IntEnum
from typing import Any, TypeVar

import msgspec
from redis.asyncio import Redis, RedisCluster

from concord.protocol.schemas import (
    MAX_CONSENSUS_TIMEOUT_S,
    Agent,
    AgentList,
    AgentRemoved,
    Consensus,
    ConsensusList,
    Event,
    EventPage,
    Heartbeat,
    Lease,
    LeaseHolder,
    LeaseList,
    Released,
    SendCheck,
    Tally,
    Vote,
    iso,
)
from concord.server.errors import (
    ConcordError,
    StoreUnavailable,
    agent_not_found,
    consensus_not_found,
    invalid,
    lease_not_found,
)
from concord.server.metrics import METRICS
from concord.server.redis.batcher import Replication
from concord.server.settings import RateLimit, key_digest
from concord.server.store.feed import EventFeed, EventFilter, event
from concord.server.store.keys import Keys, agent_id_for, agent_tag, lease_id, new_id, parse_lease_id
from concord.server.store.scripts import Scripts

T = TypeVar("T")

# How long a decided consensus request stays readable, and the longest timeout.
RETENTION_MS = 7 * 24 * 3600 * 1000
MAX_CONSENSUS_TIMEOUT_MS = MAX_CONSENSUS_TIMEOUT_S * 1000
IDEMPOTENCY_MS = 24 * 3600 * 1000
# A script answers RETRY only when state moved between two round trips of one
# request; a few attempts are plenty.
MAX_ATTEMPTS = 5
# The most stream entries one page of events reads, however selective its filter.
SCAN_EVENTS = 10_000


class Reply(IntEnum):
    """The first element of every script reply (lua/lib.lua). Reply(n) raises on an unknown n."""

    OK = 0
    CREATED = 1
    RETRY = 3
    REPLAYED = 4
    AGENT_NOT_FOUND = -1
    AGENT_INACTIVE = -2
    LEASE_CONFLICT = -3
    LEASE_NOT_FOUND = -4
    NOT_LEASE_HOLDER = -5
    STALE_FENCING_TOKEN = -6
    CONSENSUS_NOT_FOUND = -7
    REQUESTER_CANNOT_VOTE = -8
    ALREADY_VOTED = -9
    CONSENSUS_CLOSED = -10
    RATE_LIMITED = -11
    IDEMPOTENCY_KEY_REUSED = -12


class Store:
    """Concord's operations for any number of tenants on one Redis (or Cluster).

    Scripts are registered once here; each method makes one script call per state
    change. Scripts are safe to run twice, because a batch of script calls is sent
    again after a connection error (wire.Batcher) and the first run may already
    have happened.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        heartbeat_window_seconds: int = 300,
        timeout: float | None = None,
        events_max_length: int = 10_000,
        replication: Replication = Replication(),
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.window_ms = heartbeat_window_seconds * 1000
        # ``timeout`` bounds each batch of script calls (wire.Batcher); with
        # ``replication``, every state change waits for replicas before its answer.
        self.scripts = Scripts(redis, timeout, replication)
        self.events_max = events_max_length
        self.feed = EventFeed(redis, keys, self._expire_due, self.scripts.slots)

    # --- agents --------------------------------------------------------------

    async def register(self, tenant: str, name: str, role: str | None, metadata: bytes | None) -> tuple[Agent, bool]:
        """Upsert the agent of ``name``; True when it was created."""
        k, agent_id = self.keys, agent_id_for(tenant, name)
        reply = await self.scripts.agent_register(
            [k.agent(tenant, agent_id), k.agents(tenant), k.heartbeats(tenant), k.events(tenant)],
            [agent_id, name, role or "", metadata or b"", self.events_max],
        )
        code = Reply(reply[0])
        return self._agent(tenant, _pairs(reply[1]), int(reply[2]), int(reply[2])), code is Reply.CREATED

    async def get_agent(self, tenant: str, agent_id: str) -> Agent:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.agent(tenant, agent_id))
        pipe.zscore(self.keys.heartbeats(tenant), agent_id)
        fields, last, now = await self._with_time(pipe, tenant)
        if not fields:
            raise agent_not_found(agent_id)
        return self._agent(tenant, fields, _int(last), now)

    async def list_agents(self, tenant: str, status: str | None, limit: int, cursor: str | None) -> AgentList:
        async def load(ids: list[str]) -> list[Agent | None]:
            pipe = self.redis.pipeline(transaction=False)
            for agent_id in ids:
                pipe.hgetall(self.keys.agent(tenant, agent_id))
            pipe.zmscore(self.keys.heartbeats(tenant), ids)
            *hashes, lasts, now = await self._with_time(pipe, tenant)
            agents = (
                self._agent(tenant, fields, _int(last), now) if fields else None for fields, last in zip(hashes, lasts)
            )
            return [a if a and status in (None, a.status) else None for a in agents]

        agents, next_cursor = await self._page(self.keys.agents(tenant), cursor, limit, load)
        return AgentList(agents=agents, next_cursor=next_cursor)

    async def remove_agent(self, tenant: str, agent_id: str) -> AgentRemoved:
        """Deregister the agent and release its leases, in one script."""
        k = self.keys
        registry = k.lease_registry(tenant, agent_tag(agent_id))
        for _ in range(MAX_ATTEMPTS):
            contacts = sorted({entry.partition(":")[2] for entry in await self.redis.hvals(registry)})
            reply = await self.scripts.agent_remove(
                [k.agent(tenant, agent_id), k.agents(tenant), k.heartbeats(tenant), registry, k.events(tenant)]
                + [k.lease(tenant, c) for c in contacts],
                [agent_id, self.events_max, *contacts],
            )
            code = Reply(reply[0])
            if code is Reply.OK:
                return AgentRemoved(id=agent_id, released_leases=int(reply[1]))
            if code is Reply.AGENT_NOT_FOUND:
                raise agent_not_found(agent_id)
        raise StoreUnavailable(f"agent {agent_id} kept acquiring leases while being removed; try again")

    async def heartbeat(self, tenant: str, agent_id: str) -> Heartbeat:
        reply = await self.scripts.agent_heartbeat([self.keys.heartbeats(tenant)], [agent_id])
        if Reply(reply[0]) is Reply.AGENT_NOT_FOUND:
            raise agent_not_found(agent_id)
        last = int(reply[1])
        return Heartbeat(agent_id=agent_id, last_heartbeat=iso(last), active_until=iso(last + self.window_ms))

    def _agent(self, tenant: str, h: dict[str, str], last: int | None, now_ms: int) -> Agent:
        active = last is not None and last > now_ms - self.window_ms
        return Agent(
            id=h["id"],
            tenant_id=tenant,
            agent_name=h["agentName"],
            agent_role=h["agentRole"],
            status="active" if active else "inactive",
            last_heartbeat=iso(last) if last is not None else None,
            registered_at=iso(h["registeredAt"]),
            updated_at=iso(h["updatedAt"]),
            metadata=msgspec.Raw(h["metadata"].encode()),
        )

    # --- leases --------------------------------------------------------------

    async def acquire(
        self, tenant: str, agent_id: str, contact: str, intent: str | None, duration_ms: int
    ) -> tuple[Lease, bool]:
        """Grant, extend or refuse the lease on ``contact``; True when newly granted.
        The holder asking again gets its own lease back (same id and token), extended."""
        k = self.keys
        reply = await self.scripts.lease_acquire(
            [
                k.agent(tenant, agent_id),
                k.heartbeats(tenant),
                k.lease(tenant, contact),
                k.lease_registry(tenant, agent_tag(agent_id)),
                k.fence(tenant),
                k.events(tenant),
            ],
            [agent_id, contact, intent or "", duration_ms, self.window_ms, self.events_max],
        )
        code = Reply(reply[0])
        if code in (Reply.CREATED, Reply.OK):
            METRICS.lease("extended" if code is Reply.OK else "takeover" if reply[7] else "granted")
            return _lease(tenant, contact, reply[:7]), code is Reply.CREATED
        if code is Reply.LEASE_CONFLICT:
            METRICS.lease("conflict")
            holder = _holder(reply)
            raise ConcordError(
                "lease_conflict",
                f"{contact} is leased by agent {holder.agent_name} ({holder.agent_id}) until {holder.expires_at}",
                conflict=True,
                contactEmail=contact,
                leaseHolder=holder,
            )
        raise self._agent_error(code, agent_id)

    async def renew(self, tenant: str, lease_id: str, agent_id: str, duration_ms: int) -> Lease:
        tag, token, contact = await self._find_lease(tenant, lease_id)
        k = self.keys
        reply = await self.scripts.lease_renew(
            [k.heartbeats(tenant), k.lease(tenant, contact), k.lease_registry(tenant, tag), k.events(tenant)],
            [token, agent_id, contact, duration_ms, self.window_ms, self.events_max],
        )
        code = Reply(reply[0])
        if code is Reply.OK:
            METRICS.lease("renewed")
            return _lease(tenant, contact, reply)
        if code is Reply.NOT_LEASE_HOLDER:
            raise _not_holder(lease_id, agent_id, reply[1])
        if code is Reply.LEASE_NOT_FOUND:
            raise lease_not_found(lease_id)
        raise self._agent_error(code, agent_id)

    async def release(self, tenant: str, lease_id: str, agent_id: str | None) -> Released:
        tag, token, contact = await self._find_lease(tenant, lease_id)
        k = self.keys
        reply = await self.scripts.lease_release(
            [k.lease(tenant, contact), k.lease_registry(tenant, tag), k.events(tenant)],
            [token, agent_id or "", contact, self.events_max],
        )
        code = Reply(reply[0])
        if code is Reply.OK:
            METRICS.lease("released")
            return Released(id=lease_id, released_at=iso(reply[1]))
        if code is Reply.NOT_LEASE_HOLDER:
            raise _not_holder(lease_id, agent_id, reply[1])
        raise lease_not_found(lease_id)

    async def get_lease(self, tenant: str, lease_id: str) -> Lease:
        _, token, contact = await self._find_lease(tenant, lease_id)
        lease = (await self._read_leases(tenant, [contact]))[0]
        if lease is None or lease.fencing_token != token:
            raise lease_not_found(lease_id)
        return lease

    async def list_leases(
        self, tenant: str, agent_id: str | None, contact: str | None, limit: int, cursor: str | None
    ) -> LeaseList:
        """Leases of one agent (read through its registry: costs what that agent holds,
        not what the tenant holds) and/or of one contact, newest grant first."""
        if contact is not None:
            contacts = [contact]
        else:
            entries = await self.redis.hvals(self.keys.lease_registry(tenant, agent_tag(agent_id)))
            contacts = sorted({entry.partition(":")[2] for entry in entries})
        # Tokens grow in grant order: newest grant first is highest token first.
        found = sorted(
            (
                lease
                for lease in await self._read_leases(tenant, contacts)
                if lease and agent_id in (None, lease.agent_id)
            ),
            key=lambda lease: lease.fencing_token,
            reverse=True,
        )
        if cursor is not None:
            after, _ = _decode_cursor(cursor)
            found = [lease for lease in found if lease.fencing_token < after]
        page = found[:limit]
        next_cursor = _encode_cursor(page[-1].fencing_token, "") if len(found) > limit else None
        return LeaseList(leases=page, next_cursor=next_cursor)

    async def send_check(self, tenant: str, agent_id: str, contact: str, fencing_token: int | None) -> SendCheck:
        reply = await self.scripts.lease_send_check(
            [self.keys.heartbeats(tenant), self.keys.lease(tenant, contact)],
            [agent_id, fencing_token or "", self.window_ms],
        )
        code = Reply(reply[0])
        if code is Reply.OK:
            return SendCheck(allowed=True)
        reasons = {
            Reply.AGENT_NOT_FOUND: "agent_not_found",
            Reply.AGENT_INACTIVE: "agent_inactive",
            Reply.LEASE_CONFLICT: "lease_conflict",
            Reply.STALE_FENCING_TOKEN: "stale_fencing_token",
        }
        return SendCheck(allowed=False, reason=reasons[code], lease_holder=_holder(reply) if len(reply) > 1 else None)

    async def _find_lease(self, tenant: str, lease_id: str) -> tuple[str, int, str]:
        """(agent tag, fencing token, contact) of a lease id, from its holder's registry."""
        tag, token = parse_lease_id(lease_id)
        entry = await self.redis.hget(self.keys.lease_registry(tenant, tag), str(token))
        if entry is None:
            raise lease_not_found(lease_id)
        return tag, token, entry.partition(":")[2]

    async def _read_leases(self, tenant: str, contacts: list[str]) -> list[Lease | None]:
        pipe = self.redis.pipeline(transaction=False)
        for contact in contacts:
            pipe.get(self.keys.lease(tenant, contact))
            pipe.pexpiretime(self.keys.lease(tenant, contact))
        answers = await pipe.execute()
        leases: list[Lease | None] = []
        for contact, value, expires_at in zip(contacts, answers[::2], answers[1::2]):
            if value is None or expires_at < 0:
                leases.append(None)
                continue
            uuid, token, acquired, name, intent = value.split("|", 4)
            leases.append(_lease(tenant, contact, [0, f"agent_{uuid}", name, intent, acquired, expires_at, token]))
        return leases

    # --- consensus -----------------------------------------------------------

    async def request_consensus(
        self,
        tenant: str,
        requester_id: str,
        action: str,
        contact: str | None,
        reason: str | None,
        timeout_ms: int,
        idempotency_key: str | None = None,
    ) -> tuple[Consensus, bool]:
        """Open a request; True when this answer replays an earlier one with the same
        Idempotency-Key (and the same meaning: requester, action, contact, reason, timeout)."""
        consensus_id = new_id("cons")
        keys = self._consensus_keys(tenant, consensus_id)
        fingerprint = ""
        if idempotency_key is not None:
            keys.append(self.keys.idempotency(tenant, key_digest(idempotency_key)))
            meaning = msgspec.json.encode([requester_id, action, contact, reason, timeout_ms])
            fingerprint = hashlib.sha256(meaning).hexdigest()
        reply = await self.scripts.consensus_request(
            keys,
            [
                consensus_id,
                requester_id,
                action,
                contact or "",
                reason or "",
                timeout_ms,
                self.window_ms,
                RETENTION_MS,
                MAX_CONSENSUS_TIMEOUT_MS + RETENTION_MS,
                fingerprint,
                IDEMPOTENCY_MS,
                self.events_max,
            ],
        )
        code = Reply(reply[0])
        if code in (Reply.CREATED, Reply.OK):
            if code is Reply.CREATED:
                METRICS.consensus("requested")
            return _consensus(tenant, reply), False
        if code is Reply.REPLAYED:
            first = _pairs(reply[1])
            return _consensus(tenant, [code, reply[1], [], 0, 0, first["eligible"], first["needed"]]), True
        if code is Reply.IDEMPOTENCY_KEY_REUSED:
            raise ConcordError(
                "idempotency_key_reused",
                "This Idempotency-Key was used for a different request in the last 24 hours; use a new key",
            )
        raise self._agent_error(code, requester_id)

    async def vote(self, tenant: str, consensus_id: str, agent_id: str, vote: str, reason: str | None) -> Consensus:
        reply = await self.scripts.consensus_vote(
            self._consensus_keys(tenant, consensus_id) + [self.keys.agent(tenant, agent_id)],
            [agent_id, vote, reason or "", self.window_ms, RETENTION_MS, self.events_max],
        )
        code = Reply(reply[0])
        if code in (Reply.CREATED, Reply.OK):  # CREATED: counted now; OK: the same vote again
            if code is Reply.CREATED:
                METRICS.vote(vote)
            return _consensus(tenant, reply)
        if code is Reply.CONSENSUS_NOT_FOUND:
            raise consensus_not_found(consensus_id)
        if code is Reply.REQUESTER_CANNOT_VOTE:
            raise ConcordError(
                "requester_cannot_vote", f"Agent {agent_id} made consensus request {consensus_id} and cannot vote on it"
            )
        if code is Reply.ALREADY_VOTED:
            raise ConcordError(
                "already_voted",
                f"Agent {agent_id} already voted {reply[1]} on {consensus_id}; a vote cannot be changed",
                vote=reply[1],
            )
        if code is Reply.CONSENSUS_CLOSED:
            raise ConcordError(
                "consensus_closed",
                f"Consensus request {consensus_id} is already {reply[1]}",
                consensusStatus=reply[1],
            )
        raise self._agent_error(code, agent_id)

    async def get_consensus(self, tenant: str, consensus_id: str) -> Consensus:
        reply = await self._read_consensus(tenant, consensus_id)
        if Reply(reply[0]) is Reply.CONSENSUS_NOT_FOUND:
            raise consensus_not_found(consensus_id)
        return _consensus(tenant, reply)

    async def list_consensus(self, tenant: str, status: str | None, limit: int, cursor: str | None) -> ConsensusList:
        await self._expire_due(tenant)

        async def load(ids: list[str]) -> list[Consensus | None]:
            found = (
                _consensus(tenant, r) if Reply(r[0]) is Reply.OK else None for r in await self._read_many(tenant, ids)
            )
            # Reading can decide a request: it then belongs to another list.
            return [c if c and status in (None, c.status) else None for c in found]

        items, next_cursor = await self._page(self.keys.consensus_list(tenant, status or "all"), cursor, limit, load)
        return ConsensusList(consensus=items, next_cursor=next_cursor)

    async def _expire_due(self, tenant: str, batch: int = 200) -> None:
        """Settle every pending request past its deadline, so lists by status are true."""
        due = self.keys.consensus_due(tenant)
        while True:
            now = await self._now(tenant)
            ids = await self.redis.zrangebyscore(due, "-inf", now, start=0, num=batch)
            if not ids:
                return
            for reply in await self._read_many(tenant, ids):
                if Reply(reply[0]) is Reply.OK:
                    _consensus(tenant, reply)  # counts the decisions this sweep made
            if len(ids) < batch:
                return

    async def _read_many(self, tenant: str, ids: list[str]) -> list[Any]:
        """consensus_read of each id: one pipeline on one server. On a cluster, calls
        side by side, which the master's batcher pipelines (cluster.py): a redis-py
        cluster pipeline would not reload a script that a node (a replica promoted
        by a failover) does not have."""
        if isinstance(self.redis, RedisCluster):
            return list(await asyncio.gather(*(self._read_consensus(tenant, i) for i in ids)))
        pipe = self.redis.pipeline(transaction=False)
        for consensus_id in ids:
            await self._read_consensus(tenant, consensus_id, client=pipe)
        return await pipe.execute()

    def _read_consensus(self, tenant: str, consensus_id: str, client: Any = None) -> Awaitable[Any]:
        return self.scripts.consensus_read(
            self._consensus_keys(tenant, consensus_id),
            [consensus_id, self.window_ms, RETENTION_MS, self.events_max],
            client,
        )

    def _consensus_keys(self, tenant: str, consensus_id: str) -> list[str]:
        k = self.keys
        return [
            k.consensus(tenant, consensus_id),
            k.votes(tenant, consensus_id),
            k.heartbeats(tenant),
            k.consensus_list(tenant, "all"),
            k.consensus_list(tenant, "pending"),
            k.consensus_list(tenant, "approved"),
            k.consensus_list(tenant, "rejected"),
            k.consensus_list(tenant, "expired"),
            k.consensus_due(tenant),
            k.events(tenant),
        ]

    # --- events --------------------------------------------------------------

    async def events(self, tenant: str, after: str, limit: int, match: EventFilter) -> EventPage:
        """Up to ``limit`` events after the stream id ``after``, oldest first, that
        ``match`` keeps. A selective filter reads at most SCAN_EVENTS entries per call
        and says where it stopped (``nextAfter``), so no call costs the whole stream."""
        found: list[Event] = []
        position, scanned, more = after, 0, True
        while more and len(found) < limit and scanned < SCAN_EVENTS:
            batch = await self.events_after(tenant, position, min(max(limit, 100), SCAN_EVENTS - scanned))
            more = len(batch) == min(max(limit, 100), SCAN_EVENTS - scanned)
            for e in batch:
                position, scanned = e.id, scanned + 1
                if match(e):
                    found.append(e)
                    if len(found) == limit:
                        more = more or e is not batch[-1]
                        break
        return EventPage(events=found, next_after=position, has_more=more)

    async def events_after(self, tenant: str, after: str, count: int) -> list[Event]:
        """Up to ``count`` entries of the stream strictly after ``after``, oldest first."""
        entries = await self.redis.xrange(self.keys.events(tenant), min=f"({after}", max="+", count=count)
        return [event(tenant, entry_id, fields) for entry_id, fields in entries]

    async def last_event_id(self, tenant: str) -> str:
        """The id of the stream's newest entry, or "0" for an empty stream."""
        newest = await self.redis.xrevrange(self.keys.events(tenant), count=1)
        return newest[0][0] if newest else "0"

    # --- rate limits ---------------------------------------------------------

    async def take_token(self, tenant: str, agent_id: str | None, limits: Mapping[str, RateLimit]) -> None:
        """Take a token from the tenant's bucket and, for a request made by an agent,
        from that agent's, or raise rate_limited (taking none) if either is empty."""
        keys, args = [], []
        for scope, bucket in (("tenant", None), ("agent", agent_id)):
            limit = limits.get(scope)
            if limit is not None and (scope == "tenant" or agent_id is not None):
                keys.append(self.keys.rate_bucket(tenant, bucket))
                args += [limit.per_second / 1000, limit.burst]
        if not keys:
            return
        reply = await self.scripts.rate_limit(keys, args)
        if Reply(reply[0]) is Reply.RATE_LIMITED:
            wait_ms = int(reply[1])
            raise ConcordError("rate_limited", f"Rate limit reached; retry in {wait_ms} ms", retryAfterMs=wait_ms)

    # --- API keys (not tenant-scoped) ----------------------------------------

    async def tenant_of_key(self, digest: str) -> str | None:
        return await self.redis.hget(self.keys.api_keys(), digest)

    async def create_api_key(self, tenant: str) -> str:
        """A new random key for ``tenant``; Redis keeps only its SHA-256."""
        api_key = "ck_" + secrets.token_urlsafe(32)
        await self.redis.hset(self.keys.api_keys(), key_digest(api_key), tenant)
        return api_key

    async def revoke_api_key(self, key_or_digest: str) -> str | None:
        """Remove a key given as itself or as its SHA-256 hex; returns its tenant, or None."""
        candidates = [key_digest(key_or_digest)]
        if len(key_or_digest) == 64 and all(ch in "0123456789abcdef" for ch in key_or_digest):
            candidates.append(key_or_digest)
        for digest in candidates:
            tenant = await self.redis.hget(self.keys.api_keys(), digest)
            if tenant is not None and await self.redis.hdel(self.keys.api_keys(), digest):
                return tenant
        return None

    async def api_keys(self) -> dict[str, str]:
        """SHA-256 hex -> tenant of every key stored in Redis."""
        return await self.redis.hgetall(self.keys.api_keys())

    # --- shared --------------------------------------------------------------

    async def _now(self, tenant: str) -> int:
        """Redis's time in ms, on the server that holds ``tenant`` (its scripts' clock)."""
        if isinstance(self.redis, RedisCluster):
            await self.redis.initialize()  # the slot map, once: a no-op afterwards
            node = self.redis.get_node_from_key(self.keys.heartbeats(tenant))
            return _ms(await self.redis.execute_command("TIME", target_nodes=node))
        return _ms(await self.redis.time())

    async def _with_time(self, pipe: Any, tenant: str) -> list[Any]:
        """The pipeline's answers, then Redis's time in ms: in the same round trip on
        one server; on a cluster (which refuses a keyless TIME in a pipeline) asked of
        the tenant's node just before."""
        if isinstance(self.redis, RedisCluster):
            now = await self._now(tenant)
            return [*await pipe.execute(), now]
        pipe.time()
        *answers, now = await pipe.execute()
        return [*answers, _ms(now)]

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def aclose(self) -> None:
        """Stop the event feed and close the connections the store made itself (the
        scripts' own, on a cluster); the Redis client is the caller's to close."""
        await self.feed.close()
        await self.scripts.aclose()

    async def _page(
        self,
        index_key: str,
        cursor: str | None,
        limit: int,
        load: Callable[[list[str]], Awaitable[Sequence[T | None]]],
    ) -> tuple[list[T], str | None]:
        """Newest-first keyset pagination over a zset of id -> ms.

        ``load`` turns a batch of ids into items, or None for one to skip. One item
        more than the page is gathered, so nextCursor is null exactly on the last page.
        """
        after = _decode_cursor(cursor) if cursor else None
        picked: list[tuple[T, tuple[int, str]]] = []
        while len(picked) <= limit:
            batch = await self._zset_after(index_key, after, limit + 1)
            items = await load([member for _, member in batch]) if batch else []
            picked += [(item, position) for position, item in zip(batch, items) if item is not None]
            if len(batch) < limit + 1:
                break
            after = batch[-1]
        next_cursor = _encode_cursor(*picked[limit - 1][1]) if len(picked) > limit else None
        return [item for item, _ in picked[:limit]], next_cursor

    async def _zset_after(self, key: str, after: tuple[int, str] | None, count: int) -> list[tuple[int, str]]:
        """Up to ``count`` (score, member) of a zset, highest score first, strictly after
        the position ``after``. Equal scores come in reverse member order
        (ZRANGE ... REV), so a position needs the member as well as the score."""
        top = "+inf" if after is None else after[0]
        found: list[tuple[int, str]] = []
        offset = 0
        while len(found) < count:
            batch = await self.redis.zrange(
                key, top, "-inf", desc=True, byscore=True, offset=offset, num=count, withscores=True
            )
            found += [(int(score), member) for member, score in batch if after is None or (int(score), member) < after]
            if len(batch) < count:
                break
            offset += count
        return found[:count]

    def _agent_error(self, code: Reply, agent_id: str) -> ConcordError:
        if code is Reply.AGENT_NOT_FOUND:
            return agent_not_found(agent_id)
        if code is Reply.AGENT_INACTIVE:
            return ConcordError(
                "agent_inactive",
                f"Agent {agent_id} has sent no heartbeat in the last {self.window_ms // 1000} s; send one first",
            )
        raise ValueError(f"unexpected script reply {code!r}")


# --- reply parsing -----------------------------------------------------------


def _pairs(flat: list[str]) -> dict[str, str]:
    it = iter(flat)
    return dict(zip(it, it))


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _ms(redis_time: tuple[int, int]) -> int:
    seconds, micros = redis_time
    return int(seconds) * 1000 + int(micros) // 1000


def _lease(tenant: str, contact: str, reply: list[Any]) -> Lease:
    """A lease from a script's reply {code, agentId, agentName, intent, acquiredAt, expiresAt, token}."""
    _, agent_id, agent_name, intent, acquired_at, expires_at, token = reply
    return Lease(
        id=lease_id(agent_id, int(token)),
        tenant_id=tenant,
        agent_id=agent_id,
        agent_name=agent_name,
        contact_email=contact,
        intent=intent or None,
        acquired_at=iso(acquired_at),
        expires_at=iso(expires_at),
        fencing_token=int(token),
    )


def _holder(reply: list[Any]) -> LeaseHolder:
    _, agent_id, agent_name, intent, expires_at = reply
    return LeaseHolder(agent_id=agent_id, agent_name=agent_name, intent=intent or None, expires_at=iso(expires_at))


def _consensus(tenant: str, reply: list[Any]) -> Consensus:
    """A consensus from a script's reply (lib.lua consensus_reply); counts the
    decision when this very call made it."""
    c, votes = _pairs(reply[1]), _pairs(reply[2])
    if len(reply) > 7 and reply[7]:
        METRICS.consensus(c["status"])
    approve, reject, eligible, needed = (int(n) for n in reply[3:7])
    ballots = sorted(
        (int(voted_us), agent_id, vote, agent_name, reason)
        for agent_id, (vote, voted_us, agent_name, reason) in ((a, r.split("|", 3)) for a, r in votes.items())
    )
    return Consensus(
        id=c["id"],
        tenant_id=tenant,
        requesting_agent_id=c["requestingAgentId"],
        action=c["action"],
        contact_email=c["contactEmail"] or None,
        reason=c["reason"] or None,
        status=c["status"],
        created_at=iso(c["createdAt"]),
        expires_at=iso(c["expiresAt"]),
        resolved_at=iso(c["resolvedAt"]) if "resolvedAt" in c else None,
        tally=Tally(approve=approve, reject=reject, eligible=eligible, needed=needed),
        votes=[
            Vote(agent_id=agent_id, agent_name=name, vote=vote, reason=reason or None, voted_at=iso(voted_us // 1000))
            for voted_us, agent_id, vote, name, reason in ballots
        ],
    )


def _encode_cursor(score: int, member: str) -> str:
    return base64.urlsafe_b64encode(f"{score}:{member}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        score, sep, member = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        if not sep:
            raise ValueError
        return int(score), member
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("Expected a cursor from an earlier page's nextCursor", "$.cursor") from None


def _not_holder(lease_id: str, agent_id: str | None, holder: str) -> ConcordError:
    return ConcordError("not_lease_holder", f"Lease {lease_id} is held by {holder}, not by {agent_id}")
