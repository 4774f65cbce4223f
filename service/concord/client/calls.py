"""Each operation of the API, described once as the HTTP request that performs it.

`_Wire` builds a `_Call` (method, path, body, query, headers, the decoder of the
answer, and whether it is safe to send again); `Concord` and `AsyncConcord` only
differ in how they send it. Paths come from `concord.protocol.routes`, the
constants the server routes on, so the SDK and the server cannot disagree on one.
Ids are quoted into a single path segment: a malformed id cannot reach another
endpoint. Durations are given as seconds or timedeltas and sent as the whole
seconds the API takes, rounded up.

Each call also says which credential it goes with (``_Call.principal``; the
client picks the token, base.py): an API key (``KEY``: register, rotate,
deregister, a forced release), the acting agent's own credential (``AGENT``:
heartbeat, leases, consensus requests and votes), that agent's credential when
the client holds it and else an API key (``GATE``: send-check, which a gate key
may ask for any agent), or either (``READ``: every GET). A suppression is added
with whichever the caller chose: the client's API key (``KEY``: an admin or gate
key), or, from an agent's handle, that agent's credential (``AGENT``); only an
admin key lifts one.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import quote

import msgspec

from concord import protocol as p
from concord.protocol import routes

# The longest long poll the server grants (waitSeconds 1..60).
MAX_WAIT_SECONDS = 60

Duration = int | float | timedelta
VoteChoice = Literal["approve", "reject"]
Principal = Literal["key", "agent", "gate", "read"]
KEY: Principal = "key"
AGENT: Principal = "agent"
GATE: Principal = "gate"
READ: Principal = "read"


_encode = msgspec.json.Encoder().encode
_AGENT = msgspec.json.Decoder(p.Agent)
_REGISTERED = msgspec.json.Decoder(p.RegisteredAgent)
_AGENT_CREDENTIAL = msgspec.json.Decoder(p.AgentCredential)
_AGENT_LIST = msgspec.json.Decoder(p.AgentList)
_AGENT_REMOVED = msgspec.json.Decoder(p.AgentRemoved)
_HEARTBEAT = msgspec.json.Decoder(p.Heartbeat)
_LEASE = msgspec.json.Decoder(p.Lease)
_LEASE_LIST = msgspec.json.Decoder(p.LeaseList)
_RELEASED = msgspec.json.Decoder(p.Released)
_SEND_CHECK = msgspec.json.Decoder(p.SendCheck)
_CONSENSUS = msgspec.json.Decoder(p.Consensus)
_CONSENSUS_LIST = msgspec.json.Decoder(p.ConsensusList)
_EVENT_PAGE = msgspec.json.Decoder(p.EventPage)
_EVENT = msgspec.json.Decoder(p.Event)
_SUPPRESSION = msgspec.json.Decoder(p.Suppression)
_SUPPRESSION_LIST = msgspec.json.Decoder(p.SuppressionList)
_SUPPRESSION_IMPORT = msgspec.json.Decoder(p.SuppressionImport)


@dataclass(frozen=True, slots=True)
class _Call:
    """One HTTP request of an operation. ``retry``: safe to send again after it may
    have reached the service. ``wait``: seconds the service may hold it (long poll).
    ``principal``: which credential it goes with; ``agent_id``: the agent it acts
    as (None: the client's own agent, whose credential it was given)."""

    method: str
    path: str
    decoder: msgspec.json.Decoder
    body: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    retry: bool = True
    wait: float = 0.0
    principal: Principal = READ
    agent_id: str | None = None


def _fields(**values: Any) -> dict[str, Any]:
    """The members that were given: the API reads a missing field and null alike."""
    return {name: value for name, value in values.items() if value is not None}


def _id(value: str) -> str:
    """An id as one path segment: a malformed id cannot reach another endpoint."""
    return quote(str(value), safe="")


def seconds(value: Duration, name: str) -> float:
    """A positive duration given as seconds (int or float) or a timedelta, in seconds."""
    amount = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise TypeError(f"{name} must be seconds (int or float) or a timedelta, got {value!r}")
    if not 0 < amount < math.inf:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(amount)


def whole_seconds(value: Duration | None, name: str) -> int | None:
    """A duration as the whole seconds the API takes: rounded up, so never shorter
    than asked, and so at least 1."""
    return None if value is None else math.ceil(seconds(value, name))


def _suppression_items(items: Iterable[p.SuppressionItem | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A bulk import's entries as the body carries them; the service checks each one.
    Raises ValueError, sending nothing, for a batch the service would refuse whole
    for its size (1 to MAX_SUPPRESSIONS_PER_CALL entries)."""
    rows = [
        _fields(entry=item.entry, reason=item.reason, note=item.note)
        if isinstance(item, p.SuppressionItem)
        else dict(item)
        for item in items
    ]
    if not 1 <= len(rows) <= p.MAX_SUPPRESSIONS_PER_CALL:
        raise ValueError(
            f"a bulk import sends 1 to {p.MAX_SUPPRESSIONS_PER_CALL} suppressions per call, got {len(rows)}: "
            "send larger lists in batches (`concord suppressions import` does)"
        )
    return rows


def _types(types: str | list[str] | tuple[str, ...] | None) -> str | None:
    return types if types is None or isinstance(types, str) else ",".join(types)


class _Wire:
    """Each operation as the HTTP call that performs it."""

    @staticmethod
    def register(name: str, role: str | None, metadata: dict[str, Any] | None, kind: str | None = None) -> _Call:
        # Safe to repeat: every registration answers a new credential and refuses the
        # earlier ones, so the answer of the last attempt holds the current one.
        body = _fields(agentName=name, agentRole=role, metadata=metadata, kind=kind)
        return _Call("POST", routes.REGISTER, _REGISTERED, body, principal=KEY)

    @staticmethod
    def rotate_credential(agent_id: str) -> _Call:
        # Safe to repeat for the same reason as register: the last answer is the current credential.
        path = routes.AGENT_CREDENTIALS.format(agentId=_id(agent_id))
        return _Call("POST", path, _AGENT_CREDENTIAL, principal=KEY)

    @staticmethod
    def heartbeat(agent_id: str) -> _Call:
        return _Call("POST", routes.HEARTBEAT, _HEARTBEAT, {"agentId": agent_id}, principal=AGENT, agent_id=agent_id)

    @staticmethod
    def get_agent(agent_id: str) -> _Call:
        return _Call("GET", routes.AGENT.format(agentId=_id(agent_id)), _AGENT)

    @staticmethod
    def list_agents(status: str | None, limit: int | None, cursor: str | None) -> _Call:
        return _Call("GET", routes.AGENTS, _AGENT_LIST, params=_fields(status=status, limit=limit, cursor=cursor))

    @staticmethod
    def remove_agent(agent_id: str) -> _Call:
        path = routes.AGENT.format(agentId=_id(agent_id))
        return _Call("DELETE", path, _AGENT_REMOVED, retry=False, principal=KEY)

    @staticmethod
    def acquire_lease(agent_id: str, contact: str, duration: Duration | None, intent: str | None) -> _Call:
        body = _fields(
            agentId=agent_id, contactEmail=contact, intent=intent, durationSeconds=whole_seconds(duration, "duration")
        )
        return _Call("POST", routes.LEASE, _LEASE, body, principal=AGENT, agent_id=agent_id)

    @staticmethod
    def renew_lease(lease_id: str, agent_id: str, duration: Duration | None) -> _Call:
        body = _fields(agentId=agent_id, durationSeconds=whole_seconds(duration, "duration"))
        path = routes.LEASE_RENEW.format(leaseId=_id(lease_id))
        return _Call("POST", path, _LEASE, body, principal=AGENT, agent_id=agent_id)

    @staticmethod
    def release_lease(lease_id: str, agent_id: str | None, force: bool) -> _Call:
        if force and agent_id is not None:
            raise ValueError("a forced release frees the lease whoever holds it: leave agent_id out")
        return _Call(
            "DELETE",
            routes.LEASE_BY_ID.format(leaseId=_id(lease_id)),
            _RELEASED,
            params=_fields(agentId=agent_id),
            retry=False,
            principal=KEY if force else AGENT,
            agent_id=agent_id,
        )

    @staticmethod
    def get_lease(lease_id: str) -> _Call:
        return _Call("GET", routes.LEASE_BY_ID.format(leaseId=_id(lease_id)), _LEASE)

    @staticmethod
    def list_leases(agent_id: str | None, contact: str | None, limit: int | None, cursor: str | None) -> _Call:
        params = _fields(agentId=agent_id, contactEmail=contact, limit=limit, cursor=cursor)
        return _Call("GET", routes.LEASES, _LEASE_LIST, params=params)

    @staticmethod
    def send_check(agent_id: str, contact: str, fencing_token: int | None) -> _Call:
        body = _fields(agentId=agent_id, contactEmail=contact, fencingToken=fencing_token)
        return _Call("POST", routes.SEND_CHECK, _SEND_CHECK, body, principal=GATE, agent_id=agent_id)

    @staticmethod
    def suppress(entry: str, reason: str, note: str | None, agent_id: str | None) -> _Call:
        # Safe to repeat: an agent's or a gate key's repeat finds the suppression as it
        # stands, an admin key's writes the same values again (answered 200, not 201).
        return _Call(
            "PUT",
            routes.SUPPRESSION.format(entry=_id(entry)),
            _SUPPRESSION,
            _fields(reason=reason, note=note),
            principal=KEY if agent_id is None else AGENT,
            agent_id=agent_id,
        )

    @staticmethod
    def import_suppressions(items: Iterable[p.SuppressionItem | Mapping[str, Any]], agent_id: str | None) -> _Call:
        # Safe to repeat as suppress is, entry by entry; a repeat's `written` counts
        # only what that attempt wrote.
        body = {"suppressions": _suppression_items(items)}
        return _Call(
            "POST",
            routes.SUPPRESSIONS,
            _SUPPRESSION_IMPORT,
            body,
            principal=KEY if agent_id is None else AGENT,
            agent_id=agent_id,
        )

    @staticmethod
    def get_suppression(entry: str) -> _Call:
        return _Call("GET", routes.SUPPRESSION.format(entry=_id(entry)), _SUPPRESSION)

    @staticmethod
    def list_suppressions(limit: int | None, cursor: str | None) -> _Call:
        return _Call("GET", routes.SUPPRESSIONS, _SUPPRESSION_LIST, params=_fields(limit=limit, cursor=cursor))

    @staticmethod
    def lift_suppression(entry: str) -> _Call:
        # Not repeated, as release: after a lift whose answer was lost, a repeat answers
        # 404 suppression_not_found although the lift happened.
        path = routes.SUPPRESSION.format(entry=_id(entry))
        return _Call("DELETE", path, _SUPPRESSION, retry=False, principal=KEY)

    @staticmethod
    def request_consensus(
        agent_id: str,
        action: str,
        contact: str | None,
        reason: str | None,
        timeout: Duration | None,
        idempotency_key: str | None,
    ) -> _Call:
        body = _fields(
            requestingAgentId=agent_id,
            action=action,
            contactEmail=contact,
            reason=reason,
            timeoutSeconds=whole_seconds(timeout, "timeout"),
        )
        # The key makes the request safe to repeat: it is fixed here, once per call,
        # so every retry of this call carries the same one.
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return _Call("POST", routes.CONSENSUS, _CONSENSUS, body, headers=headers, principal=AGENT, agent_id=agent_id)

    @staticmethod
    def vote(consensus_id: str, agent_id: str, vote: str, reason: str | None) -> _Call:
        body = _fields(agentId=agent_id, vote=vote, reason=reason)
        path = routes.VOTE.format(consensusId=_id(consensus_id))
        return _Call("POST", path, _CONSENSUS, body, principal=AGENT, agent_id=agent_id)

    @staticmethod
    def get_consensus(consensus_id: str, wait: Duration | None) -> _Call:
        seconds = whole_seconds(wait, "wait")
        return _Call(
            "GET",
            routes.CONSENSUS_BY_ID.format(consensusId=_id(consensus_id)),
            _CONSENSUS,
            params=_fields(waitSeconds=seconds),
            wait=seconds or 0.0,
        )

    @staticmethod
    def list_consensus(status: str | None, limit: int | None, cursor: str | None) -> _Call:
        params = _fields(status=status, limit=limit, cursor=cursor)
        return _Call("GET", routes.CONSENSUS, _CONSENSUS_LIST, params=params)

    @staticmethod
    def events(
        after: str | int | None, limit: int | None, types: Any, agent_id: str | None, contact: str | None
    ) -> _Call:
        # Without after or limit the endpoint streams instead: a page starts somewhere.
        after = "0" if after is None and limit is None else after
        params = _fields(after=after, limit=limit, type=_types(types), agentId=agent_id, contactEmail=contact)
        return _Call("GET", routes.EVENTS, _EVENT_PAGE, params=params)

    @staticmethod
    def event_stream(types: Any, agent_id: str | None, contact: str | None) -> _Call:
        params = _fields(type=_types(types), agentId=agent_id, contactEmail=contact)
        return _Call("GET", routes.EVENTS, _EVENT, params=params, headers={"Accept": "text/event-stream"})


def _wait_seconds(deadline: float | None) -> int | None:
    """The next long poll's waitSeconds before ``deadline`` (monotonic; None: no
    deadline), or None when too little time is left to wait at all."""
    if deadline is None:
        return MAX_WAIT_SECONDS
    left = deadline - time.monotonic()
    return None if left < 0.5 else min(MAX_WAIT_SECONDS, max(1, round(left)))


def _long_polls(timeout: Duration | None) -> Iterator[int | None]:
    """The ``wait`` of each read of wait_consensus until ``timeout`` passes (None:
    without end). The first read happens even when no time is left to wait (its
    wait is then None: a plain read); no read starts after the deadline."""
    deadline = None if timeout is None else time.monotonic() + seconds(timeout, "timeout")
    yield _wait_seconds(deadline)
    while (wait := _wait_seconds(deadline)) is not None:
        yield wait
