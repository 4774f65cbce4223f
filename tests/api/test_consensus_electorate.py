"""A consensus that cannot be stacked: the electorate is fixed when the request is
made (docs/api.md, Consensus), replayed over HTTP as an attacker would try it.

Every test runs on fakeredis, a real Redis and a cluster. The attacker is one of
the agents (a prompt-injected support agent) that also reaches an admin or enroll
key's registrations: it makes sock-puppets after the request, or revives idle
agents, and votes with their own credentials. Each vote is 403 not_eligible with
nothing written, and the real members decide.
"""

from __future__ import annotations

import pytest

from tests.support.api import (
    TENANT,
    C,
    make_inactive,
    ok,
    problem,
    register,
    request_consensus,
    tenant_snapshot,
)

pytestmark = pytest.mark.usefixtures("redis_client")


async def vote(client, consensus_id, agent_id, choice):
    return await client.post(f"{C}/consensus/{consensus_id}/vote", json={"agentId": agent_id, "vote": choice})


async def get(client, consensus_id):
    return ok(await client.get(f"{C}/consensus/{consensus_id}"))


async def votes_in_events(redis_client, keys, consensus_id):
    return [
        fields["agentId"]
        for _, fields in await redis_client.xrange(keys.events(TENANT))
        if fields["type"] == "consensus.voted" and fields["consensusId"] == consensus_id
    ]


async def test_stacking_by_registration_is_refused(client, redis_client, keys):
    """Request as A, register three agents, approve as each: before, `approved
    {approve: 3, eligible: 5, needed: 3}` while the real peer's reject got
    consensus_closed. Now each puppet is 403 and the peer's reject decides."""
    attacker = await register(client, "support-1", agentRole="support")
    peer = await register(client, "retention-1", agentRole="retention")
    cons = await request_consensus(client, attacker["id"], action="refund_everything")
    assert cons["tally"] == {"approve": 0, "reject": 0, "eligible": 1, "needed": 1}
    puppets = [await register(client, f"puppet-{i}") for i in range(3)]
    before = await tenant_snapshot(redis_client, keys, TENANT)

    for puppet in puppets:
        body = problem(await vote(client, cons["id"], puppet["id"], "approve"), 403, "not_eligible")
        assert puppet["id"] in body["detail"] and cons["id"] in body["detail"]

    assert await tenant_snapshot(redis_client, keys, TENANT) == before
    assert (await get(client, cons["id"]))["tally"] == {"approve": 0, "reject": 0, "eligible": 1, "needed": 1}
    decided = ok(await vote(client, cons["id"], peer["id"], "reject"))
    assert decided["status"] == "rejected" and [v["agentId"] for v in decided["votes"]] == [peer["id"]]
    assert await votes_in_events(redis_client, keys, cons["id"]) == [peer["id"]]


async def test_reviving_idle_agents_cannot_stack_a_request(client, redis_client, keys):
    """Agents idle when the request was made, and a member that lapses and comes
    back, heartbeat to vote: 403, and the request keeps its electorate."""
    attacker = await register(client, "support-1")
    members = [await register(client, f"retention-{i}") for i in range(3)]
    idle = [await register(client, f"idle-{i}") for i in range(2)]
    for agent in idle:
        await make_inactive(redis_client, keys, TENANT, agent["id"])
    cons = await request_consensus(client, attacker["id"])
    assert cons["tally"]["eligible"] == 3
    returning = members[2]
    await make_inactive(redis_client, keys, TENANT, returning["id"])
    assert (await get(client, cons["id"]))["tally"] == {"approve": 0, "reject": 0, "eligible": 2, "needed": 2}

    for agent in [*idle, returning]:
        ok(await client.post(f"{C}/heartbeat", json={"agentId": agent["id"]}))
        problem(await vote(client, cons["id"], agent["id"], "approve"), 403, "not_eligible")

    assert (await get(client, cons["id"]))["tally"] == {"approve": 0, "reject": 0, "eligible": 2, "needed": 2}
    assert ok(await vote(client, cons["id"], members[0]["id"], "approve"))["status"] == "pending"
    assert ok(await vote(client, cons["id"], members[1]["id"], "approve"))["status"] == "approved"
    assert sorted(await votes_in_events(redis_client, keys, cons["id"])) == sorted(m["id"] for m in members[:2])


async def test_a_deregistered_voter_keeps_its_vote_and_a_deregistered_member_leaves(client, redis_client, keys):
    """Deregistering is an admin key's act, recorded as the key's: it can shrink an
    electorate by members that have not voted, never add to it, and a cast vote stands."""
    requester = await register(client, "sdr-1")
    voter, quiet, other = [await register(client, name) for name in ("a-1", "b-1", "c-1")]
    cons = await request_consensus(client, requester["id"])
    assert ok(await vote(client, cons["id"], voter["id"], "reject"))["tally"]["eligible"] == 3

    ok(await client.delete(f"/v1/agent/agents/{voter['id']}"))
    ok(await client.delete(f"/v1/agent/agents/{quiet['id']}"))

    after = await get(client, cons["id"])
    assert after["tally"] == {"approve": 0, "reject": 1, "eligible": 2, "needed": 2}
    removed = [f for _, f in await redis_client.xrange(keys.events(TENANT)) if f["type"] == "agent.removed"]
    assert [(f["agentId"], f["actorRole"]) for f in removed] == [(voter["id"], "admin"), (quiet["id"], "admin")]
    assert ok(await vote(client, cons["id"], other["id"], "reject"))["status"] == "rejected"
