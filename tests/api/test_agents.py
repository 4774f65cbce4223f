"""Agents and heartbeats over HTTP: register (upsert), list, get, delete, heartbeat.

Every test runs on fakeredis and on a real Redis (the redis_client fixture).
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from concord.server.store import paging
from tests.api.credential_support import CREDENTIAL, digest, forged
from tests.conftest import API_KEY
from tests.support.api import (
    AGENT_ID,
    ISO_Z,
    TENANT,
    V1,
    WINDOW_MS,
    C,
    acquire,
    bearer,
    credential_of,
    invalid,
    make_inactive,
    ms,
    ok,
    problem,
    redis_ms,
    register,
    tenant_snapshot,
    unknown,
    unknown_id,
    verdict,
)
from tests.support.helpers import eventually

AGENT_FIELDS = {
    "id",
    "tenantId",
    "agentName",
    "agentRole",
    "status",
    "lastHeartbeat",
    "registeredAt",
    "updatedAt",
    "metadata",
    "kind",
}


async def list_agents(client, **params) -> dict:
    return ok(await client.get(f"{V1}/agents", params=params))


# --- register -----------------------------------------------------------------


async def test_register_new_agent_is_201_with_the_full_agent(client, redis_client, keys):
    body = ok(await client.post(f"{V1}/register", json={"agentName": "sdr-1"}), 201)

    # The agent, and its credential: shown this once, naming its tenant and agent.
    assert set(body) == AGENT_FIELDS | {"credential"}
    assert AGENT_ID.fullmatch(body["id"])
    found = CREDENTIAL.fullmatch(body["credential"])
    assert found and found["tenant"] == TENANT and found["agent"] == body["id"], body["credential"]
    assert body == {
        "credential": body["credential"],
        "id": body["id"],
        "tenantId": TENANT,
        "agentName": "sdr-1",
        "agentRole": "general",
        "status": "active",
        "lastHeartbeat": body["registeredAt"],  # registering counts as a heartbeat
        "registeredAt": body["registeredAt"],
        "updatedAt": body["registeredAt"],
        "metadata": {},
        "kind": "agent",
    }
    assert ISO_Z.fullmatch(body["registeredAt"])

    # Redis: the agent hash, the tenant's agent index and its heartbeat.
    stored = await redis_client.hgetall(keys.agent(TENANT, body["id"]))
    assert stored["agentName"] == "sdr-1" and stored["agentRole"] == "general" and stored["metadata"] == "{}"
    assert int(stored["registeredAt"]) == ms(body["registeredAt"])
    assert stored["credential"] == digest(body["credential"])  # its digest only, never the credential
    assert await redis_client.zscore(keys.heartbeats(TENANT), body["id"]) == ms(body["lastHeartbeat"])
    assert await redis_client.zscore(keys.agents(TENANT), body["id"]) == ms(body["registeredAt"])


async def test_register_with_role_and_metadata(client):
    metadata = {
        "team": "growth",
        "quota": 40,
        "ratio": 0.5,
        "live": True,
        "none": None,
        "tags": ["a", "b"],
        "nested": {"deep": {"x": "ünïcødé ✓"}},
    }
    body = ok(
        await client.post(f"{V1}/register", json={"agentName": "sdr-2", "agentRole": "sdr", "metadata": metadata}),
        201,
    )
    assert body["agentRole"] == "sdr"
    assert body["metadata"] == metadata
    got = ok(await client.get(f"{V1}/agents/{body['id']}"))
    assert got["metadata"] == metadata
    assert got["agentRole"] == "sdr"


async def test_register_again_is_200_and_updates_the_same_agent(client, redis_client, keys):
    first = ok(
        await client.post(
            f"{V1}/register", json={"agentName": "ret-1", "agentRole": "retention", "metadata": {"v": 1}}
        ),
        201,
    )
    again = ok(await client.post(f"{V1}/register", json={"agentName": "ret-1"}), 200)

    # Same agent; omitted role and metadata keep their values; registeredAt stays.
    assert again["id"] == first["id"]
    assert again["agentRole"] == "retention" and again["metadata"] == {"v": 1}
    assert again["registeredAt"] == first["registeredAt"]
    assert ms(again["updatedAt"]) >= ms(first["updatedAt"])
    assert again["lastHeartbeat"] == again["updatedAt"]

    changed = ok(
        await client.post(f"{V1}/register", json={"agentName": "ret-1", "agentRole": "support", "metadata": {"v": 2}}),
        200,
    )
    assert changed["id"] == first["id"]
    assert changed["agentRole"] == "support" and changed["metadata"] == {"v": 2}
    cleared = ok(await client.post(f"{V1}/register", json={"agentName": "ret-1", "metadata": {}}), 200)
    assert cleared["metadata"] == {} and cleared["agentRole"] == "support"

    listed = await list_agents(client)
    assert [a["id"] for a in listed["agents"]] == [first["id"]]
    assert await redis_client.zcard(keys.agents(TENANT)) == 1


async def test_register_reactivates_an_inactive_agent(client, redis_client, keys):
    agent = await register(client, "sleepy")
    await make_inactive(redis_client, keys, TENANT, agent["id"])
    assert ok(await client.get(f"{V1}/agents/{agent['id']}"))["status"] == "inactive"

    again = ok(await client.post(f"{V1}/register", json={"agentName": "sleepy"}), 200)
    assert again["status"] == "active"
    assert ms(again["lastHeartbeat"]) >= ms(agent["lastHeartbeat"])
    assert await redis_client.zscore(keys.heartbeats(TENANT), agent["id"]) == ms(again["lastHeartbeat"])
    assert ok(await client.get(f"{V1}/agents/{agent['id']}"))["status"] == "active"


async def test_concurrent_registrations_of_one_name_make_one_agent(client, redis_client, keys):
    responses = await asyncio.gather(
        *(client.post(f"{V1}/register", json={"agentName": "racer", "metadata": {"n": i}}) for i in range(16))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 15 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len((await list_agents(client))["agents"]) == 1
    assert await redis_client.zcard(keys.agents(TENANT)) == 1


async def test_register_accepts_the_aliases_name_and_role(client):
    body = ok(await client.post(f"{V1}/register", json={"name": "support-1", "role": "support"}), 201)
    assert body["agentName"] == "support-1" and body["agentRole"] == "support"
    # The alias names the same agent as agentName.
    again = ok(await client.post(f"{V1}/register", json={"agentName": "support-1"}), 200)
    assert again["id"] == body["id"] and again["agentRole"] == "support"


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"agentName": "a", "name": "a"}, "$.name"),
        ({"agentName": "a", "name": "b"}, "$.name"),
        ({"agentName": "a", "agentRole": "x", "role": "x"}, "$.role"),
        ({}, "$.agentName"),
        ({"agentRole": "sdr"}, "$.agentName"),
    ],
)
async def test_register_alias_conflicts_and_missing_name_are_422(client, payload, field):
    invalid(await client.post(f"{V1}/register", json=payload), field)
    assert (await list_agents(client))["agents"] == []


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 129,
        "two words",
        "slash/name",
        "colon:name",
        "pipe|name",
        "brace{x}",
        "ünïcode",
        "tab\tname",
        "nul\x00name",
        " lead",
        "\nlead",
        "mid\nline",
    ],
    ids=lambda n: repr(n)[:20],
)
async def test_register_refuses_bad_agent_names(client, name):
    invalid(await client.post(f"{V1}/register", json={"agentName": name}), "$.agentName")
    invalid(await client.post(f"{V1}/register", json={"name": name}), "$.name")
    assert (await list_agents(client))["agents"] == []


async def test_a_trailing_newline_is_not_allowed_in_names_roles_or_ids(client):
    r"""Python's ``$`` also matches before a final newline; the patterns refuse it
    (protocol.types.whole), so "trail\n" and "sdr\n" are 422; an id with a newline names no agent: 404."""
    invalid(await client.post(f"{V1}/register", json={"agentName": "trail\n"}), "$.agentName")
    invalid(await client.post(f"{V1}/register", json={"agentName": "ok", "agentRole": "sdr\n"}), "$.agentRole")
    trailing = unknown_id("agent") + "\n"
    # An agent's own credential naming it: the id is checked for its shape before anything else.
    agent = await register(client, "ok")
    mine = bearer(credential_of(client, agent["id"]))
    unknown(await client.post(f"{C}/heartbeat", json={"agentId": trailing}, headers=mine), "agent", trailing)
    assert [a["id"] for a in (await list_agents(client))["agents"]] == [agent["id"]]


@pytest.mark.parametrize("name", ["a", "a" * 128, "Agent.Name_0-9", "-._"])
async def test_register_accepts_every_allowed_agent_name(client, name):
    body = ok(await client.post(f"{V1}/register", json={"agentName": name}), 201)
    assert body["agentName"] == name


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"agentRole": "r" * 65}, "$.agentRole"),
        ({"agentRole": ""}, "$.agentRole"),
        ({"agentRole": "bad\x00role"}, "$.agentRole"),
        ({"agentRole": "line\nbreak"}, "$.agentRole"),
        ({"role": "r" * 65}, "$.role"),
        ({"agentRole": 7}, "$.agentRole"),
        ({"metadata": []}, "$.metadata"),
        ({"metadata": "text"}, "$.metadata"),
        ({"metadata": 1}, "$.metadata"),
        ({"agentName": 5}, "$.agentName"),
        ({"agentName": None}, "$.agentName"),
        ({"agentName": ["a"]}, "$.agentName"),
        ({"tenantId": "not valid!"}, "$.tenantId"),
        ({"agentId": "agent_x"}, "$.agentId"),
    ],
)
async def test_register_refuses_bad_fields(client, payload, field):
    body = {"agentName": "ok-name", **payload}
    if payload.get("agentName", "present") is None:
        # An explicit null means "not given": the name is then missing.
        invalid(await client.post(f"{V1}/register", json=body), "$.agentName")
    else:
        invalid(await client.post(f"{V1}/register", json=body), field)
    assert (await list_agents(client))["agents"] == []


async def test_metadata_is_limited_to_4_kib_of_json(client):
    def metadata_of(size: int) -> dict:
        padding = "x" * (size - len(msgspec.json.encode({"p": ""})))
        metadata = {"p": padding}
        assert len(msgspec.json.encode(metadata)) == size
        return metadata

    exactly = ok(await client.post(f"{V1}/register", json={"agentName": "meta", "metadata": metadata_of(4096)}), 201)
    assert exactly["metadata"] == metadata_of(4096)

    body = invalid(
        await client.post(f"{V1}/register", json={"agentName": "meta", "metadata": metadata_of(4097)}), "$.metadata"
    )
    assert "4096" in body["detail"]
    # The agent kept its metadata.
    assert ok(await client.get(f"{V1}/agents/{exactly['id']}"))["metadata"] == metadata_of(4096)
    invalid(
        await client.post(f"{V1}/register", json={"agentName": "meta2", "metadata": metadata_of(4097)}), "$.metadata"
    )
    assert [a["agentName"] for a in (await list_agents(client))["agents"]] == ["meta"]


# --- list ---------------------------------------------------------------------


async def test_list_agents_empty(client):
    assert await list_agents(client) == {"agents": [], "nextCursor": None}


async def test_list_agents_by_status(client, redis_client, keys):
    awake = await register(client, "awake")
    asleep = await register(client, "asleep")
    await make_inactive(redis_client, keys, TENANT, asleep["id"])

    everyone = await list_agents(client)
    assert everyone["nextCursor"] is None
    by_id = {a["id"]: a for a in everyone["agents"]}
    assert set(by_id) == {awake["id"], asleep["id"]}
    assert by_id[awake["id"]]["status"] == "active"
    assert by_id[asleep["id"]]["status"] == "inactive"
    assert set(by_id[asleep["id"]]) == AGENT_FIELDS

    active = await list_agents(client, status="active")
    assert [a["id"] for a in active["agents"]] == [awake["id"]]
    assert active["agents"][0] == by_id[awake["id"]]
    inactive = await list_agents(client, status="inactive")
    assert [a["id"] for a in inactive["agents"]] == [asleep["id"]]
    assert inactive == {"agents": [by_id[asleep["id"]]], "nextCursor": None}


@pytest.mark.parametrize(
    "params, field",
    [
        ({"status": "sleeping"}, "$.status"),
        ({"status": "ACTIVE"}, "$.status"),
        ({"limit": "0"}, "$.limit"),
        ({"limit": "1001"}, "$.limit"),
        ({"limit": "-1"}, "$.limit"),
        ({"limit": "ten"}, "$.limit"),
        ({"limit": "1.5"}, "$.limit"),
        ({"cursor": "not-a-cursor"}, "$.cursor"),
        ({"colour": "blue"}, "$.colour"),
    ],
)
async def test_list_agents_refuses_bad_query_parameters(client, params, field):
    await register(client, "someone")
    invalid(await client.get(f"{V1}/agents", params=params), field)


async def test_list_agents_paginates_without_overlap(client):
    names = [f"page-{i}" for i in range(7)]
    ids = {(await register(client, name))["id"] for name in names}

    pages, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = await list_agents(client, **params)
        pages.append(page["agents"])
        cursor = page["nextCursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and cursor
    assert [len(p) for p in pages] == [3, 3, 1]
    seen = [a["id"] for p in pages for a in p]
    assert len(seen) == len(set(seen)) == 7
    assert set(seen) == ids
    times = [ms(a["registeredAt"]) for p in pages for a in p]
    assert times == sorted(times, reverse=True)  # newest first across pages

    # A limit that fits everything: one page, nextCursor null.
    whole = await list_agents(client, limit=7)
    assert len(whole["agents"]) == 7 and whole["nextCursor"] is None
    assert [a["id"] for a in whole["agents"]] == seen
    almost = await list_agents(client, limit=6)
    assert len(almost["agents"]) == 6 and almost["nextCursor"] is not None
    last = await list_agents(client, limit=6, cursor=almost["nextCursor"])
    assert [a["id"] for a in last["agents"]] == seen[6:] and last["nextCursor"] is None


async def test_list_agents_paginates_a_status_filter(client, redis_client, keys):
    agents = [await register(client, f"mixed-{i}") for i in range(6)]
    for agent in agents[::2]:
        await make_inactive(redis_client, keys, TENANT, agent["id"])
    expected = {a["id"] for a in agents[1::2]}

    first = await list_agents(client, status="active", limit=2)
    assert len(first["agents"]) == 2 and first["nextCursor"]
    rest = await list_agents(client, status="active", limit=2, cursor=first["nextCursor"])
    assert len(rest["agents"]) == 1 and rest["nextCursor"] is None
    got = [a["id"] for a in first["agents"] + rest["agents"]]
    assert set(got) == expected and len(got) == 3
    assert all(a["status"] == "active" for a in first["agents"] + rest["agents"])


async def test_a_status_page_costs_what_it_returns_and_lists_the_latest_heartbeat_first(
    client, redis_client, keys, monkeypatch
):
    """3 active agents among 300: listing the active ones reads 3 agents (4 would
    say nothing more), not 300; the inactive ones are read page by page, each
    page's agents only, and every agent is listed once."""
    agents = [await register(client, f"fleet-{i:03d}") for i in range(300)]
    for agent in agents[3:]:
        await make_inactive(redis_client, keys, TENANT, agent["id"])
    awake = [agent["id"] for agent in agents[:3]]
    for agent_id in awake:
        ok(await client.post(f"{C}/heartbeat", json={"agentId": agent_id}))
    read: list[int] = []
    original = paging._zset_after

    async def counted(*args, **kwargs):
        found = await original(*args, **kwargs)
        read.append(len(found))
        return found

    monkeypatch.setattr(paging, "_zset_after", counted)

    active = await list_agents(client, status="active", limit=10)

    listed = [a["id"] for a in active["agents"]]
    assert set(listed) == set(awake) and active["nextCursor"] is None
    # Latest heartbeat first (two in one millisecond: in reverse id order, as ZRANGE REV gives them).
    scores = [(await redis_client.zscore(keys.heartbeats(TENANT), agent_id), agent_id) for agent_id in listed]
    assert scores == sorted(scores, reverse=True)
    assert sum(read) == 3
    read.clear()
    listed, cursor = [], None
    while True:
        page = await list_agents(client, status="inactive", limit=50, **({"cursor": cursor} if cursor else {}))
        assert {a["status"] for a in page["agents"]} == {"inactive"}
        listed += [a["id"] for a in page["agents"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert sorted(listed) == sorted(a["id"] for a in agents[3:]) and len(set(listed)) == 297
    assert max(read) <= 51  # one page and one more, never the fleet


async def test_list_agents_is_newest_first(client, redis_client):
    registered = []
    for name in ("first", "second", "third"):
        agent = await register(client, name)
        registered.append(agent["id"])
        # The next registration must land on a later millisecond of Redis's clock.
        at = ms(agent["registeredAt"])
        await eventually(lambda at=at: _later(redis_client, at), what="Redis's clock to move on")
    listed = await list_agents(client)
    assert [a["id"] for a in listed["agents"]] == registered[::-1]
    page = await list_agents(client, limit=1)
    assert [a["id"] for a in page["agents"]] == registered[-1:]
    page = await list_agents(client, limit=1, cursor=page["nextCursor"])
    assert [a["id"] for a in page["agents"]] == registered[1:2]


async def _later(redis_client, at_ms: int) -> bool:
    return await redis_ms(redis_client) > at_ms


# --- get ------------------------------------------------------------------------


async def test_get_agent(client, redis_client, keys):
    agent = await register(client, "getme", agentRole="support", metadata={"k": "v"})
    agent.pop("credential")  # shown by registering only
    got = ok(await client.get(f"{V1}/agents/{agent['id']}"))
    assert got == agent

    await make_inactive(redis_client, keys, TENANT, agent["id"])
    stale = ok(await client.get(f"{V1}/agents/{agent['id']}"))
    last = await redis_client.zscore(keys.heartbeats(TENANT), agent["id"])
    assert stale == {**agent, "status": "inactive", "lastHeartbeat": stale["lastHeartbeat"]}
    assert ms(stale["lastHeartbeat"]) == int(last)


@pytest.mark.parametrize("agent_id", ["unknown", "agent_not-a-uuid", "AGENT_" + unknown_id("x")[2:]])
async def test_get_unknown_or_malformed_agent_is_404(client, agent_id):
    problem(await client.get(f"{V1}/agents/{agent_id}"), 404, "agent_not_found")


async def test_get_well_formed_unknown_agent_is_404(client):
    missing = unknown_id("agent")
    body = problem(await client.get(f"{V1}/agents/{missing}"), 404, "agent_not_found")
    assert missing in body["detail"]
    assert set(body) == {"type", "title", "status", "detail", "code"}


# --- delete ---------------------------------------------------------------------


async def test_delete_agent_releases_its_leases_then_404(client, redis_client, keys):
    agent = await register(client, "leaver")
    other = await register(client, "stayer")
    leases = [await acquire(client, agent["id"], f"c{i}@example.com") for i in range(2)]
    kept = await acquire(client, other["id"], "kept@example.com")

    body = ok(await client.delete(f"{V1}/agents/{agent['id']}"))
    assert body == {"id": agent["id"], "removed": True, "releasedLeases": 2}

    for lease in leases:
        problem(await client.get(f"{C}/lease/{lease['id']}"), 404, "lease_not_found")
        assert not await redis_client.exists(keys.lease(TENANT, lease["contactEmail"]))
        # The contact is free for others now.
        check = ok(
            await client.post(f"{C}/send-check", json={"agentId": other["id"], "contactEmail": lease["contactEmail"]})
        )
        assert verdict(check, lease["contactEmail"]) == {"allowed": True}
    # The other agent's lease is untouched.
    assert ok(await client.get(f"{C}/lease/{kept['id']}")) == kept

    problem(await client.get(f"{V1}/agents/{agent['id']}"), 404, "agent_not_found")
    problem(await client.delete(f"{V1}/agents/{agent['id']}"), 404, "agent_not_found")
    # Its credential went with it: refused on acting calls and on reads alike.
    revoked = bearer(credential_of(client, agent["id"]))
    problem(await client.post(f"{C}/heartbeat", json={"agentId": agent["id"]}), 401, "unauthorized")
    problem(await client.get(f"{V1}/agents/{other['id']}", headers=revoked), 401, "unauthorized")
    assert ok(await client.get(f"{C}/leases", params={"agentId": agent["id"]})) == {"leases": [], "nextCursor": None}
    assert [a["id"] for a in (await list_agents(client))["agents"]] == [other["id"]]
    assert not await redis_client.exists(keys.agent(TENANT, agent["id"]))
    assert await redis_client.zscore(keys.heartbeats(TENANT), agent["id"]) is None
    assert await redis_client.zscore(keys.agents(TENANT), agent["id"]) is None

    # The name can be registered again: a new agent (201) under the same id.
    again = ok(await client.post(f"{V1}/register", json={"agentName": "leaver"}), 201)
    assert again["id"] == agent["id"] and again["metadata"] == {} and again["agentRole"] == "general"
    # With a new credential; the revoked one stays refused.
    assert again["credential"] != revoked["Authorization"].removeprefix("Bearer ")
    ok(await client.post(f"{C}/heartbeat", json={"agentId": agent["id"]}))
    problem(await client.post(f"{C}/heartbeat", json={"agentId": agent["id"]}, headers=revoked), 401, "unauthorized")


async def test_delete_agent_without_leases(client):
    agent = await register(client, "lonely")
    assert ok(await client.delete(f"{V1}/agents/{agent['id']}")) == {
        "id": agent["id"],
        "removed": True,
        "releasedLeases": 0,
    }


@pytest.mark.parametrize("agent_id", ["nope", unknown_id("agent"), unknown_id("lease")])
async def test_delete_unknown_agent_is_404(client, agent_id):
    problem(await client.delete(f"{V1}/agents/{agent_id}"), 404, "agent_not_found")


# --- heartbeat ------------------------------------------------------------------


async def test_heartbeat_body_and_redis(client, redis_client, keys):
    agent = await register(client, "beater")
    await make_inactive(redis_client, keys, TENANT, agent["id"])

    body = ok(await client.post(f"{C}/heartbeat", json={"agentId": agent["id"]}))
    assert body == {
        "agentId": agent["id"],
        "status": "active",
        "lastHeartbeat": body["lastHeartbeat"],
        "activeUntil": body["activeUntil"],
    }
    assert ms(body["activeUntil"]) - ms(body["lastHeartbeat"]) == WINDOW_MS
    assert ms(body["lastHeartbeat"]) >= ms(agent["lastHeartbeat"])
    assert await redis_client.zscore(keys.heartbeats(TENANT), agent["id"]) == ms(body["lastHeartbeat"])

    got = ok(await client.get(f"{V1}/agents/{agent['id']}"))
    assert got["status"] == "active" and got["lastHeartbeat"] == body["lastHeartbeat"]
    # A heartbeat is not an update of the agent's record.
    assert got["updatedAt"] == agent["updatedAt"]


async def test_heartbeat_with_matching_tenant_id(client):
    agent = await register(client, "tenanted")
    body = ok(await client.post(f"{C}/heartbeat", json={"tenantId": TENANT, "agentId": agent["id"]}))
    assert body["agentId"] == agent["id"]


async def test_heartbeat_for_an_unknown_agent_registers_no_one(client, redis_client, keys):
    """A heartbeat never registers anyone: an admin key may not send one (only an
    agent's own credential does), and a credential claiming an agent that does not
    exist is no agent's current one (401). Neither writes anything."""
    missing = unknown_id("agent")
    before = await tenant_snapshot(redis_client, keys, TENANT)
    problem(
        await client.post(f"{C}/heartbeat", json={"agentId": missing}, headers=bearer(API_KEY)),
        403,
        "insufficient_scope",
        keyRole="admin",
    )
    body = problem(
        await client.post(f"{C}/heartbeat", json={"agentId": missing}, headers=bearer(forged(TENANT, missing))),
        401,
        "unauthorized",
    )
    assert missing in body["detail"]
    assert await redis_client.zscore(keys.heartbeats(TENANT), missing) is None
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


async def test_heartbeat_with_a_credential_may_leave_the_agent_id_out(client, redis_client, keys):
    agent = await register(client, "terse")
    await make_inactive(redis_client, keys, TENANT, agent["id"])
    body = ok(await client.post(f"{C}/heartbeat", json={}, headers=bearer(credential_of(client, agent["id"]))))
    assert body["agentId"] == agent["id"] and body["status"] == "active"
    assert await redis_client.zscore(keys.heartbeats(TENANT), agent["id"]) == ms(body["lastHeartbeat"])


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"agentId": 12}, "$.agentId"),
        ({"agentId": "AGENT_ID", "status": "active"}, "$.status"),
        ({"status": "active"}, "$.status"),
    ],
)
async def test_heartbeat_refuses_bad_bodies(client, redis_client, keys, payload, field):
    agent = await register(client, "beats")
    payload = {k: agent["id"] if v == "AGENT_ID" else v for k, v in payload.items()}
    before = await tenant_snapshot(redis_client, keys, TENANT)
    invalid(
        await client.post(f"{C}/heartbeat", json=payload, headers=bearer(credential_of(client, agent["id"]))), field
    )
    assert await tenant_snapshot(redis_client, keys, TENANT) == before
