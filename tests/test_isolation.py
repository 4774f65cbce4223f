"""Tenant isolation: tenant B's key against every tenant-A resource.

Tenant A (acme, the ``client`` fixture) has agents, a lease, a pending consensus
request with a vote and a decided one. Tenant B (globex, ``other_client``) then
tries each route of service.app.routes with A's real ids and data, one cell per
test. In every cell:

* A's ids answer exactly as ids that never existed would (same status, same body
  but for the id B itself sent): B cannot learn that they exist;
* no answer carries anything of A's that B did not send itself (ids, agent names,
  the contact, intent, action, reason, fencing token);
* a tenantId of A in B's request is 403 tenant_mismatch;
* afterwards every key of A in Redis, and A's view through the API, is unchanged.

test_every_route_has_cells checks the table covers every /v1 route.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from service.app import routes
from tests.api_helpers import (
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

CONTACT = "alice@acme-customer.com"


@dataclass
class World:
    a: dict[str, Any]  # tenant A's things
    b: dict[str, Any]  # tenant B's own things
    secrets: set[str] = field(default_factory=set)  # every string of A's that B must never be shown
    cells: int = 0


@pytest.fixture
async def world(client, other_client) -> World:
    a1 = await register(client, "acme-sdr", agentRole="acme-role", metadata={"acme": "metadata-secret"})
    a2 = await register(client, "acme-support")
    a3 = await register(client, "acme-retention")
    lease = await acquire(client, a1["id"], CONTACT, intent="acme-intent")
    pending = await request_consensus(client, a1["id"], action="acme-action", contactEmail=CONTACT,
                                      reason="acme-reason")
    ok(await client.post(f"{C}/consensus/{pending['id']}/vote",
                         json={"agentId": a2["id"], "vote": "approve", "reason": "acme-vote-reason"}))
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
        a1["id"], a2["id"], a3["id"], lease["id"], pending["id"], decided["id"],
        "acme-sdr", "acme-support", "acme-retention", "acme-role", "metadata-secret",
        CONTACT, "acme-intent", "acme-action", "acme-reason", "acme-vote-reason", "acme-decided-action",
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
        await hidden(w, lambda i: bc.post(f"{C}/heartbeat", json={"agentId": i}), w.a["agent"]["id"], 404,
                     "agent_not_found")

    async def heartbeat_tenant(bc, w):
        await mismatch(w, await bc.post(f"{C}/heartbeat", json={"tenantId": TENANT, "agentId": w.b["agent"]["id"]}))

    async def lease_as_a(bc, w):
        await hidden(w, lambda i: bc.post(f"{C}/lease", json={"agentId": i, "contactEmail": CONTACT}),
                     w.a["agent"]["id"], 404, "agent_not_found", sent={CONTACT})

    async def lease_a_contact(bc, w):
        """A's lease does not exist in B: B's own agent gets the contact, with a lease of B's."""
        response = await bc.post(f"{C}/lease", json={"agentId": w.b["agent"]["id"], "contactEmail": CONTACT})
        body = ok(response, 201)
        assert body["conflict"] is False and body["agentId"] == w.b["agent"]["id"]
        assert body["id"] != w.a["lease"]["id"] and body["intent"] is None
        no_leak(w, response, {CONTACT})
        w.cells += 1

    async def lease_tenant(bc, w):
        await mismatch(w, await bc.post(f"{C}/lease", json={"tenantId": TENANT, "agentId": w.a["agent"]["id"],
                                                            "contactEmail": CONTACT}))

    async def get_lease(bc, w):
        await hidden(w, lambda i: bc.get(f"{C}/lease/{i}"), w.a["lease"]["id"], 404, "lease_not_found")

    async def get_lease_tenant(bc, w):
        await mismatch(w, await bc.get(f"{C}/lease/{w.a['lease']['id']}", params={"tenantId": TENANT}))

    async def release(bc, w):
        await hidden(w, lambda i: bc.delete(f"{C}/lease/{i}"), w.a["lease"]["id"], 404, "lease_not_found")

    async def release_as_holder(bc, w):
        holder = w.a["agent"]["id"]
        await hidden(w, lambda i: bc.delete(f"{C}/lease/{i}", params={"agentId": holder}), w.a["lease"]["id"], 404,
                     "lease_not_found", sent={holder})

    async def release_tenant(bc, w):
        await mismatch(w, await bc.delete(f"{C}/lease/{w.a['lease']['id']}", params={"tenantId": TENANT}))

    def renew(as_whom):
        async def cell(bc, w):
            agent_id = w.a["agent"]["id"] if as_whom == a else w.b["agent"]["id"]
            await hidden(w, lambda i: bc.post(f"{C}/lease/{i}/renew", json={"agentId": agent_id}),
                         w.a["lease"]["id"], 404, "lease_not_found", sent={agent_id})
        return cell

    async def renew_tenant(bc, w):
        await mismatch(w, await bc.post(f"{C}/lease/{w.a['lease']['id']}/renew",
                                        json={"tenantId": TENANT, "agentId": w.a["agent"]["id"]}))

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
            w, lambda i: bc.post(f"{C}/send-check", json={"agentId": i, "contactEmail": CONTACT}),
            w.a["agent"]["id"], 200, sent={CONTACT},
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
        response = await bc.post(f"{C}/send-check", json={"agentId": w.b["agent"]["id"], "contactEmail": CONTACT,
                                                          "fencingToken": token})
        assert ok(response) == {"allowed": False, "reason": "stale_fencing_token"}
        no_leak(w, response, {CONTACT, str(token)})
        w.cells += 1

    async def send_check_tenant(bc, w):
        await mismatch(w, await bc.post(f"{C}/send-check", json={"tenantId": TENANT, "agentId": w.b["agent"]["id"],
                                                                 "contactEmail": CONTACT}))

    async def consensus_as_a(bc, w):
        await hidden(w, lambda i: bc.post(f"{C}/consensus", json={"requestingAgentId": i, "action": "x"}),
                     w.a["agent"]["id"], 404, "agent_not_found")

    async def consensus_tenant(bc, w):
        await mismatch(w, await bc.post(f"{C}/consensus", json={"tenantId": TENANT,
                                                                "requestingAgentId": w.b["agent"]["id"],
                                                                "action": "x"}))

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
                w, lambda i: bc.post(f"{C}/consensus/{i}/vote", json={"agentId": voter, "vote": "approve"}),
                w.a[which]["id"], 404, "consensus_not_found", sent={voter},
            )
        return cell

    async def vote_tenant(bc, w):
        await mismatch(w, await bc.post(f"{C}/consensus/{w.a['pending']['id']}/vote",
                                        json={"tenantId": TENANT, "agentId": w.b["peer"]["id"], "vote": "approve"}))

    return {
        ("POST", f"{V1}/register"): {
            "same-name-as-A": register_a_name, "tenantId-A": register_tenant,
        },
        ("GET", f"{V1}/agents"): {
            "all": list_agents(None), "active": list_agents("active"), "inactive": list_agents("inactive"),
            "tenantId-A": list_agents_tenant,
        },
        ("GET", f"{V1}/agents/{{agentId}}"): {
            "A-requester": get_agent("agent"), "A-voter": get_agent("peer"), "tenantId-A": get_agent_tenant,
        },
        ("DELETE", f"{V1}/agents/{{agentId}}"): {"A-agent": delete_agent, "tenantId-A": delete_agent_tenant},
        ("POST", f"{C}/heartbeat"): {"A-agent": heartbeat, "tenantId-A": heartbeat_tenant},
        ("POST", f"{C}/lease"): {
            "A-agent": lease_as_a, "A-contact-by-B": lease_a_contact, "tenantId-A": lease_tenant,
        },
        ("GET", f"{C}/lease/{{leaseId}}"): {"A-lease": get_lease, "tenantId-A": get_lease_tenant},
        ("DELETE", f"{C}/lease/{{leaseId}}"): {
            "A-lease": release, "A-lease-as-A-holder": release_as_holder, "tenantId-A": release_tenant,
        },
        ("POST", f"{C}/lease/{{leaseId}}/renew"): {
            "A-lease-as-A-holder": renew(a), "A-lease-as-B": renew(b), "tenantId-A": renew_tenant,
        },
        ("GET", f"{C}/leases"): {
            "A-agent": leases_of_a_agent, "A-contact": leases_of_a_contact, "tenantId-A": leases_tenant,
        },
        ("POST", f"{C}/send-check"): {
            "A-agent": send_check_as_a, "A-contact-by-B": send_check_a_contact, "A-token-by-B": send_check_a_token,
            "tenantId-A": send_check_tenant,
        },
        ("POST", f"{C}/consensus"): {"A-requester": consensus_as_a, "tenantId-A": consensus_tenant},
        ("GET", f"{C}/consensus"): {
            **{f"status-{s}": list_consensus(s) for s in (None, "pending", "approved", "rejected", "expired")},
            "tenantId-A": list_consensus_tenant,
        },
        ("GET", f"{C}/consensus/{{consensusId}}"): {
            "A-pending": get_consensus("pending"), "A-decided": get_consensus("decided"),
            "tenantId-A": get_consensus_tenant,
        },
        ("POST", f"{C}/consensus/{{consensusId}}/vote"): {
            "A-pending-by-A-agent": vote("pending", a), "A-pending-by-B": vote("pending", b),
            "A-decided-by-B": vote("decided", b), "tenantId-A": vote_tenant,
        },
    }


CELLS = _cells()
CELL_PARAMS = [
    pytest.param(route, name, id=f"{route[0]} {route[1].removeprefix(V1)} {name}")
    for route, cells in CELLS.items()
    for name in cells
]


def test_every_route_has_cells():
    """Every /v1 route and method of service.app.routes has isolation cells, a
    tenantId-of-A cell among them."""
    declared = {(m, r.path) for r in routes if r.path.startswith("/v1/") for m in r.methods - {"HEAD"}}
    assert set(CELLS) == declared
    assert all("tenantId-A" in cells for cells in CELLS.values())
    assert len(CELL_PARAMS) == 46


@pytest.mark.parametrize("route, name", CELL_PARAMS)
async def test_tenant_b_against_tenant_a(client, other_client, redis_client, keys, world, route, name):
    before_redis = await tenant_snapshot(redis_client, keys, TENANT)
    before_api = await a_view(client, world)
    assert await tenant_snapshot(redis_client, keys, TENANT) == before_redis  # A's own reads write nothing

    await CELLS[route][name](other_client, world)
    assert world.cells == 1

    assert await tenant_snapshot(redis_client, keys, TENANT) == before_redis
    assert await a_view(client, world) == before_api
    # A's lease still protects its contact in A.
    conflict = await client.post(f"{C}/lease", json={"agentId": world.a["peer"]["id"], "contactEmail": CONTACT})
    assert problem(conflict, 409, "lease_conflict")["leaseHolder"]["agentId"] == world.a["agent"]["id"]


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
