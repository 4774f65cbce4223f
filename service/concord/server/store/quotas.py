"""A tenant's quotas: the deployment's defaults (CONCORD_QUOTAS), with what an admin
set for the tenant in ``<p>:{t}:quotas`` (a hash, API name -> value).

The scripts that could exceed a quota read its field themselves (lua/lib.lua
quota), in the same step as the change it bounds, so a quota costs no round trip
and two instances cannot both let the last one through. Each write here is one
command on one key, so a change is never half made.
"""

from __future__ import annotations

import dataclasses

from concord.server.settings import Quotas
from concord.server.store.context import Context


class TenantQuotas:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def get(self, tenant: str) -> Quotas:
        """The tenant's quotas in force: its own where an admin set them, else the defaults."""
        return self._merge(await self.ctx.redis.hgetall(self.ctx.keys.quotas(tenant)))

    async def set(self, tenant: str, changes: dict[str, int]) -> Quotas:
        """Set the quotas named (API name -> value) for the tenant; the others stay."""
        key = self.ctx.keys.quotas(tenant)
        if changes:
            await self.ctx.redis.hset(key, mapping=changes)
        return await self.get(tenant)

    async def reset(self, tenant: str) -> Quotas:
        """Forget the tenant's own quotas: the defaults apply again."""
        await self.ctx.redis.delete(self.ctx.keys.quotas(tenant))
        return self.ctx.quotas

    def _merge(self, stored: dict[str, str]) -> Quotas:
        own = {Quotas.NAMES[name]: int(value) for name, value in stored.items() if name in Quotas.NAMES}
        return dataclasses.replace(self.ctx.quotas, **own)
