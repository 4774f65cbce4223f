"""Leases over HTTP: reading a lease by its id, and listing leases by agent and by
contact, page by page.

Every test runs on fakeredis and on a real Redis (the redis_client fixture).
"""

from __future__ import annotations

import pytest

from tests.api.lease_support import CONTACT
from tests.api.lease_support import retention as retention  # fixtures: pytest finds them here
from tests.api.lease_support import sdr as sdr
from tests.support.api import C, acquire, invalid, ms, ok, problem, unknown_id

# --- get and list -------------------------------------------------------------


async def test_get_lease(client, sdr):
    lease = await acquire(client, sdr["id"], CONTACT, intent="outreach")
    assert ok(await client.get(f"{C}/lease/{lease['id']}")) == lease
    problem(await client.get(f"{C}/lease/{unknown_id('lease')}"), 404, "lease_not_found")
    problem(await client.get(f"{C}/lease/lease_123"), 404, "lease_not_found")


async def test_list_leases_by_agent_and_by_contact(client, redis_client, keys, sdr, retention):
    mine = [await acquire(client, sdr["id"], f"m{i}@example.com") for i in range(3)]
    theirs = await acquire(client, retention["id"], "t@example.com")

    by_agent = ok(await client.get(f"{C}/leases", params={"agentId": sdr["id"]}))
    assert set(by_agent) == {"leases", "nextCursor"} and by_agent["nextCursor"] is None
    assert sorted(by_agent["leases"], key=lambda lease: lease["id"]) == sorted(mine, key=lambda lease: lease["id"])
    got = [(ms(lease["acquiredAt"]), lease["id"]) for lease in by_agent["leases"]]
    assert got == sorted(got, reverse=True)  # newest grant first

    assert ok(await client.get(f"{C}/leases", params={"contactEmail": " T@Example.com"})) == {
        "leases": [theirs],
        "nextCursor": None,
    }
    # Both: the contact's lease, if that agent holds it.
    assert ok(await client.get(f"{C}/leases", params={"agentId": retention["id"], "contactEmail": "t@example.com"}))[
        "leases"
    ] == [theirs]
    assert (
        ok(await client.get(f"{C}/leases", params={"agentId": sdr["id"], "contactEmail": "t@example.com"}))["leases"]
        == []
    )
    assert ok(await client.get(f"{C}/leases", params={"contactEmail": "free@example.com"})) == {
        "leases": [],
        "nextCursor": None,
    }
    assert ok(await client.get(f"{C}/leases", params={"agentId": unknown_id("agent")})) == {
        "leases": [],
        "nextCursor": None,
    }

    # A released lease leaves the agent's list.
    ok(await client.delete(f"{C}/lease/{mine[0]['id']}"))
    left = ok(await client.get(f"{C}/leases", params={"agentId": sdr["id"]}))["leases"]
    assert {lease["id"] for lease in left} == {mine[1]["id"], mine[2]["id"]}


async def test_list_leases_paginates(client, sdr):
    leases = [await acquire(client, sdr["id"], f"p{i}@example.com") for i in range(5)]
    seen, cursor, sizes = [], None, []
    while True:
        params = {"agentId": sdr["id"], "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = ok(await client.get(f"{C}/leases", params=params))
        sizes.append(len(page["leases"]))
        seen += page["leases"]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert sizes == [2, 2, 1]
    assert len({lease["id"] for lease in seen}) == 5
    assert sorted(seen, key=lambda lease: lease["id"]) == sorted(leases, key=lambda lease: lease["id"])
    order = [(ms(lease["acquiredAt"]), lease["id"]) for lease in seen]
    assert order == sorted(order, reverse=True)


@pytest.mark.parametrize(
    "params, field",
    [
        ({}, "$.agentId"),
        ({"limit": "5"}, "$.agentId"),
        ({"contactEmail": "not-an-email"}, "$.contactEmail"),
        ({"contactEmail": "a@example.com", "limit": "0"}, "$.limit"),
        ({"contactEmail": "a@example.com", "limit": "1001"}, "$.limit"),
        ({"contactEmail": "a@example.com", "cursor": "%%%"}, "$.cursor"),
        ({"contactEmail": "a@example.com", "status": "active"}, "$.status"),
    ],
    ids=repr,
)
async def test_list_leases_refuses_bad_queries(client, params, field):
    invalid(await client.get(f"{C}/leases", params=params), field)
