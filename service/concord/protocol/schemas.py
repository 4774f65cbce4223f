"""Request and response bodies as msgspec Structs, with their constraints.

Requests forbid unknown fields and never coerce: a number sent as a string, a
float where an integer belongs or a bool where a number belongs is a 422. Field
names are camelCase on the wire (``rename="camel"``).
"""

from __future__ import annotations

import re
import time
from functools import lru_cache
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from concord.server.errors import ERRORS, invalid

# --- constrained types -------------------------------------------------------


def whole(pattern: str) -> str:
    """Anchor ``pattern`` to the whole string. In Python (msgspec matches with
    re.search) ``$`` also matches before a final newline, which the lookahead
    refuses; the result stays a valid JSON Schema (ECMA-262) pattern."""
    return f"^{pattern}$(?!\\n)"


UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TenantId = Annotated[str, Meta(pattern=whole("[A-Za-z0-9_-]{1,64}"), description="1-64 of A-Z a-z 0-9 _ -")]
AgentName = Annotated[str, Meta(min_length=1, max_length=128, pattern=whole("[A-Za-z0-9._-]+"))]
AgentId = Annotated[str, Meta(pattern=whole(f"agent_{UUID}"))]
# Short labels: no control characters.
Label = Annotated[str, Meta(min_length=1, max_length=64, pattern=whole("[^\\x00-\\x1f\\x7f]+"))]
Action = Annotated[str, Meta(min_length=1, max_length=128, pattern=whole("[^\\x00-\\x1f\\x7f]+"))]
# Free text: anything but NUL.
Reason = Annotated[str, Meta(max_length=2000, pattern=r"^[^\x00]*$")]
# Checked for shape after trimming and lower-casing (normalize_email); bounded here
# so a megabyte string is refused before any work.
RawEmail = Annotated[str, Meta(max_length=320)]
Minutes = Annotated[int, Meta(ge=1, le=1440)]
Seconds = Annotated[int, Meta(ge=1, le=86_400)]
MAX_CONSENSUS_TIMEOUT_S = 7 * 24 * 3600
TimeoutMinutes = Annotated[int, Meta(ge=1, le=MAX_CONSENSUS_TIMEOUT_S // 60)]
TimeoutSeconds = Annotated[int, Meta(ge=1, le=MAX_CONSENSUS_TIMEOUT_S)]
FencingToken = Annotated[int, Meta(ge=1, le=2**63 - 1)]
Limit = Annotated[int, Meta(ge=1, le=1000)]
Cursor = Annotated[str, Meta(max_length=512)]
VoteChoice = Literal["approve", "reject"]
ConsensusStatus = Literal["pending", "approved", "rejected", "expired"]
ErrorCode = Literal[tuple(ERRORS)]  # type: ignore[valid-type]

METADATA_MAX_BYTES = 4096
DEFAULT_LEASE_MS = 30 * 60_000
DEFAULT_CONSENSUS_TIMEOUT_MS = 60 * 60_000


class Input(Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    tenant_id: TenantId | None = None


# --- request bodies ----------------------------------------------------------


class RegisterBody(Input):
    agent_name: AgentName | None = None
    name: AgentName | None = None  # alias of agentName
    agent_role: Label | None = None
    role: Label | None = None  # alias of agentRole
    metadata: dict[str, Any] | None = None


class HeartbeatBody(Input):
    agent_id: AgentId


class LeaseBody(Input):
    agent_id: AgentId
    contact_email: RawEmail
    intent: Label | None = None
    duration_minutes: Minutes | None = None
    duration_seconds: Seconds | None = None


class RenewBody(Input):
    agent_id: AgentId
    duration_minutes: Minutes | None = None
    duration_seconds: Seconds | None = None


class SendCheckBody(Input):
    agent_id: AgentId
    contact_email: RawEmail
    fencing_token: FencingToken | None = None


class ConsensusBody(Input):
    requesting_agent_id: AgentId
    action: Action
    contact_email: RawEmail | None = None
    reason: Reason | None = None
    timeout_minutes: TimeoutMinutes | None = None
    timeout_seconds: TimeoutSeconds | None = None


class VoteBody(Input):
    agent_id: AgentId
    vote: VoteChoice
    reason: Reason | None = None


# --- query strings (decoded with msgspec.convert(..., strict=False)) ---------


class TenantQuery(Input):
    pass


class AgentListQuery(Input):
    status: Literal["active", "inactive"] | None = None
    limit: Limit = 100
    cursor: Cursor | None = None


class LeaseListQuery(Input):
    agent_id: AgentId | None = None
    contact_email: RawEmail | None = None
    limit: Limit = 100
    cursor: Cursor | None = None


class ConsensusListQuery(Input):
    status: ConsensusStatus | None = None
    limit: Limit = 100
    cursor: Cursor | None = None


class ReleaseQuery(Input):
    agent_id: AgentId | None = None


# Long poll: answer as soon as the request leaves pending, or after this many seconds.
WaitSeconds = Annotated[int, Meta(ge=0, le=60)]
StreamId = Annotated[str, Meta(pattern=whole("[0-9]{1,20}(-[0-9]{1,20})?"), description="a stream id, 0 for the start")]
# Comma-separated event types or families ("lease.acquired,consensus").
EventTypes = Annotated[str, Meta(max_length=512)]


class ConsensusReadQuery(Input):
    wait_seconds: WaitSeconds | None = None


class EventsQuery(Input):
    after: StreamId | None = None
    limit: Limit | None = None
    type: EventTypes | None = None
    agent_id: AgentId | None = None
    contact_email: RawEmail | None = None


# --- responses ---------------------------------------------------------------


class Output(Struct, rename="camel", kw_only=True):
    pass


class Status(Output):
    status: str


class Agent(Output):
    id: str
    tenant_id: str
    agent_name: str
    agent_role: str
    status: Literal["active", "inactive"]
    last_heartbeat: str | None
    registered_at: str
    updated_at: str
    metadata: msgspec.Raw  # stored as the JSON the client sent


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
    agent_id: str | None = None  # who acted (the holder, the voter, the requester)
    agent_name: str | None = None
    agent_role: str | None = None
    created: bool | None = None  # agent.registered: a new agent, not an update
    released_leases: int | None = None  # agent.removed
    contact_email: str | None = None
    lease_id: str | None = None
    fencing_token: int | None = None
    expires_at: str | None = None
    intent: str | None = None
    reason: str | None = None  # lease.released: "released" or "agent_removed"
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
    codes add. It describes errors.problem()'s output in the OpenAPI document, and
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


# --- helpers -----------------------------------------------------------------

_LOCAL = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_DOMAIN = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
_EMAIL = re.compile(rf"(?P<local>{_LOCAL})@(?P<domain>{_DOMAIN})")


def normalize_email(raw: str, field: str = "$.contactEmail") -> str:
    """Trim and lower-case an address, then check its shape. ASCII only, checked
    before lower-casing (U+212A KELVIN SIGN lower-cases to an ASCII "k"): an IDN
    domain goes in its xn-- form, so look-alike letters cannot pose as another
    contact. The normalized form is what keys and replies carry."""
    email = raw.strip().lower() if raw.isascii() else ""
    match = _EMAIL.fullmatch(email)
    if not match or len(email) > 254 or len(match["local"]) > 64:
        raise invalid("Expected an email address (local@domain.tld, ASCII, at most 254 characters)", field)
    return email


def iso(ms: int | str) -> str:
    """Unix milliseconds as ISO-8601 UTC with millisecond precision and a ``Z``."""
    seconds, millis = divmod(int(ms), 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


@lru_cache(maxsize=4096)  # answers of one moment share their seconds: format each once
def _iso_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def duration_ms(minutes: int | None, seconds: int | None, default_ms: int, names: tuple[str, str]) -> int:
    if minutes is not None and seconds is not None:
        raise invalid(f"Give `{names[0]}` or `{names[1]}`, not both", f"$.{names[1]}")
    if minutes is not None:
        return minutes * 60_000
    if seconds is not None:
        return seconds * 1000
    return default_ms


def metadata_json(metadata: dict[str, Any] | None) -> bytes | None:
    if metadata is None:
        return None
    encoded = msgspec.json.encode(metadata)
    if len(encoded) > METADATA_MAX_BYTES:
        raise invalid(
            f"Expected metadata of at most {METADATA_MAX_BYTES} bytes as JSON, got {len(encoded)}", "$.metadata"
        )
    return encoded
