"""Small helpers shared by the HTTP API tests (tests/api/, and the system and property tests).

They drive the API the way a client would and check what every answer of a kind
has in common (problem+json shape, id and time formats); each test still asserts
its own bodies in full.
"""

from __future__ import annotations

import calendar
import json
import re
import time
import uuid
from collections.abc import AsyncGenerator, Generator
from typing import Any

import httpx
import redis.asyncio

from concord.server.store.keys import Keys
from tests.support.helpers import snapshot

TENANT, OTHER_TENANT = "acme", "globex"  # the tenants of the `client` / `other_client` fixtures
WINDOW_MS = 300 * 1000  # the heartbeat window of the app fixture (window_seconds = 300)

V1 = "/v1/agent"
C = f"{V1}/coordination"

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
AGENT_ID = re.compile(f"agent_{_UUID}")
LEASE_ID = re.compile(f"lease_{_UUID}")
CONS_ID = re.compile(f"cons_{_UUID}")
ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code"}


def ms(iso: str) -> int:
    """An ISO-8601 UTC time of the API (``...T12:00:00.123Z``) as Unix milliseconds."""
    assert ISO_Z.fullmatch(iso), f"not an ISO-8601 UTC time with milliseconds and Z: {iso!r}"
    seconds = calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1000 + int(iso[20:23])


def iso(millis: int) -> str:
    seconds, rest = divmod(int(millis), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:03d}Z"


def unknown_id(kind: str) -> str:
    """A well-formed id that names nothing: ``agent_<uuid>``, ``lease_<uuid>``, ``cons_<uuid>``."""
    return f"{kind}_{uuid.uuid4()}"


def problem(response: httpx.Response, http_status: int, code: str, **members: Any) -> dict[str, Any]:
    """Assert ``response`` is the problem+json document of ``code`` and return its body.

    ``members`` are extra members that must be present with exactly these values.
    """
    assert response.status_code == http_status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body = response.json()
    assert PROBLEM_MEMBERS <= body.keys(), body
    assert body["type"] == f"urn:concord:problem:{code}", body
    assert body["status"] == http_status and body["code"] == code, body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    for name, value in members.items():
        assert body.get(name) == value, (name, body)
    return body


def closed(response: httpx.Response, consensus_status: str) -> dict[str, Any]:
    """A 409 consensus_closed that reports what the request became as ``consensusStatus``."""
    body = problem(response, 409, "consensus_closed", consensusStatus=consensus_status)
    assert consensus_status in body["detail"], body
    return body


def invalid(response: httpx.Response, field: str) -> dict[str, Any]:
    """A 422 validation_error whose ``field`` member is ``field`` (a JSON path such as
    ``$.durationMinutes``, or ``header Idempotency-Key``) and whose detail starts by
    naming it in words ("durationMinutes: ...", "query parameter limit: ...") and
    says the rule without a regex or a library's message."""
    body = problem(response, 422, "validation_error", field=field)
    name = "body" if field == "$" else field.removeprefix("$.")
    assert body["detail"].startswith(
        (f"{name}: ", f"query parameter {name}: ", f"path parameter {name.removeprefix('path ')}: ")
    ), body
    assert not any(internal in body["detail"] for internal in WORDS_ONLY), body
    assert set(body) == PROBLEM_MEMBERS | {"field"}, body
    return body


# What a refusal must never show: a regex, or msgspec's own phrasing.
WORDS_ONLY = ("regex", "(?!", "[A-Za-z", "\\x", "Expected `", "- at `", "Object contains", "Object missing")


def unknown(response: httpx.Response, kind: str, value: str, tenant: str = TENANT) -> dict[str, Any]:
    """The 404 of an id that names nothing (``kind`` agent, lease or consensus):
    the same for a well-formed unknown id as for one of another shape, naming the
    id and the tenant, and saying what to do next."""
    code = {"agent": "agent_not_found", "lease": "lease_not_found", "consensus": "consensus_not_found"}[kind]
    body = problem(response, 404, code)
    quoted = value[:80] if value[:80].isprintable() else repr(value[:80])  # an unprintable id is quoted
    assert quoted in body["detail"] and f"in tenant {tenant}" in body["detail"], body
    assert "POST /v1/agent/" in body["detail"], body  # where to make one
    return body


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json", response.headers
    return response.json()


def verdict(answer: dict[str, Any], address: str) -> dict[str, Any]:
    """A send-check answer without the contact it names, once that is checked: the
    address asked about (normalized) and the canonical contact it reaches."""
    from concord.protocol import canonical_contact, normalize_email

    answer = dict(answer)
    asked = normalize_email(address)
    assert (answer.pop("contactEmail"), answer.pop("contact")) == (asked, canonical_contact(asked)), answer
    return answer


# --- credentials ----------------------------------------------------------------

# The requests that act as an agent, and where they name it: what a fleet sends
# with that agent's own credential (docs/api.md, Roles).
_ACTING = (
    ("POST", re.compile(f"{C}/heartbeat"), "agentId"),
    ("POST", re.compile(f"{C}/lease"), "agentId"),
    ("POST", re.compile(f"{C}/lease/[^/]+/renew"), "agentId"),
    ("DELETE", re.compile(f"{C}/lease/[^/]+"), "?agentId"),
    ("POST", re.compile(f"{C}/send-check"), "agentId"),
    ("POST", re.compile(f"{C}/consensus"), "requestingAgentId"),
    ("POST", re.compile(f"{C}/consensus/[^/]+/vote"), "agentId"),
)
_TEACHING = re.compile(f"{V1}/register|{V1}/agents/[^/]+/credentials")


class Fleet(httpx.Auth):
    """How a test's client authenticates, as a fleet's processes would: each agent
    with its own credential, everything else with the tenant's API key.

    It learns each agent's credential from the answer that made it (registering,
    rotating). A request that acts as an agent (_ACTING) and names one whose
    credential it knows goes with that credential; any other request, with the
    key. A request that carries its own Authorization header goes as it is: the
    tests of roles, impersonation and attacks set theirs."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key
        self.credentials: dict[str, str] = {}  # agent id -> its current credential

    def sign(self, request: httpx.Request) -> None:
        if "authorization" in request.headers:
            return
        agent = _acting_agent(request)
        token = self.credentials.get(agent) if agent else None
        if token or self.api_key:
            request.headers["Authorization"] = f"Bearer {token or self.api_key}"

    def learn(self, request: httpx.Request, response: httpx.Response) -> None:
        if response.status_code in (200, 201) and _TEACHING.fullmatch(request.url.path):
            body = response.json()
            self.credentials[body.get("agentId") or body["id"]] = body["credential"]

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.sign(request)
        response = yield request
        if _TEACHING.fullmatch(request.url.path):
            response.read()
            self.learn(request, response)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        self.sign(request)
        response = yield request
        if _TEACHING.fullmatch(request.url.path):
            await response.aread()
            self.learn(request, response)


def _acting_agent(request: httpx.Request) -> str | None:
    for method, path, field in _ACTING:
        if request.method == method and path.fullmatch(request.url.path):
            if field.startswith("?"):
                return request.url.params.get(field[1:])
            try:
                body = json.loads(request.content or b"null")
            except ValueError:
                return None
            return body.get(field) if isinstance(body, dict) and isinstance(body.get(field), str) else None
    return None


def credential_of(client: httpx.AsyncClient, agent_id: str) -> str:
    """The current credential of an agent that ``client`` registered."""
    assert isinstance(client.auth, Fleet), client.auth
    return client.auth.credentials[agent_id]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- doing things through the API ---------------------------------------------


async def register(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    """Register (or re-register) an agent; returns the agent object."""
    response = await client.post(f"{V1}/register", json={"agentName": name, **fields})
    assert response.status_code in (200, 201), response.text
    return response.json()


async def acquire(
    client: httpx.AsyncClient, agent_id: str, contact: str, status: int = 201, **fields: Any
) -> dict[str, Any]:
    response = await client.post(f"{C}/lease", json={"agentId": agent_id, "contactEmail": contact, **fields})
    assert response.status_code == status, response.text
    return response.json()


async def request_consensus(
    client: httpx.AsyncClient, requester_id: str, action: str = "send-discount", **fields: Any
) -> dict[str, Any]:
    response = await client.post(f"{C}/consensus", json={"requestingAgentId": requester_id, "action": action, **fields})
    assert response.status_code == 201, response.text
    return response.json()


# --- looking at Redis -----------------------------------------------------------


async def redis_ms(redis_client: redis.asyncio.Redis) -> int:
    """Now on Redis's clock (the clock the service uses), in milliseconds."""
    seconds, micros = await redis_client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def make_inactive(redis_client: redis.asyncio.Redis, keys: Keys, tenant: str, agent_id: str) -> None:
    """Age the agent's last heartbeat past the window, as if it had stopped
    heartbeating long ago (no waiting). The lapse mark goes too: a lapse in time is
    swept as it happens, one made by hand lies behind the mark, so the next consensus
    script rebuilds the active agents from the heartbeats (lua/lib.lua sweep_lapsed)."""
    heartbeats = keys.heartbeats(tenant)
    assert await redis_client.zscore(heartbeats, agent_id) is not None, f"{agent_id} has no heartbeat"
    await redis_client.zadd(heartbeats, {agent_id: await redis_ms(redis_client) - WINDOW_MS - 60_000})
    await redis_client.delete(keys.lapse_mark(tenant))


async def tenant_snapshot(redis_client: redis.asyncio.Redis, keys: Keys, tenant: str) -> dict[str, Any]:
    """Every key of one tenant with its type and contents (TTLs left out: they tick)."""
    return await snapshot(redis_client, f"{keys.tenant(tenant)}:*")
