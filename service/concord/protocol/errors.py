"""Error codes: the stable part of every problem answer, which clients branch on.

Every error leaves the service as an RFC 9457 problem document
``{type, title, status, detail, code}`` plus the members named for its code
(responses.Problem). docs/errors.md is this table in prose; keep them in step.

The two exceptions below are raised while a request is decoded (the Structs'
``__post_init__``): the server answers them as a validation error naming the
field, and as the 404 of an unknown id.
"""

from __future__ import annotations

from typing import Literal

# code -> (HTTP status, title)
ERRORS: dict[str, tuple[int, str]] = {
    "malformed_json": (400, "The body is not valid JSON"),
    "unauthorized": (401, "Missing or unknown credential"),
    "insufficient_scope": (403, "The credential's role may not do this"),
    "tenant_mismatch": (403, "tenantId differs from the API key's tenant"),
    "agent_mismatch": (403, "The agent credential acts only as its own agent"),
    "not_lease_holder": (403, "Only the lease holder may do this"),
    "requester_cannot_vote": (403, "The requester cannot vote on its own request"),
    "not_eligible": (403, "The member is not of this request's electorate"),
    "quota_exceeded": (403, "A quota of the tenant is reached"),
    "suppressed": (403, "The contact is suppressed"),
    "kind_mismatch": (409, "The member of this name is of another kind"),
    "not_found": (404, "No such endpoint"),
    "agent_not_found": (404, "Agent not found"),
    "lease_not_found": (404, "Lease not found"),
    "consensus_not_found": (404, "Consensus request not found"),
    "suppression_not_found": (404, "Suppression not found"),
    "method_not_allowed": (405, "Method not allowed on this endpoint"),
    "agent_inactive": (409, "Agent is inactive"),
    "lease_conflict": (409, "Contact is leased by another agent"),
    "already_voted": (409, "Agent already voted otherwise"),
    "consensus_closed": (409, "Consensus request is no longer pending"),
    "payload_too_large": (413, "Request body too large"),
    "unsupported_media_type": (415, "Unsupported media type"),
    "validation_error": (422, "Invalid request"),
    "idempotency_key_reused": (422, "Idempotency-Key reused for a different request"),
    "rate_limited": (429, "Too many requests"),
    "internal_error": (500, "Internal error"),
    "store_error": (500, "The store rejected the operation"),
    "store_unavailable": (503, "The store is unavailable"),
}

ErrorCode = Literal[tuple(ERRORS)]  # type: ignore[valid-type]


class FieldError(Exception):
    """A decoded value breaks a rule that msgspec's constraints cannot say: ``field``
    is its JSON path (``$.contactEmail``), ``rule`` what is allowed, in words."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class UnknownId(Exception):
    """An id that cannot name anything (not of the form ``<kind>_<uuid>``): answered
    as the same 404 as a well-formed id that names nothing."""

    def __init__(self, kind: str, value: str) -> None:
        super().__init__(f"no {kind} {value}")
        self.kind = kind  # "agent", "lease" or "consensus"
        self.value = value
