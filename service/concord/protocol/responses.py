"""The answers of the API as msgspec Structs: what the server encodes and the SDK
decodes, so the two cannot drift. Field names are camelCase on the wire."""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

from concord.protocol.errors import ErrorCode
from concord.protocol.types import AgentStatus, ConsensusStatus, VoteChoice


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


class RegisteredAgent(Agent):
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
    contact_email: str
    intent: str | None
    acquired_at: str
    expires_at: str
    fencing_token: int
    conflict: bool = False


class LeaseList(Output):
    leases: list[Lease]
    next_cursor: str | None


class Released(Output, kw_only=True):
    id: str
    released: bool = True
    released_at: str


class SendCheck(Output, omit_defaults=True):
    allowed: bool
    reason: str | None = None
    lease_holder: LeaseHolder | None = None


class Tally(Output):
    approve: int
    reject: int
    eligible: int
    needed: int


class Vote(Output):
    agent_id: str
    agent_name: str
    vote: VoteChoice
    reason: str | None
    voted_at: str


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
    released_leases: int | None = None  # agent.removed
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
    contact_email: str | None = None  # lease_conflict
    lease_holder: LeaseHolder | None = None  # lease_conflict
    consensus_status: ConsensusStatus | None = None  # consensus_closed
    vote: VoteChoice | None = None  # already_voted: the earlier vote
    retry_after_ms: int | None = None  # rate_limited
    key_role: str | None = None  # insufficient_scope: the role of the credential that was refused (or "agent")
    agent_id: str | None = None  # agent_mismatch: the credential's own agent
    quota: str | None = None  # quota_exceeded: the quota reached (agents, leasesPerAgent, ...)
    limit: int | None = None  # quota_exceeded: its value for the tenant
