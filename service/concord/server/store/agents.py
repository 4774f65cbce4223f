"""Agents: register (an upsert by name), heartbeat, read, list, deregister."""

from __future__ import annotations

from typing import Any

import msgspec

from concord.protocol import Agent, AgentCredential, AgentList, AgentRemoved, Heartbeat, RegisteredAgent
from concord.server.errors import StoreUnavailable, agent_not_found
from concord.server.principals import CREDENTIAL_PREFIX, HUMAN_PREFIX, KeyGrant, new_credential
from concord.server.settings import key_digest
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
        key: KeyGrant,
        kind: str = "agent",
    ) -> tuple[RegisteredAgent, bool]:
        """Upsert the agent of ``name``, with a new credential; True when it was created.
        Registering counts as a heartbeat, and the agent's earlier credential is refused
        from then on. An enroll key limited to roles (``key.roles``) registers only
        agents that end up of one of them, checked in the script: nothing is written
        otherwise. A human (``kind``) is an admin key's to register; a member's kind is
        fixed when it is created (409 kind_mismatch)."""
        ctx, agent_id = self.ctx, agent_id_for(tenant, name)
        k = ctx.keys
        metadata_json = msgspec.json.encode(metadata) if metadata is not None else b""
        credential = new_credential(tenant, agent_id, kind)
        reply = await ctx.scripts.agent_register(
            [
                k.agent(tenant, agent_id),
                k.agents(tenant),
                k.heartbeats(tenant),
                k.events(tenant),
                k.active_since(tenant),
                k.quotas(tenant),
                k.humans(tenant),
                k.agent_roles(tenant),
            ],
            [
                agent_id,
                name,
                role or "",
                metadata_json,
                ctx.events_max,
                "\n".join(key.roles),
                key_digest(credential),
                key.id,
                key.role,
                ctx.window_ms,
                ctx.quotas.agents,
                kind,
            ],
        )
        code = Reply(reply[0])
        if code < 0:
            raise refused(code, reply, tenant=tenant, agent_id=agent_id, roles=key.roles)
        now = int(reply[2])
        found = agent(tenant, pairs(reply[1]), now, now, ctx.window_ms)
        registered = RegisteredAgent(**msgspec.structs.asdict(found), credential=credential)
        return registered, code is Reply.CREATED

    async def rotate(self, tenant: str, agent_id: str, key: KeyGrant) -> AgentCredential:
        """Give the agent a new credential; the current one is refused from now on."""
        ctx = self.ctx
        # The member's kind is the script's to read: it is passed the new secret's
        # digest under either prefix, and keeps the one of the member's kind.
        credential = new_credential(tenant, agent_id)
        human = HUMAN_PREFIX + credential.removeprefix(CREDENTIAL_PREFIX)
        reply = await ctx.scripts.agent_credential(
            [ctx.keys.agent(tenant, agent_id), ctx.keys.events(tenant)],
            [
                agent_id,
                key_digest(credential),
                "\n".join(key.roles),
                ctx.events_max,
                key.id,
                key.role,
                key_digest(human),
            ],
        )
        code = Reply(reply[0])
        if code < 0:
            raise refused(code, reply, tenant=tenant, agent_id=agent_id, roles=key.roles)
        shown = human if reply[2] == "human" else credential
        return AgentCredential(agent_id=agent_id, credential=shown, rotated_at=iso(reply[1]))

    async def credential(self, tenant: str, agent_id: str) -> str | None:
        """The digest of the agent's current credential (None: no such agent)."""
        return await self.ctx.redis.hget(self.ctx.keys.agent(tenant, agent_id), "credential")

    async def heartbeat(self, tenant: str, agent_id: str, credential: str) -> Heartbeat:
        ctx = self.ctx
        reply = await ctx.scripts.agent_heartbeat(
            [ctx.keys.heartbeats(tenant), ctx.keys.agent(tenant, agent_id), ctx.keys.active_since(tenant)],
            [agent_id, credential, ctx.window_ms],
        )
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
        """One page of the tenant's agents, newest registration first; or, by
        ``status``, the active or the inactive ones, latest heartbeat first, read from
        the heartbeats zset within the window's bound: a page costs what it returns,
        whatever the size of the fleet."""
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

        if status is None:
            agents, next_cursor = await paging.page(ctx.redis, ctx.keys.agents(tenant), cursor, limit, load)
        else:
            # Active: a heartbeat strictly within the window (lua/lib.lua is_active).
            lapsed_by = await ctx.now(tenant) - ctx.window_ms
            top, bottom = ("+inf", f"({lapsed_by}") if status == "active" else (str(lapsed_by), "-inf")
            heartbeats = ctx.keys.heartbeats(tenant)
            agents, next_cursor = await paging.page(ctx.redis, heartbeats, cursor, limit, load, top, bottom)
        return AgentList(agents=agents, next_cursor=next_cursor)

    async def remove(self, tenant: str, agent_id: str, key: KeyGrant) -> AgentRemoved:
        """Deregister the agent (its credential goes with it) and release its leases,
        in one script, recorded as done by ``key``. The script
        needs every lease key in KEYS, read from the registry just before; if the
        agent took a lease in between, it writes nothing and answers RETRY."""
        ctx = self.ctx
        k = ctx.keys
        registry = k.lease_registry(tenant, agent_tag(agent_id))
        for _ in range(MAX_ATTEMPTS):
            contacts = sorted({entry.partition(":")[2] for entry in await ctx.redis.hvals(registry)})
            reply = await ctx.scripts.agent_remove(
                [
                    k.agent(tenant, agent_id),
                    k.agents(tenant),
                    k.heartbeats(tenant),
                    registry,
                    k.events(tenant),
                    k.active_since(tenant),
                    k.humans(tenant),
                    k.agent_roles(tenant),
                ]
                + [k.lease(tenant, c) for c in contacts],
                [agent_id, ctx.events_max, key.id, *contacts],
            )
            code = Reply(reply[0])
            if code is Reply.OK:
                return AgentRemoved(id=agent_id, released_leases=int(reply[1]))
            if code < 0:
                raise refused(code, reply, tenant=tenant, agent_id=agent_id)
        raise StoreUnavailable(f"agent {agent_id} kept acquiring leases while being removed; try again")
