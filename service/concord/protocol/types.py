"""The constrained types of the wire contract, each with its rule in words.

A type's ``description`` is its rule as a user reads it: the OpenAPI document
shows it, and a refused value is answered with it, never with the regex behind
it. Ids (``agent_<uuid>``, ``lease_<uuid>``, ``cons_<uuid>``) are plain bounded
strings here: an id of another shape cannot name anything, so the request that
carries one is answered as for an unknown id (404), checked where it is decoded
(normalize.check_id).
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta


def whole(pattern: str) -> str:
    """Anchor ``pattern`` to the whole string. In Python (msgspec matches with
    re.search) ``$`` also matches before a final newline, which the lookahead
    refuses; the result stays a valid JSON Schema (ECMA-262) pattern."""
    return f"^{pattern}$(?!\\n)"


UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# An id is checked for its shape after decoding; bounded here so a megabyte string
# is refused before any work.
ID_MAX_LENGTH = 128
TenantId = Annotated[
    str, Meta(pattern=whole("[A-Za-z0-9_-]{1,64}"), description="1–64 of letters, digits, '_' and '-'")
]
AgentName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=whole("[A-Za-z0-9._-]+"),
        description="1–128 of letters, digits, '.', '_' and '-'",
    ),
]
AgentId = Annotated[
    str,
    Meta(
        max_length=ID_MAX_LENGTH,
        description="an agent id, agent_<uuid>, as registering answered it; any other id names no agent (404)",
        # Shown in the OpenAPI document, not enforced by msgspec: normalize.check_id is.
        extra_json_schema={"pattern": f"^agent_{UUID}$"},
        extra={"id_kind": "agent"},
    ),
]
# Short labels and free text: no control characters; no NUL.
Label = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=whole("[^\\x00-\\x1f\\x7f]+"),
        description="1–64 characters, none of them a control character",
    ),
]
Action = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=whole("[^\\x00-\\x1f\\x7f]+"),
        description="1–128 characters, none of them a control character",
    ),
]
Reason = Annotated[
    str, Meta(max_length=2000, pattern=r"^[^\x00]*$", description="at most 2,000 characters, without NUL")
]
# Checked for shape after trimming and lower-casing (normalize.normalize_email);
# bounded here so a megabyte string is refused before any work.
RawEmail = Annotated[
    str,
    Meta(max_length=320, description="an email address, local@domain.tld in ASCII, at most 254 characters"),
]
# A suppression's entry: a contact, or "@domain" for every contact at a domain
# (normalize.suppression_entry); bounded here before any other work.
SuppressionEntry = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=320,
        description="an email address, or @ and a domain (@bigcorp.com) for every address at that domain",
    ),
]
SuppressionReason = Literal["unsubscribed", "bounced", "complained", "manual"]
Note = Annotated[str, Meta(max_length=200, pattern=r"^[^\x00]*$", description="at most 200 characters, without NUL")]
MAX_SUPPRESSIONS_PER_CALL = 500  # a bulk import's batch: well within the 64 KiB body
Minutes = Annotated[int, Meta(ge=1, le=1440)]
Seconds = Annotated[int, Meta(ge=1, le=86_400)]
MAX_CONSENSUS_TIMEOUT_S = 7 * 24 * 3600
TimeoutMinutes = Annotated[int, Meta(ge=1, le=MAX_CONSENSUS_TIMEOUT_S // 60)]
TimeoutSeconds = Annotated[int, Meta(ge=1, le=MAX_CONSENSUS_TIMEOUT_S)]
FencingToken = Annotated[int, Meta(ge=1, le=2**63 - 1)]
Limit = Annotated[int, Meta(ge=1, le=1000)]
QuotaValue = Annotated[int, Meta(ge=1, le=1_000_000_000)]
Cursor = Annotated[str, Meta(max_length=512, description="the nextCursor of an earlier page")]
# Long poll: answer as soon as the request leaves pending, or after this many seconds.
WaitSeconds = Annotated[int, Meta(ge=0, le=60)]
StreamId = Annotated[
    str,
    Meta(
        pattern=whole("[0-9]{1,20}(-[0-9]{1,20})?"),
        description="an event id such as 1764000000000-0, or 0 for the start",
    ),
]
# Comma-separated event types or families ("lease.acquired,consensus").
EventTypes = Annotated[
    str, Meta(max_length=512, description="event types or families, comma-separated (lease.acquired,consensus)")
]
VoteChoice = Literal["approve", "reject"]
AgentStatus = Literal["active", "inactive"]
# A member of a tenant: an agent (heartbeats, leases, votes) or a human (votes only,
# where a consensus policy asks for human approvals; docs/api.md, Humans).
MemberKind = Literal["agent", "human"]
# How many of a request's agent electorate must approve (docs/api.md, Consensus policies).
ConsensusRule = Literal["majority", "two_thirds", "unanimous"]
MAX_VOTER_ROLES = 32
MAX_MIN_VOTES = 10_000
MAX_HUMAN_APPROVALS = 100
ConsensusStatus = Literal["pending", "approved", "rejected", "expired"]

METADATA_MAX_BYTES = 4096
DEFAULT_LEASE_MS = 30 * 60_000
DEFAULT_CONSENSUS_TIMEOUT_MS = 60 * 60_000
