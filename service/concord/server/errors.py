"""Error codes, the one exception the service raises, and problem+json rendering.

Every error leaves the service as an RFC 9457 problem document
``{type, title, status, detail, code}`` plus the members named for its code
(``leaseHolder``, ``status``, ``field``...). ``code`` is the stable part that
clients branch on; the README's Errors table lists them all.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

# code -> (HTTP status, title). The README's Errors table is this table in prose; keep them in step.
ERRORS: dict[str, tuple[int, str]] = {
    "malformed_json": (400, "The body is not valid JSON"),
    "unauthorized": (401, "Missing or unknown API key"),
    "tenant_mismatch": (403, "tenantId differs from the API key's tenant"),
    "not_lease_holder": (403, "Only the lease holder may do this"),
    "requester_cannot_vote": (403, "The requester cannot vote on its own request"),
    "not_found": (404, "No such endpoint"),
    "agent_not_found": (404, "Agent not found"),
    "lease_not_found": (404, "Lease not found"),
    "consensus_not_found": (404, "Consensus request not found"),
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

PROBLEM_JSON = "application/problem+json"
_encode = msgspec.json.Encoder().encode


class ConcordError(Exception):
    """An error with a stable code; ``extra`` becomes additional problem members."""

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.status, self.title = ERRORS[code]
        self.detail = detail
        self.extra = extra


class StoreUnavailable(ConcordError):
    """Redis did not answer in time or refused the connection; nothing is known to be written."""

    def __init__(self, detail: str = "Redis did not answer in time") -> None:
        super().__init__("store_unavailable", detail)


class NotReplicated(StoreUnavailable):
    """The change was made on the master, but fewer replicas than CONCORD_MIN_REPLICAS
    acknowledged it in time: a failover could lose it. Retrying it is safe."""

    def __init__(self, acknowledged: int, required: int, timeout_ms: int) -> None:
        super().__init__(
            f"The change was made, but {acknowledged} of the {required} replicas required "
            f"(CONCORD_MIN_REPLICAS) confirmed it within {timeout_ms} ms, so a failover could lose it. "
            "Retrying it is safe."
        )


_STANDARD = frozenset({"type", "title", "status", "detail", "code"})


def problem(code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    status, title = ERRORS[code]
    if not _STANDARD.isdisjoint(extra):
        raise ValueError(f"problem members {sorted(_STANDARD & extra.keys())} are reserved")
    body = {"type": f"urn:concord:problem:{code}", "title": title, "status": status, "detail": detail, "code": code}
    body.update(extra)
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="concord"'
    elif status == 503:
        headers["Retry-After"] = "1"
    elif status == 429:
        headers["Retry-After"] = str(max(1, -(-int(extra.get("retryAfterMs", 1000)) // 1000)))
    return Response(_encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def error_response(exc: ConcordError) -> Response:
    return problem(exc.code, exc.detail, **exc.extra)


def agent_not_found(agent_id: str) -> ConcordError:
    return ConcordError("agent_not_found", f"No agent {agent_id} in this tenant")


def lease_not_found(lease_id: str) -> ConcordError:
    return ConcordError("lease_not_found", f"No live lease {lease_id}: it expired, was released, or was taken over")


def consensus_not_found(consensus_id: str) -> ConcordError:
    return ConcordError("consensus_not_found", f"No consensus request {consensus_id} in this tenant")


def invalid(detail: str, field: str) -> ConcordError:
    """A 422 naming the field by its JSON path, as msgspec's own messages do."""
    return ConcordError("validation_error", f"{detail} - at `{field}`", field=field)
