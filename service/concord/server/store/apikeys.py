"""API keys stored in Redis (``concord keys``), in one hash that is not
tenant-scoped (``keys.api_keys()``):

- field ``<sha256 of the key>`` -> the key's grant as JSON (principals.KeyGrant):
  a key is found by its digest, so no secret is ever compared byte by byte, and
  Redis never holds a key itself;
- field ``id:<key id>`` -> that digest, so a key is revoked by its id and the
  secret never goes into a command line.

Both fields of a key are written, and removed, by one command: a key is never
half made or half revoked.
"""

from __future__ import annotations

import secrets

from concord.server.principals import KeyGrant, decode_grant, encode_grant
from concord.server.settings import key_digest
from concord.server.store.context import Context

ID_FIELD = "id:"


class ApiKeys:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def grant_of(self, digest: str) -> KeyGrant | None:
        """What the key of this digest grants, or None for no stored key."""
        value = await self.ctx.redis.hget(self.ctx.keys.api_keys(), digest)
        return decode_grant(value, digest) if value is not None else None

    async def create(self, tenant: str, role: str = "admin", roles: tuple[str, ...] = ()) -> tuple[str, KeyGrant]:
        """A new random key for ``tenant`` and what it grants; Redis keeps only its SHA-256."""
        api_key = "ck_" + secrets.token_urlsafe(32)
        table = self.ctx.keys.api_keys()
        grant = KeyGrant(
            id=f"key_{secrets.token_hex(8)}",
            tenant=tenant,
            role=role,
            roles=roles,
            created_at=await self.ctx.now_at(table),
        )
        digest = key_digest(api_key)
        await self.ctx.redis.hset(table, mapping={digest: encode_grant(grant), ID_FIELD + grant.id: digest})
        return api_key, grant

    async def revoke(self, key_id: str) -> KeyGrant | None:
        """Remove the stored key of this id; returns what it granted, or None."""
        for digest, grant in await self.all():  # a few keys per tenant: read them all, find the one
            if grant.id == key_id:
                await self.ctx.redis.hdel(self.ctx.keys.api_keys(), digest, ID_FIELD + key_id)
                return grant
        return None

    async def any(self) -> bool:
        """Is any key stored? (HRANDFIELD: one field, whatever the table's size.)"""
        return await self.ctx.redis.hrandfield(self.ctx.keys.api_keys()) is not None

    async def all(self) -> list[tuple[str, KeyGrant]]:
        """(digest, grant) of every stored key, oldest first."""
        table = await self.ctx.redis.hgetall(self.ctx.keys.api_keys())
        found = [
            (digest, decode_grant(value, digest)) for digest, value in table.items() if not digest.startswith(ID_FIELD)
        ]
        return sorted(found, key=lambda item: (item[1].created_at or 0, item[1].id))
