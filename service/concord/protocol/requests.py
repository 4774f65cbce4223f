"""The requests of the API as msgspec Structs: bodies, and query strings.

Requests forbid unknown fields and never coerce: a number sent as a string, a
float where an integer belongs or a bool where a number belongs is refused.
Field names are camelCase on the wire (``rename="camel"``). Each Struct
normalizes itself as it is decoded (``__post_init__``, with the rules of
normalize.py): addresses come out trimmed and lower-cased, aliases merged, ids
checked for their shape, so the server's handlers receive clean values. Query
strings are decoded with ``msgspec.convert(..., strict=False)``, which turns
their strings into the declared types.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from concord.protocol.errors import FieldError
from concord.protocol.normalize import (
    check_id,
    duration_ms,
    event_types,
    normalize_email,
    stream_id,
    suppression_entry,
)
from concord.protocol.types import (
    DEFAULT_CONSENSUS_TIMEOUT_MS,
    DEFAULT_LEASE_MS,
    MAX_HUMAN_APPROVALS,
    MAX_MIN_VOTES,
    MAX_SUPPRESSIONS_PER_CALL,
    MAX_VOTER_ROLES,
    METADATA_MAX_BYTES,
    Action,
    AgentId,
    AgentName,
    AgentStatus,
    ConsensusRule,
    ConsensusStatus,
    Cursor,
    EventTypes,
    FencingToken,
    Label,
    Limit,
    MemberKind,
    Minutes,
    Note,
    QuotaValue,
    RawEmail,
    Reason,
    Seconds,
    StreamId,
    SuppressionEntry,
    SuppressionReason,
    TenantId,
    TimeoutMinutes,
    TimeoutSeconds,
    VoteChoice,
    WaitSeconds,
)


class Input(Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    tenant_id: TenantId | None = None


# --- request bodies ----------------------------------------------------------


class RegisterBody(Input):
    agent_name: AgentName | None = None
    name: AgentName | None = None  # alias of agentName
    agent_role: Label | None = None
    role: Label | None = None  # alias of agentRole
    metadata: dict[str, Any] | None = None
    # "human": a human member, registered by an admin key (docs/api.md, Humans). A
    # member's kind is fixed when it is first registered.
    kind: MemberKind = "agent"

    def __post_init__(self) -> None:
        # After this, agent_name holds the name and agent_role the role, however given.
        self.agent_name = _one_of(self.agent_name, self.name, "agentName", "name")
        if self.agent_name is None:
            raise FieldError("$.agentName", "required (or its alias name): the agent's name, which is its identity")
        self.agent_role = _one_of(self.agent_role, self.role, "agentRole", "role")
        if self.metadata is not None:
            size = len(msgspec.json.encode(self.metadata))
            if size > METADATA_MAX_BYTES:
                raise FieldError("$.metadata", f"a JSON object of at most {METADATA_MAX_BYTES} bytes, got {size}")


class HeartbeatBody(Input):
    agent_id: AgentId | None = None  # the credential's agent when left out

    def __post_init__(self) -> None:
        _check_agent(self.agent_id)


class LeaseBody(Input):
    contact_email: RawEmail
    agent_id: AgentId | None = None
    intent: Label | None = None
    duration_minutes: Minutes | None = None
    duration_seconds: Seconds | None = None

    def __post_init__(self) -> None:
        _check_agent(self.agent_id)
        self.contact_email = normalize_email(self.contact_email)
        _lease_ms(self)  # refuses both units at once

    @property
    def duration_ms(self) -> int:
        return _lease_ms(self)


class RenewBody(Input):
    agent_id: AgentId | None = None
    duration_minutes: Minutes | None = None
    duration_seconds: Seconds | None = None

    def __post_init__(self) -> None:
        _check_agent(self.agent_id)
        _lease_ms(self)

    @property
    def duration_ms(self) -> int:
        return _lease_ms(self)


class SendCheckBody(Input):
    # Not checked for its shape: send-check answers every refusal as a value, and an
    # id that names no agent, of whatever shape, is {allowed: false, reason: agent_not_found}.
    # Required with a gate or admin key; the credential's agent when left out.
    contact_email: RawEmail
    agent_id: AgentId | None = None
    fencing_token: FencingToken | None = None

    def __post_init__(self) -> None:
        self.contact_email = normalize_email(self.contact_email)


class ConsensusBody(Input):
    action: Action
    requesting_agent_id: AgentId | None = None  # the credential's agent when left out
    contact_email: RawEmail | None = None
    reason: Reason | None = None
    timeout_minutes: TimeoutMinutes | None = None
    timeout_seconds: TimeoutSeconds | None = None

    def __post_init__(self) -> None:
        _check_agent(self.requesting_agent_id)
        if self.contact_email is not None:
            self.contact_email = normalize_email(self.contact_email)
        self.timeout_ms  # noqa: B018 - computing it refuses both units at once

    @property
    def timeout_ms(self) -> int:
        return duration_ms(
            self.timeout_minutes,
            self.timeout_seconds,
            DEFAULT_CONSENSUS_TIMEOUT_MS,
            ("timeoutMinutes", "timeoutSeconds"),
        )


class VoteBody(Input):
    vote: VoteChoice
    agent_id: AgentId | None = None  # the credential's agent when left out
    reason: Reason | None = None

    def __post_init__(self) -> None:
        _check_agent(self.agent_id)


def _check_agent(agent_id: str | None) -> None:
    if agent_id is not None:
        check_id("agent", agent_id)


# --- query strings -------------------------------------------------------------


class TenantQuery(Input):
    pass


class AgentListQuery(Input):
    status: AgentStatus | None = None
    limit: Limit = 100
    cursor: Cursor | None = None


class LeaseListQuery(Input):
    agent_id: AgentId | None = None
    contact_email: RawEmail | None = None
    limit: Limit = 100
    cursor: Cursor | None = None

    def __post_init__(self) -> None:
        if self.agent_id is None and self.contact_email is None:
            raise FieldError("$.agentId", "give agentId or contactEmail (or both)")
        _check_agent(self.agent_id)
        if self.contact_email is not None:
            self.contact_email = normalize_email(self.contact_email)


class ConsensusListQuery(Input):
    status: ConsensusStatus | None = None
    limit: Limit = 100
    cursor: Cursor | None = None


class QuotasBody(Input):
    """The quotas to set for the tenant; those left out stay as they are."""

    agents: QuotaValue | None = None
    leases_per_agent: QuotaValue | None = None
    pending_consensus: QuotaValue | None = None
    streams: QuotaValue | None = None


class ConsensusPolicyBody(Input):
    """A consensus policy for one action (docs/api.md, Consensus policies); what is
    left out takes its default, so the body is the whole policy."""

    rule: ConsensusRule = "majority"
    voter_roles: list[Label] = msgspec.field(default_factory=list)
    min_votes: Annotated[int, Meta(ge=0, le=MAX_MIN_VOTES)] = 0
    human_approvals: Annotated[int, Meta(ge=0, le=MAX_HUMAN_APPROVALS)] = 0

    def __post_init__(self) -> None:
        if len(self.voter_roles) > MAX_VOTER_ROLES:
            raise FieldError("$.voterRoles", f"at most {MAX_VOTER_ROLES} roles, got {len(self.voter_roles)}")
        if len(set(self.voter_roles)) != len(self.voter_roles):
            raise FieldError("$.voterRoles", "each role once")
        self.voter_roles = sorted(self.voter_roles)


class ReleaseQuery(Input):
    agent_id: AgentId | None = None

    def __post_init__(self) -> None:
        _check_agent(self.agent_id)


class ConsensusReadQuery(Input):
    wait_seconds: WaitSeconds | None = None


class SuppressionBody(Input):
    """PUT /suppressions/{entry}: why the contact (or domain) must not be emailed."""

    reason: SuppressionReason
    note: Note | None = None


class SuppressionItem(Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    entry: SuppressionEntry  # normalized by the import that holds it (its index names the field)
    reason: SuppressionReason
    note: Note | None = None


class SuppressionImportBody(Input):
    """POST /suppressions: a batch of a bulk import."""

    suppressions: Annotated[list[SuppressionItem], Meta(min_length=1, max_length=MAX_SUPPRESSIONS_PER_CALL)]

    def __post_init__(self) -> None:
        for i, item in enumerate(self.suppressions):
            item.entry = suppression_entry(item.entry, f"$.suppressions[{i}].entry")


class SuppressionListQuery(Input):
    limit: Limit = 100
    cursor: Cursor | None = None


class EventsQuery(Input):
    after: StreamId | None = None
    limit: Limit | None = None
    type: EventTypes | None = None
    agent_id: AgentId | None = None
    contact_email: RawEmail | None = None

    def __post_init__(self) -> None:
        if self.after is not None:
            stream_id(self.after, "$.after")
        event_types(self.type)
        _check_agent(self.agent_id)
        if self.contact_email is not None:
            self.contact_email = normalize_email(self.contact_email)

    @property
    def types(self) -> frozenset[str]:
        """The event types and families asked for; empty: all."""
        return event_types(self.type)


def _one_of(value: str | None, alias: str | None, name: str, alias_name: str) -> str | None:
    if value is not None and alias is not None:
        raise FieldError(f"$.{alias_name}", f"give {name} or its alias {alias_name}, not both")
    return value if value is not None else alias


def _lease_ms(body: LeaseBody | RenewBody) -> int:
    return duration_ms(
        body.duration_minutes, body.duration_seconds, DEFAULT_LEASE_MS, ("durationMinutes", "durationSeconds")
    )
