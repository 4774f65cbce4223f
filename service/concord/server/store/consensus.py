"""Consensus requests: ask the active peers, vote, read (which settles a request
past its deadline), list, and the sweep that settles overdue requests."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable
from typing import Any

import msgspec
from redis.asyncio import RedisCluster

from concord.protocol import MAX_CONSENSUS_TIMEOUT_S, Consensus, ConsensusList
from concord.server.metrics import METRICS
from concord.server.settings import key_digest
from concord.server.store import paging
from concord.server.store.context import Context
from concord.server.store.keys import new_id
from concord.server.store.replies import Reply, consensus, pairs, refused

# How long a decided consensus request stays readable, and the longest timeout.
RETENTION_MS = 7 * 24 * 3600 * 1000
MAX_CONSENSUS_TIMEOUT_MS = MAX_CONSENSUS_TIMEOUT_S * 1000
IDEMPOTENCY_MS = 24 * 3600 * 1000


class ConsensusRequests:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def request(
        self,
        tenant: str,
        requester_id: str,
        action: str,
        contact: str | None,
        reason: str | None,
        timeout_ms: int,
        credential: str,
        idempotency_key: str | None = None,
    ) -> tuple[Consensus, bool]:
        """Open a request; True when this answer replays an earlier one with the same
        Idempotency-Key (and the same meaning: requester, action, contact, reason, timeout).
        ``credential`` is the digest of the requester's credential, checked by the script."""
        ctx = self.ctx
        consensus_id = new_id("cons")
        keys = self._keys(tenant, consensus_id) + [
            ctx.keys.agent(tenant, requester_id),
            ctx.keys.quotas(tenant),
            ctx.keys.consensus_policies(tenant),
            ctx.keys.agent_roles(tenant),
        ]
        fingerprint = ""
        if idempotency_key is not None:
            keys.append(ctx.keys.idempotency(tenant, key_digest(idempotency_key)))
            meaning = msgspec.json.encode([requester_id, action, contact, reason, timeout_ms])
            fingerprint = hashlib.sha256(meaning).hexdigest()
        reply = await ctx.scripts.consensus_request(
            keys,
            [
                consensus_id,
                requester_id,
                action,
                contact or "",
                reason or "",
                timeout_ms,
                ctx.window_ms,
                RETENTION_MS,
                MAX_CONSENSUS_TIMEOUT_MS + RETENTION_MS,
                fingerprint,
                IDEMPOTENCY_MS,
                ctx.events_max,
                credential,
                ctx.quotas.pending_consensus,
            ],
        )
        code = Reply(reply[0])
        if code < 0:
            raise refused(code, reply, tenant=tenant, agent_id=requester_id, window_ms=ctx.window_ms)
        if code is Reply.REPLAYED:
            first = pairs(reply[1])
            return consensus(tenant, [code, reply[1], [], 0, 0, first["eligible"], first["needed"]]), True
        if code is Reply.CREATED:
            METRICS.consensus("requested")
        return consensus(tenant, reply), False

    async def vote(
        self, tenant: str, consensus_id: str, agent_id: str, vote: str, reason: str | None, credential: str
    ) -> Consensus:
        ctx = self.ctx
        reply = await ctx.scripts.consensus_vote(
            self._keys(tenant, consensus_id) + [ctx.keys.agent(tenant, agent_id), ctx.keys.humans(tenant)],
            [agent_id, vote, reason or "", ctx.window_ms, RETENTION_MS, ctx.events_max, credential],
        )
        code = Reply(reply[0])
        if code < 0:
            raise refused(
                code, reply, tenant=tenant, agent_id=agent_id, consensus_id=consensus_id, window_ms=ctx.window_ms
            )
        if code is Reply.CREATED:  # counted now; OK: the same vote again
            METRICS.vote(vote)
        return consensus(tenant, reply)

    async def get(self, tenant: str, consensus_id: str, reader: str = "", credential: str = "") -> Consensus:
        """Read a request. A member's read (``reader``, the digest of its
        ``credential``) has its credential proven by the script that reads."""
        reply = await self._read(tenant, consensus_id, reader=reader, credential=credential)
        code = Reply(reply[0])
        if code < 0:
            raise refused(code, reply, tenant=tenant, consensus_id=consensus_id, agent_id=reader)
        return consensus(tenant, reply)

    async def page(self, tenant: str, status: str | None, limit: int, cursor: str | None) -> ConsensusList:
        """One page of the tenant's requests, newest first, of one status or all."""
        await self.expire_due(tenant)

        async def load(ids: list[str]) -> list[Consensus | None]:
            read = await self._read_many(tenant, ids)
            found = (consensus(tenant, r) if Reply(r[0]) is Reply.OK else None for r in read)
            # Reading can decide a request: it then belongs to another list.
            return [c if c and status in (None, c.status) else None for c in found]

        index = self.ctx.keys.consensus_list(tenant, status or "all")
        items, next_cursor = await paging.page(self.ctx.redis, index, cursor, limit, load)
        return ConsensusList(consensus=items, next_cursor=next_cursor)

    async def expire_due(self, tenant: str, batch: int = 200) -> None:
        """Settle every pending request past its deadline, so lists by status are true."""
        ctx = self.ctx
        due = ctx.keys.consensus_due(tenant)
        while True:
            now = await ctx.now(tenant)
            ids = await ctx.redis.zrangebyscore(due, "-inf", now, start=0, num=batch)
            if not ids:
                return
            for reply in await self._read_many(tenant, ids):
                if Reply(reply[0]) is Reply.OK:
                    consensus(tenant, reply)  # counts the decisions this sweep made
            if len(ids) < batch:
                return

    async def _read_many(self, tenant: str, ids: list[str]) -> list[Any]:
        """consensus_read of each id: one pipeline on one server. On a cluster, calls
        side by side, which the master's batcher pipelines (redis/cluster.py): a
        redis-py cluster pipeline would not reload a script that a node (a replica
        promoted by a failover) does not have."""
        if isinstance(self.ctx.redis, RedisCluster):
            return list(await asyncio.gather(*(self._read(tenant, i) for i in ids)))
        pipe = self.ctx.redis.pipeline(transaction=False)
        for consensus_id in ids:
            await self._read(tenant, consensus_id, client=pipe)
        return await pipe.execute()

    def _read(
        self, tenant: str, consensus_id: str, client: Any = None, reader: str = "", credential: str = ""
    ) -> Awaitable[Any]:
        ctx = self.ctx
        return ctx.scripts.consensus_read(
            self._keys(tenant, consensus_id) + [ctx.keys.agent(tenant, reader)],
            [consensus_id, ctx.window_ms, RETENTION_MS, ctx.events_max, credential],
            client,
        )

    def _keys(self, tenant: str, consensus_id: str) -> list[str]:
        k = self.ctx.keys
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
            k.active_since(tenant),
            k.lapse_mark(tenant),
            k.electorate(tenant, consensus_id),
        ]
