"""The consensus part of the reference model (model.py): a policy, a request with
the electorate it was made with and its ballots, and how it tallies and decides
(docs/api.md, Consensus and Consensus policies; lua/lib.lua consensus_tally and
consensus_settle). Who may vote, which needs the members, is Model.vote's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

ADMIN_KEY_ID = "cfg-1"  # the admin key's id: the first of the keys the test configures


@dataclass(frozen=True)
class Policy:
    """What decides a request for an action (docs/api.md, Consensus policies)."""

    rule: str = "majority"
    voter_roles: tuple[str, ...] = ()  # sorted, as the service keeps them
    min_votes: int = 0
    human_approvals: int = 0
    updated_at: str | None = None  # learned from the answer that set it; None: the default

    def thresholds(self, eligible: int) -> tuple[int, int]:
        """The approvals that approve and the rejections that reject, of ``eligible``
        agents: a majority's floor(e/2)+1 both ways; two thirds' ceil(2e/3) and
        unanimity's e approve (at least 1), and the rejections that leave the
        approvals needed out of reach reject."""
        if self.rule == "majority":
            return eligible // 2 + 1, eligible // 2 + 1
        needed = max(1, eligible if self.rule == "unanimous" else -(-2 * eligible // 3))
        return needed, max(1, eligible - needed + 1)

    def rules(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "voterRoles": list(self.voter_roles),
            "minVotes": self.min_votes,
            "humanApprovals": self.human_approvals,
        }


DEFAULT_POLICY = Policy()


@dataclass
class Ballot:
    vote: str
    agent_name: str
    reason: str | None
    kind: str  # the voter's: "agent" or "human"
    run: int  # the voter's incarnation when it voted (Agent.run)
    voted_at: str | None = None  # learned from the answer that recorded it


class Tally(NamedTuple):
    approve: int
    reject: int
    eligible: int
    needed: int
    rejecting: int  # the agents' rejections that reject
    human_approve: int
    human_reject: int


@dataclass
class Consensus:
    id: str
    requester: str
    action: str
    contact: str | None
    reason: str | None
    created_at: str
    expires_at: str
    made: int  # its tick
    policy: Policy
    # The agents active when it was made, other than the requester, that have not lapsed
    # or been deregistered since (an agent outside it is "later").
    continuing: set[str]
    # With voter roles, the agents of those roles among them when it was made (an agent
    # continuing but outside it is "role"); None: any role.
    admitted: frozenset[str] | None
    # Who could ever vote on it, as (member, Agent.run) fixed when it was made: the
    # agent members, and the humans then registered if the policy asks for any.
    # Nothing moves these; the invariant holds every recorded vote to them.
    agents_at_request: frozenset[tuple[str, int]]
    humans_at_request: frozenset[tuple[str, int]]
    # Cast votes in the order cast, which is the order the service lists them in.
    ballots: dict[str, Ballot] = field(default_factory=dict)
    status: str = "pending"
    deadline_passed: bool = False
    resolved_at: str | None = None  # learned, except for "expired" (= expiresAt)
    frozen: tuple[int, int] | None = None  # (eligible, needed) at the decision

    @property
    def members(self) -> set[str]:
        """The agent electorate still active."""
        return self.continuing if self.admitted is None else self.continuing & self.admitted

    def tally(self) -> Tally:
        """The agents' approve and reject, eligible = members of the agent electorate
        still active + agent voters no longer so (every voter was a member when it
        voted), the approvals needed and rejections that reject under the request's
        policy; and the humans' approve and reject. Once decided, eligible and needed
        stay as they were at the decision."""
        counted = {
            (kind, vote): sum(b.kind == kind and b.vote == vote for b in self.ballots.values())
            for kind in ("agent", "human")
            for vote in ("approve", "reject")
        }
        if self.frozen is not None:
            eligible, needed = self.frozen
            rejecting = self.policy.thresholds(eligible)[1]
        else:
            members = self.members
            eligible = len(members) + sum(b.kind == "agent" and v not in members for v, b in self.ballots.items())
            needed, rejecting = self.policy.thresholds(eligible)
        return Tally(
            counted["agent", "approve"],
            counted["agent", "reject"],
            eligible,
            needed,
            rejecting,
            counted["human", "approve"],
            counted["human", "reject"],
        )

    def settle(self) -> None:
        """Decide a pending request if its deadline or its votes say so; a decision is
        final. Past the deadline: expired. Rejected: by a human's rejection where humans
        are asked, at once; else, with a quorum (minVotes votes cast, agents' and
        humans'), by the rejections that reject. Approved: with a quorum, the approvals
        needed (or, with no agent eligible, none, where humans are asked) and the human
        approvals asked for."""
        if self.status != "pending":
            return
        t, p = self.tally(), self.policy
        quorum = len(self.ballots) >= p.min_votes
        agents_approve = t.approve >= t.needed or (t.eligible == 0 and p.human_approvals > 0)
        if self.deadline_passed:
            self.status, self.resolved_at = "expired", self.expires_at
        elif (p.human_approvals > 0 and t.human_reject > 0) or (quorum and t.reject >= t.rejecting):
            self.status = "rejected"
        elif quorum and agents_approve and t.human_approve >= p.human_approvals:
            self.status = "approved"
        else:
            return
        self.frozen = (t.eligible, t.needed)

    def pass_deadline(self, expires_at: str) -> None:
        """Its deadline moved into the past: a pending request is expired when next settled."""
        self.expires_at = expires_at
        if self.status == "pending":
            self.deadline_passed = True

    def body(self, tenant: str) -> dict[str, Any]:
        """The request as the service answers it."""
        t = self.tally()
        tally = {"approve": t.approve, "reject": t.reject, "eligible": t.eligible, "needed": t.needed}
        if self.policy.human_approvals:
            tally.update(humanApprove=t.human_approve, humanReject=t.human_reject)
            tally["humansNeeded"] = self.policy.human_approvals
        return {
            "id": self.id,
            "tenantId": tenant,
            "requestingAgentId": self.requester,
            "action": self.action,
            "contactEmail": self.contact,
            "reason": self.reason,
            "status": self.status,
            "createdAt": self.created_at,
            "expiresAt": self.expires_at,
            "resolvedAt": self.resolved_at,
            "tally": tally,
            "votes": [
                {
                    "agentId": voter,
                    "agentName": b.agent_name,
                    "vote": b.vote,
                    "reason": b.reason,
                    "votedAt": b.voted_at,
                    "kind": b.kind,
                }
                for voter, b in self.ballots.items()
            ],
            "policy": self.policy.rules(),
        }
