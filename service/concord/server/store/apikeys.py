"""API keys stored in Redis (``concord keys``): kept only as SHA-256 digests, in
one hash that is not tenant-scoped."""

from __future__ import annotations

import secrets

from concord.server.settings import key_digest
from concord.server.store.context import Context


class ApiKeys:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def tenant_of(self, digest: str) -> str | None:
        return await self.ctx.redis.hget(self.ctx.keys.api_keys(), digest)

    async def create(self, tenant: str) -> str:
        """A new random key for ``tenant``; Redis keeps only its SHA-256."""
        api_key = "ck_" + secrets.token_urlsafe(32)
        await self.ctx.redis.hset(self.ctx.keys.api_keys(), key_digest(api_key), tenant)
        return api_key

    async def revoke(self, key_or_digest: str) -> str | None:
        """Remove a key given as itself or as its SHA-256 hex; returns its tenant, or None."""
        redis, table = self.ctx.redis, self.ctx.keys.api_keys()
        candidates = [key_digest(key_or_digest)]
        if len(key_or_digest) == 64 and all(ch in "0123456789abcdef" for ch in key_or_digest):
            candidates.append(key_or_digest)
        for digest in candidates:
            tenant = await redis.hget(table, digest)
            if tenant is not None and await redis.hdel(table, digest):
                return tenant
        return None

    async def any(self) -> bool:
        """Is any key stored? (HRANDFIELD: one field, whatever the table's size.)"""
        return await self.ctx.redis.hrandfield(self.ctx.keys.api_keys()) is not None

    async def all(self) -> dict[str, str]:
        """SHA-256 hex -> tenant of every key stored in Redis."""
        return await self.ctx.redis.hgetall(self.ctx.keys.api_keys())
