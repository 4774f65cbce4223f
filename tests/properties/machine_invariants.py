"""The invariant of the model-based test (test_model.py): after every step, one
pipelined read of Redis itself, held to the promises: one holder per contact,
registries that hold the live leases, fencing tokens strictly increasing, tallies
equal to the distinct votes, a status leaving pending at most once.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any

from hypothesis.stateful import invariant

from concord.server.store.keys import agent_tag
from concord.server.store.keys import lease_id as lease_id_of
from tests.conftest import TENANT
from tests.properties.machine import CONTACTS, NAMES, MachineBase, registry_entry
from tests.properties.model import Consensus
from tests.support.api import iso, ms


def pairs(items: list[Any]) -> list[tuple[Any, Any]]:
    return list(zip(items[::2], items[1::2]))


class RedisInvariants(MachineBase):
    """The machine's invariant, and the checks it runs on what it read."""

    @invariant()
    def redis_agrees_with_the_model(self) -> None:
        """After every step, one pipelined read of everything the model describes, then
        the promises: one holder per contact, fencing tokens strictly increasing, tallies
        equal to the distinct votes, a status leaving pending at most once."""
        k, requests = self.keys, list(self.model.consensus.values())
        agent_ids = [self.model.agent_id(name) for name in NAMES]  # every agent that can hold a lease
        pipe = self.redis.pipeline(transaction=False)
        for contact in CONTACTS:
            pipe.get(k.lease(TENANT, contact))
            pipe.pexpiretime(k.lease(TENANT, contact))
        for agent_id in agent_ids:
            pipe.hgetall(k.lease_registry(TENANT, agent_tag(agent_id)))
            pipe.pexpiretime(k.lease_registry(TENANT, agent_tag(agent_id)))
        pipe.get(k.fence(TENANT))
        pipe.zrange(k.heartbeats(TENANT), 0, -1, withscores=True)
        for c in requests:
            pipe.hgetall(k.votes(TENANT, c.id))
            pipe.hmget(k.consensus(TENANT, c.id), "status", "resolvedAt", "eligible", "needed")
        replies = self.run(pipe.execute())
        lease_strings, replies = pairs(replies[: 2 * len(CONTACTS)]), replies[2 * len(CONTACTS) :]
        registries, replies = pairs(replies[: 2 * len(agent_ids)]), replies[2 * len(agent_ids) :]
        (fence, heartbeats), replies = replies[:2], replies[2:]
        self.one_holder_per_contact(lease_strings)
        self.registries_hold_the_live_leases(dict(zip(agent_ids, registries)))
        self.fencing_tokens_strictly_increase(fence)
        self.registered_agents_and_liveness_match(heartbeats)
        for c, (votes, fields) in zip(requests, pairs(replies)):
            self.tally_equals_distinct_votes(c, votes)
            self.status_leaves_pending_at_most_once(c, *fields)

    def one_holder_per_contact(self, lease_strings: list) -> None:
        """Each contact's lease string exists exactly when the model has a lease there, and
        names that lease's one holder, token, grant time, holder name and intent; the
        lease's id is made of its holder and token; Redis expires it at its expiresAt."""
        for contact, (value, expire_at) in zip(CONTACTS, lease_strings):
            lease = self.model.leases.get(contact)
            if lease is None:
                assert value is None, f"{contact} is free in the model, held in Redis: {value!r}"
                continue
            holder = lease.holder.removeprefix("agent_")
            assert value == (
                f"{holder}|{lease.token}|{ms(lease.acquired_at)}|{lease.holder_name}|{lease.intent or ''}"
            ), (contact, value, lease)
            assert lease.id == lease_id_of(lease.holder, lease.token), lease
            assert expire_at == ms(lease.expires_at), (contact, expire_at, lease.expires_at)

    def registries_hold_the_live_leases(self, registries: dict[str, tuple[dict[str, str], int]]) -> None:
        """Each agent's registry holds its live leases' entries, token -> "expiresAt:contact",
        and besides them only stale entries, unchanged, of its leases that ended by a
        takeover or by expiring: none of a race it lost, a lease it released, or from
        before it was removed. A registry expires no earlier than any entry in it."""
        live = {lease.token: lease for lease in self.model.leases.values()}
        for agent_id, (entries, expire_at) in registries.items():
            for token, entry in entries.items():
                lease = live.get(int(token))
                if lease is not None and lease.holder == agent_id:
                    assert entry == registry_entry(lease), (agent_id, token, entry, lease)
                else:
                    assert self.lingering.get(int(token)) == (agent_id, entry), (
                        f"the registry of {agent_id} holds {token} -> {entry}, which is no lease of its own, "
                        f"live or ended by takeover or expiry"
                    )
            for lease in live.values():
                if lease.holder == agent_id:
                    assert entries.get(str(lease.token)) == registry_entry(lease), (agent_id, entries, lease)
            if entries:
                assert expire_at >= max(int(e.partition(":")[0]) for e in entries.values()), (agent_id, expire_at)
            else:
                assert expire_at == -2, (agent_id, expire_at)  # no key at all

    def fencing_tokens_strictly_increase(self, fence: str | None) -> None:
        """Over every grant seen, in grant order; the tenant's fence holds the last one."""
        assert all(a < b for a, b in itertools.pairwise(self.tokens)), self.tokens
        assert (int(fence) if fence else None) == (self.tokens[-1] if self.tokens else None), (fence, self.tokens)

    def registered_agents_and_liveness_match(self, heartbeats: list[tuple[str, float]]) -> None:
        """The heartbeats zset holds exactly the registered agents, and exactly the lapsed
        ones carry the time rule's score of 1."""
        assert {agent_id: score != 1 for agent_id, score in heartbeats} == {
            agent.id: agent.active for agent in self.model.agents.values()
        }, heartbeats

    def tally_equals_distinct_votes(self, c: Consensus, records: dict[str, str]) -> None:
        """The votes hash holds exactly the model's ballots, and the last tally answered
        for the request counts exactly those votes."""
        recorded = {voter: record.split("|", 1)[0] for voter, record in records.items()}
        assert recorded == {voter: b.vote for voter, b in c.ballots.items()}, (c.id, records)
        counted = collections.Counter(recorded.values())
        tally = self.last_tally[c.id]
        assert (tally["approve"], tally["reject"]) == (counted["approve"], counted["reject"]), (c.id, tally)

    def status_leaves_pending_at_most_once(
        self, c: Consensus, status: str, resolved_at: str | None, eligible: str | None, needed: str | None
    ) -> None:
        """Every status seen for the request, in answers and in Redis, reads pending* then
        at most one decision, which never changes; Redis agrees with the model, and a
        decision keeps its resolvedAt and its eligible/needed."""
        self.status_seen[c.id].append(status)
        runs = [s for s, _ in itertools.groupby(self.status_seen[c.id])]
        assert runs in (["pending"], [c.status], ["pending", c.status]), (c.id, self.status_seen[c.id])
        assert status == c.status, (c.id, status, c.status)
        if c.status == "pending":
            assert (resolved_at, eligible, needed) == (None, None, None), (c.id, resolved_at)
            return
        if c.resolved_at is None:  # decided by a request that answered 409: learn when from Redis
            c.resolved_at = iso(int(resolved_at))
        assert (iso(int(resolved_at)), int(eligible), int(needed)) == (c.resolved_at, *c.frozen), (c, resolved_at)
