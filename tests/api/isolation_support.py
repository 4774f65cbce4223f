"""Tenant isolation: tenant B's key against every tenant-A resource. What the
isolation modules share: the world of both tenants, the checks every cell makes, and
the report of all cells.

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

The hand-written cells are in one table per domain: test_isolation_agents.py,
test_isolation_leases.py, test_isolation_consensus.py and test_isolation_events.py.
The cells generated from the route table, and the checks that both kinds cover every
route, are in test_isolation_generated.py; B's whole lists, a cursor of A's and B's
keys in Redis in test_isolation_lists_and_keys.py.

The modules report what they tested, together: with `pytest -s` the run prints one
line (cells per backend, leaks, changes to A's data), and with
CONCORD_SECURITY_REPORT=<file> it appends the same figures to that file as one JSON
line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from concord.server.http.routes import routes
from tests.support.api import (
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
A_SUPPRESSED = "@acme-suppressed.example"  # a domain A suppressed
A_NOTE = "acme-suppression-note"
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
    # A's policy for its action, set after its requests: their world stays as it was.
    ok(await client.put(f"{C}/consensus-policies/acme-action", json={"voterRoles": ["acme-role"], "minVotes": 3}))
    # A's suppression of a whole domain, with a note only A may read.
    ok(await client.put(f"{C}/suppressions/{A_SUPPRESSED}", json={"reason": "complained", "note": A_NOTE}), 201)

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
        A_SUPPRESSED,
        A_NOTE,
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
        "policies": ok(await client.get(f"{C}/consensus-policies")),
        "suppressions": ok(await client.get(f"{C}/suppressions")),
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


# The cells of a domain: (method, route path) -> name -> async cell(b, world).
CellTable = dict[tuple[str, str], dict[str, Callable[[httpx.AsyncClient, World], Awaitable[None]]]]


def cell_params(cells: CellTable) -> list:
    """One pytest param per cell of ``cells``: (route, name), with the id
    "<method> <path without /v1> <name>"."""
    return [
        pytest.param(route, name, id=f"{route[0]} {route[1].removeprefix(V1)} {name}")
        for route, named in cells.items()
        for name in named
    ]


async def run_cell(
    request, client, redis_client, keys, world: World, cell: Callable[[], Awaitable[None]], generated: bool = False
) -> None:
    """Run one cell of tenant B against A, then check A's data and view are
    untouched; the figures go to REPORT whatever the outcome."""
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
    """What the isolation modules tested: cells per backend, and what went wrong in them."""

    cells: Counter = field(default_factory=Counter)  # backend -> cells run
    generated: int = 0  # of those, cells generated from the route table
    leaks: int = 0
    changes: int = 0

    def record(self, backend: str, world: World, generated: bool) -> None:
        self.cells[backend] += world.cells
        self.generated += world.cells if generated else 0
        self.leaks += world.leaks
        self.changes += world.changes

    def clear(self) -> None:
        self.cells.clear()
        self.generated = self.leaks = self.changes = 0


REPORT = Report()


@pytest.fixture(scope="session", autouse=True)
def isolation_report():
    """After the run: one summary line (`pytest -s`), and a JSON line for the docs,
    for the cells of every isolation module. Each of them imports this fixture, so
    pytest holds a copy per module, all torn down at the end of the session: the
    first reports every module's cells and clears REPORT, the others find it empty."""
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
    REPORT.clear()
