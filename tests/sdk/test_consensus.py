"""Consensus requests and handles: voting, waiting for the decision with long
polls, idempotency keys. Each real-service test has a tenant of its own, since
eligibility counts every active agent of the tenant."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest

import concord.client as sdk
from concord import AlreadyVoted, AsyncConcord, Concord, ConsensusClosed, RequesterCannotVote
from tests.sdk.live import contact, solo, unique
from tests.sdk.scripted import CONS_ID, consensus, scripted
from tests.support.helpers import Stack


def test_consensus_votes_and_wait_returns_the_decision(stack: Stack):
    tenant, key = solo(stack, 0)
    with Concord(stack.service.url, key) as concord:
        requester, first, second = (concord.register(unique(n)) for n in ("sdr", "retention", "support"))
        email = contact()
        request = requester.request_consensus(
            "send_pricing_override", contact=email, reason="custom pricing", timeout=timedelta(hours=1)
        )
        info = request.info
        assert (info.status, info.tenant_id, info.contact_email, info.tally.eligible, info.tally.needed) == (
            "pending",
            tenant,
            email,
            2,
            2,
        )
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(request.wait, 30)
            assert first.vote(request, "approve", reason="qualified").tally.approve == 1
            assert second.vote(request.id, "approve").status == "approved"
            final = waiting.result(timeout=60)
        assert final.status == "approved" and request.info is final
        assert [v.agent_id for v in final.votes] == [first.id, second.id]

        assert first.vote(request, "approve").status == "approved"  # the same vote again is answered alike
        with pytest.raises(AlreadyVoted) as caught:
            first.vote(request, "reject")
        assert caught.value.vote == "approve"
        with pytest.raises(RequesterCannotVote):
            requester.vote(request, "approve")
        late = concord.register(unique("late"))
        with pytest.raises(ConsensusClosed) as closed:
            late.vote(request, "reject")
        assert closed.value.consensus_status == "approved"
        assert concord.get_consensus(request.id).resolved_at is not None
        assert request.id in {c.id for c in concord.list_consensus(status="approved").consensus}


def test_wait_returns_the_pending_request_when_the_timeout_passes(stack: Stack):
    _, key = solo(stack, 1)
    with Concord(stack.service.url, key) as concord:
        requester = concord.register(unique("sdr"))
        concord.register(unique("peer"))
        request = requester.request_consensus("refund")
        assert request.wait(timeout=1).status == "pending"
        assert concord.wait_consensus(request.id, timeout=1).status == "pending"


async def test_async_wait_returns_the_decision_and_the_pending_request(stack: Stack):
    _, key = solo(stack, 2)
    async with AsyncConcord(stack.service.url, key) as concord:
        requester = await concord.register(unique("sdr"))
        peer = await concord.register(unique("peer"))
        request = await requester.request_consensus("refund", timeout=600)
        assert (await request.wait(timeout=1)).status == "pending"
        waiting = asyncio.create_task(request.wait(timeout=30))
        await peer.vote(request, "reject")
        assert (await waiting).status == "rejected"
        assert request.status == "rejected"


def test_consensus_request_with_the_same_idempotency_key_is_created_once(stack: Stack):
    _, key = solo(stack, 3)
    with Concord(stack.service.url, key) as concord:
        requester = concord.register(unique("sdr"))
        first = concord.request_consensus(requester.id, "refund", idempotency_key="refund-order-17")
        again = concord.request_consensus(requester.id, "refund", idempotency_key="refund-order-17")
        assert again.id == first.id
        assert concord.request_consensus(requester.id, "refund").id != first.id
        with pytest.raises(sdk.IdempotencyKeyReused):
            concord.request_consensus(requester.id, "another action", idempotency_key="refund-order-17")


# --- long polls (scripted answers) -----------------------------------------------


def test_wait_long_polls_until_the_decision():
    concord, script = scripted(
        httpx.Response(200, json=consensus()),
        httpx.Response(200, json=consensus()),
        httpx.Response(200, json=consensus("approved")),
    )
    assert concord.consensus(CONS_ID).wait().status == "approved"
    assert [request.url.params["waitSeconds"] for request in script.requests] == ["60", "60", "60"]
    concord, script = scripted(httpx.Response(200, json=consensus("expired")))
    assert concord.wait_consensus(CONS_ID, timeout=timedelta(seconds=20)).status == "expired"
    assert [request.url.params["waitSeconds"] for request in script.requests] == ["20"]
    concord, script = scripted(httpx.Response(200, json=consensus()))
    assert concord.wait_consensus(CONS_ID, timeout=0.1).status == "pending"  # too short to wait: one plain read
    assert len(script.requests) == 1 and "waitSeconds" not in script.requests[0].url.params


def test_a_human_member_approves_with_its_own_credential(stack: Stack):
    """An admin registers a human (kind="human"); the action's policy asks for one
    human approval; the human's own client, made from its credential alone, votes."""
    tenant, key = solo(stack, 7)
    with Concord(stack.service.url, key) as concord:
        requester, peer = concord.register(unique("sdr")), concord.register(unique("retention"))
        dana = concord.register(unique("dana"), role="approver", kind="human")
        assert dana.info.kind == "human" and dana.credential.startswith("concord-human.")
        put = httpx.put(
            f"{stack.service.url}/v1/agent/coordination/consensus-policies/wire_funds",
            json={"humanApprovals": 1},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert put.status_code == 200, put.text
        request = requester.request_consensus("wire_funds")
        assert request.info.policy.human_approvals == 1 and request.info.tally.humans_needed == 1
        assert peer.vote(request, "approve").status == "pending"
        with Concord(stack.service.url, agent_credential=dana.credential) as as_dana:
            decided = as_dana.me().vote(request.id, "approve", reason="checked the invoice")
        assert decided.status == "approved" and [v.kind for v in decided.votes] == ["agent", "human"]
