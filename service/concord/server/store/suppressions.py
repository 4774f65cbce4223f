"""Suppressions: the contacts, and whole domains, that no agent may lease or email.

Each tenant keeps them in ``<p>:{t}:suppressions`` (a hash, entry -> "reason|
setAt|setByRole|setBy|note"), where an entry is a canonical contact or "@domain".
lease_acquire and lease_send_check read the contact's entry and its domain's in
the same script that decides, with one HMGET, so a suppression binds from the
moment it is written. ``<p>:{t}:suppression-index`` (every entry at score 0)
pages them in order for export.

Agents and gate keys add suppressions (an agent reading "unsubscribe me", a
pipeline seeing a bounce) and cannot rewrite one that exists; an admin key
replaces and removes them.
"""

from __future__ import annotations

from concord.protocol import Suppression, SuppressionImport, SuppressionItem, SuppressionList
from concord.server.errors import ConcordError
from concord.server.principals import Principal
from concord.server.store.context import Context
from concord.server.store.paging import decode_cursor, encode_cursor
from concord.server.store.replies import suppression


def suppression_not_found(entry: str, tenant: str) -> ConcordError:
    return ConcordError(
        "suppression_not_found",
        f"{entry} is not suppressed in tenant {tenant}: nothing to read or lift (list the tenant's "
        "suppressions with GET .../suppressions)",
    )


class Suppressions:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def put(
        self, tenant: str, entry: str, reason: str, note: str | None, principal: Principal
    ) -> tuple[Suppression, bool]:
        """Suppress ``entry``; True when it was not suppressed before. An existing
        suppression stands as it is, unless an admin key replaces it."""
        reply = await self._put(tenant, [SuppressionItem(entry=entry, reason=reason, note=note)], principal, False)
        return suppression(tenant, entry, reply[3]), reply[2] == "new"

    async def load(self, tenant: str, items: list[SuppressionItem], principal: Principal) -> SuppressionImport:
        """A batch of a bulk import, in one script: one event for the whole batch."""
        reply = await self._put(tenant, items, principal, True)
        return SuppressionImport(received=len(items), written=int(reply[1]))

    async def get(self, tenant: str, entry: str) -> Suppression:
        stored = await self.ctx.redis.hget(self.ctx.keys.suppressions(tenant), entry)
        if stored is None:
            raise suppression_not_found(entry, tenant)
        return suppression(tenant, entry, stored)

    async def remove(self, tenant: str, entry: str, key_id: str) -> Suppression:
        """Lift the suppression (an admin key's act); answers what it was."""
        ctx = self.ctx
        k = ctx.keys
        reply = await ctx.scripts.suppression_remove(
            [k.suppressions(tenant), k.suppression_index(tenant), k.events(tenant)], [entry, key_id, ctx.events_max]
        )
        if not reply[1]:
            raise suppression_not_found(entry, tenant)
        return suppression(tenant, entry, reply[1])

    async def page(self, tenant: str, limit: int, cursor: str | None) -> SuppressionList:
        """The tenant's suppressions in the order of their entries, ``limit`` at a time."""
        k = self.ctx.keys
        start = f"({decode_cursor(cursor)[1]}" if cursor else "-"
        entries = await self.ctx.redis.zrange(
            k.suppression_index(tenant), start, "+", bylex=True, offset=0, num=limit + 1
        )
        shown = entries[:limit]
        values = await self.ctx.redis.hmget(k.suppressions(tenant), shown) if shown else []
        found = [suppression(tenant, e, v) for e, v in zip(shown, values) if v is not None]
        next_cursor = encode_cursor(0, shown[-1]) if len(entries) > limit else None
        return SuppressionList(suppressions=found, next_cursor=next_cursor)

    async def _put(self, tenant: str, items: list[SuppressionItem], principal: Principal, batch: bool) -> list:
        ctx = self.ctx
        k = ctx.keys
        args: list[str | int] = [
            principal.id,
            principal.role,
            "1" if principal.role == "admin" else "",
            ctx.events_max,
            "1" if batch else "",
        ]
        for item in items:
            args += [item.entry, item.reason, item.note or ""]
        return await ctx.scripts.suppression_put(
            [k.suppressions(tenant), k.suppression_index(tenant), k.events(tenant)], args
        )
