"""Rate limits: a token bucket per tenant and per acting agent (CONCORD_RATE_LIMITS)."""

from __future__ import annotations

from collections.abc import Mapping

from concord.server.settings import RateLimit
from concord.server.store.context import Context
from concord.server.store.replies import Reply, refused


class RateLimits:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def take_token(self, tenant: str, agent_id: str | None, limits: Mapping[str, RateLimit]) -> None:
        """Take a token from the tenant's bucket and, for a request made by an agent,
        from that agent's, or raise rate_limited (taking none) if either is empty."""
        keys, args = [], []
        for scope, bucket in (("tenant", None), ("agent", agent_id)):
            limit = limits.get(scope)
            if limit is not None and (scope == "tenant" or agent_id is not None):
                keys.append(self.ctx.keys.rate_bucket(tenant, bucket))
                args += [limit.per_second / 1000, limit.burst]
        if not keys:
            return
        reply = await self.ctx.scripts.rate_limit(keys, args)
        code = Reply(reply[0])
        if code < 0:
            raise refused(code, reply, tenant=tenant, agent_id=agent_id)
