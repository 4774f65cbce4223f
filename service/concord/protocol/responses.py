"""The answers of the API as msgspec Structs: what the server encodes and the SDK
decodes, so the two cannot drift. Field names are camelCase on the wire."""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

from concord.protocol.errors import ErrorCode
from concord.protocol.types import AgentStatus, ConsensusRule, ConsensusStatus, MemberKind, VoteChoice


class Output(Struct, rename="camel", kw_only=True):
    pass


class Status(Output):
    status: str


class Agent(Output):
    id: str
    tenant_id: str
    agent_name: str
    agent_role: str
    status: AgentStatus
    last_heartbeat: str | None
    registered_at: str
    updated_at: str
    metadata: msgspec.Raw  # stored as the JSON the client sent
    # A human votes only and needs no heartbeat: its status is always active.
    kind: MemberKind = "agent"


class RegisteredAgent(Agent, kw_only=True):
    """An agent as registering answers it: with its new credential, shown this once
    (Redis keeps only its digest). Every registration makes a new one, and the
    agent's earlier credential is refused from then on."""

    credential: str


class AgentCredential(Output):
    """A rotated credential, shown this once; the earlier one is refused from now on."""

    agent_id: str
    credential: str
    rotated_at: str


class AgentList(Output):
    agents: list[Agent]
    next_cursor: str | None


class AgentRemoved(Output, kw_only=True):
    id: str
    removed: bool = True
    released_leases: int


class Heartbeat(Output, kw_only=True):
    agent_id: str
    status: Literal["active"] = "active"
    last_heartbeat: str
    active_until: str


class LeaseHolder(Output):
    agent_id: str
    agent_name: str
    intent: str | None
    expires_at: str


class Lease(Output, kw_only=True):
    id: str
    tenant_id: str
    agent_id: str
    agent_name: str
    contact_email: str  # the address asked about; where none was, the contact
    intent: str | None
    acquired_at: str
    expires_at: str
    fencing_token: int
    conflict: bool = False
    contact: str | None = None  # the canonical contact the lease is on (a server before contacts: none)


class LeaseList(Output):
    leases: list[Lease]
    next_cursor: str | None


class Released(Output, kw_only=True):
    id: str
    released: bool = True
    released_at: str


class Suppression(Output, omit_defaults=True, kw_only=True):
    """A contact, or a whole domain (entry "@domain"), that no agent may lease or email."""

    entry: str  # the canonical contact, or "@" and the domain
    tenant_id: str
    reason: str  # unsubscribed, bounced, complained, manual
    note: str | None = None
    created_at: str
    created_by: str  # the agent id or the API key id that set it
    created_by_role: str  # agent, gate, admin


class SuppressionList(Output):
    suppressions: list[Suppression]
    next_cursor: str | None


class SuppressionImport(Output):
    received: int  # entries in the batch
    written: int  # of them, new (or, with an admin key, replaced); the others were kept as they were


class SendCheck(Output, omit_defaults=True):
    allowed: bool
    reason: str | None = None
    lease_holder: LeaseHolder | None = None
    suppression: Suppression | None = None  # reason suppressed: the entry that applies
    contact_email: str | None = None  # the address asked about
    contact: str | None = None  # the canonical contact checked


class Tally(Output, omit_defaults=True):
    """The agents' votes (approve, reject), the agent electorate's size (eligible) and
    the approvals its rule needs; with a policy that asks for human approvals, the
    humans' votes and how many approvals it asks for."""

    approve: int
    reject: int
    eligible: int
    needed: int
    human_approve: int | None = None
    human_reject: int | None = None
    humans_needed: int | None = None


class Vote(Output):
    agent_id: str
    agent_name: str
    vote: VoteChoice
    reason: str | None
    voted_at: str
    kind: MemberKind = "agent"


class PolicyRules(Output):
    """What decides a consensus request (docs/api.md, Consensus policies)."""

    rule: ConsensusRule = "majority"
    voter_roles: list[str] = msgspec.field(default_factory=list)  # empty: agents of any role
    min_votes: int = 0
    human_approvals: int = 0


class ConsensusPolicy(PolicyRules, kw_only=True):
    """The policy in force for one action of a tenant: its own (default false), or the default."""

    tenant_id: str
    action: str
    default: bool
    updated_at: str | None = None
    updated_by: str | None = None  # the id of the admin key that set it


class ConsensusPolicyList(Output):
    policies: list[ConsensusPolicy]


class Consensus(Output):
    id: str
    tenant_id: str
    requesting_agent_id: str
    action: str
    contact_email: str | None
    reason: str | None
    status: ConsensusStatus
    created_at: str
    expires_at: str
    resolved_at: str | None
    tally: Tally
    votes: list[Vote]
    # The policy in force when the request was made (a server before policies: the default).
    policy: PolicyRules = msgspec.field(default_factory=PolicyRules)


class Quotas(Output):
    """A tenant's quotas in force (docs/api.md, Quotas)."""

    tenant_id: str
    agents: int
    leases_per_agent: int
    pending_consensus: int
    streams: int


class ConsensusList(Output):
    consensus: list[Consensus]
    next_cursor: str | None


class Event(Output, omit_defaults=True):
    """One entry of a tenant's event stream. ``id`` is the stream id (Redis's time in
    ms, then a sequence number); the other members depend on ``type``."""

    id: str
    type: str
    tenant_id: str
    at: str
    actor: str | None = None  # the principal whose call wrote it: an agent id, an API key's id, or "concord"
    actor_role: str | None = None  # "agent", the key's role (admin, enroll), or "service" (the clock decided)
    agent_id: str | None = None  # the agent it is about (the holder, the voter, the requester)
    agent_name: str | None = None
    agent_role: str | None = None
    created: bool | None = None  # agent.registered: a new agent, not an update
    kind: MemberKind | None = None  # agent.registered: "human" for a human member (left out for an agent)
    released_leases: int | None = None  # agent.removed
    entry: str | None = None  # suppression.added, .removed: the contact or "@domain"
    note: str | None = None  # suppression.added
    count: int | None = None  # suppression.imported: the entries written
    contact_email: str | None = None
    lease_id: str | None = None
    fencing_token: int | None = None
    expires_at: str | None = None
    intent: str | None = None
    reason: str | None = None  # lease.released: "released" (its holder), "forced" (an admin), "agent_removed"
    previous_agent_id: str | None = None  # lease.taken_over: the inactive holder
    previous_lease_id: str | None = None
    previous_fencing_token: int | None = None
    consensus_id: str | None = None
    action: str | None = None
    vote: VoteChoice | None = None
    status: ConsensusStatus | None = None  # consensus.resolved / consensus.expired
    approve: int | None = None
    reject: int | None = None
    eligible: int | None = None
    needed: int | None = None
    policy: PolicyRules | None = None  # consensus.policy_set: the policy of `action` now


class EventPage(Output):
    events: list[Event]
    next_after: str  # pass as `after` to read on; the same `after` again when nothing was new
    has_more: bool  # more entries follow in the stream now


class Problem(Output, omit_defaults=True, forbid_unknown_fields=True):
    """RFC 9457 problem details with Concord's stable ``code`` and the members some
    codes add. It describes the server's problem answers in the OpenAPI document, and
    forbids other members so that a member added there without here is caught."""

    type: str
    title: str
    status: int
    detail: str
    code: ErrorCode
    field: str | None = None  # validation_error: the JSON path of the offending field
    conflict: bool | None = None  # lease_conflict
    contact_email: str | None = None  # lease_conflict: the address asked about
    contact: str | None = None  # lease_conflict: the canonical contact it reaches
    lease_holder: LeaseHolder | None = None  # lease_conflict
    suppression: Suppression | None = None  # suppressed: the entry that applies (the contact's or its domain's)
    consensus_status: ConsensusStatus | None = None  # consensus_closed
    vote: VoteChoice | None = None  # already_voted: the earlier vote
    retry_after_ms: int | None = None  # rate_limited
    key_role: str | None = None  # insufficient_scope: the role of the credential that was refused (or "agent")
    agent_id: str | None = None  # agent_mismatch: the credential's own agent
    quota: str | None = None  # quota_exceeded: the quota reached (agents, leasesPerAgent, ...)
    limit: int | None = None  # quota_exceeded: its value for the tenant
    why: Literal["later", "role", "human"] | None = None  # not_eligible: why the voter is not of the electorate
    kind: MemberKind | None = None  # kind_mismatch: the kind of the member of that name
