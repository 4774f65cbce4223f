"""Who a request is, and what it may do: the principal its credential names.

A request carries one bearer credential: a tenant API key, or an agent's own
credential. A tenant API key grants a role:

- ``admin`` (the default): manages agents and keys, reads everything,
  deregisters agents and force-releases leases; it never acts *as* an agent;
- ``enroll``: registers agents (of ``roles`` only, when it has any);
- ``gate``: send-check for any agent of the tenant, nothing else (an email
  pipeline's key);
- ``read``: GET endpoints and the event stream (dashboards, auditors).

A human member's credential (``concord-human.<tenant>.<agentId>.<secret>``,
made when an admin registers a human) is the principal of role ``human``: it
votes on consensus requests and reads its tenant, nothing else. Its prefix
tells its kind, so the service refuses it on every other route with no lookup,
and it cannot pass for an agent's: the digest covers the prefix.

An agent credential (``concord-agent.<tenant>.<agentId>.<secret>``, made when
the agent is registered and shown once) is the principal of role ``agent``: it
acts as that one agent (heartbeat, leases, send-check, consensus, votes) and
reads its tenant. It names its tenant and agent, so the service needs no lookup
to know whom it claims to be; the script that acts checks its digest against the
one in the agent's hash (lua/lib.lua credential_ok), and reads check it through
a cache of at most one second (http/auth.py).

A key has an id (``cfg-<n>`` for the n-th key of CONCORD_API_KEYS, ``key_<hex>``
for one stored in Redis) that logs and answers may name: the id never reveals
the key.
"""

from __future__ import annotations

import re
import secrets

import msgspec

from concord.protocol.types import UUID

KEY_ROLES = ("admin", "enroll", "gate", "read")
AGENT = "agent"  # the role of an agent credential
HUMAN = "human"  # the role of a human member's credential
MEMBERS = (AGENT, HUMAN)  # the roles of a member's own credential (AgentPrincipal)
# What each role may do, as a refusal says it (403 insufficient_scope).
MAY = {
    "admin": "an admin key manages agents and keys, reads everything, deregisters agents and force-releases "
    "leases, but never acts as an agent: the agent's own credential does (POST /v1/agent/register answers it)",
    "enroll": "an enroll key may only register agents (POST /v1/agent/register)",
    "gate": "a gate key may only send-check (POST /v1/agent/coordination/send-check) and add and read "
    "suppressions (/v1/agent/coordination/suppressions)",
    "read": "a read key may only read: GET endpoints and the event stream",
    AGENT: "an agent credential may only act as its own agent (heartbeat, leases, send-check, consensus "
    "requests and votes, adding suppressions) and read its tenant",
    HUMAN: "a human member's credential may only vote on consensus requests (POST "
    "/v1/agent/coordination/consensus/{consensusId}/vote) and read its tenant",
}


class KeyGrant(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """What one tenant API key grants; stored in Redis as this JSON, by digest."""

    id: str
    tenant: str
    role: str = "admin"
    roles: tuple[str, ...] = ()  # enroll: the agent roles it may register; empty: any
    created_at: int | None = None  # Redis's time in ms, for a stored key

    def describe(self) -> str:
        """The key as a message names it: id and role, never the secret."""
        limited = f" for roles {', '.join(self.roles)}" if self.roles else ""
        return f"API key {self.id} (role {self.role}{limited})"

    @property
    def credential(self) -> str:
        """What a script is passed as the caller's credential: '' (an API key, whose
        role the endpoint has checked)."""
        return ""


class AgentPrincipal(msgspec.Struct, frozen=True):
    """The member (an agent, or a human: ``role``) a member's credential claims to
    be. Claimed, not yet proven: the script that acts checks ``credential`` (the
    digest), and so does a read."""

    tenant: str
    id: str  # the agent id
    credential: str  # SHA-256 hex of the credential
    role: str = AGENT  # or HUMAN

    def describe(self) -> str:
        return f"the credential of {'human member' if self.role == HUMAN else 'agent'} {self.id}"


Principal = KeyGrant | AgentPrincipal

CREDENTIAL_PREFIX = "concord-agent."
HUMAN_PREFIX = "concord-human."
_CREDENTIAL = re.compile(rf"concord-(agent|human)\.([A-Za-z0-9_-]{{1,64}})\.(agent_{UUID})\.[A-Za-z0-9_-]{{32,128}}")


def new_credential(tenant: str, agent_id: str, kind: str = AGENT) -> str:
    """A fresh credential of a member of ``kind`` (agent or human): it names its
    tenant and member, then 256 random bits."""
    prefix = HUMAN_PREFIX if kind == HUMAN else CREDENTIAL_PREFIX
    return f"{prefix}{tenant}.{agent_id}.{secrets.token_urlsafe(32)}"


def agent_principal(token: str, digest: str) -> AgentPrincipal | None:
    """The principal of a member's credential, or None for a token of another shape."""
    found = _CREDENTIAL.fullmatch(token)
    return AgentPrincipal(found[2], found[3], digest, found[1]) if found else None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(KeyGrant).decode


def encode_grant(grant: KeyGrant) -> bytes:
    return _encode(grant)


def decode_grant(value: str, digest: str) -> KeyGrant:
    """A stored grant; a value that is a bare tenant id is a key stored before keys
    had roles: an admin key, whose id comes from its digest (such keys were made
    by `concord keys create`, random, so the digest's prefix reveals nothing)."""
    if not value.startswith("{"):
        return KeyGrant(id=legacy_id(digest), tenant=value)
    return _decode(value)


def legacy_id(digest: str) -> str:
    return f"key_{digest[:16]}"
