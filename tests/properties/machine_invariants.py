"""The invariant of the model-based test (test_model.py): after every step, one
pipelined read of Redis itself, held to the promises: one holder per contact,
registries that hold the live leases, fencing tokens strictly increasing, tallies
equal to the distinct votes, a status leaving pending at most once, and no vote
counted from outside its request's electorate.
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
from tests.properties.model_consensus import ADMIN_KEY_ID, DEFAULT_POLICY, Consensus, Policy
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
        pipe.hgetall(k.agent_roles(TENANT))
        pipe.zrange(k.humans(TENANT), 0, -1)
        pipe.hgetall(k.consensus_policies(TENANT))
        for c in requests:
            pipe.hgetall(k.votes(TENANT, c.id))
            pipe.hmget(k.consensus(TENANT, c.id), "status", "resolvedAt", "eligible", "needed", "policy")
            pipe.smembers(k.electorate(TENANT, c.id))
        replies = self.run(pipe.execute())
        lease_strings, replies = pairs(replies[: 2 * len(CONTACTS)]), replies[2 * len(CONTACTS) :]
        registries, replies = pairs(replies[: 2 * len(agent_ids)]), replies[2 * len(agent_ids) :]
        (fence, heartbeats, agent_roles, humans, policies), replies = replies[:5], replies[5:]
        self.one_holder_per_contact(lease_strings)
        self.registries_hold_the_live_leases(dict(zip(agent_ids, registries)))
        self.fencing_tokens_strictly_increase(fence)
        self.registered_agents_and_liveness_match(heartbeats, agent_roles)
        self.humans_and_policies_match(humans, policies)
        for i, c in enumerate(requests):
            votes, fields, electorate = replies[3 * i : 3 * i + 3]
            self.tally_equals_distinct_votes(c, votes)
            self.status_leaves_pending_at_most_once(c, *fields[:4])
            self.counts_only_its_electorate(c, votes, fields, electorate)

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

    def registered_agents_and_liveness_match(
        self, heartbeats: list[tuple[str, float]], agent_roles: dict[str, str]
    ) -> None:
        """The heartbeats zset holds exactly the registered agents (no human), and exactly
        the lapsed ones carry the time rule's score of 1; the roles that voter roles are
        read from are the agents' own."""
        assert {agent_id: score != 1 for agent_id, score in heartbeats} == {
            agent.id: agent.active for agent in self.model.agents.values()
        }, heartbeats
        assert agent_roles == {agent.id: agent.role for agent in self.model.agents.values()}, agent_roles

    def humans_and_policies_match(self, humans: list[str], policies: dict[str, str]) -> None:
        """The humans zset holds exactly the registered humans, in the order they were
        (last) created, which decides of which requests each is a member; the policies
        hash holds the model's, each as it was set (by the admin key, at its updatedAt)."""
        assert humans == [h.id for h in sorted(self.model.humans.values(), key=lambda h: h.run)], humans
        assert policies == {action: stored(p) for action, p in self.model.policies.items()}, policies

    def tally_equals_distinct_votes(self, c: Consensus, records: dict[str, str]) -> None:
        """The votes hash holds exactly the model's ballots (a human's under "h:" and its
        id), and the last tally answered for the request counts exactly those votes,
        the agents' and (where the policy asks for them) the humans' apart."""
        recorded = {voter: record.split("|", 1)[0] for voter, record in records.items()}
        assert recorded == {field(voter, b.kind): b.vote for voter, b in c.ballots.items()}, (c.id, records)
        counted = collections.Counter((voter.startswith("h:"), vote) for voter, vote in recorded.items())
        tally = self.last_tally[c.id]
        assert (tally["approve"], tally["reject"]) == (counted[False, "approve"], counted[False, "reject"]), tally
        humans = (tally.get("humanApprove"), tally.get("humanReject"), tally.get("humansNeeded"))
        if c.policy.human_approvals:
            assert humans == (counted[True, "approve"], counted[True, "reject"], c.policy.human_approvals), tally
        else:
            assert humans == (None, None, None) and not any(h for h, _ in counted), (c.id, tally)

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

    def counts_only_its_electorate(
        self, c: Consensus, records: dict[str, str], fields: list[str | None], electorate: set[str]
    ) -> None:
        """No vote counts from outside the request's electorate, as it was fixed when the
        request was made (model.Consensus.agents_at_request, humans_at_request, which
        nothing after moves): each recorded vote is of an agent member in the run of
        activity it was a member in, or of a human then registered, where the policy
        asks for humans. Redis holds the policy the request was made under and, with
        voter roles, exactly its agent members; the eligible answered and held never
        exceed them; and a decision held follows, under that policy, from those votes
        and its frozen eligible/needed alone."""
        for voter, b in c.ballots.items():
            allowed = c.humans_at_request if b.kind == "human" else c.agents_at_request
            assert (voter, b.run) in allowed, f"{c.id} counted the vote of {voter} ({b.kind}), of no electorate of it"
        policy_field, status, eligible, needed = fields[4], fields[0], fields[2], fields[3]
        assert policy_field == (None if c.policy is DEFAULT_POLICY else stored(c.policy)), (c.id, policy_field)
        members = {agent_id for agent_id, _ in c.agents_at_request}
        assert electorate == (members if c.policy.voter_roles else set()), (c.id, electorate)
        assert self.last_tally[c.id]["eligible"] <= len(members), (c.id, self.last_tally[c.id], members)
        if status not in ("approved", "rejected"):
            return
        policy, eligible, needed = parsed(policy_field), int(eligible), int(needed)
        assert eligible <= len(members) and needed == policy.thresholds(eligible)[0], (c.id, eligible, needed)
        votes = collections.Counter(
            (voter.startswith("h:"), record.split("|", 1)[0]) for voter, record in records.items()
        )
        quorum = sum(votes.values()) >= policy.min_votes
        if status == "approved":
            agents = votes[False, "approve"] >= needed or (eligible == 0 and policy.human_approvals > 0)
            assert quorum and agents and votes[True, "approve"] >= policy.human_approvals, (c.id, votes, fields)
        else:
            by_human = policy.human_approvals > 0 and votes[True, "reject"] > 0
            assert by_human or (quorum and votes[False, "reject"] >= policy.thresholds(eligible)[1]), (c.id, votes)


def field(voter: str, kind: str) -> str:
    """A vote's field in the votes hash: an agent's id, or "h:" and a human's."""
    return f"h:{voter}" if kind == "human" else voter


def stored(policy: Policy) -> str:
    """A policy as Redis holds it: "<rule>|<minVotes>|<humanApprovals>|<updatedAt ms>|<updatedBy>|<roles>"."""
    rules = f"{policy.rule}|{policy.min_votes}|{policy.human_approvals}"
    return f"{rules}|{ms(policy.updated_at)}|{ADMIN_KEY_ID}|" + "\n".join(policy.voter_roles)


def parsed(value: str | None) -> Policy:
    """A policy as Redis holds it, read back: what the service decides by."""
    if not value:
        return DEFAULT_POLICY
    rule, min_votes, humans, _, _, roles = value.split("|", 5)
    return Policy(rule, tuple(roles.split("\n")) if roles else (), int(min_votes), int(humans))
