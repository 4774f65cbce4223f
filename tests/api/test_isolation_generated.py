"""Tenant isolation: tenant B's key against every tenant-A resource.

Tenant A (acme, the ``client`` fixture) has agents, a lease, a pending consensus
request with a vote and a decided one. Tenant B (globex, ``other_client``) then
tries each route of concord.server.http.routes.routes with A's real ids and data, one cell per
test. In every cell:

* A's ids answer exactly as ids that never existed would (same status, same body
  but for the id B itself sent): B cannot learn that they exist;
* no answer carries anything of A's that B did not send itself (ids, agent names,
  the contact, intent, action, reason, fencing token);
* a tenantId of A in B's request is 403 tenant_mismatch;
* afterwards every key of A in Redis, and A's view through the API, is unchanged.

test_every_route_has_cells checks the table covers every /v1 route.

Beside these hand-written cells, cells are GENERATED from the route table itself
(concord.server.http.routes.routes, each route running an Endpoint of concord.server.http.endpoint.ENDPOINTS), so
an endpoint added later is covered without anyone remembering to: for every
authenticated endpoint, a request built from its declaration (path ids, body and
query structs) with A's ids in every id-shaped field must answer exactly as the
same request with ids that never existed, showing nothing of A's; tenantId of A in
its query (and in its body, if it has one) is 403 tenant_mismatch. Declared request
headers are sent too (the Idempotency-Key A made its request with, so B's request
must not find A's record). The endpoints without a key (/healthz, /readyz,
/openapi.json) carry no tenant data: their cell checks that B, or anyone, is
shown nothing of A's.

The module reports what it tested: with `pytest -s` it prints one line (cells per
backend, leaks, changes to A's data), and with CONCORD_SECURITY_REPORT=<file> it
appends the same figures to that file as one JSON line.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import pytest
from starlette.routing import Route

from concord import protocol as schemas
from concord.server.app import create_app
from concord.server.http.decoding import PATH_IDS
from concord.server.http.endpoint import ENDPOINTS, Endpoint, respond
from concord.server.http.routes import routes
from tests.conftest import API_KEY, OTHER_API_KEY, running
from tests.support.api import (
    OTHER_TENANT,
    TENANT,
    V1,
    C,
    acquire,
    ok,
    problem,
    register,
    request_consensus,
    tenant_snapshot,
    unknown_id,
)
from tests.system.security_support import security_report

CONTACT = "alice@acme-customer.com"
IDEMPOTENCY_KEY = "acme-idempotency-key"  # A made its pending request with it


@dataclass
class World:
    a: dict[str, Any]  # tenant A's things
    b: dict[str, Any]  # tenant B's own things
    secrets: set[str] = field(default_factory=set)  # every string of A's that B must never be shown
    cells: int = 0
    leaks: int = 0  # secrets of A's that B was shown (counted before the assertion that fails on them)
    changes: int = 0  # cells after which A's data in Redis was not what it was before


@pytest.fixture
async def world(client, other_client) -> World:
    return await build_world(client, other_client)


async def build_world(client: httpx.AsyncClient, other_client: httpx.AsyncClient) -> World:
    """A's things (agents, a lease, a pending and a decided consensus request) and B's."""
    a1 = await register(client, "acme-sdr", agentRole="acme-role", metadata={"acme": "metadata-secret"})
    a2 = await register(client, "acme-support")
    a3 = await register(client, "acme-retention")
    lease = await acquire(client, a1["id"], CONTACT, intent="acme-intent")
    pending = ok(
        await client.post(
            f"{C}/consensus",
            json={
                "requestingAgentId": a1["id"],
                "action": "acme-action",
                "contactEmail": CONTACT,
                "reason": "acme-reason",
            },
            headers={"Idempotency-Key": IDEMPOTENCY_KEY},
        ),
        201,
    )
    ok(
        await client.post(
            f"{C}/consensus/{pending['id']}/vote",
            json={"agentId": a2["id"], "vote": "approve", "reason": "acme-vote-reason"},
        )
    )
    decided = await request_consensus(client, a1["id"], action="acme-decided-action")
    for voter in (a2, a3):
        ok(await client.post(f"{C}/consensus/{decided['id']}/vote", json={"agentId": voter["id"], "vote": "reject"}))
    assert ok(await client.get(f"{C}/consensus/{decided['id']}"))["status"] == "rejected"

    b1 = await register(other_client, "globex-sdr")
    b2 = await register(other_client, "globex-support")
    b_lease = await acquire(other_client, b1["id"], "bob@globex-customer.com")
    b_cons = await request_consensus(other_client, b1["id"], action="globex-action")

    a = {"agent": a1, "peer": a2, "third": a3, "lease": lease, "pending": pending, "decided": decided}
    b = {"agent": b1, "peer": b2, "lease": b_lease, "cons": b_cons}
    secrets = {
        a1["id"],
        a2["id"],
        a3["id"],
        lease["id"],
        pending["id"],
        decided["id"],
        "acme-sdr",
        "acme-support",
        "acme-retention",
        "acme-role",
        "metadata-secret",
        CONTACT,
        "acme-intent",
        "acme-action",
        "acme-reason",
        "acme-vote-reason",
        "acme-decided-action",
        IDEMPOTENCY_KEY,
        str(lease["fencingToken"]),
    }
    return World(a=a, b=b, secrets=secrets)


async def a_view(client, world: World) -> dict[str, Any]:
    """What tenant A sees of its own things."""
    a = world.a
    return {
        "agents": ok(await client.get(f"{V1}/agents")),
        "lease": ok(await client.get(f"{C}/lease/{a['lease']['id']}")),
        "leases": ok(await client.get(f"{C}/leases", params={"contactEmail": CONTACT})),
        "pending": ok(await client.get(f"{C}/consensus/{a['pending']['id']}")),
        "decided": ok(await client.get(f"{C}/consensus/{a['decided']['id']}")),
        "consensus": ok(await client.get(f"{C}/consensus")),
    }


def no_leak(world: World, response: httpx.Response, sent: set[str] = frozenset()) -> None:
    leaked = {s for s in world.secrets - set(sent) if s in response.text}
    world.leaks += len(leaked)
    assert not leaked, f"tenant B was shown {leaked}: {response.text}"


async def hidden(
    world: World,
    call: Callable[[str], Awaitable[httpx.Response]],
    real_id: str,
    status: int,
    code: str | None = None,
    sent: set[str] = frozenset(),
) -> httpx.Response:
    """``call(real_id)`` answers exactly as ``call(<an id that never existed>)``,
    and shows nothing of A's but what it was sent."""
    kind = real_id.split("_", 1)[0]
    fake_id = unknown_id(kind)
    real, fake = await call(real_id), await call(fake_id)
    if code is not None:
        problem(real, status, code)
    assert real.status_code == fake.status_code == status, (real.text, fake.text)
    assert real.text.replace(real_id, "<id>") == fake.text.replace(fake_id, "<id>")
    no_leak(world, real, sent | {real_id})
    world.cells += 1
    return real


async def mismatch(world: World, response: httpx.Response) -> None:
    problem(response, 403, "tenant_mismatch")
    no_leak(world, response)
    world.cells += 1


# --- the cells: (method, route path) -> name -> async cell(b, world) -------------


def _cells() -> dict[tuple[str, str], dict[str, Callable[[httpx.AsyncClient, World], Awaitable[None]]]]:
    a, b = "a", "b"  # readability in the lambdas below

    async def register_a_name(bc, w):
        body = ok(await bc.post(f"{V1}/register", json={"agentName": "acme-sdr"}), 201)  # new in B: 201, not 200
        assert body["id"] != w.a["agent"]["id"] and body["tenantId"] == OTHER_TENANT
        assert body["metadata"] == {} and body["agentRole"] == "general"
        no_leak(w, await bc.get(f"{V1}/agents/{body['id']}"), {"acme-sdr"})
        w.cells += 1

    async def register_tenant(bc, w):
        await mismatch(w, await bc.post(f"{V1}/register", json={"tenantId": TENANT, "agentName": "x"}))

    def list_agents(status):
        async def cell(bc, w):
            params = {"status": status} if status else {}
            body = ok(await bc.get(f"{V1}/agents", params=params))
            mine = {w.b["agent"]["id"], w.b["peer"]["id"]} if status != "inactive" else set()
            assert {x["id"] for x in body["agents"]} == mine
            no_leak(w, await bc.get(f"{V1}/agents", params=params))
            w.cells += 1

        return cell

    async def list_agents_tenant(bc, w):
        await mismatch(w, await bc.get(f"{V1}/agents", params={"tenantId": TENANT}))

    def get_agent(which):
        async def cell(bc, w):
            await hidden(w, lambda i: bc.get(f"{V1}/agents/{i}"), w.a[which]["id"], 404, "agent_not_found")

        return cell

    async def get_agent_tenant(bc, w):
        await mismatch(w, await bc.get(f"{V1}/agents/{w.a['agent']['id']}", params={"tenantId": TENANT}))

    async def delete_agent(bc, w):
        await hidden(w, lambda i: bc.delete(f"{V1}/agents/{i}"), w.a["agent"]["id"], 404, "agent_not_found")

    async def delete_agent_tenant(bc, w):
        await mismatch(w, await bc.delete(f"{V1}/agents/{w.a['agent']['id']}", params={"tenantId": TENANT}))

    async def heartbeat(bc, w):
        await hidden(
            w, lambda i: bc.post(f"{C}/heartbeat", json={"agentId": i}), w.a["agent"]["id"], 404, "agent_not_found"
        )

    async def heartbeat_tenant(bc, w):
        await mismatch(w, await bc.post(f"{C}/heartbeat", json={"tenantId": TENANT, "agentId": w.b["agent"]["id"]}))

    async def lease_as_a(bc, w):
        await hidden(
            w,
            lambda i: bc.post(f"{C}/lease", json={"agentId": i, "contactEmail": CONTACT}),
            w.a["agent"]["id"],
            404,
            "agent_not_found",
            sent={CONTACT},
        )

    async def lease_a_contact(bc, w):
        """A's lease does not exist in B: B's own agent gets the contact, with a lease of B's."""
        response = await bc.post(f"{C}/lease", json={"agentId": w.b["agent"]["id"], "contactEmail": CONTACT})
        body = ok(response, 201)
        assert body["conflict"] is False and body["agentId"] == w.b["agent"]["id"]
        assert body["id"] != w.a["lease"]["id"] and body["intent"] is None
        no_leak(w, response, {CONTACT})
        w.cells += 1

    async def lease_tenant(bc, w):
        await mismatch(
            w,
            await bc.post(
                f"{C}/lease", json={"tenantId": TENANT, "agentId": w.a["agent"]["id"], "contactEmail": CONTACT}
            ),
        )

    async def get_lease(bc, w):
        await hidden(w, lambda i: bc.get(f"{C}/lease/{i}"), w.a["lease"]["id"], 404, "lease_not_found")

    async def get_lease_tenant(bc, w):
        await mismatch(w, await bc.get(f"{C}/lease/{w.a['lease']['id']}", params={"tenantId": TENANT}))

    async def release(bc, w):
        await hidden(w, lambda i: bc.delete(f"{C}/lease/{i}"), w.a["lease"]["id"], 404, "lease_not_found")

    async def release_as_holder(bc, w):
        holder = w.a["agent"]["id"]
        await hidden(
            w,
            lambda i: bc.delete(f"{C}/lease/{i}", params={"agentId": holder}),
            w.a["lease"]["id"],
            404,
            "lease_not_found",
            sent={holder},
        )

    async def release_tenant(bc, w):
        await mismatch(w, await bc.delete(f"{C}/lease/{w.a['lease']['id']}", params={"tenantId": TENANT}))

    def renew(as_whom):
        async def cell(bc, w):
            agent_id = w.a["agent"]["id"] if as_whom == a else w.b["agent"]["id"]
            await hidden(
                w,
                lambda i: bc.post(f"{C}/lease/{i}/renew", json={"agentId": agent_id}),
                w.a["lease"]["id"],
                404,
                "lease_not_found",
                sent={agent_id},
            )

        return cell

    async def renew_tenant(bc, w):
        await mismatch(
            w,
            await bc.post(
                f"{C}/lease/{w.a['lease']['id']}/renew", json={"tenantId": TENANT, "agentId": w.a["agent"]["id"]}
            ),
        )

    async def leases_of_a_agent(bc, w):
        response = await hidden(w, lambda i: bc.get(f"{C}/leases", params={"agentId": i}), w.a["agent"]["id"], 200)
        assert response.json() == {"leases": [], "nextCursor": None}

    async def leases_of_a_contact(bc, w):
        response = await bc.get(f"{C}/leases", params={"contactEmail": CONTACT})
        assert ok(response) == {"leases": [], "nextCursor": None}
        no_leak(w, response, {CONTACT})
        both = await bc.get(f"{C}/leases", params={"contactEmail": CONTACT, "agentId": w.a["agent"]["id"]})
        assert ok(both) == {"leases": [], "nextCursor": None}
        w.cells += 1

    async def leases_tenant(bc, w):
        await mismatch(w, await bc.get(f"{C}/leases", params={"tenantId": TENANT, "agentId": w.a["agent"]["id"]}))

    async def send_check_as_a(bc, w):
        response = await hidden(
            w,
            lambda i: bc.post(f"{C}/send-check", json={"agentId": i, "contactEmail": CONTACT}),
            w.a["agent"]["id"],
            200,
            sent={CONTACT},
        )
        assert response.json() == {"allowed": False, "reason": "agent_not_found"}

    async def send_check_a_contact(bc, w):
        """A's lease does not hold the contact in B: B's agent may send, and no holder is named."""
        response = await bc.post(f"{C}/send-check", json={"agentId": w.b["agent"]["id"], "contactEmail": CONTACT})
        assert ok(response) == {"allowed": True}
        no_leak(w, response, {CONTACT})
        w.cells += 1

    async def send_check_a_token(bc, w):
        token = w.a["lease"]["fencingToken"]
        response = await bc.post(
            f"{C}/send-check", json={"agentId": w.b["agent"]["id"], "contactEmail": CONTACT, "fencingToken": token}
        )
        assert ok(response) == {"allowed": False, "reason": "stale_fencing_token"}
        no_leak(w, response, {CONTACT, str(token)})
        w.cells += 1

    async def send_check_tenant(bc, w):
        await mismatch(
            w,
            await bc.post(
                f"{C}/send-check", json={"tenantId": TENANT, "agentId": w.b["agent"]["id"], "contactEmail": CONTACT}
            ),
        )

    async def consensus_as_a(bc, w):
        await hidden(
            w,
            lambda i: bc.post(f"{C}/consensus", json={"requestingAgentId": i, "action": "x"}),
            w.a["agent"]["id"],
            404,
            "agent_not_found",
        )

    async def consensus_tenant(bc, w):
        await mismatch(
            w,
            await bc.post(
                f"{C}/consensus", json={"tenantId": TENANT, "requestingAgentId": w.b["agent"]["id"], "action": "x"}
            ),
        )

    def list_consensus(status):
        async def cell(bc, w):
            params = {"status": status} if status else {}
            response = await bc.get(f"{C}/consensus", params=params)
            body = ok(response)
            mine = {w.b["cons"]["id"]} if status in (None, "pending") else set()
            assert {x["id"] for x in body["consensus"]} == mine
            no_leak(w, response)
            w.cells += 1

        return cell

    async def list_consensus_tenant(bc, w):
        await mismatch(w, await bc.get(f"{C}/consensus", params={"tenantId": TENANT}))

    def get_consensus(which):
        async def cell(bc, w):
            await hidden(w, lambda i: bc.get(f"{C}/consensus/{i}"), w.a[which]["id"], 404, "consensus_not_found")

        return cell

    async def get_consensus_tenant(bc, w):
        await mismatch(w, await bc.get(f"{C}/consensus/{w.a['pending']['id']}", params={"tenantId": TENANT}))

    def vote(which, as_whom):
        async def cell(bc, w):
            voter = w.a["third"]["id"] if as_whom == a else w.b["peer"]["id"]
            await hidden(
                w,
                lambda i: bc.post(f"{C}/consensus/{i}/vote", json={"agentId": voter, "vote": "approve"}),
                w.a[which]["id"],
                404,
                "consensus_not_found",
                sent={voter},
            )

        return cell

    async def vote_tenant(bc, w):
        await mismatch(
            w,
            await bc.post(
                f"{C}/consensus/{w.a['pending']['id']}/vote",
                json={"tenantId": TENANT, "agentId": w.b["peer"]["id"], "vote": "approve"},
            ),
        )

    def events(filters: Callable[[World], dict[str, str]]):
        async def cell(bc, w):
            """B's page of events holds B's events only, however it filters."""
            params = filters(w)
            response = await bc.get(f"{C}/events", params={"after": "0", **params})
            body = ok(response)
            assert {e["tenantId"] for e in body["events"]} <= {OTHER_TENANT}
            if params:  # A's agent, A's contact: nothing of B's matches
                assert body["events"] == []
            else:
                assert {e.get("agentId") for e in body["events"]} == {w.b["agent"]["id"], w.b["peer"]["id"]}
            no_leak(w, response, set(params.values()))
            w.cells += 1

        return cell

    async def events_tenant(bc, w):
        await mismatch(w, await bc.get(f"{C}/events", params={"tenantId": TENANT, "after": "0"}))

    return {
        ("GET", f"{C}/events"): {
            "all": events(lambda w: {}),
            "A-agent": events(lambda w: {"agentId": w.a["agent"]["id"]}),
            "A-contact": events(lambda w: {"contactEmail": CONTACT}),
            "tenantId-A": events_tenant,
        },
        ("POST", f"{V1}/register"): {
            "same-name-as-A": register_a_name,
            "tenantId-A": register_tenant,
        },
        ("GET", f"{V1}/agents"): {
            "all": list_agents(None),
            "active": list_agents("active"),
            "inactive": list_agents("inactive"),
            "tenantId-A": list_agents_tenant,
        },
        ("GET", f"{V1}/agents/{{agentId}}"): {
            "A-requester": get_agent("agent"),
            "A-voter": get_agent("peer"),
            "tenantId-A": get_agent_tenant,
        },
        ("DELETE", f"{V1}/agents/{{agentId}}"): {"A-agent": delete_agent, "tenantId-A": delete_agent_tenant},
        ("POST", f"{C}/heartbeat"): {"A-agent": heartbeat, "tenantId-A": heartbeat_tenant},
        ("POST", f"{C}/lease"): {
            "A-agent": lease_as_a,
            "A-contact-by-B": lease_a_contact,
            "tenantId-A": lease_tenant,
        },
        ("GET", f"{C}/lease/{{leaseId}}"): {"A-lease": get_lease, "tenantId-A": get_lease_tenant},
        ("DELETE", f"{C}/lease/{{leaseId}}"): {
            "A-lease": release,
            "A-lease-as-A-holder": release_as_holder,
            "tenantId-A": release_tenant,
        },
        ("POST", f"{C}/lease/{{leaseId}}/renew"): {
            "A-lease-as-A-holder": renew(a),
            "A-lease-as-B": renew(b),
            "tenantId-A": renew_tenant,
        },
        ("GET", f"{C}/leases"): {
            "A-agent": leases_of_a_agent,
            "A-contact": leases_of_a_contact,
            "tenantId-A": leases_tenant,
        },
        ("POST", f"{C}/send-check"): {
            "A-agent": send_check_as_a,
            "A-contact-by-B": send_check_a_contact,
            "A-token-by-B": send_check_a_token,
            "tenantId-A": send_check_tenant,
        },
        ("POST", f"{C}/consensus"): {"A-requester": consensus_as_a, "tenantId-A": consensus_tenant},
        ("GET", f"{C}/consensus"): {
            **{f"status-{s}": list_consensus(s) for s in (None, "pending", "approved", "rejected", "expired")},
            "tenantId-A": list_consensus_tenant,
        },
        ("GET", f"{C}/consensus/{{consensusId}}"): {
            "A-pending": get_consensus("pending"),
            "A-decided": get_consensus("decided"),
            "tenantId-A": get_consensus_tenant,
        },
        ("POST", f"{C}/consensus/{{consensusId}}/vote"): {
            "A-pending-by-A-agent": vote("pending", a),
            "A-pending-by-B": vote("pending", b),
            "A-decided-by-B": vote("decided", b),
            "tenantId-A": vote_tenant,
        },
    }


CELLS = _cells()
CELL_PARAMS = [
    pytest.param(route, name, id=f"{route[0]} {route[1].removeprefix(V1)} {name}")
    for route, cells in CELLS.items()
    for name in cells
]


def test_every_route_has_cells():
    """Every /v1 route and method of concord.server.http.routes.routes has isolation cells, a
    tenantId-of-A cell among them."""
    declared = {(m, r.path) for r in routes if r.path.startswith("/v1/") for m in r.methods - {"HEAD"}}
    assert set(CELLS) == declared
    assert all("tenantId-A" in cells for cells in CELLS.values())
    assert len(CELL_PARAMS) == 50


@pytest.mark.parametrize("route, name", CELL_PARAMS)
async def test_tenant_b_against_tenant_a(request, client, other_client, redis_client, keys, world, route, name):
    await run_cell(request, client, redis_client, keys, world, lambda: CELLS[route][name](other_client, world))


async def run_cell(
    request, client, redis_client, keys, world: World, cell: Callable[[], Awaitable[None]], generated: bool = False
) -> None:
    """Run one cell of tenant B against A, then check A's data and view are
    untouched; the figures go to the module's report whatever the outcome."""
    try:
        before_redis = await tenant_snapshot(redis_client, keys, TENANT)
        before_api = await a_view(client, world)
        assert await tenant_snapshot(redis_client, keys, TENANT) == before_redis  # A's own reads write nothing

        await cell()
        assert world.cells == 1

        after_redis = await tenant_snapshot(redis_client, keys, TENANT)
        world.changes += after_redis != before_redis
        assert after_redis == before_redis
        assert await a_view(client, world) == before_api
        # A's lease still protects its contact in A.
        conflict = await client.post(f"{C}/lease", json={"agentId": world.a["peer"]["id"], "contactEmail": CONTACT})
        assert problem(conflict, 409, "lease_conflict")["leaseHolder"]["agentId"] == world.a["agent"]["id"]
    finally:
        REPORT.record(request.node.callspec.params["redis_client"], world, generated)


# --- the report ----------------------------------------------------------------


@dataclass
class Report:
    """What this module tested: cells per backend, and what went wrong in them."""

    cells: Counter = field(default_factory=Counter)  # backend -> cells run
    generated: int = 0  # of those, cells generated from the route table
    leaks: int = 0
    changes: int = 0

    def record(self, backend: str, world: World, generated: bool) -> None:
        self.cells[backend] += world.cells
        self.generated += world.cells if generated else 0
        self.leaks += world.leaks
        self.changes += world.changes


REPORT = Report()


@pytest.fixture(scope="module", autouse=True)
def isolation_report():
    """After the module: one summary line (`pytest -s`), and a JSON line for the docs."""
    yield
    if not REPORT.cells:
        return
    per_backend = ", ".join(f"{backend} {n}" for backend, n in sorted(REPORT.cells.items()))
    security_report(
        f"tenant isolation: {sum(REPORT.cells.values())} cells ({per_backend}; {REPORT.generated} generated from "
        f"the route table) over {len(routes)} routes, {REPORT.leaks} leaks, {REPORT.changes} changes to the other "
        "tenant's data",
        {
            "check": "tenant-isolation",
            "routes": len(routes),
            "cells": sum(REPORT.cells.values()),
            "cellsByBackend": dict(sorted(REPORT.cells.items())),
            "generatedCells": REPORT.generated,
            "leaks": REPORT.leaks,
            "changes": REPORT.changes,
        },
    )


# --- cells generated from the route table --------------------------------------
#
# Nothing below names an endpoint: the cells come from each route's Endpoint
# declaration, so a new endpoint gets them the moment it is routed.

# Values for fields that are not ids (ids are recognised by their pattern, below).
NAMED_VALUES: dict[str, Callable[[World], Any]] = {
    "contactEmail": lambda w: CONTACT,
    "fencingToken": lambda w: w.a["lease"]["fencingToken"],
    "agentName": lambda w: "acme-sdr",  # A's agent name: registering it in B makes B's own agent
    "vote": lambda w: "approve",
    "limit": lambda w: 100,  # events: a JSON page (without after or limit it is a live stream)
}
# Values for the request headers an endpoint declares (others get a plain value).
NAMED_HEADERS: dict[str, Callable[[World], str]] = {
    "Idempotency-Key": lambda w: IDEMPOTENCY_KEY,  # A's key: B's request must not find A's record
    "Last-Event-ID": lambda w: "0",
}
_ID_PATTERN = re.compile(r"\^(agent|lease|cons)_")
# The id prefix of each path parameter, as the API checks it.
PATH_KINDS = {name: schemas.ID_PREFIXES[kind] for name, kind in PATH_IDS.items()}


def endpoint_of(route: Route) -> Endpoint:
    """The Endpoint a route runs: the router runs each one as an ASGI app of its own."""
    endpoint = route.endpoint
    assert isinstance(endpoint, Endpoint), route
    return endpoint


@dataclass(frozen=True)
class Generated:
    endpoint: Endpoint
    kind: str  # "A-ids" | "tenantId-A-query" | "tenantId-A-body" | "no-tenant-data"

    @property
    def id(self) -> str:
        return f"{self.endpoint.method} {self.endpoint.path.removeprefix(V1)} {self.kind}"


def generated_cells(route_table: list[Route]) -> list[Generated]:
    """The cells of every route of ``route_table``, from its Endpoint declaration alone."""
    cells = []
    for route in route_table:
        endpoint = endpoint_of(route)
        if not endpoint.authenticated:
            cells.append(Generated(endpoint, "no-tenant-data"))
            continue
        cells += [Generated(endpoint, "A-ids"), Generated(endpoint, "tenantId-A-query")]
        if endpoint.body is not None:
            cells.append(Generated(endpoint, "tenantId-A-body"))
    return cells


GENERATED = generated_cells(routes)


def _id_kind(t: msgspec.inspect.Type) -> str | None:
    """``agent``, ``lease`` or ``cons`` when ``t`` (or its non-None member) is an id of that kind."""
    if isinstance(t, msgspec.inspect.UnionType):
        members = [m for m in t.types if not isinstance(m, msgspec.inspect.NoneType)]
        return _id_kind(members[0]) if len(members) == 1 else None
    if isinstance(t, msgspec.inspect.Metadata):
        kind = (t.extra or {}).get("id_kind")  # protocol.types: an id checked for its shape once decoded
        return schemas.ID_PREFIXES[kind] if kind else _id_kind(t.type)
    if isinstance(t, msgspec.inspect.StrType) and t.pattern:
        found = _ID_PATTERN.match(t.pattern)
        return found[1] if found else None
    return None


def _plain_value(t: msgspec.inspect.Type, where: str) -> Any:
    """A valid value of a required field that has no entry in NAMED_VALUES."""
    if isinstance(t, msgspec.inspect.Metadata):
        return _plain_value(t.type, where)
    if isinstance(t, msgspec.inspect.StrType):
        return "x" * max(1, t.min_length or 1)
    if isinstance(t, msgspec.inspect.IntType):
        return t.ge if t.ge is not None else 1
    if isinstance(t, msgspec.inspect.LiteralType):
        return t.values[0]
    if isinstance(t, msgspec.inspect.BoolType):
        return True
    raise LookupError(f"no value for the required field {where}: add one to NAMED_VALUES")


def _fields(struct: type | None, world: World, ids: dict[str, str], where: str) -> dict[str, Any]:
    """Values for a body or query struct: every id-shaped field gets ``ids`` of its
    kind, named fields their NAMED_VALUES, other required fields a plain value."""
    values: dict[str, Any] = {}
    if struct is None:
        return values
    for f in msgspec.inspect.type_info(struct).fields:
        kind = _id_kind(f.type)
        if f.encode_name == "tenantId":
            continue
        if kind is not None:
            values[f.encode_name] = ids[kind]
        elif f.encode_name in NAMED_VALUES:
            values[f.encode_name] = NAMED_VALUES[f.encode_name](world)
        elif f.required:
            values[f.encode_name] = _plain_value(f.type, f"{where} $.{f.encode_name}")
    return values


@dataclass
class Built:
    method: str
    path: str
    params: dict[str, Any]
    body: dict[str, Any] | None
    headers: dict[str, str]
    ids_used: set[str]  # the ids the request carries

    @property
    def sent(self) -> set[str]:
        values = [
            self.path,
            *map(str, self.params.values()),
            *map(str, (self.body or {}).values()),
            *self.headers.values(),
        ]
        return {v for v in values if v} | self.ids_used

    async def send(self, client: httpx.AsyncClient) -> httpx.Response:
        kwargs = {"json": self.body} if self.body is not None else {}
        return await client.request(self.method, self.path, params=self.params, headers=self.headers, **kwargs)


def build(endpoint: Endpoint, world: World, ids: dict[str, str], tenant_in: str | None = None) -> Built:
    """The request ``endpoint`` declares, with ``ids`` (kind -> id) wherever an id goes."""
    path = re.sub(r"{(\w+)}", lambda m: ids[PATH_KINDS[m[1]]], endpoint.path)
    params = _fields(endpoint.query, world, ids, f"{endpoint.name} query")
    body = _fields(endpoint.body, world, ids, f"{endpoint.name} body") if endpoint.body is not None else None
    headers = {name: NAMED_HEADERS[name](world) if name in NAMED_HEADERS else "x" for name in endpoint.request_headers}
    if tenant_in == "query":
        params["tenantId"] = TENANT
    elif tenant_in == "body":
        body["tenantId"] = TENANT
    carried = {path, *map(str, params.values()), *map(str, (body or {}).values())}
    ids_used = {i for i in ids.values() if any(i in value for value in carried)}
    return Built(endpoint.method, path, params, body, headers, ids_used)


def a_ids(world: World) -> dict[str, str]:
    return {"agent": world.a["agent"]["id"], "lease": world.a["lease"]["id"], "cons": world.a["pending"]["id"]}


def _masked(text: str, ids: dict[str, str]) -> str:
    for kind, value in ids.items():
        text = text.replace(value, f"<{kind}>")
    return text


async def run_generated(cell: Generated, b: httpx.AsyncClient, anyone: httpx.AsyncClient, world: World) -> None:
    endpoint = cell.endpoint
    if cell.kind == "no-tenant-data":
        for caller in (b, anyone):
            response = await caller.request(endpoint.method, endpoint.path)
            assert response.status_code == 200, response.text
            no_leak(world, response)
    elif cell.kind == "A-ids":
        real = build(endpoint, world, a_ids(world))
        response = await real.send(b)
        no_leak(world, response, real.sent)
        # The generator made a request the endpoint accepts as such; otherwise the cell would test nothing.
        assert response.status_code not in (400, 415, 422) and response.status_code < 500, response.text
        if real.ids_used:  # A's ids answer exactly as ids that never existed
            fake_ids = {kind: unknown_id(kind) for kind in a_ids(world)}
            fake = await build(endpoint, world, fake_ids).send(b)
            assert response.status_code == fake.status_code, (response.text, fake.text)
            assert _masked(response.text, a_ids(world)) == _masked(fake.text, fake_ids)
    else:
        where = cell.kind.removeprefix("tenantId-A-")
        response = await build(endpoint, world, a_ids(world), tenant_in=where).send(b)
        problem(response, 403, "tenant_mismatch")
        no_leak(world, response)
    world.cells += 1


@pytest.mark.parametrize("cell", [pytest.param(c, id=c.id) for c in GENERATED])
async def test_generated_cell(request, client, other_client, anonymous_client, redis_client, keys, world, cell):
    await run_cell(
        request,
        client,
        redis_client,
        keys,
        world,
        lambda: run_generated(cell, other_client, anonymous_client, world),
        generated=True,
    )


def test_generated_cells_cover_every_route_and_endpoint():
    """The generated cells are made from the route table: every route (and so every
    declared Endpoint) has them, the routes are exactly the declared endpoints, and
    a request can be built for each without anything written by hand."""
    assert sorted((endpoint_of(r) for r in routes), key=ENDPOINTS.index) == ENDPOINTS
    assert {c.endpoint for c in GENERATED} == set(ENDPOINTS)
    for endpoint in ENDPOINTS:
        kinds = {c.kind for c in GENERATED if c.endpoint is endpoint}
        if not endpoint.authenticated:
            assert kinds == {"no-tenant-data"}, endpoint.path
        else:
            assert kinds == {"A-ids", "tenantId-A-query"} | ({"tenantId-A-body"} if endpoint.body else set())
    assert {e.path for e in ENDPOINTS if not e.authenticated} == {"/healthz", "/readyz", "/openapi.json"}


def test_a_new_endpoint_gets_cells_without_anyone_writing_them():
    async def handler(c):  # never called
        raise AssertionError

    new = Endpoint(
        "POST",
        f"{C}/lease/{{leaseId}}/transfer",
        "Hand a lease over",
        handler,
        {200: schemas.Lease},
        body=schemas.VoteBody,
    )
    route = Route(new.path, new, methods=[new.method])
    assert [c.kind for c in generated_cells([route])] == ["A-ids", "tenantId-A-query", "tenantId-A-body"]
    world = World(
        a={
            "agent": {"id": unknown_id("agent")},
            "lease": {"id": unknown_id("lease"), "fencingToken": 7},
            "pending": {"id": unknown_id("cons")},
        },
        b={},
    )
    built = build(new, world, a_ids(world))
    assert built.path == f"{C}/lease/{world.a['lease']['id']}/transfer"
    assert built.body == {"agentId": world.a["agent"]["id"], "vote": "approve"}
    assert built.ids_used == {world.a["lease"]["id"], world.a["agent"]["id"]}


async def test_the_generated_cells_catch_an_endpoint_that_ignores_the_tenant(settings, redis_client):
    """Self-test of the matrix: an endpoint that reads tenant A whatever the key
    says is caught by its generated cell, with nothing written for it."""

    async def leaky(c):
        return respond(await c.store.agents.page(TENANT, None, 100, None))

    endpoint = Endpoint("GET", f"{V1}/agents/{{agentId}}/peers", "Peers of an agent", leaky, {200: schemas.AgentList})
    route = Route(endpoint.path, endpoint, methods=[endpoint.method])
    app = create_app(settings, redis_client)
    app.router.routes.append(route)  # this app's own copy of the route table
    async with running(app) as served:

        def http(key):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return httpx.AsyncClient(
                transport=httpx.ASGITransport(app=served), base_url="http://concord.test", headers=headers
            )

        async with http(API_KEY) as a, http(OTHER_API_KEY) as b, http(None) as anyone:
            world = await build_world(a, b)
            a_ids_cell, tenant_cell = generated_cells([route])
            with pytest.raises(AssertionError, match="tenant B was shown"):
                await run_generated(a_ids_cell, b, anyone, world)
            assert world.leaks > 0
            # Endpoint.run checks tenantId before any handler runs, so that cell holds even here.
            await run_generated(tenant_cell, b, anyone, world)


async def test_tenant_b_lists_never_show_tenant_a(client, other_client, world):
    """B's lists, page by page, hold exactly B's things."""
    for path, key, mine in [
        (f"{V1}/agents", "agents", {world.b["agent"]["id"], world.b["peer"]["id"]}),
        (f"{C}/consensus", "consensus", {world.b["cons"]["id"]}),
    ]:
        seen, cursor = [], None
        while True:
            page = ok(await other_client.get(path, params={"limit": 1} | ({"cursor": cursor} if cursor else {})))
            seen += [x["id"] for x in page[key]]
            cursor = page["nextCursor"]
            if cursor is None:
                break
        assert set(seen) == mine and len(seen) == len(mine)
    leases = ok(await other_client.get(f"{C}/leases", params={"agentId": world.b["agent"]["id"]}))
    assert [x["id"] for x in leases["leases"]] == [world.b["lease"]["id"]]
    # And A's lists hold none of B's.
    a_agents = ok(await client.get(f"{V1}/agents"))["agents"]
    assert {x["tenantId"] for x in a_agents} == {TENANT}
    assert world.b["agent"]["id"] not in {x["id"] for x in a_agents}


async def test_a_cursor_of_tenant_a_shows_tenant_b_nothing_of_a(client, other_client, world):
    """A cursor is opaque, but one taken from A's list and handed to B still pages B's data only."""
    page = ok(await client.get(f"{V1}/agents", params={"limit": 1}))
    assert page["nextCursor"]
    response = await other_client.get(f"{V1}/agents", params={"cursor": page["nextCursor"]})
    assert response.status_code in (200, 422), response.text
    no_leak(world, response)
    if response.status_code == 200:
        assert {x["id"] for x in response.json()["agents"]} <= {world.b["agent"]["id"], world.b["peer"]["id"]}


async def test_tenant_b_keys_live_under_its_own_tag(redis_client, keys, world):
    """Every key B's requests made is in B's hash-tagged key space."""
    b_keys = await tenant_snapshot(redis_client, keys, OTHER_TENANT)
    assert b_keys
    a_keys = await tenant_snapshot(redis_client, keys, TENANT)
    for key in b_keys:
        assert key.startswith(f"{keys.prefix}:{{{OTHER_TENANT}}}:")
    flat_b = repr(b_keys)
    for secret in world.secrets:
        assert secret not in flat_b, secret
    assert not set(a_keys) & set(b_keys)
    assert str(uuid.UUID(world.b["agent"]["id"].removeprefix("agent_"))) in flat_b
