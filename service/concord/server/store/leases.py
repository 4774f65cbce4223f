"""Contact leases: acquire (grant, extend or refuse), renew, release, read, list,
and the send-check that an email pipeline asks before each send."""

from __future__ import annotations

from concord.protocol import Lease, LeaseList, Released, SendCheck, canonical_contact
from concord.server.errors import credential_refused, lease_not_found
from concord.server.metrics import METRICS
from concord.server.principals import AGENT, Principal
from concord.server.store.context import Context
from concord.server.store.keys import agent_tag, parse_lease_id
from concord.server.store.paging import decode_cursor, encode_cursor
from concord.server.store.replies import Reply, holder, iso, lease, refused, suppression

# Send-check answers a refusal as a value: the reason it gives for each code.
SEND_CHECK_REASONS = {
    Reply.AGENT_NOT_FOUND: "agent_not_found",
    Reply.AGENT_INACTIVE: "agent_inactive",
    Reply.LEASE_CONFLICT: "lease_conflict",
    Reply.STALE_FENCING_TOKEN: "stale_fencing_token",
    Reply.SUPPRESSED: "suppressed",
}


class Leases:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def acquire(
        self, tenant: str, agent_id: str, address: str, intent: str | None, duration_ms: int, credential: str
    ) -> tuple[Lease, bool]:
        """Grant, extend or refuse the lease on the contact ``address`` reaches; True when
        newly granted. The holder asking again gets its own lease back (same id and
        token), extended. ``credential`` is the digest of the agent's credential,
        checked by the script."""
        contact = canonical_contact(address)
        ctx = self.ctx
        k = ctx.keys
        reply = await ctx.scripts.lease_acquire(
            [
                k.agent(tenant, agent_id),
                k.heartbeats(tenant),
                k.lease(tenant, contact),
                k.lease_registry(tenant, agent_tag(agent_id)),
                k.fence(tenant),
                k.events(tenant),
                k.quotas(tenant),
                k.suppressions(tenant),
            ],
            [
                agent_id,
                contact,
                intent or "",
                duration_ms,
                ctx.window_ms,
                ctx.events_max,
                credential,
                ctx.quotas.leases_per_agent,
            ],
        )
        code = Reply(reply[0])
        if code < 0:
            if code is Reply.LEASE_CONFLICT:
                METRICS.lease("conflict")
            raise refused(
                code, reply, tenant=tenant, agent_id=agent_id, contact=contact, address=address, window_ms=ctx.window_ms
            )
        METRICS.lease("extended" if code is Reply.OK else "takeover" if reply[7] else "granted")
        return lease(tenant, contact, reply[:7], address), code is Reply.CREATED

    async def renew(self, tenant: str, lease_id: str, agent_id: str, duration_ms: int, credential: str) -> Lease:
        """Move the lease's expiry to now + ``duration_ms``; only its holder may, while active."""
        tag, token, contact = await self._find(tenant, lease_id, agent_id, credential)
        ctx = self.ctx
        k = ctx.keys
        reply = await ctx.scripts.lease_renew(
            [
                k.heartbeats(tenant),
                k.lease(tenant, contact),
                k.lease_registry(tenant, tag),
                k.events(tenant),
                k.agent(tenant, agent_id),
            ],
            [token, agent_id, contact, duration_ms, ctx.window_ms, ctx.events_max, credential],
        )
        code = Reply(reply[0])
        if code < 0:
            raise refused(code, reply, tenant=tenant, agent_id=agent_id, lease_id=lease_id, window_ms=ctx.window_ms)
        METRICS.lease("renewed")
        return lease(tenant, contact, reply)

    async def release(self, tenant: str, lease_id: str, agent_id: str | None, principal: Principal) -> Released:
        """Release the lease; with ``agent_id``, only if that agent holds it. With an
        agent credential, ``agent_id`` is its agent; an admin key may release any
        lease (a forced release, recorded as the key's)."""
        tag, token, contact = await self._find(tenant, lease_id, agent_id, principal.credential)
        ctx = self.ctx
        k = ctx.keys
        key_id = "" if principal.role == AGENT else principal.id
        reply = await ctx.scripts.lease_release(
            [
                k.lease(tenant, contact),
                k.lease_registry(tenant, tag),
                k.events(tenant),
                k.agent(tenant, agent_id or ""),
            ],
            [token, agent_id or "", contact, ctx.events_max, principal.credential, key_id],
        )
        code = Reply(reply[0])
        if code < 0:
            raise refused(code, reply, tenant=tenant, agent_id=agent_id, lease_id=lease_id)
        METRICS.lease("released")
        return Released(id=lease_id, released_at=iso(reply[1]))

    async def get(self, tenant: str, lease_id: str) -> Lease:
        _, token, contact = await self._find(tenant, lease_id)
        found = (await self._read(tenant, [contact]))[0]
        if found is None or found.fencing_token != token:
            raise lease_not_found(lease_id, tenant)
        return found

    async def page(
        self, tenant: str, agent_id: str | None, address: str | None, limit: int, cursor: str | None
    ) -> LeaseList:
        """Leases of one agent (read through its registry: costs what that agent holds,
        not what the tenant holds) and/or of one contact, newest grant first."""
        if address is not None:
            contacts = [canonical_contact(address)]
        else:
            entries = await self.ctx.redis.hvals(self.ctx.keys.lease_registry(tenant, agent_tag(agent_id or "")))
            contacts = sorted({entry.partition(":")[2] for entry in entries})
        # Tokens grow in grant order: newest grant first is highest token first.
        found = sorted(
            (held for held in await self._read(tenant, contacts) if held and agent_id in (None, held.agent_id)),
            key=lambda held: held.fencing_token,
            reverse=True,
        )
        if cursor is not None:
            after, _ = decode_cursor(cursor)
            found = [held for held in found if held.fencing_token < after]
        leases = found[:limit]
        next_cursor = encode_cursor(leases[-1].fencing_token, "") if len(found) > limit else None
        return LeaseList(leases=leases, next_cursor=next_cursor)

    async def send_check(
        self, tenant: str, agent_id: str, address: str, fencing_token: int | None, credential: str
    ) -> SendCheck:
        """May ``agent_id`` email ``address`` (its contact) now? Refusals are answers,
        not errors; a credential that is not the agent's is 401."""
        contact = canonical_contact(address)
        ctx = self.ctx
        k = ctx.keys
        reply = await ctx.scripts.lease_send_check(
            [k.heartbeats(tenant), k.lease(tenant, contact), k.agent(tenant, agent_id), k.suppressions(tenant)],
            [agent_id, fencing_token or "", ctx.window_ms, credential, contact],
        )
        code = Reply(reply[0])
        if code is Reply.BAD_CREDENTIAL:
            raise refused(code, reply, tenant=tenant, agent_id=agent_id)
        if code is Reply.OK:
            return SendCheck(allowed=True, contact_email=address, contact=contact)
        if code is Reply.SUPPRESSED:
            return SendCheck(
                allowed=False,
                reason="suppressed",
                suppression=suppression(tenant, reply[1], reply[2]),
                contact_email=address,
                contact=contact,
            )
        return SendCheck(
            allowed=False,
            reason=SEND_CHECK_REASONS[code],
            lease_holder=holder(reply) if len(reply) > 1 else None,
            contact_email=address,
            contact=contact,
        )

    async def _find(
        self, tenant: str, lease_id: str, agent_id: str | None = None, credential: str = ""
    ) -> tuple[str, int, str]:
        """(agent tag, fencing token, contact) of a lease id, from its holder's registry.
        A lease not found is 404 only to the agent's current credential: any other is
        401, as it would be had the lease existed (the script checks it then)."""
        tag, token = parse_lease_id(lease_id)
        entry = await self.ctx.redis.hget(self.ctx.keys.lease_registry(tenant, tag), str(token))
        if entry is None:
            if (
                credential
                and await self.ctx.redis.hget(self.ctx.keys.agent(tenant, agent_id or ""), "credential") != credential
            ):
                raise credential_refused(agent_id or "", tenant)
            raise lease_not_found(lease_id, tenant)
        return tag, token, entry.partition(":")[2]

    async def _read(self, tenant: str, contacts: list[str]) -> list[Lease | None]:
        """The live lease of each contact, or None: its key and its absolute expiry."""
        keys = self.ctx.keys
        pipe = self.ctx.redis.pipeline(transaction=False)
        for contact in contacts:
            pipe.get(keys.lease(tenant, contact))
            pipe.pexpiretime(keys.lease(tenant, contact))
        answers = await pipe.execute()
        found: list[Lease | None] = []
        for contact, value, expires_at in zip(contacts, answers[::2], answers[1::2]):
            if value is None or expires_at < 0:
                found.append(None)
                continue
            uuid, token, acquired, name, intent = value.split("|", 4)
            found.append(lease(tenant, contact, [0, f"agent_{uuid}", name, intent, acquired, expires_at, token]))
        return found
