"""Leases and lease handles (client/handles.py and the clients): the lease block
acquires, renews in the background and releases; a conflict names its holder; a
lease lost behind the handle's back is reported, never swallowed. Against the real
service, and with scripted answers for renewals that fail."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from concord import (
    AsyncConcord,
    Concord,
    CredentialRefused,
    LeaseConflict,
    LeaseLost,
    LeaseNotFound,
    StoreUnavailable,
)
from concord import protocol as s
from tests.sdk.live import contact, unique
from tests.sdk.scripted import AGENT_ID, LEASE, LEASE_ID, RELEASED, UNAVAILABLE, scripted
from tests.support.helpers import eventually, wait_until


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
            client.release_lease(lease.id, force=True)  # an admin frees it, whoever holds it
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
            client.release_lease(lease.id, force=True)
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
    # Deregistering released the lease and revoked the credential: the renewal finds one or the other.
    assert isinstance(caught.value.cause, (LeaseNotFound, CredentialRefused))


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


# --- renewals that fail (scripted answers) ---------------------------------------


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
