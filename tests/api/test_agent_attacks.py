"""Acting as another agent: an attack suite GENERATED from the route table, so a
route that acts as an agent (Endpoint.acts_as) is covered the moment it is routed.

For every such endpoint, the request its declaration describes (isolation's
generator: test_isolation_generated.build) targets agent A, the victim: A in the
acting field, A's lease and a consensus request A may vote on in the path. Each
cell sends it as an attacker:

* agent B's own credential naming A: 403 agent_mismatch;
* a key of each role (admin, enroll, gate, read): 403 insufficient_scope, except
  the calls the roles are documented to make (send-check by a gate or admin key,
  a forced release by an admin key), which are answered and never recorded as A's;
* a forged credential claiming A (A's id, a secret Concord never made): 401.

In each cell the tenant's keys in Redis are what they were before (but for the
allowed calls), and no event names A as its actor. The suite reports its cells and
breaches (a cell that did not hold) with `pytest -s`, and to CONCORD_SECURITY_REPORT:
with the seven acting routes of today, 7 x 6 = 42 cells per backend, 0 breaches.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import httpx
import pytest

from concord.server.http.endpoint import Endpoint
from concord.server.http.routes import routes
from tests.api.credential_support import as_credential, forged
from tests.api.isolation_support import CONTACT, World
from tests.api.test_isolation_generated import build
from tests.api.test_key_roles import ROLE_KEYS, as_key
from tests.api.test_key_roles import role_app as role_app  # fixtures: pytest finds them here
from tests.support.api import TENANT, V1, C, ok, problem, tenant_snapshot
from tests.system.security_support import security_report

ACTING = [r.endpoint for r in routes if isinstance(r.endpoint, Endpoint) and r.endpoint.acts_as is not None]
ATTACKERS = ("agent-B", *ROLE_KEYS, "forged-A")
# What a key of a role may do on an acting route (docs/api.md, Roles): answered, not refused.
ALLOWED = {("POST", f"{C}/send-check"): {"admin", "gate"}, ("DELETE", f"{C}/lease/{{leaseId}}"): {"admin"}}


@dataclass(frozen=True)
class Cell:
    endpoint: Endpoint
    attacker: str

    @property
    def id(self) -> str:
        return f"{self.endpoint.method} {self.endpoint.path.removeprefix(V1)} by {self.attacker}"

    @property
    def allowed(self) -> bool:
        return self.attacker in ALLOWED.get((self.endpoint.method, self.endpoint.path), set())

    def expected(self) -> tuple[int, str | None]:
        if self.attacker == "agent-B":
            return 403, "agent_mismatch"
        if self.attacker == "forged-A":
            return 401, "unauthorized"
        return (200, None) if self.allowed else (403, "insufficient_scope")


CELLS = [Cell(e, attacker) for e in ACTING for attacker in ATTACKERS]
TALLY: Counter = Counter()  # backend -> cells; "breaches" -> cells that did not hold


@pytest.fixture(scope="module", autouse=True)
def attack_report():
    yield
    if not TALLY:
        return
    cells = sum(n for k, n in TALLY.items() if k != "breaches")
    per_backend = ", ".join(f"{k} {n}" for k, n in sorted(TALLY.items()) if k != "breaches")
    security_report(
        f"acting as another agent: {cells} cells ({per_backend}) over {len(ACTING)} acting routes, "
        f"{TALLY['breaches']} breaches",
        {"check": "agent-impersonation", "routes": len(ACTING), "cells": cells, "breaches": TALLY["breaches"]},
    )


async def victim_world(admin: httpx.AsyncClient, app) -> tuple[World, dict[str, str]]:
    """Agents A (the victim), B (the attacker) and C; A holds the lease on CONTACT, C
    asked for a consensus A may vote on. Returns the world and each agent's credential."""
    agents = {n: ok(await admin.post(f"{V1}/register", json={"agentName": n}), 201) for n in ("A", "B", "C")}
    credentials = {n: a["credential"] for n, a in agents.items()}
    async with as_credential(app, credentials["A"]) as a:
        lease = ok(await a.post(f"{C}/lease", json={"contactEmail": CONTACT}), 201)
    async with as_credential(app, credentials["C"]) as c:
        pending = ok(await c.post(f"{C}/consensus", json={"action": "send-discount"}), 201)
    world = World(a={"agent": agents["A"], "lease": lease, "pending": pending}, b={"agent": agents["B"]})
    return world, credentials


async def actors(admin: httpx.AsyncClient, after: str) -> list[tuple[str, str, str]]:
    page = ok(await admin.get(f"{C}/events", params={"after": after, "limit": 1000}))
    return [(e["type"], e.get("actor"), e.get("actorRole")) for e in page["events"]]


async def last_event(admin: httpx.AsyncClient) -> str:
    return ok(await admin.get(f"{C}/events", params={"after": "0", "limit": 1000}))["nextAfter"]


@pytest.mark.parametrize("cell", [pytest.param(c, id=c.id) for c in CELLS])
async def test_no_one_acts_as_another_agent(request, role_app, redis_client, keys, cell: Cell):
    TALLY[request.node.callspec.params["redis_client"]] += 1
    try:
        async with as_key(role_app, ROLE_KEYS["admin"]) as admin:
            world, credentials = await victim_world(admin, role_app)
            victim = world.a["agent"]["id"]
            ids = {"agent": victim, "lease": world.a["lease"]["id"], "cons": world.a["pending"]["id"]}
            built = build(cell.endpoint, world, ids, acting=victim)
            token = {"agent-B": credentials["B"], "forged-A": forged(TENANT, victim)}.get(cell.attacker)
            token = token or ROLE_KEYS[cell.attacker]

            before, after_id = await tenant_snapshot(redis_client, keys, TENANT), await last_event(admin)
            async with as_key(role_app, token) as attacker:
                response = await built.send(attacker)
            status, code = cell.expected()
            if code is None:
                assert response.status_code == status, response.text
            else:
                body = problem(response, status, code)
                if code == "insufficient_scope":
                    assert body["keyRole"] == cell.attacker, body
                if code == "agent_mismatch":
                    assert body["agentId"] == world.b["agent"]["id"], body

            written = await actors(admin, after_id)
            assert not [e for e in written if e[1] == victim], f"an event names the victim as its actor: {written}"
            if cell.allowed and cell.endpoint.method == "DELETE":  # a forced release: the admin key's
                assert written == [("lease.released", "cfg-1", "admin")], written
            else:
                assert written == [], written
                assert await tenant_snapshot(redis_client, keys, TENANT) == before
    except AssertionError:
        TALLY["breaches"] += 1
        raise


def test_every_acting_route_is_attacked_by_every_attacker():
    """The cells come from the route table: each route that acts as an agent, by each
    attacker. Today that is the seven routes of docs/api.md, 42 cells per backend."""
    assert {(e.method, e.path.removeprefix(C)) for e in ACTING} == {
        ("POST", "/heartbeat"),
        ("POST", "/lease"),
        ("POST", "/lease/{leaseId}/renew"),
        ("DELETE", "/lease/{leaseId}"),
        ("POST", "/send-check"),
        ("POST", "/consensus"),
        ("POST", "/consensus/{consensusId}/vote"),
    }
    assert len(CELLS) == len(ACTING) * 6 == 42
    assert {(c.endpoint.method, c.endpoint.path) for c in CELLS if c.allowed} == set(ALLOWED)


@pytest.mark.parametrize("endpoint", [pytest.param(e, id=f"{e.method} {e.path.removeprefix(V1)}") for e in ACTING])
async def test_the_victims_own_credential_makes_the_same_call(role_app, endpoint: Endpoint):
    """The control of the cells above: the request they send is one A may make, and
    with A's own credential it is answered (so no cell holds by a malformed request)."""
    async with as_key(role_app, ROLE_KEYS["admin"]) as admin:
        world, credentials = await victim_world(admin, role_app)
        ids = {"agent": world.a["agent"]["id"], "lease": world.a["lease"]["id"], "cons": world.a["pending"]["id"]}
        built = build(endpoint, world, ids, acting=world.a["agent"]["id"])
        after_id = await last_event(admin)
        async with as_credential(role_app, credentials["A"]) as victim:
            response = await built.send(victim)
        assert response.status_code in (200, 201), response.text
        # What it wrote is recorded as A's (a heartbeat and a send-check write no event).
        assert {actor for _, actor, _ in await actors(admin, after_id)} <= {world.a["agent"]["id"]}
