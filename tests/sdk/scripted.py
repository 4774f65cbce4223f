"""Scripted answers for the SDK tests: `Script`, an httpx.MockTransport that answers
as told and records every request, and the answers themselves. With it a test sees
exactly what the client sends, and how it retries, without a service."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import msgspec

from concord import Concord
from concord.protocol import ERRORS
from tests.sdk.live import API_KEY, TENANT

URL = "http://concord.test"
AGENT_ID = f"agent_{uuid.uuid4()}"
# The scripted agent's credential, as registering answers one: the scripted client holds it.
CREDENTIAL = f"concord-agent.{TENANT}.{AGENT_ID}.{'s3cr3t' * 8}"
LEASE_ID = f"lease_{uuid.uuid4()}"
CONS_ID = f"cons_{uuid.uuid4()}"
AT = "2026-11-23T10:00:00.000Z"
AGENT = {
    "id": AGENT_ID,
    "tenantId": TENANT,
    "agentName": "sdr",
    "agentRole": "sdr",
    "status": "active",
    "lastHeartbeat": AT,
    "registeredAt": AT,
    "updatedAt": AT,
    "metadata": {},
}
HEARTBEAT = {"agentId": AGENT_ID, "status": "active", "lastHeartbeat": AT, "activeUntil": AT}
RELEASED = {"id": LEASE_ID, "released": True, "releasedAt": AT}
LEASE = {
    "id": LEASE_ID,
    "tenantId": TENANT,
    "agentId": AGENT_ID,
    "agentName": "sdr",
    "contactEmail": "a@example.com",
    "intent": None,
    "acquiredAt": AT,
    "expiresAt": AT,
    "fencingToken": 7,
    "conflict": False,
}


def consensus(status: str = "pending") -> dict[str, Any]:
    return {
        "id": CONS_ID,
        "tenantId": TENANT,
        "requestingAgentId": AGENT_ID,
        "action": "refund",
        "contactEmail": None,
        "reason": None,
        "status": status,
        "createdAt": AT,
        "expiresAt": AT,
        "resolvedAt": None if status == "pending" else AT,
        "tally": {"approve": 0, "reject": 0, "eligible": 2, "needed": 2},
        "votes": [],
    }


def problem(code: str, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    status = ERRORS[code][0] if code in ERRORS else 418
    body = {"type": f"urn:concord:problem:{code}", "title": code, "status": status, "detail": f"{code}!", "code": code}
    return httpx.Response(status, json={**body, **extra}, headers=headers)


class Script:
    """A MockTransport that answers with ``answers`` in turn (the last one again
    when they run out; an exception is raised instead) and records the requests."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer.stream, httpx.ByteStream):  # a copy: a response is read once
            return httpx.Response(answer.status_code, headers=answer.headers, content=answer.read())
        return answer

    def bodies(self) -> list[Any]:
        return [msgspec.json.decode(request.content) if request.content else None for request in self.requests]


UNAVAILABLE = problem("store_unavailable", {"Retry-After": "0"})


def scripted(*answers: httpx.Response | Exception, **options: Any) -> tuple[Concord, Script]:
    """A client of the tenant's API key that is also the scripted agent (it holds CREDENTIAL)."""
    script = Script(*answers)
    options = {"agent_credential": CREDENTIAL, **options}
    return Concord(URL, API_KEY, http=script.transport, backoff=0, **options), script


def bearers(script: Script) -> list[str]:
    """The token each recorded request went with."""
    return [request.headers["Authorization"].removeprefix("Bearer ") for request in script.requests]
