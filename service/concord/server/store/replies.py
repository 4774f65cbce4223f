"""Script replies read back: the reply codes, the one table that turns a refusal
into its error, and the converters from reply values to the API's Structs.

The first element of every script reply is a code (lua/lib.lua). A code of 0 or
more is a success that the caller reads on; a negative code is a refusal, and
``refused`` makes its error from REFUSALS. A code that is not a Reply raises
ValueError, and a negative Reply without an entry raises too: nothing passes
silently.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from typing import Any

import msgspec

from concord.protocol import Agent, Consensus, Lease, LeaseHolder, PolicyRules, Suppression, Tally, Vote, routes
from concord.server.errors import (
    ConcordError,
    agent_not_found,
    consensus_not_found,
    credential_refused,
    lease_not_found,
    quota_exceeded,
)
from concord.server.metrics import METRICS
from concord.server.store.keys import lease_id


class Reply(IntEnum):
    """The first element of every script reply (lua/lib.lua). Reply(n) raises on an unknown n."""

    OK = 0
    CREATED = 1
    RETRY = 3
    REPLAYED = 4
    AGENT_NOT_FOUND = -1
    AGENT_INACTIVE = -2
    LEASE_CONFLICT = -3
    LEASE_NOT_FOUND = -4
    NOT_LEASE_HOLDER = -5
    STALE_FENCING_TOKEN = -6
    CONSENSUS_NOT_FOUND = -7
    REQUESTER_CANNOT_VOTE = -8
    ALREADY_VOTED = -9
    CONSENSUS_CLOSED = -10
    RATE_LIMITED = -11
    IDEMPOTENCY_KEY_REUSED = -12
    ROLE_NOT_ALLOWED = -13
    BAD_CREDENTIAL = -14
    NOT_ELIGIBLE = -15
    QUOTA_EXCEEDED = -16
    KIND_MISMATCH = -17
    SUPPRESSED = -18


@dataclass(frozen=True, slots=True)
class Subject:
    """What a refused call was about, for its error's message."""

    tenant: str
    agent_id: str | None = None
    contact: str | None = None  # the canonical contact
    address: str | None = None  # the address asked about
    lease_id: str | None = None
    consensus_id: str | None = None
    window_ms: int = 0
    roles: tuple[str, ...] = ()  # the roles an enroll key may register


def _inactive(reply: list[Any], s: Subject) -> ConcordError:
    return ConcordError(
        "agent_inactive",
        f"Agent {s.agent_id} has sent no heartbeat in the last {s.window_ms // 1000} s; "
        f"send one (POST {routes.HEARTBEAT}), then try again",
    )


# Why a voter is not of a request's electorate (consensus_vote.lua's NOT_ELIGIBLE).
_NOT_ELIGIBLE = {
    "later": "its electorate is the members there were when it was made (agents then active, that have stayed "
    "active since), and this one was registered later or has lapsed since",
    "role": "the policy of its action admits agents of its voter roles only, and this agent was of none of "
    "them when the request was made",
    "human": "the policy of its action asks for no human approval, so humans are not of its electorate",
}


def _not_eligible(reply: list[Any], s: Subject) -> ConcordError:
    why = reply[2] if len(reply) > 2 else "later"
    return ConcordError(
        "not_eligible",
        f"Member {s.agent_id} may not vote on consensus request {s.consensus_id}: {_NOT_ELIGIBLE[why]}. Its vote "
        "cannot count; the request's own electorate decides it",
        why=why,
    )


def _kind_mismatch(reply: list[Any], s: Subject) -> ConcordError:
    kind = reply[1]
    return ConcordError(
        "kind_mismatch",
        f"The member {s.agent_id} of this name is {'a human' if kind == 'human' else 'an agent'}, and a member's "
        f'kind is fixed when it is first registered: register it again with "kind": "{kind}", or choose '
        "another name",
        kind=kind,
    )


def _role_not_allowed(reply: list[Any], s: Subject) -> ConcordError:
    if reply[1] == "human":
        return ConcordError(
            "insufficient_scope",
            f"{s.agent_id} is a human member, and only an admin key registers a human or rotates its "
            "credential: use an admin key",
            keyRole="enroll",
        )
    return ConcordError(
        "insufficient_scope",
        f"This enroll key may register agents of the roles {', '.join(s.roles)} only, "
        f"and agent {s.agent_id} would be of role {reply[1]!r}: use a key for that role, or an admin key",
        keyRole="enroll",
    )


def _conflict(reply: list[Any], s: Subject) -> ConcordError:
    held = holder(reply)
    address = s.address or s.contact
    spelled = address if address == s.contact else f"{address} (the contact {s.contact})"
    return ConcordError(
        "lease_conflict",
        f"{spelled} is leased by agent {held.agent_name} ({held.agent_id}) until {held.expires_at}",
        conflict=True,
        contactEmail=address,
        contact=s.contact,
        leaseHolder=held,
    )


def _suppressed(reply: list[Any], s: Subject) -> ConcordError:
    found = suppression(s.tenant, reply[1], reply[2])
    address = s.address or s.contact
    what = f"the domain {found.entry[1:]}" if found.entry.startswith("@") else f"the contact {found.entry}"
    return ConcordError(
        "suppressed",
        f"{address} may not be emailed: {what} is suppressed ({found.reason}, set by {found.created_by} at "
        f"{found.created_at}). No agent may lease or email it; only an admin key can lift the suppression "
        f"(DELETE {routes.SUPPRESSION})",
        contactEmail=address,
        contact=s.contact,
        suppression=found,
    )


def _not_holder(reply: list[Any], s: Subject) -> ConcordError:
    return ConcordError("not_lease_holder", f"Lease {s.lease_id} is held by {reply[1]}, not by {s.agent_id}")


def _already_voted(reply: list[Any], s: Subject) -> ConcordError:
    return ConcordError(
        "already_voted",
        f"Agent {s.agent_id} already voted {reply[1]} on {s.consensus_id}; a vote cannot be changed",
        vote=reply[1],
    )


def _closed(reply: list[Any], s: Subject) -> ConcordError:
    return ConcordError(
        "consensus_closed", f"Consensus request {s.consensus_id} is already {reply[1]}", consensusStatus=reply[1]
    )


def _rate_limited(reply: list[Any], s: Subject) -> ConcordError:
    wait_ms = int(reply[1])
    return ConcordError("rate_limited", f"Rate limit reached; retry in {wait_ms} ms", retryAfterMs=wait_ms)


# Each refusal a script can answer -> the error it is. Send-check answers its
# refusals as values instead (leases.SEND_CHECK_REASONS).
REFUSALS: dict[Reply, Callable[[list[Any], Subject], ConcordError]] = {
    Reply.AGENT_NOT_FOUND: lambda reply, s: agent_not_found(s.agent_id or "", s.tenant),
    Reply.AGENT_INACTIVE: _inactive,
    Reply.LEASE_CONFLICT: _conflict,
    Reply.LEASE_NOT_FOUND: lambda reply, s: lease_not_found(s.lease_id or "", s.tenant),
    Reply.NOT_LEASE_HOLDER: _not_holder,
    Reply.CONSENSUS_NOT_FOUND: lambda reply, s: consensus_not_found(s.consensus_id or "", s.tenant),
    Reply.REQUESTER_CANNOT_VOTE: lambda reply, s: ConcordError(
        "requester_cannot_vote",
        f"Agent {s.agent_id} made consensus request {s.consensus_id} and cannot vote on it",
    ),
    Reply.ALREADY_VOTED: _already_voted,
    Reply.NOT_ELIGIBLE: _not_eligible,
    Reply.QUOTA_EXCEEDED: lambda reply, s: quota_exceeded(reply[1], int(reply[2])),
    Reply.CONSENSUS_CLOSED: _closed,
    Reply.RATE_LIMITED: _rate_limited,
    Reply.ROLE_NOT_ALLOWED: _role_not_allowed,
    Reply.KIND_MISMATCH: _kind_mismatch,
    Reply.SUPPRESSED: _suppressed,
    Reply.BAD_CREDENTIAL: lambda reply, s: credential_refused(s.agent_id or "", s.tenant),
    Reply.IDEMPOTENCY_KEY_REUSED: lambda reply, s: ConcordError(
        "idempotency_key_reused",
        "This Idempotency-Key was used for a different request in the last 24 hours; use a new key",
    ),
}


def refused(code: Reply, reply: list[Any], **subject: Any) -> ConcordError:
    """The error of the refusal ``code`` (``reply`` is the whole script reply)."""
    make = REFUSALS.get(code)
    if make is None:
        raise ValueError(f"unexpected script reply {code!r}")
    return make(reply, Subject(**subject))


# --- reply values -> the API's Structs -------------------------------------------


def iso(ms: int | str) -> str:
    """Unix milliseconds as ISO-8601 UTC with millisecond precision and a ``Z``."""
    seconds, millis = divmod(int(ms), 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


@lru_cache(maxsize=4096)  # answers of one moment share their seconds: format each once
def _iso_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def pairs(flat: list[str]) -> dict[str, str]:
    it = iter(flat)
    return dict(zip(it, it))


def optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def ms(redis_time: tuple[int, int]) -> int:
    """Redis's TIME (seconds, microseconds) in milliseconds."""
    seconds, micros = redis_time
    return int(seconds) * 1000 + int(micros) // 1000


def agent(tenant: str, h: dict[str, str], last: int | None, now_ms: int, window_ms: int) -> Agent:
    """A member from its hash and last heartbeat: an agent is active when the
    heartbeat is within the window (as lib.lua's is_active); a human has none and
    is always active (it may vote whenever a policy asks for it)."""
    human = h.get("kind") == "human"
    active = human or (last is not None and last > now_ms - window_ms)
    return Agent(
        id=h["id"],
        tenant_id=tenant,
        agent_name=h["agentName"],
        agent_role=h["agentRole"],
        status="active" if active else "inactive",
        last_heartbeat=iso(last) if last is not None and not human else None,
        registered_at=iso(h["registeredAt"]),
        updated_at=iso(h["updatedAt"]),
        metadata=msgspec.Raw(h["metadata"].encode()),
        kind="human" if human else "agent",
    )


def policy_rules(value: str | None) -> PolicyRules:
    """A policy as lib.lua policy_parse reads it ("<rule>|<minVotes>|<humanApprovals>|
    <updatedAt>|<updatedBy>|<voter roles, one per line>"); '' or None: the default."""
    if not value:
        return PolicyRules()
    rule, min_votes, humans, _, _, roles = value.split("|", 5)
    return PolicyRules(
        rule=rule, voter_roles=roles.split("\n") if roles else [], min_votes=int(min_votes), human_approvals=int(humans)
    )


def lease(tenant: str, contact: str, reply: list[Any], address: str | None = None) -> Lease:
    """A lease from a script's reply {code, agentId, agentName, intent, acquiredAt, expiresAt, token};
    ``address`` is the spelling of ``contact`` asked about, if one was."""
    _, agent_id, agent_name, intent, acquired_at, expires_at, token = reply
    return Lease(
        id=lease_id(agent_id, int(token)),
        tenant_id=tenant,
        agent_id=agent_id,
        agent_name=agent_name,
        contact_email=address or contact,
        contact=contact,
        intent=intent or None,
        acquired_at=iso(acquired_at),
        expires_at=iso(expires_at),
        fencing_token=int(token),
    )


def suppression(tenant: str, entry: str, stored: str) -> Suppression:
    """A suppression from its entry and its value, "reason|setAt|setByRole|setBy|note"."""
    reason, at, role, by, note = stored.split("|", 4)
    return Suppression(
        entry=entry,
        tenant_id=tenant,
        reason=reason,
        note=note or None,
        created_at=iso(at),
        created_by=by,
        created_by_role=role,
    )


def holder(reply: list[Any]) -> LeaseHolder:
    """The holder from a refusal {code, holderId, holderName, intent, expiresAt}."""
    _, agent_id, agent_name, intent, expires_at = reply
    return LeaseHolder(agent_id=agent_id, agent_name=agent_name, intent=intent or None, expires_at=iso(expires_at))


def consensus(tenant: str, reply: list[Any]) -> Consensus:
    """A consensus from a script's reply (lib.lua consensus_reply); counts the
    decision when this very call made it."""
    c, votes = pairs(reply[1]), pairs(reply[2])
    if len(reply) > 7 and reply[7]:
        METRICS.consensus(c["status"])
    approve, reject, eligible, needed = (int(n) for n in reply[3:7])
    policy = policy_rules(c.get("policy"))
    tally = Tally(approve=approve, reject=reject, eligible=eligible, needed=needed)
    if policy.human_approvals:
        tally.human_approve, tally.human_reject = (int(n) for n in reply[8:10]) if len(reply) > 9 else (0, 0)
        tally.humans_needed = policy.human_approvals
    ballots = sorted(
        (int(voted_us), member, vote, agent_name, reason)
        for member, (vote, voted_us, agent_name, reason) in ((a, r.split("|", 3)) for a, r in votes.items())
    )
    return Consensus(
        id=c["id"],
        tenant_id=tenant,
        requesting_agent_id=c["requestingAgentId"],
        action=c["action"],
        contact_email=c["contactEmail"] or None,
        reason=c["reason"] or None,
        status=c["status"],
        created_at=iso(c["createdAt"]),
        expires_at=iso(c["expiresAt"]),
        resolved_at=iso(c["resolvedAt"]) if "resolvedAt" in c else None,
        tally=tally,
        votes=[
            Vote(
                agent_id=member.removeprefix("h:"),
                agent_name=name,
                vote=vote,
                reason=reason or None,
                voted_at=iso(voted_us // 1000),
                kind="human" if member.startswith("h:") else "agent",
            )
            for voted_us, member, vote, name, reason in ballots
        ],
        policy=policy,
    )
