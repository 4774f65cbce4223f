"""The Python SDK: ``Concord`` (sync, threads) and ``AsyncConcord`` (asyncio, tasks).

It needs httpx and msgspec only, and imports nothing of the server. By role:

    errors.py    ConcordError and one class per error code; CredentialRefused, Unreachable, LeaseLost, NotConfigured
    calls.py     each operation as the HTTP request that performs it, and the credential it needs
    base.py      what both clients share: configuration, credentials, building requests, the retry policy
    sse.py       the Server-Sent Events parser and the reconnecting subscription
    handles.py   the state of agent, keep-alive, lease and consensus handles, shared by both
    sync.py      Concord and its handles;  aio.py  AsyncConcord and its handles

Invariants the clients keep:

- A call is repeated only where repeating is safe (base.py says when).
- A call that acts as an agent goes with that agent's own credential (from
  ``register()``, a rotation, or ``agent_credential``), never with an API key;
  the credential stays in the client: handles and their answers never show it.
- Every error is a `ConcordError`; its class is chosen by the problem's ``code``
  (`ERROR_CLASSES`), an unknown code gives the base class.
- Background work (keep-alive heartbeats, lease renewal) belongs to the client and
  to the agent handle that started it: closing either stops it.
"""

from concord.client.aio import (
    AsyncAgentHandle,
    AsyncConcord,
    AsyncConsensusHandle,
    AsyncKeepAlive,
    AsyncLeaseHandle,
)
from concord.client.errors import (
    ERROR_CLASSES,
    AgentInactive,
    AgentMismatch,
    AgentNotFound,
    AlreadyVoted,
    ConcordError,
    ConsensusClosed,
    ConsensusNotFound,
    CredentialRefused,
    EndpointNotFound,
    IdempotencyKeyReused,
    InsufficientScope,
    InternalError,
    KindMismatch,
    LeaseConflict,
    LeaseLost,
    LeaseNotFound,
    MalformedJson,
    MethodNotAllowed,
    NotConfigured,
    NotEligible,
    NotLeaseHolder,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    RequesterCannotVote,
    StoreError,
    StoreUnavailable,
    Suppressed,
    SuppressionNotFound,
    TenantMismatch,
    Unauthorized,
    Unreachable,
    UnsupportedMediaType,
    ValidationError,
)
from concord.client.sync import AgentHandle, Concord, ConsensusHandle, KeepAlive, LeaseHandle

__all__ = [
    "AsyncAgentHandle",
    "AsyncConcord",
    "AsyncConsensusHandle",
    "AsyncKeepAlive",
    "AsyncLeaseHandle",
    "AgentHandle",
    "Concord",
    "ConsensusHandle",
    "KeepAlive",
    "LeaseHandle",
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
    "KindMismatch",
    "QuotaExceeded",
    "Suppressed",
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
]
