"""Roles: what an admin, enroll, gate and read key, and an agent's credential, may call.

Generated from the route table, so a new route is covered without anyone
remembering: every authenticated route is called with a key of every role and
with an agent credential. A role that may not call it gets 403 insufficient_scope
naming the key's id and role (or the credential's agent), before the body is read,
and nothing of the tenant changes; a role that may is never refused for its role.
The expected roles are written out here, apart from the declarations they check.
"""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from concord.protocol import routes as paths
from concord.server.app import create_app
from concord.server.http.endpoint import Endpoint
from concord.server.http.routes import routes
from concord.server.settings import parse_api_keys
from concord.server.store import Store
from tests.conftest import running
from tests.support.api import TENANT, V1, C, ok, problem, tenant_snapshot, unknown_id, verdict

ROLE_KEYS = {role: f"{role}-key-0123456789" for role in ("admin", "enroll", "gate", "read")}
CONFIGURED = ",".join(f"{TENANT}/{role}:{key}" for role, key in ROLE_KEYS.items())
# Who may call what, as docs/api.md (Roles) promises it: only an agent's own
# credential acts as the agent; an admin key may also force-release and send-check.
AGENT_ONLY = {"agent"}
SPECIAL = {
    ("POST", paths.REGISTER): {"admin", "enroll"},
    ("POST", paths.AGENT_CREDENTIALS): {"admin", "enroll"},
    ("POST", paths.SEND_CHECK): {"admin", "gate", "agent"},
    ("POST", paths.HEARTBEAT): AGENT_ONLY,
    ("POST", paths.LEASE): AGENT_ONLY,
    ("POST", paths.LEASE_RENEW): AGENT_ONLY,
    ("DELETE", paths.LEASE_BY_ID): {"admin", "agent"},
    ("POST", paths.CONSENSUS): AGENT_ONLY,
    ("POST", paths.VOTE): {"agent", "human"},
    ("PUT", paths.SUPPRESSION): {"admin", "gate", "agent"},
    ("POST", paths.SUPPRESSIONS): {"admin", "gate", "agent"},
    ("GET", paths.SUPPRESSION): {"admin", "read", "gate", "agent"},
    ("GET", paths.SUPPRESSIONS): {"admin", "read", "gate", "agent"},
}
# The body or query field that names the agent a route acts as.
ACTS_AS = {
    ("POST", paths.SEND_CHECK): "agent_id",
    ("POST", paths.HEARTBEAT): "agent_id",
    ("POST", paths.LEASE): "agent_id",
    ("POST", paths.LEASE_RENEW): "agent_id",
    ("DELETE", paths.LEASE_BY_ID): "agent_id",
    ("POST", paths.CONSENSUS): "requesting_agent_id",
    ("POST", paths.VOTE): "agent_id",
}
ID_KINDS = {"agentId": "agent", "leaseId": "lease", "consensusId": "cons"}
PATH_VALUES = {"action": "refund", "entry": "alice@example.com"}  # path parameters that are names, not ids
ROLES = (*ROLE_KEYS, "agent", "human")
MEMBERS = {"agent": "agent", "human": "human member"}  # a member's own credential, as a refusal names it


def expected_roles(e: Endpoint) -> set[str]:
    return SPECIAL.get((e.method, e.path), {"admin", "read", "agent", "human"} if e.method == "GET" else {"admin"})


ENDPOINTS = [r.endpoint for r in routes if isinstance(r.endpoint, Endpoint) and r.endpoint.authenticated]
CELLS = [(e, role) for e in ENDPOINTS for role in ROLES]


@pytest.fixture
async def role_app(settings, redis_client):
    with_roles = dataclasses.replace(settings, api_keys=parse_api_keys(CONFIGURED))
    async with running(create_app(with_roles, redis_client)) as app:
        yield app


def as_key(app, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://concord.test",
        headers={"Authorization": f"Bearer {key}"},
    )


def path_of(e: Endpoint) -> str:
    return e.path.format(**{name: PATH_VALUES.get(name) or unknown_id(ID_KINDS[name]) for name in e.ids})


def test_every_route_has_its_expected_roles_declared():
    assert ENDPOINTS and all(e.roles == expected_roles(e) for e in ENDPOINTS), [
        (e.method, e.path, sorted(e.roles)) for e in ENDPOINTS if e.roles != expected_roles(e)
    ]


def test_every_route_that_acts_as_an_agent_names_its_field():
    assert {(e.method, e.path): e.acts_as for e in ENDPOINTS if e.acts_as} == ACTS_AS


@pytest.mark.parametrize("e, role", CELLS, ids=[f"{e.method} {e.path.removeprefix(V1)} as {r}" for e, r in CELLS])
async def test_a_key_calls_only_what_its_role_may(role_app, redis_client, keys, e: Endpoint, role: str):
    agent_id = None
    if role in MEMBERS:  # a member of the tenant, calling with its own credential
        async with as_key(role_app, ROLE_KEYS["admin"]) as admin:
            agent = ok(await admin.post(f"{V1}/register", json={"agentName": f"roles-{role}", "kind": role}), 201)
        agent_id, token = agent["id"], agent["credential"]
    else:
        token = ROLE_KEYS[role]
    before = await tenant_snapshot(redis_client, keys, TENANT)
    async with as_key(role_app, token) as client:
        # The event stream as a page: a stream of an allowed role would not end.
        params = {"limit": 1} if e.path == paths.EVENTS else None
        response = await client.request(e.method, path_of(e), params=params, json={} if e.body is not None else None)
    if role in expected_roles(e):
        assert not (response.status_code == 403 and response.json()["code"] == "insufficient_scope"), response.text
        return
    body = problem(response, 403, "insufficient_scope", keyRole=role)
    if role in MEMBERS:
        assert f"The credential of {MEMBERS[role]} {agent_id} may not" in body["detail"], body
        assert token not in body["detail"], body
    else:
        position = list(ROLE_KEYS).index(role) + 1  # the key's id names its place in CONCORD_API_KEYS
        assert f"cfg-{position} (role {role})" in body["detail"] and token not in body["detail"], body
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


async def test_a_stored_key_carries_its_role(role_app, redis_client, keys):
    gate_key, grant = await Store(redis_client, keys).apikeys.create(TENANT, "gate")
    async with as_key(role_app, gate_key) as gate:
        refused = problem(await gate.post(f"{V1}/register", json={"agentName": "x"}), 403, "insufficient_scope")
        assert grant.id in refused["detail"]
        check = await gate.post(f"{C}/send-check", json={"agentId": unknown_id("agent"), "contactEmail": "a@b.co"})
        assert verdict(ok(check), "a@b.co") == {"allowed": False, "reason": "agent_not_found"}


async def test_an_enroll_key_with_roles_registers_only_agents_of_those_roles(role_app, redis_client, keys):
    enroll_key, _ = await Store(redis_client, keys).apikeys.create(TENANT, "enroll", ("sdr", "support"))
    async with as_key(role_app, enroll_key) as enroll, as_key(role_app, ROLE_KEYS["admin"]) as admin:
        sdr = ok(await enroll.post(f"{V1}/register", json={"agentName": "sdr-1", "agentRole": "sdr"}), 201)
        assert sdr["agentRole"] == "sdr"
        # A re-registration that keeps its role is one of those roles too.
        ok(await enroll.post(f"{V1}/register", json={"agentName": "sdr-1"}))
        # Neither another role, nor the default role of a new agent, nor an agent of another role kept.
        ok(await admin.post(f"{V1}/register", json={"agentName": "cfo", "agentRole": "finance"}), 201)
        before = await tenant_snapshot(redis_client, keys, TENANT)
        for body, role in (
            ({"agentName": "fin-1", "agentRole": "finance"}, "finance"),
            ({"agentName": "plain"}, "general"),
            ({"agentName": "cfo"}, "finance"),
            ({"agentName": "sdr-1", "agentRole": "finance"}, "finance"),
        ):
            refused = problem(
                await enroll.post(f"{V1}/register", json=body), 403, "insufficient_scope", keyRole="enroll"
            )
            assert "sdr, support" in refused["detail"] and repr(role) in refused["detail"], refused
        assert await tenant_snapshot(redis_client, keys, TENANT) == before  # nothing written


async def test_an_enroll_key_without_roles_registers_any_role(role_app):
    async with as_key(role_app, ROLE_KEYS["enroll"]) as enroll:
        ok(await enroll.post(f"{V1}/register", json={"agentName": "fin-1", "agentRole": "finance"}), 201)
        ok(await enroll.post(f"{V1}/register", json={"agentName": "plain"}), 201)
