"""Consensus policies per action (docs/api.md, Consensus policies): set, read and
delete by an admin key; recorded in each request when it is made; and what each
rule decides: two_thirds, unanimous, voterRoles, minVotes.

Every test runs on fakeredis, a real Redis and a cluster.
"""

from __future__ import annotations

import pytest

from tests.api.credential_support import as_credential
from tests.support.api import (
    TENANT,
    C,
    credential_of,
    invalid,
    make_inactive,
    ok,
    problem,
    register,
    request_consensus,
    tenant_snapshot,
)
from tests.support.helpers import eventually

pytestmark = pytest.mark.usefixtures("redis_client")

POLICIES = f"{C}/consensus-policies"
DEFAULT = {"rule": "majority", "voterRoles": [], "minVotes": 0, "humanApprovals": 0}


async def set_policy(client, action: str, **rules) -> dict:
    return ok(await client.put(f"{POLICIES}/{action}", json=rules))


async def vote(client, consensus_id: str, agent_id: str, choice: str):
    return await client.post(f"{C}/consensus/{consensus_id}/vote", json={"agentId": agent_id, "vote": choice})


async def fleet(client, n: int, role: str = "general") -> list[dict]:
    return [await register(client, f"{role}-{i}", agentRole=role) for i in range(n)]


def rules(body: dict) -> dict:
    return {name: body[name] for name in DEFAULT}


# --- the policy endpoints --------------------------------------------------------


async def test_an_action_without_a_policy_reads_the_default(client):
    body = ok(await client.get(f"{POLICIES}/refund"))
    assert body == {
        "tenantId": TENANT,
        "action": "refund",
        "default": True,
        "updatedAt": None,
        "updatedBy": None,
        **DEFAULT,
    }
    assert ok(await client.get(POLICIES)) == {"policies": []}


async def test_put_sets_the_whole_policy_and_get_list_and_delete_follow(client, redis_client, keys):
    body = await set_policy(client, "refund", rule="two_thirds", voterRoles=["support", "finance"], minVotes=2)
    assert rules(body) == {
        "rule": "two_thirds",
        "voterRoles": ["finance", "support"],
        "minVotes": 2,
        "humanApprovals": 0,
    }
    assert body["default"] is False and body["updatedBy"] == "cfg-1" and body["updatedAt"]
    assert ok(await client.get(f"{POLICIES}/refund")) == body
    assert ok(await client.get(POLICIES)) == {"policies": [body]}

    replaced = await set_policy(client, "refund", rule="unanimous")  # what is left out takes its default
    assert rules(replaced) == {**DEFAULT, "rule": "unanimous"}

    deleted = ok(await client.delete(f"{POLICIES}/refund"))
    assert deleted == {
        "tenantId": TENANT,
        "action": "refund",
        "default": True,
        "updatedAt": None,
        "updatedBy": None,
        **DEFAULT,
    }
    assert not await redis_client.exists(keys.consensus_policies(TENANT))
    events = [f for _, f in await redis_client.xrange(keys.events(TENANT)) if f["type"].startswith("consensus.policy")]
    assert [(f["type"], f["action"], f["actor"], f["actorRole"]) for f in events] == [
        ("consensus.policy_set", "refund", "cfg-1", "admin"),
        ("consensus.policy_set", "refund", "cfg-1", "admin"),
        ("consensus.policy_deleted", "refund", "cfg-1", "admin"),
    ]
    listed = ok(await client.get(f"{C}/events", params={"type": "consensus.policy_set", "limit": 100}))["events"]
    assert [e["policy"]["rule"] for e in listed] == ["two_thirds", "unanimous"]


async def test_an_action_with_spaces_and_symbols_is_its_own_path(client):
    await set_policy(client, "offer 20% discount", rule="unanimous")
    got = ok(await client.get(f"{POLICIES}/offer%2020%25%20discount"))
    assert got["action"] == "offer 20% discount" and got["rule"] == "unanimous"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"rule": "most"}, "$.rule"),
        ({"minVotes": -1}, "$.minVotes"),
        ({"minVotes": 10_001}, "$.minVotes"),
        ({"humanApprovals": 101}, "$.humanApprovals"),
        ({"voterRoles": ["a", "a"]}, "$.voterRoles"),
        ({"voterRoles": [f"r{i}" for i in range(33)]}, "$.voterRoles"),
        ({"voterRoles": [""]}, "$.voterRoles[0]"),
        ({"quorum": 3}, "$.quorum"),
    ],
)
async def test_a_policy_off_its_rules_is_422_and_nothing_is_written(client, redis_client, keys, body, field):
    before = await tenant_snapshot(redis_client, keys, TENANT)
    invalid(await client.put(f"{POLICIES}/refund", json=body), field)
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


async def test_an_action_with_a_control_character_is_422(client):
    invalid(await client.get(f"{POLICIES}/bad%01action"), "path action")


# --- a request records the policy in force when it is made -------------------------


async def test_a_request_records_its_policy_and_a_later_change_does_not_move_it(client):
    requester, *peers = await fleet(client, 4)
    await set_policy(client, "refund", rule="unanimous")
    cons = await request_consensus(client, requester["id"], action="refund")
    assert cons["policy"] == {**DEFAULT, "rule": "unanimous"}
    assert cons["tally"] == {"approve": 0, "reject": 0, "eligible": 3, "needed": 3}

    ok(await client.delete(f"{POLICIES}/refund"))
    for peer in peers[:2]:
        assert ok(await vote(client, cons["id"], peer["id"], "approve"))["status"] == "pending"
    decided = ok(await vote(client, cons["id"], peers[2]["id"], "approve"))
    assert decided["status"] == "approved" and decided["policy"]["rule"] == "unanimous"
    assert (await request_consensus(client, requester["id"], action="refund"))["policy"] == DEFAULT


async def test_another_action_keeps_the_default(client):
    requester, *_ = await fleet(client, 3)
    await set_policy(client, "refund", rule="unanimous")
    cons = await request_consensus(client, requester["id"], action="send-discount")
    assert cons["policy"] == DEFAULT and cons["tally"]["needed"] == 2


# --- what each rule decides ---------------------------------------------------------


async def test_two_thirds_needs_two_thirds_and_rejects_once_they_cannot_come(client):
    requester, *peers = await fleet(client, 5)  # four peers: 3 approvals needed, 2 rejections reject
    await set_policy(client, "refund", rule="two_thirds")
    cons = await request_consensus(client, requester["id"], action="refund")
    assert cons["tally"] == {"approve": 0, "reject": 0, "eligible": 4, "needed": 3}
    assert ok(await vote(client, cons["id"], peers[0]["id"], "approve"))["status"] == "pending"
    assert ok(await vote(client, cons["id"], peers[1]["id"], "approve"))["status"] == "pending"
    assert ok(await vote(client, cons["id"], peers[2]["id"], "approve"))["status"] == "approved"

    other = await request_consensus(client, requester["id"], action="refund")
    assert ok(await vote(client, other["id"], peers[0]["id"], "reject"))["status"] == "pending"
    decided = ok(await vote(client, other["id"], peers[1]["id"], "reject"))
    assert decided["status"] == "rejected" and decided["tally"] == {
        "approve": 0,
        "reject": 2,
        "eligible": 4,
        "needed": 3,
    }


async def test_unanimous_is_rejected_by_one_rejection(client):
    requester, *peers = await fleet(client, 4)
    await set_policy(client, "wipe-list", rule="unanimous")
    cons = await request_consensus(client, requester["id"], action="wipe-list")
    ok(await vote(client, cons["id"], peers[0]["id"], "approve"))
    ok(await vote(client, cons["id"], peers[1]["id"], "approve"))
    assert ok(await vote(client, cons["id"], peers[2]["id"], "reject"))["status"] == "rejected"


async def test_unanimous_counts_a_member_that_lapsed_out_of_the_electorate(client, redis_client, keys):
    """A member that lapses before voting leaves the electorate, as under majority:
    unanimity is of the members still there and those who voted."""
    requester, *peers = await fleet(client, 4)
    await set_policy(client, "wipe-list", rule="unanimous")
    cons = await request_consensus(client, requester["id"], action="wipe-list")
    ok(await vote(client, cons["id"], peers[0]["id"], "approve"))
    await make_inactive(redis_client, keys, TENANT, peers[2]["id"])
    decided = ok(await vote(client, cons["id"], peers[1]["id"], "approve"))
    assert decided["status"] == "approved" and decided["tally"] == {
        "approve": 2,
        "reject": 0,
        "eligible": 2,
        "needed": 2,
    }


async def test_voter_roles_admit_only_agents_of_those_roles(client, redis_client, keys):
    requester = await register(client, "sdr-0", agentRole="sdr")
    support = await fleet(client, 3, "support")
    others = [await register(client, f"sdr-{i}", agentRole="sdr") for i in (1, 2)]
    await set_policy(client, "refund", voterRoles=["support"])
    cons = await request_consensus(client, requester["id"], action="refund")
    assert cons["tally"] == {"approve": 0, "reject": 0, "eligible": 3, "needed": 2}
    assert await redis_client.smembers(keys.electorate(TENANT, cons["id"])) == {a["id"] for a in support}

    before = await tenant_snapshot(redis_client, keys, TENANT)
    for outsider in others:
        body = problem(await vote(client, cons["id"], outsider["id"], "approve"), 403, "not_eligible", why="role")
        assert outsider["id"] in body["detail"] and "voter roles" in body["detail"]
    # Taking a voter role after the request was made does not make a member either.
    await register(client, others[0]["agentName"], agentRole="support")
    problem(await vote(client, cons["id"], others[0]["id"], "approve"), 403, "not_eligible", why="role")
    assert {k: v for k, v in (await tenant_snapshot(redis_client, keys, TENANT)).items() if "consensus" in k} == {
        k: v for k, v in before.items() if "consensus" in k
    }

    ok(await vote(client, cons["id"], support[0]["id"], "approve"))
    assert ok(await vote(client, cons["id"], support[1]["id"], "approve"))["status"] == "approved"


async def test_voter_roles_with_no_active_member_cannot_be_approved_by_agents(client):
    requester, peer = await fleet(client, 2)
    await set_policy(client, "refund", voterRoles=["finance"])
    cons = await request_consensus(client, requester["id"], action="refund")
    assert cons["tally"] == {"approve": 0, "reject": 0, "eligible": 0, "needed": 1}
    problem(await vote(client, cons["id"], peer["id"], "approve"), 403, "not_eligible", why="role")


async def test_min_votes_decides_nothing_before_the_quorum(client):
    requester, *peers = await fleet(client, 4)  # three peers: a majority is 2
    await set_policy(client, "refund", minVotes=3)
    cons = await request_consensus(client, requester["id"], action="refund")
    ok(await vote(client, cons["id"], peers[0]["id"], "approve"))
    assert ok(await vote(client, cons["id"], peers[1]["id"], "approve"))["status"] == "pending"
    decided = ok(await vote(client, cons["id"], peers[2]["id"], "reject"))
    assert decided["status"] == "approved" and decided["tally"]["approve"] == 2


async def test_a_quorum_larger_than_the_electorate_expires(client):
    requester, peer = await fleet(client, 2)
    await set_policy(client, "refund", minVotes=2)
    cons = await request_consensus(client, requester["id"], action="refund", timeoutSeconds=1)
    assert ok(await vote(client, cons["id"], peer["id"], "approve"))["status"] == "pending"

    async def expired():
        body = ok(await client.get(f"{C}/consensus/{cons['id']}"))
        assert body["status"] in ("pending", "expired"), body
        return body if body["status"] == "expired" else None

    body = await eventually(expired, timeout=15, what="the request to expire")
    assert body["tally"] == {"approve": 1, "reject": 0, "eligible": 1, "needed": 1}


async def test_only_an_admin_key_sets_policies_and_members_read_them(client, asgi_app):
    requester = await register(client, "sdr-1")
    async with as_credential(asgi_app, credential_of(client, requester["id"])) as agent:
        problem(await agent.put(f"{POLICIES}/refund", json={"rule": "unanimous"}), 403, "insufficient_scope")
        problem(await agent.delete(f"{POLICIES}/refund"), 403, "insufficient_scope")
        assert ok(await agent.get(f"{POLICIES}/refund"))["default"] is True
