"""Consensus over HTTP: request, vote, read, list, expiry.

Every test runs on fakeredis and on a real Redis (the redis_client fixture).
Liveness is changed by ageing a heartbeat in Redis, never by waiting.
"""

from __future__ import annotations

import pytest

from tests.api.credential_support import forged
from tests.conftest import API_KEY
from tests.support.api import (
    CONS_ID,
    ISO_Z,
    TENANT,
    C,
    acquire,
    bearer,
    closed,
    credential_of,
    invalid,
    make_inactive,
    ms,
    ok,
    problem,
    register,
    request_consensus,
    tenant_snapshot,
    unknown_id,
)
from tests.support.helpers import eventually

CONSENSUS_FIELDS = {
    "id",
    "tenantId",
    "requestingAgentId",
    "action",
    "contactEmail",
    "reason",
    "status",
    "createdAt",
    "expiresAt",
    "resolvedAt",
    "tally",
    "votes",
    "policy",
}
HOUR_MS = 3600 * 1000
RETENTION_MS = 7 * 24 * HOUR_MS


@pytest.fixture
async def requester(client):
    return await register(client, "sdr-1", agentRole="sdr")


@pytest.fixture
async def peers(client, requester):
    """Three active peers of the requester: eligible 3, needed 2."""
    return [await register(client, name) for name in ("retention-1", "support-1", "support-2")]


async def vote(client, consensus_id, agent_id, choice, **extra):
    return await client.post(f"{C}/consensus/{consensus_id}/vote", json={"agentId": agent_id, "vote": choice, **extra})


async def get(client, consensus_id):
    return ok(await client.get(f"{C}/consensus/{consensus_id}"))


async def listed(client, **params):
    return ok(await client.get(f"{C}/consensus", params=params))


# --- request ------------------------------------------------------------------


async def test_request_is_201_with_the_full_consensus(client, redis_client, keys, requester, peers):
    body = ok(
        await client.post(
            f"{C}/consensus",
            json={
                "requestingAgentId": requester["id"],
                "action": "offer 20% discount",
                "contactEmail": " Alice@Example.COM ",
                "reason": "churn risk",
            },
        ),
        201,
    )
    assert set(body) == CONSENSUS_FIELDS
    assert CONS_ID.fullmatch(body["id"])
    assert body == {
        "id": body["id"],
        "tenantId": TENANT,
        "requestingAgentId": requester["id"],
        "action": "offer 20% discount",
        "contactEmail": "alice@example.com",
        "reason": "churn risk",
        "status": "pending",
        "createdAt": body["createdAt"],
        "expiresAt": body["expiresAt"],
        "resolvedAt": None,
        "tally": {"approve": 0, "reject": 0, "eligible": 3, "needed": 2},
        "votes": [],
        "policy": {"rule": "majority", "voterRoles": [], "minVotes": 0, "humanApprovals": 0},  # the default
    }
    assert ISO_Z.fullmatch(body["createdAt"])
    assert ms(body["expiresAt"]) - ms(body["createdAt"]) == HOUR_MS  # default 60 minutes
    assert await get(client, body["id"]) == body

    # Redis: the request hash, the lists it is on, its deadline.
    stored = await redis_client.hgetall(keys.consensus(TENANT, body["id"]))
    assert stored["status"] == "pending" and stored["contactEmail"] == "alice@example.com"
    assert stored["requestingAgentId"] == requester["id"]
    assert await redis_client.zscore(keys.consensus_list(TENANT, "all"), body["id"]) == ms(body["createdAt"])
    assert await redis_client.zscore(keys.consensus_list(TENANT, "pending"), body["id"]) == ms(body["createdAt"])
    assert await redis_client.zscore(keys.consensus_due(TENANT), body["id"]) == ms(body["expiresAt"])
    assert await redis_client.pexpiretime(keys.consensus(TENANT, body["id"])) == ms(body["expiresAt"]) + RETENTION_MS


async def test_request_minimal_body(client, requester):
    body = await request_consensus(client, requester["id"], action="pause sequence")
    assert body["contactEmail"] is None and body["reason"] is None
    assert body["tally"] == {"approve": 0, "reject": 0, "eligible": 0, "needed": 1}
    assert body["tenantId"] == TENANT


async def test_requester_must_be_an_agent_with_its_own_credential(client, redis_client, keys):
    """Only an agent's own credential asks for consensus: an admin key is 403, and a
    credential claiming an agent that does not exist is 401; neither writes anything."""
    missing = unknown_id("agent")
    ask = {"requestingAgentId": missing, "action": "x"}
    before = await tenant_snapshot(redis_client, keys, TENANT)
    problem(
        await client.post(f"{C}/consensus", json=ask, headers=bearer(API_KEY)),
        403,
        "insufficient_scope",
        keyRole="admin",
    )
    body = problem(
        await client.post(f"{C}/consensus", json=ask, headers=bearer(forged(TENANT, missing))), 401, "unauthorized"
    )
    assert missing in body["detail"]
    assert await listed(client) == {"consensus": [], "nextCursor": None}
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


async def test_a_credential_may_leave_the_requester_and_the_voter_out(client, requester, peers):
    cons = ok(
        await client.post(
            f"{C}/consensus", json={"action": "send-discount"}, headers=bearer(credential_of(client, requester["id"]))
        ),
        201,
    )
    assert cons["requestingAgentId"] == requester["id"]
    voted = ok(
        await client.post(
            f"{C}/consensus/{cons['id']}/vote",
            json={"vote": "approve"},
            headers=bearer(credential_of(client, peers[0]["id"])),
        )
    )
    assert [v["agentId"] for v in voted["votes"]] == [peers[0]["id"]]


async def test_requester_must_be_active(client, redis_client, keys, requester):
    await make_inactive(redis_client, keys, TENANT, requester["id"])
    problem(
        await client.post(f"{C}/consensus", json={"requestingAgentId": requester["id"], "action": "x"}),
        409,
        "agent_inactive",
    )
    assert await listed(client) == {"consensus": [], "nextCursor": None}


@pytest.mark.parametrize(
    "timeout, field",
    [
        ({"timeoutSeconds": 0}, "$.timeoutSeconds"),
        ({"timeoutSeconds": -1}, "$.timeoutSeconds"),
        ({"timeoutSeconds": "60"}, "$.timeoutSeconds"),
        ({"timeoutSeconds": 1.5}, "$.timeoutSeconds"),
        ({"timeoutSeconds": True}, "$.timeoutSeconds"),
        ({"timeoutSeconds": 604_801}, "$.timeoutSeconds"),
        ({"timeoutMinutes": 0}, "$.timeoutMinutes"),
        ({"timeoutMinutes": -60}, "$.timeoutMinutes"),
        ({"timeoutMinutes": "60"}, "$.timeoutMinutes"),
        ({"timeoutMinutes": 10_081}, "$.timeoutMinutes"),
        ({"timeoutMinutes": 10**20}, "$.timeoutMinutes"),
        ({"timeoutMinutes": 1, "timeoutSeconds": 60}, "$.timeoutSeconds"),
    ],
    ids=repr,
)
async def test_timeout_bounds(client, requester, timeout, field):
    invalid(
        await client.post(f"{C}/consensus", json={"requestingAgentId": requester["id"], "action": "x", **timeout}),
        field,
    )
    assert (await listed(client))["consensus"] == []


@pytest.mark.parametrize(
    "timeout, length_ms",
    [
        ({"timeoutSeconds": 1}, 1000),
        ({"timeoutSeconds": 604_800}, 7 * 24 * HOUR_MS),
        ({"timeoutMinutes": 1}, 60_000),
        ({"timeoutMinutes": 10_080}, 7 * 24 * HOUR_MS),
        ({"timeoutMinutes": None}, HOUR_MS),
    ],
    ids=repr,
)
async def test_timeout_limits_are_inclusive(client, requester, timeout, length_ms):
    body = await request_consensus(client, requester["id"], **timeout)
    assert ms(body["expiresAt"]) - ms(body["createdAt"]) == length_ms


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"action": None}, "$.action"),
        ({"action": ""}, "$.action"),
        ({"action": "a" * 129}, "$.action"),
        ({"action": "nul\x00"}, "$.action"),
        ({"action": 5}, "$.action"),
        ({"reason": "r" * 2001}, "$.reason"),
        ({"reason": "nul\x00"}, "$.reason"),
        ({"contactEmail": "nobody"}, "$.contactEmail"),
        ({"agentId": "SELF"}, "$.agentId"),
        ({"votes": []}, "$.votes"),
    ],
    ids=repr,
)
async def test_request_refuses_bad_bodies(client, requester, payload, field):
    body = {"requestingAgentId": requester["id"], "action": "x"}
    body.update({k: (requester["id"] if v == "SELF" else v) for k, v in payload.items()})
    body = {k: v for k, v in body.items() if v is not None}
    invalid(await client.post(f"{C}/consensus", json=body), field)
    assert (await listed(client))["consensus"] == []


async def test_request_accepts_the_longest_action_and_reason(client, requester):
    body = await request_consensus(client, requester["id"], action="a" * 128, reason="multi\nline\treason " * 100)
    assert body["action"] == "a" * 128 and len(body["reason"]) == 1800
    long = await request_consensus(client, requester["id"], reason="r" * 2000)
    assert long["reason"] == "r" * 2000


# --- voting -------------------------------------------------------------------


async def test_votes_decide_approval(client, redis_client, keys, requester, peers):
    a, b, c = peers
    cons = await request_consensus(client, requester["id"], contactEmail="alice@example.com")

    first = ok(await vote(client, cons["id"], a["id"], "approve", reason="fits the | playbook"))
    assert first["status"] == "pending" and first["resolvedAt"] is None
    assert first["tally"] == {"approve": 1, "reject": 0, "eligible": 3, "needed": 2}
    assert first["votes"] == [
        {
            "agentId": a["id"],
            "agentName": "retention-1",
            "vote": "approve",
            "reason": "fits the | playbook",
            "votedAt": first["votes"][0]["votedAt"],
            "kind": "agent",
        }
    ]
    assert ISO_Z.fullmatch(first["votes"][0]["votedAt"])
    assert {k: v for k, v in first.items() if k not in ("tally", "votes")} == {
        k: v for k, v in cons.items() if k not in ("tally", "votes")
    }

    decided = ok(await vote(client, cons["id"], b["id"], "approve"))
    assert decided["status"] == "approved"
    assert decided["tally"] == {"approve": 2, "reject": 0, "eligible": 3, "needed": 2}
    assert ISO_Z.fullmatch(decided["resolvedAt"])
    assert ms(cons["createdAt"]) <= ms(decided["resolvedAt"]) <= ms(cons["expiresAt"])
    assert [v["agentId"] for v in decided["votes"]] == [a["id"], b["id"]]
    assert decided["votes"][1] == {
        "agentId": b["id"],
        "agentName": "support-1",
        "vote": "approve",
        "reason": None,
        "votedAt": decided["votes"][1]["votedAt"],
        "kind": "agent",
    }
    assert ms(decided["votes"][0]["votedAt"]) <= ms(decided["votes"][1]["votedAt"])
    assert await get(client, cons["id"]) == decided

    # Closed: a new voter is refused with the status; the vote is not recorded.
    refused = closed(await vote(client, cons["id"], c["id"], "reject"), "approved")
    assert cons["id"] in refused["detail"]
    assert await get(client, cons["id"]) == decided

    # Redis: moved from the pending list to the approved one, kept for 7 days after resolution.
    assert await redis_client.zscore(keys.consensus_list(TENANT, "pending"), cons["id"]) is None
    assert await redis_client.zscore(keys.consensus_list(TENANT, "approved"), cons["id"]) == ms(cons["createdAt"])
    assert await redis_client.zscore(keys.consensus_due(TENANT), cons["id"]) is None
    resolved = ms(decided["resolvedAt"])
    assert await redis_client.pexpiretime(keys.consensus(TENANT, cons["id"])) == resolved + RETENTION_MS
    assert await redis_client.pexpiretime(keys.votes(TENANT, cons["id"])) == resolved + RETENTION_MS

    assert [x["id"] for x in (await listed(client, status="approved"))["consensus"]] == [cons["id"]]
    assert (await listed(client, status="pending"))["consensus"] == []


async def test_consensus_closed_keeps_the_numeric_problem_status(client, requester, peers):
    """The request's status travels as ``consensusStatus``: the problem's own
    ``status`` stays the HTTP status (RFC 9457)."""
    a, b, c = peers
    cons = await request_consensus(client, requester["id"])
    ok(await vote(client, cons["id"], a["id"], "approve"))
    ok(await vote(client, cons["id"], b["id"], "approve"))
    response = await vote(client, cons["id"], c["id"], "approve")
    body = closed(response, "approved")
    assert body["status"] == 409, body


async def test_votes_decide_rejection(client, requester, peers):
    a, b, c = peers
    cons = await request_consensus(client, requester["id"])
    assert ok(await vote(client, cons["id"], a["id"], "reject", reason="too pushy"))["status"] == "pending"
    mixed = ok(await vote(client, cons["id"], b["id"], "approve"))
    assert mixed["status"] == "pending"
    assert mixed["tally"] == {"approve": 1, "reject": 1, "eligible": 3, "needed": 2}
    decided = ok(await vote(client, cons["id"], c["id"], "reject"))
    assert decided["status"] == "rejected" and decided["resolvedAt"] is not None
    assert decided["tally"] == {"approve": 1, "reject": 2, "eligible": 3, "needed": 2}
    assert [(v["agentId"], v["vote"]) for v in decided["votes"]] == [
        (a["id"], "reject"),
        (b["id"], "approve"),
        (c["id"], "reject"),
    ]
    assert [x["id"] for x in (await listed(client, status="rejected"))["consensus"]] == [cons["id"]]


async def test_same_vote_again_is_200_unchanged(client, requester, peers):
    a, b, _ = peers
    cons = await request_consensus(client, requester["id"])
    first = ok(await vote(client, cons["id"], a["id"], "approve", reason="first"))
    again = ok(await vote(client, cons["id"], a["id"], "approve", reason="a different reason"))
    assert again == first  # the first vote and its reason stand

    # Also after the request is decided: a retry of the deciding vote still succeeds.
    decided = ok(await vote(client, cons["id"], b["id"], "approve"))
    assert decided["status"] == "approved"
    assert ok(await vote(client, cons["id"], b["id"], "approve")) == decided
    assert ok(await vote(client, cons["id"], a["id"], "approve")) == decided


async def test_a_different_vote_is_409_already_voted(client, requester, peers):
    a, b, _ = peers
    cons = await request_consensus(client, requester["id"])
    first = ok(await vote(client, cons["id"], a["id"], "approve"))
    body = problem(await vote(client, cons["id"], a["id"], "reject"), 409, "already_voted", vote="approve")
    assert a["id"] in body["detail"]
    assert await get(client, cons["id"]) == first
    # Even after the decision the earlier vote is what is reported.
    ok(await vote(client, cons["id"], b["id"], "approve"))
    problem(await vote(client, cons["id"], b["id"], "reject"), 409, "already_voted", vote="approve")


async def test_requester_cannot_vote(client, requester, peers):
    cons = await request_consensus(client, requester["id"])
    for choice in ("approve", "reject"):
        body = problem(await vote(client, cons["id"], requester["id"], choice), 403, "requester_cannot_vote")
        assert requester["id"] in body["detail"] and cons["id"] in body["detail"]
    assert await get(client, cons["id"]) == cons


async def test_inactive_voter_is_409_and_not_eligible_once_back(client, redis_client, keys, requester, peers):
    a, b, c = peers
    cons = await request_consensus(client, requester["id"])
    await make_inactive(redis_client, keys, TENANT, c["id"])
    problem(await vote(client, cons["id"], c["id"], "approve"), 409, "agent_inactive")
    after = await get(client, cons["id"])
    # c no longer counts: it is neither active nor a voter.
    assert after["votes"] == [] and after["status"] == "pending"
    assert after["tally"] == {"approve": 0, "reject": 0, "eligible": 2, "needed": 2}
    # Heartbeating makes it active again, but not a member of this request's electorate
    # (fixed when it was made): its vote cannot count here, and the tally stays.
    ok(await client.post(f"{C}/heartbeat", json={"agentId": c["id"]}))
    problem(await vote(client, cons["id"], c["id"], "approve"), 403, "not_eligible")
    assert (await get(client, cons["id"]))["tally"]["eligible"] == 2
    # A request made now counts it.
    assert (await request_consensus(client, requester["id"]))["tally"]["eligible"] == 3


async def test_an_unknown_voter_is_refused(client, requester, peers):
    """No key votes (403), and a credential claiming an agent that does not exist is 401."""
    cons = await request_consensus(client, requester["id"])
    missing = unknown_id("agent")
    ballot = {"agentId": missing, "vote": "approve"}
    path = f"{C}/consensus/{cons['id']}/vote"
    problem(await client.post(path, json=ballot, headers=bearer(API_KEY)), 403, "insufficient_scope", keyRole="admin")
    body = problem(await client.post(path, json=ballot, headers=bearer(forged(TENANT, missing))), 401, "unauthorized")
    assert missing in body["detail"]
    assert await get(client, cons["id"]) == cons


async def test_a_deleted_agent_cannot_vote(client, requester, peers):
    cons = await request_consensus(client, requester["id"])
    ok(await client.delete(f"/v1/agent/agents/{peers[0]['id']}"))
    # Its credential went with it.
    problem(await vote(client, cons["id"], peers[0]["id"], "approve"), 401, "unauthorized")
    assert (await get(client, cons["id"]))["votes"] == []


@pytest.mark.parametrize("consensus_id", [unknown_id("cons"), "cons_1", "nope", unknown_id("lease")])
async def test_unknown_consensus_is_404(client, requester, peers, consensus_id):
    problem(await vote(client, consensus_id, peers[0]["id"], "approve"), 404, "consensus_not_found")
    problem(await client.get(f"{C}/consensus/{consensus_id}"), 404, "consensus_not_found")


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"vote": "maybe"}, "$.vote"),
        ({"vote": "APPROVE"}, "$.vote"),
        ({"vote": True}, "$.vote"),
        ({"vote": None}, "$.vote"),
        ({"reason": "r" * 2001}, "$.reason"),
        ({"reason": "a\x00b"}, "$.reason"),
        ({"reason": 1}, "$.reason"),
        ({"weight": 2}, "$.weight"),
    ],
    ids=repr,
)
async def test_vote_refuses_bad_bodies(client, requester, peers, payload, field):
    cons = await request_consensus(client, requester["id"])
    body = {"agentId": peers[0]["id"], "vote": "approve", **payload}
    if payload.get("vote", "x") is None:
        del body["vote"]
    invalid(await client.post(f"{C}/consensus/{cons['id']}/vote", json=body), field)
    assert await get(client, cons["id"]) == cons


# --- the rule -----------------------------------------------------------------


async def test_no_eligible_peer_stays_pending(client, redis_client, keys, requester):
    cons = await request_consensus(client, requester["id"])
    assert cons["tally"] == {"approve": 0, "reject": 0, "eligible": 0, "needed": 1}
    assert (await get(client, cons["id"]))["status"] == "pending"
    # Peers that are all inactive do not count either.
    peer = await register(client, "sleeper")
    await make_inactive(redis_client, keys, TENANT, peer["id"])
    again = await get(client, cons["id"])
    assert again["status"] == "pending" and again["tally"]["eligible"] == 0
    problem(await vote(client, cons["id"], peer["id"], "approve"), 409, "agent_inactive")
    assert (await get(client, cons["id"]))["status"] == "pending"


async def test_a_cast_vote_stands_when_its_voter_lapses(client, redis_client, keys, requester, peers):
    a, b, c = peers
    cons = await request_consensus(client, requester["id"])
    ok(await vote(client, cons["id"], a["id"], "approve"))
    await make_inactive(redis_client, keys, TENANT, a["id"])
    after = await get(client, cons["id"])
    assert after["status"] == "pending"
    assert after["tally"] == {"approve": 1, "reject": 0, "eligible": 3, "needed": 2}
    assert ok(await vote(client, cons["id"], b["id"], "approve"))["status"] == "approved"


async def test_a_read_decides_when_eligibility_shrinks(client, redis_client, keys, requester, peers):
    a, b, c = peers
    d = await register(client, "support-3")
    cons = await request_consensus(client, requester["id"])
    assert cons["tally"] == {"approve": 0, "reject": 0, "eligible": 4, "needed": 3}
    ok(await vote(client, cons["id"], a["id"], "approve"))
    assert ok(await vote(client, cons["id"], b["id"], "approve"))["status"] == "pending"
    for lapsed in (c, d):
        await make_inactive(redis_client, keys, TENANT, lapsed["id"])
    decided = await get(client, cons["id"])
    assert decided["status"] == "approved" and decided["resolvedAt"] is not None
    assert decided["tally"] == {"approve": 2, "reject": 0, "eligible": 2, "needed": 2}


async def test_a_decision_never_changes(client, redis_client, keys, requester, peers):
    a, b, c = peers
    cons = await request_consensus(client, requester["id"])
    ok(await vote(client, cons["id"], a["id"], "reject"))
    decided = ok(await vote(client, cons["id"], b["id"], "reject"))
    assert decided["status"] == "rejected"
    # More agents arrive, the voters lapse: the decision and its tally stay as they were.
    for name in ("late-1", "late-2", "late-3"):
        await register(client, name)
    for voter in (a, b):
        await make_inactive(redis_client, keys, TENANT, voter["id"])
    assert await get(client, cons["id"]) == decided
    closed(await vote(client, cons["id"], c["id"], "approve"), "rejected")


# --- expiry -------------------------------------------------------------------


async def test_a_request_without_peers_expires_and_is_never_approved(client, redis_client, keys, requester):
    cons = await request_consensus(client, requester["id"], timeoutSeconds=1)
    assert ms(cons["expiresAt"]) - ms(cons["createdAt"]) == 1000

    async def expired():
        body = await get(client, cons["id"])
        assert body["status"] in ("pending", "expired"), body
        return body if body["status"] == "expired" else None

    body = await eventually(expired, timeout=15, what="the consensus request to expire")
    assert body["resolvedAt"] == body["expiresAt"] == cons["expiresAt"]
    assert body["tally"] == {"approve": 0, "reject": 0, "eligible": 0, "needed": 1}
    assert [x["id"] for x in (await listed(client, status="expired"))["consensus"]] == [cons["id"]]
    assert (await listed(client, status="pending"))["consensus"] == []
    assert (await listed(client, status="approved"))["consensus"] == []
    assert await redis_client.zscore(keys.consensus_due(TENANT), cons["id"]) is None

    # A peer arriving now is too late.
    peer = await register(client, "latecomer")
    closed(await vote(client, cons["id"], peer["id"], "approve"), "expired")
    assert (await get(client, cons["id"]))["status"] == "expired"


async def test_expiry_shows_in_the_expired_list_without_a_read(client, requester, peers):
    cons = await request_consensus(client, requester["id"], timeoutSeconds=1)
    ok(await vote(client, cons["id"], peers[0]["id"], "approve"))

    async def in_expired_list():
        return [x for x in (await listed(client, status="expired"))["consensus"] if x["id"] == cons["id"]]

    (body,) = await eventually(in_expired_list, timeout=15, what="the request to be listed as expired")
    assert body["status"] == "expired" and body["resolvedAt"] == cons["expiresAt"]
    assert body["tally"]["approve"] == 1
    assert (await listed(client, status="pending"))["consensus"] == []


# --- list ---------------------------------------------------------------------


async def test_list_by_status_and_paginate(client, requester, peers):
    a, b, _ = peers
    made = [await request_consensus(client, requester["id"], action=f"action-{i}") for i in range(5)]
    ok(await vote(client, made[1]["id"], a["id"], "approve"))
    ok(await vote(client, made[1]["id"], b["id"], "approve"))
    ok(await vote(client, made[3]["id"], a["id"], "reject"))
    ok(await vote(client, made[3]["id"], b["id"], "reject"))

    everything = await listed(client)
    assert everything["nextCursor"] is None
    assert {x["id"] for x in everything["consensus"]} == {m["id"] for m in made}
    created = [ms(x["createdAt"]) for x in everything["consensus"]]
    assert created == sorted(created, reverse=True)
    assert all(set(x) == CONSENSUS_FIELDS for x in everything["consensus"])

    approved = await listed(client, status="approved")
    assert [x["id"] for x in approved["consensus"]] == [made[1]["id"]] and approved["nextCursor"] is None
    assert approved["consensus"][0] == await get(client, made[1]["id"])
    assert [x["id"] for x in (await listed(client, status="rejected"))["consensus"]] == [made[3]["id"]]
    assert (await listed(client, status="expired")) == {"consensus": [], "nextCursor": None}

    pending_ids, cursor, sizes = [], None, []
    while True:
        page = await listed(client, status="pending", limit=2, **({"cursor": cursor} if cursor else {}))
        sizes.append(len(page["consensus"]))
        assert all(x["status"] == "pending" for x in page["consensus"])
        pending_ids += [x["id"] for x in page["consensus"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert sizes == [2, 1]
    assert sorted(pending_ids) == sorted(made[i]["id"] for i in (0, 2, 4))

    all_ids, cursor = [], None
    for _ in range(5):
        page = await listed(client, limit=1, **({"cursor": cursor} if cursor else {}))
        all_ids += [x["id"] for x in page["consensus"]]
        cursor = page["nextCursor"]
    assert cursor is None
    assert all_ids == [x["id"] for x in everything["consensus"]]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"status": "open"}, "$.status"),
        ({"status": ""}, "$.status"),
        ({"limit": "0"}, "$.limit"),
        ({"limit": "1001"}, "$.limit"),
        ({"cursor": "bm9jb2xvbg"}, "$.cursor"),
        ({"agentId": unknown_id("agent")}, "$.agentId"),
    ],
    ids=repr,
)
async def test_list_refuses_bad_queries(client, params, field):
    invalid(await client.get(f"{C}/consensus", params=params), field)


async def test_consensus_and_leases_are_independent(client, requester, peers):
    """A consensus request about a contact neither needs nor takes its lease."""
    lease = await acquire(client, peers[0]["id"], "alice@example.com")
    cons = await request_consensus(client, requester["id"], contactEmail="alice@example.com")
    assert cons["contactEmail"] == "alice@example.com"
    assert ok(await client.get(f"{C}/lease/{lease['id']}")) == lease
