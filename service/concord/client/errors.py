"""The errors of the SDK: every error is a `ConcordError`.

An error answer of the service becomes the class of its problem's ``code``
(`ERROR_CLASSES`, one class per code of `concord.protocol.ERRORS`); an unknown code
gives the base class, so a newer service never breaks an older SDK. A 401 to a
request sent with an agent credential is `CredentialRefused`, an `Unauthorized`
that says the agent's credential is no longer (or never was) its current one.
Three errors come from the SDK itself, not from an answer: `Unreachable` (no
answer at all), `LeaseLost` (a held lease turned out gone) and `NotConfigured`
(nothing was sent: the client lacks the API key or the agent credential the call
needs).
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx
import msgspec

from concord import protocol as p

__all__ = [
    "ERROR_CLASSES",
    "ConcordError",
    "LeaseLost",
    "Unreachable",
    "NotConfigured",
    "MalformedJson",
    "Unauthorized",
    "CredentialRefused",
    "InsufficientScope",
    "TenantMismatch",
    "AgentMismatch",
    "NotLeaseHolder",
    "RequesterCannotVote",
    "NotEligible",
    "QuotaExceeded",
    "Suppressed",
    "KindMismatch",
    "EndpointNotFound",
    "AgentNotFound",
    "LeaseNotFound",
    "ConsensusNotFound",
    "SuppressionNotFound",
    "MethodNotAllowed",
    "AgentInactive",
    "LeaseConflict",
    "AlreadyVoted",
    "ConsensusClosed",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "ValidationError",
    "IdempotencyKeyReused",
    "RateLimited",
    "InternalError",
    "StoreError",
    "StoreUnavailable",
    "error_from_response",
]


class ConcordError(Exception):
    """An error answer of Concord, or no answer at all.

    ``code`` is the stable part to branch on (the README's error table), ``status``
    the HTTP status (None when no answer came), ``detail`` the human sentence and
    ``problem`` the whole problem document as a dict. ``retry_after`` is the wait in
    seconds the service asked for (Retry-After, or ``retryAfterMs``), else None."""

    code = "error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or type(self).code
        self.status = status
        self.problem = problem if problem is not None else {"code": self.code, "detail": detail}
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"HTTP {self.status}, " if self.status is not None else ""
        return f"{self.detail} ({where}{self.code})"


class MalformedJson(ConcordError):
    code = "malformed_json"


class Unauthorized(ConcordError):
    """No credential the service knows: a missing, unknown or revoked API key, or an
    agent credential that is not the agent's current one (then `CredentialRefused`)."""

    code = "unauthorized"


class CredentialRefused(Unauthorized):
    """401 to a call made with an agent credential: it is not the agent's current one.
    Registering the agent again or rotating its credential made a new one (the earlier
    is refused from then on), or the agent was deregistered, or the credential was
    never one Concord made. Retrying cannot help: get the current credential
    (register the agent again, or rotate it, with an admin or enroll key).
    ``agent_id`` is the agent the credential names."""

    def __init__(self, detail: str, *, agent_id: str | None = None, **options: Any) -> None:
        super().__init__(detail, **options)
        self.agent_id = agent_id


class InsufficientScope(ConcordError):
    """The credential's role may not do this (a gate key registering, an admin key
    heartbeating for an agent): ``key_role`` is its role ("agent" for an agent credential)."""

    code = "insufficient_scope"

    @property
    def key_role(self) -> str | None:
        return self.problem.get("keyRole")


class TenantMismatch(ConcordError):
    code = "tenant_mismatch"


class AgentMismatch(ConcordError):
    """An agent credential acts only as its own agent, and the call named another:
    ``agent_id`` is the credential's own agent."""

    code = "agent_mismatch"

    @property
    def agent_id(self) -> str | None:
        return self.problem.get("agentId")


class NotLeaseHolder(ConcordError):
    code = "not_lease_holder"


class RequesterCannotVote(ConcordError):
    code = "requester_cannot_vote"


class NotEligible(ConcordError):
    """The voter is not of the request's electorate: the agents active when it was
    made that have stayed active since, of the policy's voter roles (and, where the
    policy asks for human approvals, the humans registered by then). ``why`` says
    which: later, role or human."""

    code = "not_eligible"

    @property
    def why(self) -> str | None:
        return self.problem.get("why")


class QuotaExceeded(ConcordError):
    """A quota of the tenant is reached; nothing was done. ``quota`` names it
    (agents, leasesPerAgent, pendingConsensus, streams), ``limit`` is its value."""

    code = "quota_exceeded"

    @property
    def quota(self) -> str | None:
        return self.problem.get("quota")

    @property
    def limit(self) -> int | None:
        return self.problem.get("limit")


class Suppressed(ConcordError):
    """The contact, or its whole domain, is suppressed: no agent may lease or email
    it, and nothing was written. ``suppression`` is the entry that applies (the
    contact's, or ``@domain``), ``contact`` the canonical contact asked about. Only
    an admin key lifts it (``lift_suppression``)."""

    code = "suppressed"

    @property
    def contact(self) -> str | None:
        return self.problem.get("contact") or self.problem.get("contactEmail")

    @property
    def suppression(self) -> p.Suppression | None:
        raw = self.problem.get("suppression")
        return msgspec.convert(raw, p.Suppression) if isinstance(raw, dict) else None


class EndpointNotFound(ConcordError):
    """No such endpoint: usually a URL that does not point at Concord."""

    code = "not_found"


class AgentNotFound(ConcordError):
    code = "agent_not_found"


class LeaseNotFound(ConcordError):
    code = "lease_not_found"


class ConsensusNotFound(ConcordError):
    code = "consensus_not_found"


class SuppressionNotFound(ConcordError):
    code = "suppression_not_found"


class MethodNotAllowed(ConcordError):
    code = "method_not_allowed"


class AgentInactive(ConcordError):
    code = "agent_inactive"


class LeaseConflict(ConcordError):
    """Another active agent holds the contact: ``holder`` says who, and until when."""

    code = "lease_conflict"

    @property
    def contact(self) -> str | None:
        """The canonical contact held (a server before contacts: the address asked about)."""
        return self.problem.get("contact") or self.problem.get("contactEmail")

    @property
    def holder(self) -> p.LeaseHolder | None:
        raw = self.problem.get("leaseHolder")
        return msgspec.convert(raw, p.LeaseHolder) if isinstance(raw, dict) else None


class KindMismatch(ConcordError):
    """The member of this name is of the other kind (an agent, or a human), which is
    fixed when it is first registered. ``kind`` is the member's."""

    code = "kind_mismatch"

    @property
    def kind(self) -> str | None:
        return self.problem.get("kind")


class AlreadyVoted(ConcordError):
    code = "already_voted"

    @property
    def vote(self) -> str | None:
        """The agent's earlier vote."""
        return self.problem.get("vote")


class ConsensusClosed(ConcordError):
    code = "consensus_closed"

    @property
    def consensus_status(self) -> str | None:
        """What the request became: approved, rejected or expired."""
        return self.problem.get("consensusStatus")


class PayloadTooLarge(ConcordError):
    code = "payload_too_large"


class UnsupportedMediaType(ConcordError):
    code = "unsupported_media_type"


class ValidationError(ConcordError):
    code = "validation_error"

    @property
    def field(self) -> str | None:
        """The JSON path of the offending field, such as ``$.durationSeconds``."""
        return self.problem.get("field")


class IdempotencyKeyReused(ConcordError):
    code = "idempotency_key_reused"


class RateLimited(ConcordError):
    """A rate limit is reached; ``retry_after`` (seconds) says when a request is due."""

    code = "rate_limited"


class InternalError(ConcordError):
    code = "internal_error"


class StoreError(ConcordError):
    code = "store_error"


class StoreUnavailable(ConcordError):
    """Redis is down or slow: the change may or may not have happened."""

    code = "store_unavailable"


class Unreachable(ConcordError):
    """No answer: the connection failed, dropped or timed out. ``sent`` is False when
    the request surely never left (the connection could not be opened)."""

    code = "unreachable"

    def __init__(self, method: str, url: str, exc: httpx.TransportError) -> None:
        reason = str(exc) or type(exc).__name__
        detail = f"No answer from Concord at {url} ({method}): {type(exc).__name__}: {reason}"
        problem = {
            "type": "urn:concord:problem:unreachable",
            "title": "Concord is unreachable",
            "detail": detail,
            "code": "unreachable",
            "url": url,
        }
        super().__init__(detail, problem=problem)
        self.url = url
        self.sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        self.__cause__ = exc


class NotConfigured(ConcordError):
    """The client lacks a setting the call needs, so nothing was sent: an API key
    (``api_key``, else CONCORD_API_KEY) for the calls of a key, the agent's
    credential (from ``register()``, else ``agent_credential``, else
    CONCORD_AGENT_CREDENTIAL) for the calls that act as an agent, or a setting
    is malformed. Raised before sending, never retried: only a change of
    configuration makes the call succeed."""

    code = "not_configured"

    def __init__(self, detail: str, title: str = "Not configured") -> None:
        problem = {"type": "urn:concord:problem:not_configured", "title": title, "detail": detail, "code": self.code}
        super().__init__(detail, problem=problem)


class LeaseLost(ConcordError):
    """A held lease is gone (expired, taken over, released elsewhere, or its agent is
    inactive or removed): the holder may no longer act on the contact. ``cause`` is
    the error of the renewal that found out."""

    code = "lease_lost"

    def __init__(self, lease: p.Lease, cause: ConcordError, expired: bool = False) -> None:
        why = f"it expired while renewals failed ({cause})" if expired else str(cause)
        detail = f"Lease {lease.id} on {lease.contact_email} is lost: {why}"
        problem = {
            "type": "urn:concord:problem:lease_lost",
            "title": "Lease lost",
            "detail": detail,
            "code": "lease_lost",
            "leaseId": lease.id,
            "contactEmail": lease.contact_email,
            "cause": cause.problem,
        }
        super().__init__(detail, status=cause.status, problem=problem)
        self.lease_id = lease.id
        self.contact = lease.contact_email
        self.cause = cause
        self.__cause__ = cause


# Every code of docs/errors.md (concord.protocol.ERRORS) -> its class.
ERROR_CLASSES: dict[str, type[ConcordError]] = {
    cls.code: cls
    for cls in (
        MalformedJson,
        Unauthorized,
        InsufficientScope,
        TenantMismatch,
        AgentMismatch,
        NotLeaseHolder,
        RequesterCannotVote,
        NotEligible,
        QuotaExceeded,
        Suppressed,
        KindMismatch,
        EndpointNotFound,
        AgentNotFound,
        LeaseNotFound,
        ConsensusNotFound,
        SuppressionNotFound,
        MethodNotAllowed,
        AgentInactive,
        LeaseConflict,
        AlreadyVoted,
        ConsensusClosed,
        PayloadTooLarge,
        UnsupportedMediaType,
        ValidationError,
        IdempotencyKeyReused,
        RateLimited,
        InternalError,
        StoreError,
        StoreUnavailable,
    )
}

_any_json = msgspec.json.Decoder()

# How a member's credential begins: concord-agent.<tenant>.<agentId>.<secret> for an
# agent, concord-human.… for a human member (which only votes and reads).
CREDENTIAL_PREFIX = "concord-agent."
HUMAN_PREFIX = "concord-human."


def credential_agent(credential: str) -> str | None:
    """The member id a member's credential names, or None for a token of another shape."""
    parts = credential.split(".")
    kinds = (CREDENTIAL_PREFIX[:-1], HUMAN_PREFIX[:-1])
    if len(parts) == 4 and parts[0] in kinds and parts[2].startswith("agent_") and all(parts):
        return parts[2]
    return None


def error_from_response(response: httpx.Response) -> ConcordError:
    """The typed error for a non-2xx answer. A body that is not a problem document
    (a proxy's HTML page, say) gives the base class with code ``unexpected_response``."""
    status, request = response.status_code, response.request
    try:
        problem = _any_json.decode(response.content)
    except msgspec.DecodeError:
        problem = None
    if not (isinstance(problem, dict) and isinstance(problem.get("code"), str)):
        detail = f"{request.method} {request.url} answered {status} {response.reason_phrase}, not a problem document"
        problem = {"title": response.reason_phrase, "status": status, "detail": detail, "code": "unexpected_response"}
    code = problem["code"]
    detail = str(problem.get("detail") or problem.get("title") or code)
    options: dict[str, Any] = {
        "code": code,
        "status": status,
        "problem": problem,
        "retry_after": _retry_after(response, problem),
    }
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    if code == "unauthorized" and token.startswith((CREDENTIAL_PREFIX, HUMAN_PREFIX)):
        return CredentialRefused(detail, agent_id=credential_agent(token), **options)
    return ERROR_CLASSES.get(code, ConcordError)(detail, **options)


def _retry_after(response: httpx.Response, problem: dict[str, Any]) -> float | None:
    """Seconds to wait: ``retryAfterMs`` (exact) or the Retry-After header (seconds or an HTTP date)."""
    ms = problem.get("retryAfterMs")
    if isinstance(ms, int | float) and not isinstance(ms, bool):
        return max(0.0, ms / 1000)
    header = response.headers.get("retry-after")
    if header is None:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(header).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _transient(error: ConcordError) -> bool:
    """Might the same call succeed later? No answer, 429 or a 5xx: yes; any other answer is final."""
    return isinstance(error, Unreachable) or (error.status is not None and (error.status >= 500 or error.status == 429))
