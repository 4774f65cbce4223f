"""Rate limits shared by every instance: a token bucket per tenant and per agent in
Redis (CONCORD_RATE_LIMITS tenant and agent; the in-process ones are http/throttle.py)."""

from __future__ import annotations

from collections.abc import Mapping

from concord.server.principals import MEMBERS, Principal
from concord.server.settings import RateLimit
from concord.server.store.context import Context
from concord.server.store.replies import Reply, refused


class RateLimits:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def take_token(self, principal: Principal, limits: Mapping[str, RateLimit]) -> None:
        """Take a token from the tenant's bucket and, for a call made with an agent
        credential, from that agent's, or raise rate_limited (taking none) if either
        is empty. An agent's bucket is keyed by the credential's agent, never by an
        id the request claims, and the script draws from it only once the credential
        proves to be the agent's (a forged one is refused, 401, nothing taken)."""
        tenant, k = principal.tenant, self.ctx.keys
        agent_id = principal.id if principal.role in MEMBERS else None
        keys, args = [k.agent(tenant, agent_id or "")], [principal.credential]
        for scope, bucket in (("tenant", None), ("agent", agent_id)):
            limit = limits.get(scope)
            if limit is not None and (scope == "tenant" or agent_id is not None):
                keys.append(k.rate_bucket(tenant, bucket))
                args += [limit.per_second / 1000, limit.burst]
        if len(keys) == 1:
            return
        reply = await self.ctx.scripts.rate_limit(keys, args)
        code = Reply(reply[0])
        if code < 0:
            raise refused(code, reply, tenant=tenant, agent_id=agent_id)
