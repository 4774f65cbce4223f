"""Events: what the scripts append to each tenant's Redis Stream, and how it is read.

Every script that changes state appends its event to ``keys.events(tenant)`` in the
same script (lua/lib.lua ``emit``), so a change and its event are one atomic step.
The stream entry id (``<ms>-<seq>``, Redis's clock) is the event's id: ids only
grow, so a reader that remembers the last id it saw misses nothing when it comes
back, as long as the stream (capped at CONCORD_EVENTS_MAX_LENGTH) still holds it.
The live fan-out to streams and long polls is feed.py's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from concord.protocol import Event, EventPage, canonical_contact
from concord.server.store.context import Context
from concord.server.store.keys import lease_id
from concord.server.store.replies import iso, policy_rules

# The most stream entries one page of events reads, however selective its filter.
SCAN_EVENTS = 10_000
_INTS = frozenset(
    {"fencingToken", "previousFencingToken", "releasedLeases", "approve", "reject", "eligible", "needed", "count"}
)
_ATTRS = dict(zip(Event.__struct_encode_fields__, Event.__struct_fields__))


def event(tenant: str, entry_id: str, fields: Iterable[str] | dict[str, str]) -> Event:
    """The API's Event for one stream entry (its fields flat, or as a dict)."""
    pairs = fields.items() if isinstance(fields, dict) else zip(*[iter(fields)] * 2)
    values: dict[str, Any] = {}
    for name, value in pairs:
        if value == "" or name not in _ATTRS:
            continue  # '' is "none" (a consensus without a contact); unknown fields are from a newer version
        if name in _INTS:
            values[_ATTRS[name]] = int(value)
        elif name == "expiresAt":
            values["expires_at"] = iso(value)
        elif name == "created":
            values["created"] = value == "1"
        elif name == "policy":
            values["policy"] = policy_rules(value)
        else:
            values[_ATTRS[name]] = value
    if values.get("type", "").startswith("lease.") and "fencing_token" in values:
        values["lease_id"] = lease_id(values["agent_id"], values["fencing_token"])
    if "previous_fencing_token" in values:
        values["previous_lease_id"] = lease_id(values["previous_agent_id"], values["previous_fencing_token"])
    values["at"] = iso(int(entry_id.partition("-")[0]))
    return Event(id=entry_id, tenant_id=tenant, **values)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a reader wants: types (exact or a family), and an agent or a
    contact: canonical, so that any spelling of it finds the events of every other."""

    types: frozenset[str] = frozenset()
    agent_id: str | None = None
    contact: str | None = None

    def __post_init__(self) -> None:
        if self.contact is not None:
            object.__setattr__(self, "contact", canonical_contact(self.contact))

    def __call__(self, e: Event) -> bool:
        if self.types and e.type not in self.types and e.type.partition(".")[0] not in self.types:
            return False
        if self.agent_id is not None and self.agent_id not in (e.agent_id, e.previous_agent_id):
            return False
        return self.contact is None or (
            e.contact_email is not None and canonical_contact(e.contact_email) == self.contact
        )


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable (ms, seq)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class EventLog:
    """Reads a tenant's event stream: pages of it, and what follows an id."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def page(self, tenant: str, after: str, limit: int, match: EventFilter) -> EventPage:
        """Up to ``limit`` events after the stream id ``after``, oldest first, that
        ``match`` keeps. A selective filter reads at most SCAN_EVENTS entries per call
        and says where it stopped (``nextAfter``), so no call costs the whole stream."""
        found: list[Event] = []
        position, scanned, more = after, 0, True
        while more and len(found) < limit and scanned < SCAN_EVENTS:
            batch = await self.after(tenant, position, min(max(limit, 100), SCAN_EVENTS - scanned))
            more = len(batch) == min(max(limit, 100), SCAN_EVENTS - scanned)
            for e in batch:
                position, scanned = e.id, scanned + 1
                if match(e):
                    found.append(e)
                    if len(found) == limit:
                        more = more or e is not batch[-1]
                        break
        return EventPage(events=found, next_after=position, has_more=more)

    async def after(self, tenant: str, after: str, count: int) -> list[Event]:
        """Up to ``count`` entries of the stream strictly after ``after``, oldest first."""
        entries = await self.ctx.redis.xrange(self.ctx.keys.events(tenant), min=f"({after}", max="+", count=count)
        return [event(tenant, entry_id, fields) for entry_id, fields in entries]

    async def last_id(self, tenant: str) -> str:
        """The id of the stream's newest entry, or "0" for an empty stream."""
        newest = await self.ctx.redis.xrevrange(self.ctx.keys.events(tenant), count=1)
        return newest[0][0] if newest else "0"
