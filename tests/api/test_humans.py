"""Human members (docs/api.md, Humans): registered by an admin key with
``kind: "human"``, no heartbeat, a credential that only votes (and reads), and a
vote that counts only where the action's policy asks for human approvals; a
human's rejection rejects.

Every test runs on fakeredis, a real Redis and a cluster.
"""

from __future__ import annotations

import re

import pytest

from tests.api.credential_support import as_credential, digest
from tests.api.test_key_roles import ROLE_KEYS, as_key
from tests.api.test_key_roles import role_app as role_app  # a fixture: pytest finds it here
from tests.support.api import (
    TENANT,
    V1,
    C,
    credential_of,
    ok,
    problem,
    register,
    request_consensus,
    tenant_snapshot,
)

pytestmark = pytest.mark.usefixtures("redis_client")

POLICIES = f"{C}/consensus-policies"
HUMAN_CREDENTIAL = re.compile(rf"concord-human\.{TENANT}\.agent_[0-9a-f-]{{36}}\.[A-Za-z0-9_-]{{32,128}}")


async def human(client, name: str = "dana") -> dict:
    body = ok(await client.post(f"{V1}/register", json={"agentName": name, "kind": "human", "role": "approver"}), 201)
    assert HUMAN_CREDENTIAL.fullmatch(body["credential"]), body["credential"]
    return body


async def vote(client, consensus_id: str, agent_id: str, choice: str):
    return await client.post(f"{C}/consensus/{consensus_id}/vote", json={"agentId": agent_id, "vote": choice})


async def peers(client, n: int) -> list[dict]:
    return [await register(client, f"agent-{i}") for i in range(n)]


async def test_a_human_is_registered_without_a_heartbeat(client, redis_client, keys):
    dana = await human(client)
    assert dana["kind"] == "human" and dana["status"] == "active" and dana["lastHeartbeat"] is None
    assert await redis_client.zscore(keys.heartbeats(TENANT), dana["id"]) is None
    assert await redis_client.zscore(keys.active_since(TENANT), dana["id"]) is None
    assert await redis_client.zscore(keys.humans(TENANT), dana["id"]) is not None
    assert await redis_client.hget(keys.agent(TENANT, dana["id"]), "credential") == digest(dana["credential"])
    assert ok(await client.get(f"{V1}/agents/{dana['id']}"))["kind"] == "human"
    listed = ok(await client.get(f"{V1}/agents"))["agents"]
    assert [(a["id"], a["kind"]) for a in listed] == [(dana["id"], "human")]
    registered = [f for _, f in await redis_client.xrange(keys.events(TENANT)) if f["type"] == "agent.registered"]
    assert registered[-1]["kind"] == "human"


async def test_a_human_does_not_count_for_an_agents_majority(client):
    requester, peer = await peers(client, 2)
    await human(client)
    cons = await request_consensus(client, requester["id"])
    assert cons["tally"] == {"approve": 0, "reject": 0, "eligible": 1, "needed": 1}


async def test_human_approvals_are_needed_besides_the_agents_rule(client, redis_client, keys):
    requester, *agents = await peers(client, 3)
    dana, lee = await human(client, "dana"), await human(client, "lee")
    await client.put(f"{POLICIES}/wire-funds", json={"humanApprovals": 2})
    cons = await request_consensus(client, requester["id"], action="wire-funds")
    assert cons["tally"] == {
        "approve": 0,
        "reject": 0,
        "eligible": 2,
        "needed": 2,
        "humanApprove": 0,
        "humanReject": 0,
        "humansNeeded": 2,
    }

    for agent in agents:
        assert ok(await vote(client, cons["id"], agent["id"], "approve"))["status"] == "pending"
    after_one = ok(await vote(client, cons["id"], dana["id"], "approve"))
    assert after_one["status"] == "pending" and after_one["tally"]["humanApprove"] == 1
    decided = ok(await vote(client, cons["id"], lee["id"], "approve"))
    assert decided["status"] == "approved"
    assert [(v["agentId"], v["kind"]) for v in decided["votes"]][-2:] == [(dana["id"], "human"), (lee["id"], "human")]
    voted = [f for _, f in await redis_client.xrange(keys.events(TENANT)) if f["type"] == "consensus.voted"]
    assert [(f["actor"], f["actorRole"]) for f in voted][-2:] == [(dana["id"], "human"), (lee["id"], "human")]
    assert await redis_client.hget(keys.votes(TENANT, cons["id"]), f"h:{dana['id']}")


async def test_one_human_rejection_rejects(client):
    requester, *agents = await peers(client, 3)
    dana = await human(client)
    await client.put(f"{POLICIES}/wire-funds", json={"humanApprovals": 1})
    cons = await request_consensus(client, requester["id"], action="wire-funds")
    ok(await vote(client, cons["id"], agents[0]["id"], "approve"))
    decided = ok(await vote(client, cons["id"], dana["id"], "reject"))
    assert decided["status"] == "rejected"
    problem(await vote(client, cons["id"], agents[1]["id"], "approve"), 409, "consensus_closed")


async def test_humans_alone_decide_when_no_agent_is_of_the_electorate(client):
    requester = await register(client, "sdr-1")
    dana = await human(client)
    await client.put(f"{POLICIES}/wire-funds", json={"voterRoles": ["treasury"], "humanApprovals": 1})
    cons = await request_consensus(client, requester["id"], action="wire-funds")
    assert cons["tally"]["eligible"] == 0
    assert ok(await vote(client, cons["id"], dana["id"], "approve"))["status"] == "approved"


async def test_a_human_is_not_of_an_electorate_that_asks_for_none(client, redis_client, keys):
    requester, peer = await peers(client, 2)
    dana = await human(client)
    cons = await request_consensus(client, requester["id"])
    before = await tenant_snapshot(redis_client, keys, TENANT)
    problem(await vote(client, cons["id"], dana["id"], "approve"), 403, "not_eligible", why="human")
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


async def test_a_human_registered_after_the_request_cannot_vote_on_it(client, redis_client, keys):
    requester, peer = await peers(client, 2)
    await client.put(f"{POLICIES}/wire-funds", json={"humanApprovals": 1})
    cons = await request_consensus(client, requester["id"], action="wire-funds")
    late = await human(client, "late")
    problem(await vote(client, cons["id"], late["id"], "approve"), 403, "not_eligible", why="later")
    assert not await redis_client.hlen(keys.votes(TENANT, cons["id"]))


async def test_a_human_credential_only_votes_and_reads(client, asgi_app, redis_client, keys):
    requester = await register(client, "sdr-1")
    dana = await human(client)
    before = await tenant_snapshot(redis_client, keys, TENANT)
    async with as_credential(asgi_app, dana["credential"]) as as_dana:
        for method, path, body in [
            ("POST", f"{C}/heartbeat", {}),
            ("POST", f"{C}/lease", {"contactEmail": "a@example.com"}),
            ("POST", f"{C}/send-check", {"contactEmail": "a@example.com", "fencingToken": 1}),
            ("POST", f"{C}/consensus", {"action": "x"}),
            ("POST", f"{V1}/register", {"agentName": "puppet"}),
            ("DELETE", f"{V1}/agents/{requester['id']}", None),
            ("PUT", f"{POLICIES}/x", {"rule": "majority"}),
        ]:
            response = await as_dana.request(method, path, json=body)
            found = problem(response, 403, "insufficient_scope", keyRole="human")
            assert "human member" in found["detail"] and "vote" in found["detail"]
        assert ok(await as_dana.get(f"{V1}/agents/{dana['id']}"))["id"] == dana["id"]
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


async def test_a_forged_human_credential_is_401(client, asgi_app):
    dana = await human(client)
    forged = dana["credential"].rsplit(".", 1)[0] + ".A" + "b" * 42
    async with as_credential(asgi_app, forged) as as_forged:
        problem(await as_forged.get(f"{V1}/agents/{dana['id']}"), 401, "unauthorized")


async def test_an_agent_credential_made_from_a_humans_secret_is_refused(client, asgi_app, redis_client, keys):
    """The digest covers the prefix: a human's secret under the agent prefix is no
    credential of anyone's, so a human cannot pass for an agent."""
    requester, peer = await peers(client, 2)
    dana = await human(client)
    as_agent = dana["credential"].replace("concord-human.", "concord-agent.", 1)
    async with as_credential(asgi_app, as_agent) as posing:
        problem(await posing.post(f"{C}/heartbeat", json={}), 401, "unauthorized")
    assert await redis_client.zscore(keys.heartbeats(TENANT), dana["id"]) is None


async def test_re_registering_with_another_kind_is_409_and_nothing_changes(client, redis_client, keys):
    agent = await register(client, "sdr-1")
    dana = await human(client)
    before = await tenant_snapshot(redis_client, keys, TENANT)
    problem(
        await client.post(f"{V1}/register", json={"agentName": "sdr-1", "kind": "human"}),
        409,
        "kind_mismatch",
        kind="agent",
    )
    body = problem(await client.post(f"{V1}/register", json={"agentName": "dana"}), 409, "kind_mismatch", kind="human")
    assert '"kind": "human"' in body["detail"]
    assert await tenant_snapshot(redis_client, keys, TENANT) == before
    again = ok(await client.post(f"{V1}/register", json={"agentName": "dana", "kind": "human"}))
    assert again["id"] == dana["id"] and again["credential"] != dana["credential"]
    assert HUMAN_CREDENTIAL.fullmatch(again["credential"]) and agent["kind"] == "agent"


async def test_an_admin_rotates_a_humans_credential_and_an_enroll_key_cannot_touch_one(role_app, redis_client, keys):
    async with as_key(role_app, ROLE_KEYS["admin"]) as admin, as_key(role_app, ROLE_KEYS["enroll"]) as enroll:
        dana = await human(admin)
        before = await tenant_snapshot(redis_client, keys, TENANT)
        problem(
            await enroll.post(f"{V1}/register", json={"agentName": "eve", "kind": "human"}),
            403,
            "insufficient_scope",
        )
        problem(await enroll.post(f"{V1}/agents/{dana['id']}/credentials"), 403, "insufficient_scope")
        problem(
            await enroll.post(f"{V1}/register", json={"agentName": "dana", "kind": "human"}), 403, "insufficient_scope"
        )
        assert await tenant_snapshot(redis_client, keys, TENANT) == before

        rotated = ok(await admin.post(f"{V1}/agents/{dana['id']}/credentials"))
        assert HUMAN_CREDENTIAL.fullmatch(rotated["credential"])
        async with (
            as_credential(role_app, dana["credential"]) as old,
            as_credential(role_app, rotated["credential"]) as new,
        ):
            problem(await old.get(f"{V1}/agents/{dana['id']}"), 401, "unauthorized")
            ok(await new.get(f"{V1}/agents/{dana['id']}"))


async def test_deregistering_a_human_ends_its_credential_and_membership(client, redis_client, keys):
    requester, peer = await peers(client, 2)
    dana = await human(client)
    await client.put(f"{POLICIES}/wire-funds", json={"humanApprovals": 1})
    cons = await request_consensus(client, requester["id"], action="wire-funds")
    ok(await client.delete(f"{V1}/agents/{dana['id']}"))
    assert await redis_client.zscore(keys.humans(TENANT), dana["id"]) is None
    problem(await vote(client, cons["id"], dana["id"], "approve"), 401, "unauthorized")
    assert credential_of(client, dana["id"]) == dana["credential"]
