"""Agents and keep-alives (client/sync.py, client/aio.py, client/handles.py):
registering, reading and removing agents, and heartbeats from a thread or a task,
against the real service."""

from __future__ import annotations

import pytest
import redis

from concord import AgentNotFound, AsyncConcord, Concord, CredentialRefused
from concord import protocol as s
from concord.server.store.keys import agent_id_for
from tests.sdk.live import API_KEY, TENANT, make_inactive, unique
from tests.support.helpers import Stack, eventually, wait_until


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
    with pytest.raises(CredentialRefused) as refused:  # deregistering revoked its credential
        await aclient.heartbeat(agent.id)
    assert refused.value.agent_id == agent.id and refused.value.status == 401


# --- keep-alive ------------------------------------------------------------------


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
    # Deregistering revoked the credential: refused before anything else, and no heartbeat can succeed.
    assert isinstance(keeper.error, CredentialRefused) and keeper.error.agent_id == agent.id
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
