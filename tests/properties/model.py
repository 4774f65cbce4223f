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

Time does not pass here on its own. An agent is active until the test makes it
lapse, a lease lives until the test expires it, a consensus request is pending
until a vote or read decides it or the test moves its deadline into the past.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from concord.server.store.keys import agent_id_for

WINDOW_MS = 300 * 1000  # the heartbeat window the test configures


def normalize(email: str) -> str:
    """The documented normalization of contactEmail: trimmed, lower-cased."""
    return email.strip().lower()


@dataclass
class Agent:
    id: str
    name: str
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


@dataclass
class Ballot:
    vote: str
    agent_name: str
    reason: str | None
    voted_at: str | None = None  # learned from the answer that recorded it


@dataclass
class Consensus:
    id: str
    requester: str
    action: str
    contact: str | None
    reason: str | None
    created_at: str
    expires_at: str
    ballots: dict[str, Ballot] = field(default_factory=dict)
    # The electorate still active: the agents active when it was made, other than the
    # requester, that have not lapsed or been deregistered since.
    members: set[str] = field(default_factory=set)
    status: str = "pending"
    deadline_passed: bool = False
    resolved_at: str | None = None  # learned, except for "expired" (= expiresAt)
    frozen: tuple[int, int] | None = None  # (eligible, needed) at the decision


class Outcome(NamedTuple):
    """What a request must answer: an HTTP status, and for an error its problem code
    and the extra members the problem document carries."""

    status: int
    code: str | None = None
    members: dict[str, Any] | None = None


OK = Outcome(200)


class Model:
    """One tenant: its agents, its leases (one per contact) and its consensus requests."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.agents: dict[str, Agent] = {}  # registered agents by id
        # Leases whose keys exist, by normalized contact (a lapsed holder's still exists,
        # though it protects nothing until the holder heartbeats again).
        self.leases: dict[str, Lease] = {}
        self.granted_to: dict[str, str] = {}  # every lease id ever granted -> its holder
        self.consensus: dict[str, Consensus] = {}
        # Every credential answered that is no longer its agent's current one (rotated,
        # replaced by registering again, or its agent removed) -> that agent's id.
        self.retired: dict[str, str] = {}

    # --- agents -----------------------------------------------------------------

    def agent_id(self, name: str) -> str:
        return agent_id_for(self.tenant, name)

    def is_active(self, agent_id: str) -> bool:
        agent = self.agents.get(agent_id)
        return agent is not None and agent.active

    def register(self, name: str, role: str | None, metadata: dict[str, Any] | None) -> bool:
        """Upsert by name; omitted role/metadata keep their values. True when created."""
        agent_id = self.agent_id(name)
        created = agent_id not in self.agents
        if created:
            self.agents[agent_id] = Agent(agent_id, name)
        agent = self.agents[agent_id]
        if role is not None:
            agent.role = role
        if metadata is not None:
            agent.metadata = metadata
        agent.active = True  # registering counts as a heartbeat
        return created

    def issue(self, agent_id: str, credential: str) -> None:
        """The agent's new credential (registering, rotating): the one before is retired."""
        agent = self.agents[agent_id]
        if agent.credential is not None:
            self.retired[agent.credential] = agent_id
        agent.credential = credential

    def authorize(self, own: str, credential: str, claimed: str | None) -> Outcome | None:
        """A request sent with ``credential``, the credential of agent ``own``, naming
        agent ``claimed`` (None: left out, so ``own``). None when it may go on; else its
        refusal, which changes nothing: another agent named is 403 agent_mismatch (the
        credential's agent in the problem); a credential that is not its agent's
        current one (retired, forged, of an agent removed or never registered) is 401."""
        if claimed is not None and claimed != own:
            return Outcome(403, "agent_mismatch", {"agentId": own})
        agent = self.agents.get(own)
        if agent is None or agent.credential != credential:
            return Outcome(401, "unauthorized")
        return None

    def heartbeat(self, agent_id: str) -> Outcome:
        if agent_id not in self.agents:
            return Outcome(404, "agent_not_found")
        self.agents[agent_id].active = True
        return OK

    def deregister(self, agent_id: str) -> int | None:
        """Remove the agent and its leases; the number of leases released, or None if unknown."""
        agent = self.agents.pop(agent_id, None)
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
            c.members.discard(agent_id)

    def electorate(self, requester: str) -> set[str]:
        """The electorate of a request made now: the active agents but the requester."""
        return {a.id for a in self.agents.values() if a.active and a.id != requester}

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

    def send_check(self, agent_id: str, contact: str, token: int | None) -> dict[str, Any]:
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

    def lease_body(self, lease: Lease) -> dict[str, Any]:
        return {
            "id": lease.id,
            "tenantId": self.tenant,
            "agentId": lease.holder,
            "agentName": lease.holder_name,
            "contactEmail": lease.contact,
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

    def tally(self, c: Consensus) -> tuple[int, int, int, int]:
        """approve, reject, eligible, needed. eligible = members of the electorate still
        active + voters no longer so (every voter was a member when it voted); needed =
        floor(eligible / 2) + 1. Once decided, eligible and needed stay as they were at
        the decision."""
        approve = sum(b.vote == "approve" for b in c.ballots.values())
        reject = len(c.ballots) - approve
        if c.frozen is not None:
            return approve, reject, *c.frozen
        eligible = len(c.members) + sum(1 for voter in c.ballots if voter not in c.members)
        return approve, reject, eligible, eligible // 2 + 1

    def settle(self, c: Consensus) -> None:
        """Decide a pending request if its deadline or its votes say so; a decision is final."""
        if c.status != "pending":
            return
        approve, reject, eligible, needed = self.tally(c)
        if c.deadline_passed:
            c.status, c.resolved_at = "expired", c.expires_at
        elif approve >= needed:
            c.status = "approved"
        elif reject >= needed:
            c.status = "rejected"
        else:
            return
        c.frozen = (eligible, needed)

    def vote(self, c: Consensus, agent_id: str, choice: str, reason: str | None) -> Outcome:
        """Order (DESIGN-NOTES): agent_not_found, requester_cannot_vote, an earlier vote
        (the same again: 200 unchanged; another: already_voted), then settle:
        consensus_closed, then agent_inactive, then not_eligible (active, but not of the
        electorate), then the vote is recorded and settled."""
        voter = self.agents.get(agent_id)
        if voter is None:
            return Outcome(404, "agent_not_found")
        if agent_id == c.requester:
            return Outcome(403, "requester_cannot_vote")
        earlier = c.ballots.get(agent_id)
        if earlier is not None:
            if earlier.vote != choice:
                return Outcome(409, "already_voted", {"vote": earlier.vote})
            self.settle(c)
            return OK
        self.settle(c)
        if c.status != "pending":
            return Outcome(409, "consensus_closed", {"consensusStatus": c.status})
        if not voter.active:
            return Outcome(409, "agent_inactive")
        if agent_id not in c.members:
            return Outcome(403, "not_eligible")
        c.ballots[agent_id] = Ballot(choice, voter.name, reason or None)
        self.settle(c)
        return OK

    def pass_deadline(self, c: Consensus, expires_at: str) -> None:
        c.expires_at = expires_at
        if c.status == "pending":
            c.deadline_passed = True

    def consensus_body(self, c: Consensus) -> dict[str, Any]:
        approve, reject, eligible, needed = self.tally(c)
        ballots = sorted(c.ballots.items(), key=lambda item: (item[1].voted_at or "", item[0]))
        return {
            "id": c.id,
            "tenantId": self.tenant,
            "requestingAgentId": c.requester,
            "action": c.action,
            "contactEmail": c.contact,
            "reason": c.reason,
            "status": c.status,
            "createdAt": c.created_at,
            "expiresAt": c.expires_at,
            "resolvedAt": c.resolved_at,
            "tally": {"approve": approve, "reject": reject, "eligible": eligible, "needed": needed},
            "votes": [
                {"agentId": voter, "agentName": b.agent_name, "vote": b.vote, "reason": b.reason, "votedAt": b.voted_at}
                for voter, b in ballots
            ],
        }
