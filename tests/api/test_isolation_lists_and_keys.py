"""Tenant isolation beyond single cells: B's lists, page by page, hold exactly B's
things; a cursor of A's list shows B nothing of A's; every key B's requests made is in
B's hash-tagged key space. The world: isolation_support.py.
"""

from __future__ import annotations

import uuid

from tests.api.isolation_support import no_leak
from tests.api.isolation_support import world as world  # a fixture: pytest finds it here
from tests.support.api import OTHER_TENANT, TENANT, V1, C, ok, tenant_snapshot


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
