"""Agents: register (an upsert by name), heartbeat, read, list, deregister."""

from __future__ import annotations

from typing import Any

import msgspec

from concord.protocol import Agent, AgentList, AgentRemoved, Heartbeat
from concord.server.errors import StoreUnavailable, agent_not_found
from concord.server.store import paging
from concord.server.store.context import Context
from concord.server.store.keys import agent_id_for, agent_tag
from concord.server.store.replies import Reply, agent, iso, optional_int, pairs, refused

# A script answers RETRY only when state moved between two round trips of one
# request; a few attempts are plenty.
MAX_ATTEMPTS = 5


class Agents:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def register(
        self,
        tenant: str,
        name: str,
        role: str | None,
        metadata: dict[str, Any] | None,
        allowed_roles: tuple[str, ...] = (),
    ) -> tuple[Agent, bool]:
        """Upsert the agent of ``name``; True when it was created. Registering counts as
        a heartbeat. With ``allowed_roles`` (an enroll key's), the agent must end up
        of one of them, checked in the script: nothing is written otherwise."""
        ctx, agent_id = self.ctx, agent_id_for(tenant, name)
        k = ctx.keys
        metadata_json = msgspec.json.encode(metadata) if metadata is not None else b""
        reply = await ctx.scripts.agent_register(
            [k.agent(tenant, agent_id), k.agents(tenant), k.heartbeats(tenant), k.events(tenant)],
            [agent_id, name, role or "", metadata_json, ctx.events_max, "\n".join(allowed_roles)],
        )
        code = Reply(reply[0])
        if code < 0:
            raise refused(code, reply, tenant=tenant, agent_id=agent_id, roles=allowed_roles)
        now = int(reply[2])
        return agent(tenant, pairs(reply[1]), now, now, ctx.window_ms), code is Reply.CREATED

    async def heartbeat(self, tenant: str, agent_id: str) -> Heartbeat:
        ctx = self.ctx
        reply = await ctx.scripts.agent_heartbeat([ctx.keys.heartbeats(tenant)], [agent_id])
        code = Reply(reply[0])
        if code < 0:
            raise refused(code, reply, tenant=tenant, agent_id=agent_id)
        last = int(reply[1])
        return Heartbeat(agent_id=agent_id, last_heartbeat=iso(last), active_until=iso(last + ctx.window_ms))

    async def get(self, tenant: str, agent_id: str) -> Agent:
        ctx = self.ctx
        pipe = ctx.redis.pipeline(transaction=False)
        pipe.hgetall(ctx.keys.agent(tenant, agent_id))
        pipe.zscore(ctx.keys.heartbeats(tenant), agent_id)
        fields, last, now = await ctx.with_time(pipe, tenant)
        if not fields:
            raise agent_not_found(agent_id, tenant)
        return agent(tenant, fields, optional_int(last), now, ctx.window_ms)

    async def page(self, tenant: str, status: str | None, limit: int, cursor: str | None) -> AgentList:
        """One page of the tenant's agents, newest registration first; ``status``
        keeps only the active or the inactive ones."""
        ctx = self.ctx

        async def load(ids: list[str]) -> list[Agent | None]:
            pipe = ctx.redis.pipeline(transaction=False)
            for agent_id in ids:
                pipe.hgetall(ctx.keys.agent(tenant, agent_id))
            pipe.zmscore(ctx.keys.heartbeats(tenant), ids)
            *hashes, lasts, now = await ctx.with_time(pipe, tenant)
            agents = (
                agent(tenant, fields, optional_int(last), now, ctx.window_ms) if fields else None
                for fields, last in zip(hashes, lasts)
            )
            return [a if a and status in (None, a.status) else None for a in agents]

        agents, next_cursor = await paging.page(ctx.redis, ctx.keys.agents(tenant), cursor, limit, load)
        return AgentList(agents=agents, next_cursor=next_cursor)

    async def remove(self, tenant: str, agent_id: str) -> AgentRemoved:
        """Deregister the agent and release its leases, in one script. The script
        needs every lease key in KEYS, read from the registry just before; if the
        agent took a lease in between, it writes nothing and answers RETRY."""
        ctx = self.ctx
        k = ctx.keys
        registry = k.lease_registry(tenant, agent_tag(agent_id))
        for _ in range(MAX_ATTEMPTS):
            contacts = sorted({entry.partition(":")[2] for entry in await ctx.redis.hvals(registry)})
            reply = await ctx.scripts.agent_remove(
                [k.agent(tenant, agent_id), k.agents(tenant), k.heartbeats(tenant), registry, k.events(tenant)]
                + [k.lease(tenant, c) for c in contacts],
                [agent_id, ctx.events_max, *contacts],
            )
            code = Reply(reply[0])
            if code is Reply.OK:
                return AgentRemoved(id=agent_id, released_leases=int(reply[1]))
            if code < 0:
                raise refused(code, reply, tenant=tenant, agent_id=agent_id)
        raise StoreUnavailable(f"agent {agent_id} kept acquiring leases while being removed; try again")
