"""A reference model of Concord's documented semantics, in plain Python.

tests/properties/test_model.py drives the service through random operation sequences and
checks every answer against this model. The model knows the rules (docs/api.md "How it
behaves", DESIGN-NOTES) but not the values the service makes up (ids, times,
token values): the test reads those from the service's first answer that carries
them ("learns" them) and from then on holds the service to them.

Credentials are learned too: the model keeps each agent's current credential (the
last one registering or rotating answered) and every earlier one, retired. An agent
acts only with its current credential and only as itself (``authorize``); a
retired, forged or unknown agent's credential is refused before anything else.

Members are agents or humans (``kind``). A human is registered by an admin key, has
no heartbeat and is of no agent electorate; its credential may only vote (and
read), where the request's policy asks for human approvals and the human was
registered before the request was made. Each action may have a consensus policy
(``Policy``); a request keeps the one in force when it was made, and decides by
it alone (model_consensus.py: the request, its tally and its decision). Every member
incarnation (an agent's run of activity, a human's registration) and every request
gets a tick of one logical clock, so "registered before the request", "active
since before it" are comparisons of ticks, and the electorate a request was made
with is a set of (member, tick) pairs that no later event moves.

Time does not pass here on its own. An agent is active until the test makes it
lapse, a lease lives until the test expires it, a consensus request is pending
until a vote or read decides it or the test moves its deadline into the past.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from concord.server.store.keys import agent_id_for
from tests.properties.model_consensus import ADMIN_KEY_ID, DEFAULT_POLICY, Ballot, Consensus, Policy

WINDOW_MS = 300 * 1000  # the heartbeat window the test configures
AGENT_PREFIX, HUMAN_PREFIX = "concord-agent.", "concord-human."
# Who may make which of the calls the test makes (docs/api.md, Roles), by the role of
# the credential: a key's, "agent" or "human" (a member's credential says which by
# its prefix). Anything else is 403 insufficient_scope before the call is read.
MAY = {
    "admin": {"register", "rotate", "remove", "release", "send_check", "set_policy", "delete_policy", "read"},
    "enroll": {"register", "rotate"},
    "gate": {"send_check"},
    "read": {"read"},
    "agent": {"heartbeat", "acquire", "renew", "release", "send_check", "request_consensus", "vote", "read"},
    "human": {"vote", "read"},
}


def normalize(email: str) -> str:
    """The documented normalization of contactEmail: trimmed, lower-cased."""
    return email.strip().lower()


def contact_of(spelling: str) -> str:
    """The canonical contact an address reaches, by the documented default rules
    (docs/api.md, Contacts): a +tag dropped unless it is the whole local part,
    googlemail.com taken for gmail.com, and at gmail.com the local part's dots gone."""
    local, domain = normalize(spelling).rsplit("@", 1)
    domain = "gmail.com" if domain == "googlemail.com" else domain
    local = local.split("+")[0] or local
    if domain == "gmail.com":
        local = local.replace(".", "")
    return f"{local}@{domain}"


@dataclass
class Agent:
    """A member: an agent, or a human (``kind``), which is always active."""

    id: str
    name: str
    run: int  # the tick its current run of activity began (a human: its registration)
    kind: str = "agent"
    role: str = "general"
    metadata: dict[str, Any] = field(default_factory=dict)
    active: bool = True
    registered_at: str | None = None  # learned from the answer that created it
    credential: str | None = None  # its current credential, learned from registering or rotating


@dataclass
class Lease:
    id: str
    contact: str
    holder: str
    holder_name: str
    intent: str | None
    token: int
    acquired_at: str
    expires_at: str


class Outcome(NamedTuple):
    """What a request must answer: an HTTP status, and for an error its problem code
    and the extra members the problem document carries."""

    status: int
    code: str | None = None
    members: dict[str, Any] | None = None


OK = Outcome(200)


class Model:
    """One tenant: its agents and humans, its leases (one per contact), its consensus
    policies and requests."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.agents: dict[str, Agent] = {}  # registered agents by id
        self.humans: dict[str, Agent] = {}  # registered human members by id
        self.policies: dict[str, Policy] = {}  # the tenant's own, by action
        self.clock = 0  # the logical clock of incarnations and requests
        # Leases whose keys exist, by normalized contact (a lapsed holder's still exists,
        # though it protects nothing until the holder heartbeats again).
        self.leases: dict[str, Lease] = {}
        self.granted_to: dict[str, str] = {}  # every lease id ever granted -> its holder
        self.consensus: dict[str, Consensus] = {}
        # Every credential answered that is no longer its member's current one (rotated,
        # replaced by registering again, or its member removed) -> that member's id.
        self.retired: dict[str, str] = {}

    # --- agents -----------------------------------------------------------------

    def agent_id(self, name: str) -> str:
        return agent_id_for(self.tenant, name)

    def is_active(self, agent_id: str) -> bool:
        agent = self.agents.get(agent_id)
        return agent is not None and agent.active

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def member(self, member_id: str) -> Agent | None:
        return self.agents.get(member_id) or self.humans.get(member_id)

    def register(
        self, name: str, role: str | None, metadata: dict[str, Any] | None, kind: str = "agent", by: str = "admin"
    ) -> Outcome:
        """Upsert by name; omitted role/metadata keep their values: 201 created, 200
        updated. Refused with nothing changed: a name of the other kind (409
        kind_mismatch, checked first), a human by a key that is not an admin's (403)."""
        agent_id = self.agent_id(name)
        other = (self.humans if kind == "agent" else self.agents).get(agent_id)
        if other is not None:
            return Outcome(409, "kind_mismatch", {"kind": other.kind})
        if kind == "human" and by != "admin":
            return Outcome(403, "insufficient_scope", {"keyRole": by})
        members = self.agents if kind == "agent" else self.humans
        created = agent_id not in members
        if created:
            members[agent_id] = Agent(agent_id, name, self.tick(), kind)
        member = members[agent_id]
        if role is not None:
            member.role = role
        if metadata is not None:
            member.metadata = metadata
        self.revive(member)  # registering counts as a heartbeat
        return Outcome(201 if created else 200)

    def revive(self, agent: Agent) -> None:
        """A heartbeat: a lapsed agent begins a new run of activity."""
        if not agent.active:
            agent.active, agent.run = True, self.tick()

    def issue(self, agent_id: str, credential: str) -> None:
        """The member's new credential (registering, rotating): the one before is retired."""
        member = self.member(agent_id)
        if member.credential is not None:
            self.retired[member.credential] = agent_id
        member.credential = credential

    @staticmethod
    def scope(role: str, call: str) -> Outcome | None:
        """None when a credential of ``role`` may make ``call``, else its refusal (MAY)."""
        return None if call in MAY[role] else Outcome(403, "insufficient_scope", {"keyRole": role})

    def authorize(self, own: str, credential: str, claimed: str | None, call: str) -> Outcome | None:
        """A request sent with ``credential``, the credential of member ``own``, naming
        agent ``claimed`` (None: left out, so ``own``), to make ``call`` (an acting
        call, machine_principals.ACTIONS). None when it may go on; else its refusal,
        which changes nothing: a call its role may not make is 403 insufficient_scope
        (the prefix says the role: a retired credential is refused so too); another
        member named is 403 agent_mismatch (the credential's member in the problem); a
        credential that is not its member's current one (retired, forged, of a member
        removed or never registered) is 401."""
        refusal = self.scope("human" if credential.startswith(HUMAN_PREFIX) else "agent", call)
        if refusal is not None:
            return refusal
        if claimed is not None and claimed != own:
            return Outcome(403, "agent_mismatch", {"agentId": own})
        member = self.member(own)
        if member is None or member.credential != credential:
            return Outcome(401, "unauthorized")
        return None

    def heartbeat(self, agent_id: str) -> Outcome:
        if agent_id not in self.agents:
            return Outcome(404, "agent_not_found")
        self.revive(self.agents[agent_id])
        return OK

    def deregister(self, agent_id: str) -> int | None:
        """Remove the member and its leases; the number of leases released, or None if
        unknown. A human's membership of every request goes with it (its cast votes stand)."""
        agent = self.agents.pop(agent_id, None) or self.humans.pop(agent_id, None)
        if agent is None:
            return None
        if agent.credential is not None:  # revoked with the agent
            self.retired[agent.credential] = agent_id
        self.leave_electorates(agent_id)
        held = [contact for contact, lease in self.leases.items() if lease.holder == agent_id]
        for contact in held:
            del self.leases[contact]
        return len(held)

    def lapse(self, agent_id: str) -> None:
        self.agents[agent_id].active = False
        self.leave_electorates(agent_id)

    def leave_electorates(self, agent_id: str) -> None:
        """An agent that lapses or is deregistered is of no electorate from then on (one
        that comes back is counted by requests made after)."""
        for c in self.consensus.values():
            c.continuing.discard(agent_id)

    def open_request(self, requester: str, action: str, **fields: Any) -> Consensus:
        """A request made now under the action's policy in force: its electorate is the
        active agents but the requester, of the policy's voter roles if it has any;
        the humans registered now are asked if it asks for human approvals."""
        policy = self.policies.get(action, DEFAULT_POLICY)
        continuing = {a.id for a in self.agents.values() if a.active and a.id != requester}
        admitted = None
        if policy.voter_roles:
            admitted = frozenset(a for a in continuing if self.agents[a].role in policy.voter_roles)
        members = continuing if admitted is None else admitted
        asked = policy.human_approvals > 0
        c = Consensus(
            requester=requester,
            action=action,
            made=self.tick(),
            policy=policy,
            continuing=continuing,
            admitted=admitted,
            agents_at_request=frozenset((a, self.agents[a].run) for a in members),
            humans_at_request=frozenset((h.id, h.run) for h in self.humans.values() if asked),
            **fields,
        )
        self.consensus[c.id] = c
        return c

    def agent_error(self, agent_id: str) -> Outcome | None:
        if agent_id not in self.agents:
            return Outcome(404, "agent_not_found")
        if not self.agents[agent_id].active:
            return Outcome(409, "agent_inactive")
        return None

    # --- leases -----------------------------------------------------------------

    def live_lease(self, lease_id: str) -> Lease | None:
        return next((lease for lease in self.leases.values() if lease.id == lease_id), None)

    def acquire(self, agent_id: str, contact: str) -> str:
        """agent_not_found | agent_inactive | conflict | extend | grant (free, or a takeover)."""
        error = self.agent_error(agent_id)
        if error is not None:
            return error.code  # type: ignore[return-value]
        lease = self.leases.get(contact)
        if lease is not None and lease.holder == agent_id:
            return "extend"
        if lease is not None and self.is_active(lease.holder):
            return "conflict"
        return "grant"

    def grant(self, lease: Lease) -> None:
        self.leases[lease.contact] = lease
        self.granted_to[lease.id] = lease.holder

    def renew(self, lease_id: str, agent_id: str) -> Outcome:
        lease = self.live_lease(lease_id)
        if lease is None:
            return Outcome(404, "lease_not_found")
        if lease.holder != agent_id:  # an unknown agent is "not the holder" too
            return Outcome(403, "not_lease_holder")
        if not self.is_active(agent_id):
            return Outcome(409, "agent_inactive")
        return OK

    def release(self, lease_id: str, agent_id: str | None) -> Outcome:
        lease = self.live_lease(lease_id)
        if lease is None:
            return Outcome(404, "lease_not_found")
        if agent_id is not None and lease.holder != agent_id:
            return Outcome(403, "not_lease_holder")
        del self.leases[lease.contact]
        return OK

    def expire(self, contact: str) -> None:
        del self.leases[contact]

    def send_check(self, agent_id: str, spelling: str, token: int | None) -> dict[str, Any]:
        """The answer, naming the address asked about and the contact it reaches."""
        contact = contact_of(spelling)
        named = {"contactEmail": normalize(spelling), "contact": contact}
        return {**self._verdict(agent_id, contact, token), **named}

    def _verdict(self, agent_id: str, contact: str, token: int | None) -> dict[str, Any]:
        """The whole answer. Order (DESIGN-NOTES): agent_not_found, agent_inactive, then a
        given token must be the caller's current one (stale_fencing_token), then another
        active holder is a lease_conflict. A lapsed holder's contact counts as free."""
        if agent_id not in self.agents:
            return {"allowed": False, "reason": "agent_not_found"}
        if not self.agents[agent_id].active:
            return {"allowed": False, "reason": "agent_inactive"}
        lease = self.leases.get(contact)
        mine = lease is not None and lease.holder == agent_id
        other_active = lease is not None and not mine and self.is_active(lease.holder)
        holder = {"leaseHolder": self.holder_body(lease)} if other_active else {}
        if token is not None and not (mine and token == lease.token):  # type: ignore[union-attr]
            return {"allowed": False, "reason": "stale_fencing_token", **holder}
        if other_active:
            return {"allowed": False, "reason": "lease_conflict", **holder}
        return {"allowed": True}

    def leases_of(self, agent_id: str | None, contact: str | None) -> list[Lease]:
        """GET /leases: the agent's and/or the contact's live leases, newest grant first
        (fencing tokens grow in grant order)."""
        found = [
            lease
            for lease in self.leases.values()
            if agent_id in (None, lease.holder) and contact in (None, lease.contact)
        ]
        return sorted(found, key=lambda lease: lease.token, reverse=True)

    def lease_body(self, lease: Lease, spelling: str | None = None) -> dict[str, Any]:
        """A lease's answer: its contactEmail is the address asked about where the request
        named one (acquire), else the contact."""
        return {
            "id": lease.id,
            "tenantId": self.tenant,
            "agentId": lease.holder,
            "agentName": lease.holder_name,
            "contactEmail": normalize(spelling) if spelling is not None else lease.contact,
            "contact": lease.contact,
            "intent": lease.intent,
            "acquiredAt": lease.acquired_at,
            "expiresAt": lease.expires_at,
            "fencingToken": lease.token,
            "conflict": False,
        }

    @staticmethod
    def holder_body(lease: Lease) -> dict[str, Any]:
        return {
            "agentId": lease.holder,
            "agentName": lease.holder_name,
            "intent": lease.intent,
            "expiresAt": lease.expires_at,
        }

    # --- consensus --------------------------------------------------------------

    def vote(self, c: Consensus, voter_id: str, choice: str, reason: str | None) -> Outcome:
        """Order (DESIGN-NOTES, lua/consensus_vote.lua): agent_not_found,
        requester_cannot_vote, an earlier vote (the same again: 200 unchanged; another:
        already_voted), then settle: consensus_closed; then for a human, not_eligible
        why "human" (the policy asks for none) or "later" (registered after the
        request); for an agent, agent_inactive, then not_eligible why "later" (not
        active since before the request) or "role" (not of its voter roles then); then
        the vote is recorded and settled."""
        voter = self.member(voter_id)
        if voter is None:
            return Outcome(404, "agent_not_found")
        if voter_id == c.requester:
            return Outcome(403, "requester_cannot_vote")
        earlier = c.ballots.get(voter_id)
        if earlier is not None:
            if earlier.vote != choice:
                return Outcome(409, "already_voted", {"vote": earlier.vote})
            c.settle()
            return OK
        c.settle()
        if c.status != "pending":
            return Outcome(409, "consensus_closed", {"consensusStatus": c.status})
        why = None
        if voter.kind == "human":
            if c.policy.human_approvals == 0:
                why = "human"
            elif voter.run > c.made:
                why = "later"
        elif not voter.active:
            return Outcome(409, "agent_inactive")
        elif voter_id not in c.continuing:
            why = "later"
        elif c.admitted is not None and voter_id not in c.admitted:
            why = "role"
        if why is not None:
            return Outcome(403, "not_eligible", {"why": why})
        c.ballots[voter_id] = Ballot(choice, voter.name, reason or None, voter.kind, voter.run)
        c.settle()
        return OK

    # --- consensus policies ---------------------------------------------------------

    def policy_body(self, action: str) -> dict[str, Any]:
        """The policy in force for ``action``, as GET and PUT answer it."""
        policy = self.policies.get(action)
        return {
            "tenantId": self.tenant,
            "action": action,
            **(policy or DEFAULT_POLICY).rules(),
            "default": policy is None,
            "updatedAt": policy.updated_at if policy else None,
            "updatedBy": ADMIN_KEY_ID if policy else None,
        }
