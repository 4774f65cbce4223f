"""Who a request is, and what it may do: the principal its credential names.

A tenant API key grants a role:

- ``admin`` (the default): manages agents and keys, reads everything, and today
  also acts for the tenant's agents;
- ``enroll``: registers agents (of ``roles`` only, when it has any);
- ``gate``: send-check for any agent of the tenant, nothing else (an email
  pipeline's key);
- ``read``: GET endpoints and the event stream (dashboards, auditors).

A key has an id (``cfg-<n>`` for the n-th key of CONCORD_API_KEYS, ``key_<hex>``
for one stored in Redis) that logs and answers may name: the id never reveals
the key.
"""

from __future__ import annotations

import msgspec

KEY_ROLES = ("admin", "enroll", "gate", "read")
# What each role may do, as a refusal says it (403 insufficient_scope).
MAY = {
    "admin": "an admin key may do everything but act as another tenant",
    "enroll": "an enroll key may only register agents (POST /v1/agent/register)",
    "gate": "a gate key may only send-check (POST /v1/agent/coordination/send-check)",
    "read": "a read key may only read: GET endpoints and the event stream",
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
        return f"{self.id} (role {self.role}{limited})"


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
