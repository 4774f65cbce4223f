"""The one exception the service raises, and the errors it raises most.

A ``ConcordError`` carries a stable code of protocol.ERRORS, a detail that says
what happened and what to do next, and the extra problem members of its code
(``leaseHolder``, ``field``...). The store raises them, the HTTP layer renders
them (http/problems.py); no HTTP type is needed to raise one.
"""

from __future__ import annotations

from typing import Any

from concord.protocol import ERRORS, routes


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


def agent_not_found(agent_id: str, tenant: str) -> ConcordError:
    return ConcordError(
        "agent_not_found", f"No agent {agent_id} in tenant {tenant}: register it first with POST {routes.REGISTER}"
    )


def credential_refused(agent_id: str, tenant: str) -> ConcordError:
    """401 for an agent credential that is not the agent's current one."""
    return ConcordError(
        "unauthorized",
        f"This credential is not the current one of agent {agent_id} in tenant {tenant}: it was rotated, "
        f"or the agent was deregistered. Get a new one by registering the agent again (POST {routes.REGISTER}) "
        "or by rotating its credential, with an admin or enroll key",
    )


def agent_mismatch(claimed: str, own: str) -> ConcordError:
    """403 for a request naming another agent than its credential's."""
    return ConcordError(
        "agent_mismatch",
        f"This credential is agent {own}'s and acts only as {own}, not as {shown(claimed)}: "
        "leave the agent id out, or use that agent's own credential",
        agentId=own,
    )


# What each quota bounds, and what to do when it is reached.
_QUOTA_ADVICE = {
    "agents": "registered agents: deregister agents it no longer runs",
    "leasesPerAgent": "live leases of one agent: release the leases it is done with, or let them expire",
    "pendingConsensus": "consensus requests pending: wait for requests to be decided or to expire",
    "streams": "event streams and long polls open at once on this instance: close one, or share one stream",
}


def quota_exceeded(quota: str, limit: int) -> ConcordError:
    """403 for a change past one of the tenant's quotas (nothing was written)."""
    return ConcordError(
        "quota_exceeded",
        f"The tenant has reached its quota of {limit:,} {_QUOTA_ADVICE[quota]}. An admin can raise it "
        f"(PUT {routes.QUOTAS})",
        quota=quota,
        limit=limit,
    )


def lease_not_found(lease_id: str, tenant: str) -> ConcordError:
    return ConcordError(
        "lease_not_found",
        f"No live lease {lease_id} in tenant {tenant}: it expired, was released or was taken over "
        f"(or never existed); acquire the contact again with POST {routes.LEASE}",
    )


def consensus_not_found(consensus_id: str, tenant: str) -> ConcordError:
    return ConcordError(
        "consensus_not_found",
        f"No consensus request {consensus_id} in tenant {tenant} (a decided request is kept 7 days); "
        f"ask for a new one with POST {routes.CONSENSUS}",
    )


# An id's kind (protocol.UnknownId.kind) -> the 404 of an id of that kind that names nothing.
NOT_FOUND = {"agent": agent_not_found, "lease": lease_not_found, "consensus": consensus_not_found}


def shown(value: str, limit: int = 80) -> str:
    """A caller's value as a message may quote it: at most ``limit`` characters, and
    quoted (as a Python literal) if it holds anything unprintable."""
    value = value if len(value) <= limit else f"{value[:limit]}…"
    return value if value.isprintable() else repr(value)


def invalid(where: str, rule: str, field: str) -> ConcordError:
    """A 422 saying, in words, what ``where`` (a field, query parameter or header)
    must be; ``field`` is its JSON path (``$.durationMinutes``) or ``header <Name>``."""
    return ConcordError("validation_error", f"{where}: {rule}", field=field)
