"""Agent credentials in the SDK (client/base.py, client/calls.py): each call goes
with the credential it needs (an agent acts only with its own, never with an API
key), the client keeps the newest credential of each agent it registered or
rotated, and a refused credential says so. Against the real service, and with a
routed mock where the test is which token each request carried."""

from __future__ import annotations

import uuid

import httpx
import msgspec
import pytest

from concord import (
    AgentMismatch,
    AsyncConcord,
    Concord,
    CredentialRefused,
    InsufficientScope,
    NotConfigured,
)
from concord import protocol as s
from tests.sdk.live import API_KEY, ENROLL_KEY, GATE_KEY, TENANT, contact, solo, unique
from tests.sdk.scripted import AGENT, AGENT_ID, AT, CREDENTIAL, HEARTBEAT, LEASE, LEASE_ID, RELEASED, URL
from tests.support.helpers import Stack, wait_until

# --- which token each call carries (a routed mock) ----------------------------------------

PEER_ID = f"agent_{uuid.uuid4()}"
PEER_CREDENTIAL = f"concord-agent.{TENANT}.{PEER_ID}.{'peer' * 11}"
ROTATED = f"concord-agent.{TENANT}.{PEER_ID}.{'next' * 11}"


class Routed:
    """A MockTransport answering each route with a fixed body; records (method, path, token, query)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str, dict[str, str]]] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        path = request.url.path.removeprefix("/v1/agent")
        self.sent.append((request.method, path, token, dict(request.url.params)))
        if path == "/register":
            return httpx.Response(201, json={**AGENT, "id": PEER_ID, "credential": PEER_CREDENTIAL})
        if path.endswith("/credentials"):
            return httpx.Response(200, json={"agentId": PEER_ID, "credential": ROTATED, "rotatedAt": AT})
        if path.startswith("/agents/"):
            return httpx.Response(200, json=AGENT)
        if path == "/coordination/heartbeat":
            return httpx.Response(200, json=HEARTBEAT)
        if path == "/coordination/send-check":
            return httpx.Response(200, json={"allowed": True})
        if request.method == "DELETE":
            return httpx.Response(200, json=RELEASED)
        return httpx.Response(201, json=LEASE)

    def tokens(self) -> list[str]:
        return [token for _, _, token, _ in self.sent]


def test_each_call_goes_with_the_credential_it_needs():
    routed = Routed()
    with Concord(URL, API_KEY, agent_credential=CREDENTIAL, http=routed.transport) as concord:
        peer = concord.register("peer")  # with the key
        peer.heartbeat()  # as the peer: its own credential, from registering
        concord.heartbeat(AGENT_ID)  # as the client's own agent
        concord.acquire_lease(PEER_ID, "a@example.com")
        concord.renew_lease(LEASE_ID, PEER_ID)
        concord.send_check(PEER_ID, "a@example.com")  # the agent itself, since the client holds its credential
        concord.send_check(f"agent_{uuid.uuid4()}", "a@example.com")  # another agent: the (gate) key asks
        concord.get_agent(PEER_ID)  # reads: the key
        concord.release_lease(LEASE_ID, PEER_ID)  # the holder
        concord.release_lease(LEASE_ID)  # the client's own agent
        concord.release_lease(LEASE_ID, force=True)  # whoever holds it: the admin key
    assert routed.tokens() == [
        API_KEY,
        PEER_CREDENTIAL,
        CREDENTIAL,
        PEER_CREDENTIAL,
        PEER_CREDENTIAL,
        PEER_CREDENTIAL,
        API_KEY,
        API_KEY,
        PEER_CREDENTIAL,
        CREDENTIAL,
        API_KEY,
    ]
    releases = [query for method, _, _, query in routed.sent if method == "DELETE"]
    assert releases == [{"agentId": PEER_ID}, {}, {}]
    with pytest.raises(ValueError, match="leave agent_id out"):
        Concord(URL, API_KEY).release_lease(LEASE_ID, PEER_ID, force=True)


def test_the_credential_stays_in_the_client_and_rotating_replaces_it_everywhere():
    routed = Routed()
    with Concord(URL, API_KEY, http=routed.transport) as concord:
        peer = concord.register("peer")
        assert peer.credential == PEER_CREDENTIAL
        # What is shown and logged never carries it: the handle, its info, the client.
        assert type(peer.info) is s.Agent and not hasattr(peer.info, "credential")
        for shown in (repr(peer), repr(peer.info), msgspec.json.encode(peer.info).decode(), repr(concord)):
            assert PEER_CREDENTIAL not in shown
        other = concord.agent(PEER_ID)  # another handle of the same agent
        rotated = peer.rotate_credential()
        assert isinstance(rotated, s.AgentCredential)
        assert (rotated.agent_id, rotated.credential, rotated.rotated_at) == (PEER_ID, ROTATED, AT)
        assert peer.credential == other.credential == ROTATED
        other.heartbeat()
        given = Concord(URL, http=routed.transport).agent(PEER_ID, credential=PEER_CREDENTIAL)
        given.heartbeat()
    rotate = routed.sent[1]
    assert rotate[:3] == ("POST", f"/agents/{PEER_ID}/credentials", API_KEY)
    assert routed.tokens()[2:] == [ROTATED, PEER_CREDENTIAL]


# --- against the service -----------------------------------------------------------------------


def test_registering_again_makes_a_new_credential_and_refuses_the_earlier_one(client: Concord, stack: Stack):
    name = unique("restart")
    agent = client.register(name)
    first = agent.credential
    assert first.startswith(f"concord-agent.{TENANT}.{agent.id}.")
    with Concord(stack.service.url, "", agent_credential=first) as process:  # the agent's own process
        assert process.me().heartbeat().agent_id == agent.id
        again = client.register(name)  # a restarted pod registers again
        assert again.id == agent.id and again.credential != first
        assert agent.credential == again.credential  # every handle of the agent acts with the newest
        assert agent.heartbeat().status == "active"
        with pytest.raises(CredentialRefused) as refused:
            process.me().heartbeat()
    error = refused.value
    assert (error.status, error.code, error.agent_id) == (401, "unauthorized", agent.id)
    assert "registering the agent again" in error.detail and first not in str(error)


def test_an_agent_process_acts_and_reads_with_its_own_credential_alone(client: Concord, stack: Stack):
    name, email = unique("own"), contact()
    registered, rival = client.register(name, role="sdr"), client.register(unique("rival"))
    with Concord(stack.service.url, "", agent_credential=registered.credential) as process:
        me = process.me()
        assert me.id == registered.id and me.refresh().agent_name == name  # a read with the credential
        assert me.heartbeat().status == "active"
        with me.lease(email, duration=60, intent="outbound") as lease:
            assert process.get_lease(lease.id).agent_id == me.id
            assert me.send_check(email, lease.fencing_token).allowed
            assert registered.id in {a.id for a in process.list_agents(limit=1000).agents}
        assert lease.released.released
        assert process.list_leases(agent_id=me.id).leases == []

        with pytest.raises(AgentMismatch) as mismatch:
            process.heartbeat(rival.id)  # its credential acts only as itself
        assert (mismatch.value.status, mismatch.value.agent_id) == (403, me.id)
        with pytest.raises(NotConfigured, match="No API key"):
            process.register(unique("more"))  # registering is a key's


def test_an_agent_process_requests_and_votes_on_consensus(stack: Stack):
    _, key = solo(stack, 6)
    with Concord(stack.service.url, key) as admin:
        asker, voter = admin.register(unique("asker")), admin.register(unique("voter"))
    with (
        Concord(stack.service.url, "", agent_credential=asker.credential) as asking,
        Concord(stack.service.url, "", agent_credential=voter.credential) as voting,
    ):
        request = asking.me().request_consensus("refund", timeout=600)
        assert request.info.requesting_agent_id == asker.id and request.info.tally.eligible == 1
        assert voting.me().vote(request, "approve").status == "approved"
        assert request.wait(timeout=5).status == "approved"


def test_rotating_refuses_the_old_credential_and_the_handle_goes_on(client: Concord, stack: Stack):
    agent = client.register(unique("rotate"), role="sdr")
    old = agent.credential
    with Concord(stack.service.url, "", agent_credential=old) as process:
        process.me().heartbeat()
        rotated = agent.rotate_credential()
        assert rotated.agent_id == agent.id and rotated.credential not in (old, None)
        assert agent.credential == rotated.credential and agent.heartbeat().status == "active"
        with pytest.raises(CredentialRefused):
            process.me().heartbeat()
    with Concord(stack.service.url, ENROLL_KEY) as enroller:  # an enroll key may rotate too
        again = enroller.rotate_credential(agent.id)
        assert enroller.agent(agent.id).credential == again.credential != rotated.credential
    events = client.events(types="agent.credential_rotated", agent_id=agent.id, limit=10).events
    assert [(e.type, e.agent_id, e.actor_role) for e in events] == [
        ("agent.credential_rotated", agent.id, "admin"),
        ("agent.credential_rotated", agent.id, "enroll"),
    ]
    for event in events:
        assert old not in msgspec.json.encode(event).decode()


def test_a_keep_alive_stops_when_its_credential_is_rotated_elsewhere(client: Concord, stack: Stack):
    agent = client.register(unique("elsewhere"))
    with Concord(stack.service.url, "", agent_credential=agent.credential) as process:
        keeper = process.me().keep_alive(interval=0.05)
        wait_until(lambda: keeper.last is not None, what="a heartbeat")
        client.rotate_credential(agent.id)  # another process (an operator) rotates it
        wait_until(lambda: not keeper.running, what="the keep-alive to give up")
        assert isinstance(keeper.error, CredentialRefused) and keeper.error.agent_id == agent.id


def test_a_lease_is_renewed_with_the_credential_rotated_while_it_is_held(client: Concord):
    agent = client.register(unique("renew"))
    with agent.lease(contact(), duration=3) as lease:
        granted = lease.expires_at
        agent.rotate_credential()  # the old credential is refused from now on
        wait_until(lambda: lease.expires_at > granted, timeout=15, what="a renewal with the new credential")
        lease.check()
    assert lease.lost is None and lease.released.released


def test_a_gate_key_send_checks_any_agent_and_does_nothing_else(client: Concord, stack: Stack):
    holder, email = client.register(unique("holder")), contact()
    lease = holder.lease(email, duration=60)
    lease.acquire()
    try:
        with Concord(stack.service.url, GATE_KEY) as gate:
            assert gate.send_check(holder.id, email, lease.fencing_token).allowed
            refused = gate.send_check(client.register(unique("other")).id, email)
            assert (refused.allowed, refused.reason) == (False, "lease_conflict")
            with pytest.raises(InsufficientScope) as scope:
                gate.register(unique("nope"))
            assert scope.value.key_role == "gate"
    finally:
        lease.release()


def test_a_forced_release_frees_the_lease_whoever_holds_it(client: Concord):
    agent, email = client.register(unique("forced")), contact()
    held = client.acquire_lease(agent.id, email)
    assert client.release_lease(held.id, force=True).released
    assert client.list_leases(contact=email).leases == []
    (event,) = client.events(types="lease.released", agent_id=agent.id, limit=10).events
    assert (event.reason, event.actor_role) == ("forced", "admin")


async def test_async_agent_process_acts_with_its_credential_and_rotates(aclient: AsyncConcord, stack: Stack):
    agent = await aclient.register(unique("async"))
    async with AsyncConcord(stack.service.url, "", agent_credential=agent.credential) as process:
        me = process.me()
        assert (await me.heartbeat()).agent_id == agent.id
        async with me.lease(contact(), duration=60) as lease:
            assert (await process.get_lease(lease.id)).agent_id == agent.id
        await agent.rotate_credential()
        with pytest.raises(CredentialRefused):
            await me.heartbeat()
    assert (await agent.heartbeat()).status == "active"
