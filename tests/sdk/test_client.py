"""The Python SDK (service/client.py): Concord and AsyncConcord.

Behaviour is checked against a real `concord serve` on a private redis-server
(one stack for the module; every test uses agents and contacts of its own, and a
consensus test a tenant of its own, since eligibility counts every active agent of
the tenant). Retries, and what the client sends, are checked with
httpx.MockTransport, which answers as scripted and records every request.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from datetime import timedelta
from typing import Any

import httpx
import msgspec
import pytest
import redis

import concord.client as sdk
from concord import (
    AgentInactive,
    AgentNotFound,
    AlreadyVoted,
    AsyncConcord,
    Concord,
    ConcordError,
    ConsensusClosed,
    ConsensusNotFound,
    EndpointNotFound,
    LeaseConflict,
    LeaseLost,
    LeaseNotFound,
    RateLimited,
    RequesterCannotVote,
    StoreUnavailable,
    Unauthorized,
    Unreachable,
    ValidationError,
)
from concord import protocol as s
from concord.client.base import DEFAULT_URL
from concord.client.sse import _SSE
from concord.protocol import ERRORS
from concord.server.store.keys import agent_id_for
from tests.support.helpers import Stack, eventually, free_port, running_stack, wait_until

TENANT, API_KEY = "acme", "acme-sdk-key-0123456789"
# Tenants of their own for the consensus tests: a majority counts every active agent of a tenant.
ISOLATED = {f"solo{i}": f"solo{i}-sdk-key-0123456789" for i in range(8)}
WINDOW_MS = 300_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keys = ",".join(f"{tenant}:{key}" for tenant, key in {TENANT: API_KEY, **ISOLATED}.items())
    with running_stack(tmp_path_factory.mktemp("sdk"), {"CONCORD_API_KEYS": keys}) as running:
        yield running


@pytest.fixture(scope="module")
def r(stack: Stack) -> Iterator[redis.Redis]:
    client = stack.redis.client()
    yield client
    client.close()


@pytest.fixture
def client(stack: Stack) -> Iterator[Concord]:
    with Concord(stack.service.url, API_KEY) as concord:
        yield concord


@pytest.fixture
async def aclient(stack: Stack):
    async with AsyncConcord(stack.service.url, API_KEY) as concord:
        yield concord


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}"


def contact() -> str:
    return f"{unique('c')}@example.com"


def solo(stack: Stack, n: int) -> tuple[str, str]:
    tenant = f"solo{n}"
    return tenant, ISOLATED[tenant]


def make_inactive(r: redis.Redis, stack: Stack, agent_id: str) -> None:
    """Age the agent's last heartbeat past the window, as if it stopped long ago (no waiting)."""
    seconds, micros = r.time()
    r.zadd(stack.keys.heartbeats(TENANT), {agent_id: seconds * 1000 + micros // 1000 - WINDOW_MS - 60_000})


# --- agents ------------------------------------------------------------------


def test_register_gives_a_handle_and_registering_again_updates(client: Concord):
    name = unique("sdr")
    agent = client.register(name, role="sdr", metadata={"team": "emea"})
    assert agent.id == agent_id_for(TENANT, name)
    assert isinstance(agent.info, s.Agent)
    assert (agent.info.agent_name, agent.info.agent_role, agent.info.status) == (name, "sdr", "active")
    assert agent.metadata == {"team": "emea"}

    again = client.register(name, role="retention")
    assert again.id == agent.id
    assert again.info.agent_role == "retention"
    assert again.metadata == {"team": "emea"}  # omitted metadata keeps its value
    assert client.get_agent(agent.id).agent_role == "retention"


def test_flat_agent_methods(client: Concord):
    agent = client.register(unique("flat"))
    beat = client.heartbeat(agent.id)
    assert isinstance(beat, s.Heartbeat)
    assert (beat.agent_id, beat.status) == (agent.id, "active")
    listed = client.list_agents(status="active", limit=1000)
    assert isinstance(listed, s.AgentList)
    assert agent.id in {a.id for a in listed.agents}
    assert client.agent(agent.id).refresh().id == agent.id

    removed = client.remove_agent(agent.id)
    assert (removed.id, removed.removed, removed.released_leases) == (agent.id, True, 0)
    with pytest.raises(AgentNotFound) as caught:
        client.get_agent(agent.id)
    error = caught.value
    assert (error.code, error.status) == ("agent_not_found", 404)
    assert agent.id in error.detail
    assert error.problem["code"] == "agent_not_found" and error.problem["status"] == 404


async def test_async_agent_methods(aclient: AsyncConcord):
    name = unique("async")
    agent = await aclient.register(name, role="support")
    assert agent.id == agent_id_for(TENANT, name) and agent.info.agent_role == "support"
    assert (await agent.heartbeat()).status == "active"
    assert (await aclient.get_agent(agent.id)).agent_name == name
    assert (await agent.remove()).removed
    with pytest.raises(AgentNotFound):
        await aclient.heartbeat(agent.id)


# --- keep-alive --------------------------------------------------------------


def test_keep_alive_keeps_an_agent_active_and_stops_on_exit(client: Concord, stack: Stack, r: redis.Redis):
    agent = client.register(unique("alive"))
    make_inactive(r, stack, agent.id)
    assert client.get_agent(agent.id).status == "inactive"
    heartbeats = stack.keys.heartbeats(TENANT)
    with agent.keep_alive(interval=0.05) as keeper:
        wait_until(lambda: client.get_agent(agent.id).status == "active", what="the keep-alive's first heartbeat")
        first = r.zscore(heartbeats, agent.id)
        wait_until(lambda: r.zscore(heartbeats, agent.id) > first, what="a later heartbeat")
        assert keeper.running and keeper.error is None and keeper.last.agent_id == agent.id
    assert not keeper.running


def test_keep_alive_stops_when_the_client_or_the_handle_closes(stack: Stack):
    concord = Concord(stack.service.url, API_KEY)
    agent = concord.register(unique("alive"))
    by_client = agent.keep_alive(interval=0.05)
    wait_until(lambda: by_client.last is not None, what="a heartbeat")
    concord.close()
    assert not by_client.running

    with Concord(stack.service.url, API_KEY) as concord, concord.register(unique("alive")) as other:
        by_handle = other.keep_alive(interval=0.05)
        wait_until(lambda: by_handle.last is not None, what="a heartbeat")
    assert not by_handle.running


def test_keep_alive_of_a_removed_agent_ends_with_the_error(client: Concord):
    agent = client.register(unique("gone"))
    client.remove_agent(agent.id)
    keeper = agent.keep_alive(interval=0.05)
    wait_until(lambda: not keeper.running, what="the keep-alive to give up")
    assert isinstance(keeper.error, AgentNotFound)
    keeper.stop()


async def test_async_keep_alive_keeps_an_agent_active_and_stops_on_close(stack: Stack, r: redis.Redis):
    concord = AsyncConcord(stack.service.url, API_KEY)
    agent = await concord.register(unique("alive"))
    make_inactive(r, stack, agent.id)
    heartbeats = stack.keys.heartbeats(TENANT)
    async with agent.keep_alive(interval=0.05) as keeper:
        await eventually(lambda: _status(concord, agent.id, "active"), what="the keep-alive's first heartbeat")
        first = r.zscore(heartbeats, agent.id)
        await eventually(lambda: _later(r, heartbeats, agent.id, first), what="a later heartbeat")
    assert not keeper.running

    again = agent.keep_alive(interval=0.05)
    assert again.running
    await concord.aclose()
    assert not again.running


async def _status(concord: AsyncConcord, agent_id: str, status: str) -> bool:
    return (await concord.get_agent(agent_id)).status == status


async def _later(r: redis.Redis, key: str, member: str, score: float) -> bool:
    return r.zscore(key, member) > score


# --- leases ------------------------------------------------------------------


def test_lease_block_acquires_and_releases(client: Concord):
    agent, rival = client.register(unique("holder")), client.register(unique("rival"))
    email = contact()
    with agent.lease(f" {email.upper()}", duration=timedelta(minutes=5), intent="outbound") as lease:
        assert lease.contact == email  # as the service normalized it
        held = client.get_lease(lease.id)
        assert (held.agent_id, held.contact_email, held.intent) == (agent.id, email, "outbound")
        assert (held.fencing_token, held.expires_at) == (lease.fencing_token, lease.expires_at)
        assert agent.send_check(email, lease.fencing_token).allowed
        refused = rival.send_check(email)
        assert (refused.allowed, refused.reason, refused.lease_holder.agent_id) == (False, "lease_conflict", agent.id)
    assert lease.released is not None and lease.released.id == lease.id
    with pytest.raises(LeaseNotFound):
        client.get_lease(lease.id)
    assert rival.send_check(email).allowed


def test_lease_block_releases_when_the_block_raises(client: Concord):
    agent = client.register(unique("holder"))
    with pytest.raises(RuntimeError, match="boom"):
        with agent.lease(contact()) as lease:
            raise RuntimeError("boom")
    with pytest.raises(LeaseNotFound):
        client.get_lease(lease.id)


async def test_async_lease_block_acquires_and_releases_also_on_exceptions(aclient: AsyncConcord):
    agent = await aclient.register(unique("holder"))
    email = contact()
    async with agent.lease(email, duration=60) as lease:
        assert (await aclient.get_lease(lease.id)).fencing_token == lease.fencing_token
    with pytest.raises(LeaseNotFound):
        await aclient.get_lease(lease.id)
    with pytest.raises(KeyError):
        async with agent.lease(email) as again:
            raise KeyError("boom")
    with pytest.raises(LeaseNotFound):
        await aclient.get_lease(again.id)


def test_a_held_contact_raises_lease_conflict_with_its_holder(client: Concord):
    holder, rival = client.register(unique("holder")), client.register(unique("rival"))
    email = contact()
    with holder.lease(email, intent="renewal"):
        with pytest.raises(LeaseConflict) as caught:
            with rival.lease(email):
                pytest.fail("the block must not run without the lease")
        with pytest.raises(LeaseConflict):
            client.acquire_lease(rival.id, email)
    conflict = caught.value
    assert (conflict.status, conflict.code, conflict.contact) == (409, "lease_conflict", email)
    assert isinstance(conflict.holder, s.LeaseHolder)
    assert (conflict.holder.agent_id, conflict.holder.agent_name, conflict.holder.intent) == (
        holder.id,
        holder.info.agent_name,
        "renewal",
    )


def test_lease_is_renewed_in_the_background(client: Concord):
    agent = client.register(unique("renew"))
    with agent.lease(contact(), duration=3) as lease:
        granted = lease.expires_at
        wait_until(lambda: client.get_lease(lease.id).expires_at > granted, timeout=15, what="a renewal")
        wait_until(lambda: lease.expires_at > granted, what="the handle to see its renewal")
        assert client.get_lease(lease.id).fencing_token == lease.fencing_token
        lease.check()


async def test_async_lease_is_renewed_in_the_background(aclient: AsyncConcord):
    agent = await aclient.register(unique("renew"))
    async with agent.lease(contact(), duration=3) as lease:
        granted = lease.expires_at

        async def renewed() -> bool:
            return (await aclient.get_lease(lease.id)).expires_at > granted

        await eventually(renewed, timeout=15, what="a renewal")
        lease.check()


def test_a_lease_released_behind_the_handles_back_is_lost(client: Concord):
    agent = client.register(unique("lost"))
    with pytest.raises(LeaseLost) as caught:
        with agent.lease(contact(), duration=3) as lease:
            client.release_lease(lease.id)
            wait_until(lambda: lease.lost is not None, timeout=15, what="the renewal to find the lease gone")
            with pytest.raises(LeaseLost):
                lease.check()
    lost = caught.value
    assert lost is lease.lost
    assert isinstance(lost.cause, LeaseNotFound)
    assert (lost.code, lost.lease_id, lost.contact) == ("lease_lost", lease.id, lease.contact)


def test_a_lost_lease_does_not_hide_the_blocks_own_error(client: Concord):
    agent = client.register(unique("lost"))
    with pytest.raises(ValueError, match="the block's own") as caught:
        with agent.lease(contact(), duration=3) as lease:
            client.release_lease(lease.id)
            wait_until(lambda: lease.lost is not None, timeout=15, what="the renewal to find the lease gone")
            raise ValueError("the block's own")
    assert any("is lost" in note for note in caught.value.__notes__)


def test_a_lease_already_gone_on_exit_is_not_an_error(client: Concord):
    agent = client.register(unique("early"))
    with agent.lease(contact(), duration=600) as lease:
        client.release_lease(lease.id, agent.id)  # the renewal, 400 s away, never sees it
    assert lease.lost is None


async def test_async_lease_of_a_removed_agent_is_lost(aclient: AsyncConcord):
    agent = await aclient.register(unique("lost"))
    with pytest.raises(LeaseLost) as caught:
        async with agent.lease(contact(), duration=3) as lease:
            await aclient.remove_agent(agent.id)

            async def lost() -> bool:
                return lease.lost is not None

            await eventually(lost, timeout=15, what="the renewal to find the lease gone")
    assert isinstance(caught.value.cause, (LeaseNotFound, AgentNotFound))


def test_send_check_refuses_a_stale_fencing_token(client: Concord):
    agent = client.register(unique("fence"))
    email = contact()
    lease = client.acquire_lease(agent.id, email)
    check = client.send_check(agent.id, email, fencing_token=lease.fencing_token - 1)
    assert (check.allowed, check.reason) == (False, "stale_fencing_token")
    assert client.send_check(agent.id, email, fencing_token=lease.fencing_token).allowed
    renewed = client.renew_lease(lease.id, agent.id, duration=120)
    assert renewed.fencing_token == lease.fencing_token
    assert client.list_leases(agent_id=agent.id).leases[0].id == lease.id
    assert client.release_lease(lease.id, agent.id).released


# --- consensus ---------------------------------------------------------------


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


# --- errors from the real service --------------------------------------------


def test_typed_errors_for_answers_of_the_service(client: Concord, stack: Stack, r: redis.Redis):
    with Concord(stack.service.url, "not-a-key-0123456789") as stranger, pytest.raises(Unauthorized) as caught:
        stranger.list_agents()
    assert caught.value.status == 401

    agent = client.register(unique("errors"))
    with pytest.raises(ValidationError) as invalid:
        client.acquire_lease(agent.id, "not-an-email")
    assert (invalid.value.status, invalid.value.field) == (422, "$.contactEmail")
    with pytest.raises(ValidationError) as too_long:
        client.acquire_lease(agent.id, contact(), duration=timedelta(days=2))
    assert too_long.value.field == "$.durationSeconds"

    with pytest.raises(AgentNotFound):
        client.heartbeat(f"agent_{uuid.uuid4()}")
    with pytest.raises(LeaseNotFound):
        client.get_lease(f"lease_{uuid.uuid4()}")
    with pytest.raises(ConsensusNotFound):
        client.get_consensus(f"cons_{uuid.uuid4()}")
    with pytest.raises(LeaseNotFound):
        client.get_lease("lease_x?agentId=y")  # a malformed id stays one path segment

    make_inactive(r, stack, agent.id)
    with pytest.raises(AgentInactive):
        client.acquire_lease(agent.id, contact())

    with Concord(f"{stack.service.url}/not-concord", API_KEY) as elsewhere, pytest.raises(EndpointNotFound):
        elsewhere.list_agents()


def test_no_service_is_unreachable_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with Concord(url, API_KEY, backoff=0) as concord, pytest.raises(Unreachable) as caught:
        concord.list_agents()
    error = caught.value
    assert (error.code, error.status, error.sent) == ("unreachable", None, False)
    assert url in str(error) and error.problem["code"] == "unreachable" and error.problem["url"].startswith(url)
    assert isinstance(error.__cause__, httpx.ConnectError)
    assert isinstance(error, ConcordError)


def test_every_code_of_the_error_table_has_its_class():
    assert set(sdk.ERROR_CLASSES) == set(ERRORS)
    for code, cls in sdk.ERROR_CLASSES.items():
        assert issubclass(cls, ConcordError) and cls.code == code


# --- events ------------------------------------------------------------------


def test_events_page_through_the_tenants_history(stack: Stack):
    _, key = solo(stack, 4)
    with Concord(stack.service.url, key) as concord:
        agent = concord.register(unique("sdr"))
        lease = concord.acquire_lease(agent.id, contact())
        page = concord.events()
        assert isinstance(page, s.EventPage)
        assert [e.type for e in page.events] == ["agent.registered", "lease.acquired"]
        assert page.events[1].lease_id == lease.id and page.events[1].agent_id == agent.id
        assert not page.has_more
        assert concord.events(after=page.next_after).events == []
        leases_only = concord.events(after=0, types=["lease"])
        assert [e.type for e in leases_only.events] == ["lease.acquired"]
        first = concord.events(limit=1)
        assert [e.type for e in first.events] == ["agent.registered"] and first.has_more

        stream = concord.stream_events(last_event_id="0")
        assert [next(stream).id, next(stream).id] == [e.id for e in page.events]
        stream.close()


async def test_async_event_stream_sees_new_events(stack: Stack):
    _, key = solo(stack, 5)
    async with AsyncConcord(stack.service.url, key) as concord:
        agent = await concord.register(unique("sdr"))
        seen = (await concord.events()).next_after
        async with aclosing(concord.stream_events(last_event_id=seen, types="lease")) as stream:
            lease = await concord.acquire_lease(agent.id, contact())
            event = await anext(stream)
        assert (event.type, event.lease_id, event.fencing_token) == ("lease.acquired", lease.id, lease.fencing_token)


# --- what the client sends, and its retries (httpx.MockTransport) -------------

URL = "http://concord.test"
AGENT_ID = f"agent_{uuid.uuid4()}"
LEASE_ID = f"lease_{uuid.uuid4()}"
CONS_ID = f"cons_{uuid.uuid4()}"
AT = "2026-11-23T10:00:00.000Z"
HEARTBEAT = {"agentId": AGENT_ID, "status": "active", "lastHeartbeat": AT, "activeUntil": AT}
RELEASED = {"id": LEASE_ID, "released": True, "releasedAt": AT}
LEASE = {
    "id": LEASE_ID,
    "tenantId": TENANT,
    "agentId": AGENT_ID,
    "agentName": "sdr",
    "contactEmail": "a@example.com",
    "intent": None,
    "acquiredAt": AT,
    "expiresAt": AT,
    "fencingToken": 7,
    "conflict": False,
}


def consensus(status: str = "pending") -> dict[str, Any]:
    return {
        "id": CONS_ID,
        "tenantId": TENANT,
        "requestingAgentId": AGENT_ID,
        "action": "refund",
        "contactEmail": None,
        "reason": None,
        "status": status,
        "createdAt": AT,
        "expiresAt": AT,
        "resolvedAt": None if status == "pending" else AT,
        "tally": {"approve": 0, "reject": 0, "eligible": 2, "needed": 2},
        "votes": [],
    }


def problem(code: str, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    status = ERRORS[code][0] if code in ERRORS else 418
    body = {"type": f"urn:concord:problem:{code}", "title": code, "status": status, "detail": f"{code}!", "code": code}
    return httpx.Response(status, json={**body, **extra}, headers=headers)


class Script:
    """A MockTransport that answers with ``answers`` in turn (the last one again
    when they run out; an exception is raised instead) and records the requests."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer.stream, httpx.ByteStream):  # a copy: a response is read once
            return httpx.Response(answer.status_code, headers=answer.headers, content=answer.read())
        return answer

    def bodies(self) -> list[Any]:
        return [msgspec.json.decode(request.content) if request.content else None for request in self.requests]


UNAVAILABLE = problem("store_unavailable", {"Retry-After": "0"})


def scripted(*answers: httpx.Response | Exception, **options: Any) -> tuple[Concord, Script]:
    script = Script(*answers)
    return Concord(URL, API_KEY, http=script.transport, backoff=0, **options), script


def test_a_safe_call_is_retried_after_503():
    concord, script = scripted(UNAVAILABLE, httpx.Response(200, json=HEARTBEAT))
    assert concord.heartbeat(AGENT_ID).agent_id == AGENT_ID
    assert len(script.requests) == 2
    assert all(request.headers["Authorization"] == f"Bearer {API_KEY}" for request in script.requests)


def test_release_and_remove_are_not_retried_after_503():
    concord, script = scripted(UNAVAILABLE, httpx.Response(200, json=RELEASED))
    with pytest.raises(StoreUnavailable) as caught:
        concord.release_lease(LEASE_ID, AGENT_ID)
    assert len(script.requests) == 1 and caught.value.retry_after == 0
    concord, script = scripted(UNAVAILABLE)
    with pytest.raises(StoreUnavailable):
        concord.remove_agent(AGENT_ID)
    assert len(script.requests) == 1


def test_release_is_retried_only_when_nothing_can_have_happened():
    # A connection that could not be opened never carried the request; a 429 refused it before any work.
    concord, script = scripted(
        httpx.ConnectError("refused"), problem("rate_limited", retryAfterMs=0), httpx.Response(200, json=RELEASED)
    )
    assert concord.release_lease(LEASE_ID).released
    assert len(script.requests) == 3
    concord, script = scripted(httpx.ReadError("dropped"), httpx.Response(200, json=RELEASED))
    with pytest.raises(Unreachable) as caught:
        concord.release_lease(LEASE_ID)
    assert caught.value.sent and len(script.requests) == 1


def test_retries_stop_after_max_retries_and_on_final_answers():
    concord, script = scripted(UNAVAILABLE, max_retries=2)
    with pytest.raises(StoreUnavailable):
        concord.get_lease(LEASE_ID)
    assert len(script.requests) == 3
    concord, script = scripted(problem("lease_not_found"))
    with pytest.raises(LeaseNotFound):
        concord.get_lease(LEASE_ID)
    assert len(script.requests) == 1
    concord, script = scripted(problem("rate_limited", {"Retry-After": "120"}))
    with pytest.raises(RateLimited) as caught:  # a wait that long is the caller's to decide
        concord.heartbeat(AGENT_ID)
    assert caught.value.retry_after == 120 and len(script.requests) == 1
    concord, script = scripted(
        httpx.ReadTimeout("slow"), httpx.Response(502, text="<html>bad gateway</html>"), httpx.Response(200, json=LEASE)
    )
    assert concord.get_lease(LEASE_ID).fencing_token == 7
    assert len(script.requests) == 3


def test_request_consensus_retries_with_one_idempotency_key():
    concord, script = scripted(UNAVAILABLE, httpx.ReadError("dropped"), httpx.Response(201, json=consensus()))
    handle = concord.request_consensus(AGENT_ID, "refund", timeout=90.5)
    assert handle.id == CONS_ID and handle.status == "pending"
    keys = {request.headers["Idempotency-Key"] for request in script.requests}
    assert len(script.requests) == 3 and len(keys) == 1
    uuid.UUID(keys.pop())
    assert script.bodies()[0] == {"requestingAgentId": AGENT_ID, "action": "refund", "timeoutSeconds": 91}

    concord, script = scripted(httpx.Response(201, json=consensus()))
    concord.request_consensus(AGENT_ID, "refund", idempotency_key="order-17")
    concord.request_consensus(AGENT_ID, "refund")
    concord.request_consensus(AGENT_ID, "refund")
    sent = [request.headers["Idempotency-Key"] for request in script.requests]
    assert sent[0] == "order-17" and len(set(sent)) == 3  # a new key for each call


async def test_async_client_retries_as_the_sync_one():
    script = Script(UNAVAILABLE, httpx.Response(200, json=HEARTBEAT))
    async with AsyncConcord(URL, API_KEY, http=script.transport, backoff=0) as concord:
        assert (await concord.heartbeat(AGENT_ID)).status == "active"
        assert len(script.requests) == 2
        script.answers, script.requests = (UNAVAILABLE,), []
        with pytest.raises(StoreUnavailable):
            await concord.release_lease(LEASE_ID)
        assert len(script.requests) == 1


def test_unknown_codes_and_other_bodies_give_the_base_class():
    concord, _ = scripted(problem("brand_new_code"))
    with pytest.raises(ConcordError) as caught:
        concord.get_agent(AGENT_ID)
    assert type(caught.value) is ConcordError and caught.value.code == "brand_new_code"
    concord, _ = scripted(httpx.Response(404, text="<html>nothing here</html>"))
    with pytest.raises(ConcordError) as caught:
        concord.get_agent(AGENT_ID)
    assert (type(caught.value), caught.value.code, caught.value.status) == (ConcordError, "unexpected_response", 404)


def test_durations_are_whole_seconds():
    concord, script = scripted(httpx.Response(201, json=LEASE))
    concord.acquire_lease(AGENT_ID, "a@example.com", duration=timedelta(minutes=2))
    concord.acquire_lease(AGENT_ID, "a@example.com", duration=0.2)
    concord.acquire_lease(AGENT_ID, "a@example.com", intent="x")
    assert [body.get("durationSeconds") for body in script.bodies()] == [120, 1, None]
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="duration"):
            concord.acquire_lease(AGENT_ID, "a@example.com", duration=bad)
    with pytest.raises(TypeError, match="duration"):
        concord.acquire_lease(AGENT_ID, "a@example.com", duration="5")  # type: ignore[arg-type]


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONCORD_URL", "http://from-env.test:9000/")
    monkeypatch.setenv("CONCORD_API_KEY", "env-key")
    script = Script(httpx.Response(200, json=HEARTBEAT))
    with Concord(http=script.transport) as concord:
        concord.heartbeat(AGENT_ID)
    request = script.requests[0]
    assert str(request.url) == "http://from-env.test:9000/v1/agent/coordination/heartbeat"
    assert request.headers["Authorization"] == "Bearer env-key"
    monkeypatch.delenv("CONCORD_URL")
    assert Concord(http=script.transport).url == DEFAULT_URL


def test_an_injected_http_client_is_used_and_left_open():
    script = Script(httpx.Response(200, json=HEARTBEAT))
    with httpx.Client(transport=script.transport) as http:
        with Concord(URL, API_KEY, http=http) as concord:
            concord.heartbeat(AGENT_ID)
        assert not http.is_closed and len(script.requests) == 1
    with pytest.raises(TypeError, match="httpx.Client"):
        Concord(URL, http=httpx.AsyncClient())  # type: ignore[arg-type]


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


def test_lease_renewal_outlasts_transient_failures():
    concord, script = scripted(
        httpx.Response(201, json=LEASE),
        UNAVAILABLE,
        httpx.ConnectError("refused"),
        httpx.Response(200, json=LEASE),
        httpx.Response(200, json=RELEASED),
        max_retries=0,
    )
    agent = concord.agent(AGENT_ID)
    # Renewal is due after 2 s; the two retries wait 0.2 and 0.4 s, well inside the 3 s.
    with agent.lease("a@example.com", duration=3) as lease:
        wait_until(lambda: len(script.requests) >= 4, what="a renewal after two failures")
        lease.check()
    paths = [request.url.path for request in script.requests]
    assert paths[1:4] == [f"/v1/agent/coordination/lease/{LEASE_ID}/renew"] * 3
    assert script.bodies()[1] == {"agentId": AGENT_ID, "durationSeconds": 3}
    assert script.requests[-1].method == "DELETE" and lease.lost is None


def test_lease_renewal_failing_until_expiry_loses_the_lease():
    concord, script = scripted(httpx.Response(201, json=LEASE), UNAVAILABLE, max_retries=0)
    lease = concord.agent(AGENT_ID).lease("a@example.com", duration=1)
    lease.acquire()
    wait_until(lambda: lease.lost is not None, what="the lease to be given up")
    assert isinstance(lease.lost.cause, StoreUnavailable) and "expired" in str(lease.lost)
    with pytest.raises(LeaseLost):
        lease.check()
    concord.close()


# --- events: parsing and resuming --------------------------------------------


def frame(event_id: str, kind: str = "lease.acquired", **extra: Any) -> bytes:
    event = {"id": event_id, "type": kind, "tenantId": TENANT, "at": AT, **extra}
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), kind.encode(), msgspec.json.encode(event))


def test_sse_parser_splits_lines_only_at_cr_and_lf():
    parser = _SSE(None)
    text = b"retry: 1500\n\n: keepalive\r\n" + frame("1-0", reason="line\u2028separator").replace(b"\n", b"\r\n")
    chunks = [text[i : i + 7] for i in range(0, len(text), 7)]  # CRLF pairs split across chunks too
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    assert [(e.id, e.type, e.reason) for e in events] == [("1-0", "lease.acquired", "line\u2028separator")]
    assert (parser.last_id, parser.retry) == ("1-0", 1.5)


def test_stream_resumes_after_the_last_event_after_a_drop():
    def dropped() -> Iterator[bytes]:
        yield frame("5-0")
        raise httpx.ReadError("connection reset")

    script = Script(httpx.Response(200, content=dropped()), httpx.Response(200, content=frame("6-0", "lease.released")))
    with Concord(URL, API_KEY, http=script.transport, backoff=0) as concord:
        stream = concord.stream_events(types=["lease"], agent_id=AGENT_ID)
        assert [next(stream).id, next(stream).id] == ["5-0", "6-0"]
        stream.close()
    first, second = script.requests
    assert "last-event-id" not in first.headers and second.headers["Last-Event-ID"] == "5-0"
    assert first.headers["Accept"] == "text/event-stream"
    assert dict(first.url.params) == {"type": "lease", "agentId": AGENT_ID}


async def test_async_stream_resumes_and_raises_final_errors():
    async def dropped():
        yield frame("5-0")
        raise httpx.ReadError("connection reset")

    script = Script(httpx.Response(200, content=dropped()), problem("unauthorized"))
    async with AsyncConcord(URL, API_KEY, http=script.transport, backoff=0) as concord:
        with pytest.raises(Unauthorized):
            async with aclosing(concord.stream_events(last_event_id="4-0")) as stream:
                assert (await anext(stream)).id == "5-0"
                await anext(stream)
    assert [request.headers["Last-Event-ID"] for request in script.requests] == ["4-0", "5-0"]


# --- the two clients agree ---------------------------------------------------


@pytest.mark.parametrize(
    ("sync", "async_"),
    [
        (sdk.Concord, sdk.AsyncConcord),
        (sdk.AgentHandle, sdk.AsyncAgentHandle),
        (sdk.LeaseHandle, sdk.AsyncLeaseHandle),
        (sdk.ConsensusHandle, sdk.AsyncConsensusHandle),
        (sdk.KeepAlive, sdk.AsyncKeepAlive),
    ],
)
def test_sync_and_async_classes_have_the_same_methods(sync: type, async_: type):
    def methods(cls: type) -> dict[str, list[tuple[str, Any]]]:
        return {
            name: [(p.name, p.default) for p in inspect.signature(member).parameters.values()]
            for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_") and name not in ("close", "aclose")
        }

    assert methods(sync) == methods(async_)
