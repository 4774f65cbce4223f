"""agent_register, agent_heartbeat and agent_remove: every reply, what each leaves
in Redis (the agent hash and its credential digest, the agents and heartbeats sorted
sets, the lease registry), and that each is safe to run twice. agent_credential and
the refusals of a wrong credential are in test_credential_scripts.py. How the tests
work: scripts_support.py.
"""

from __future__ import annotations

import pytest

from concord.server.store.keys import agent_id_for
from concord.server.store.replies import Reply
from tests.lua.scripts_support import (
    TENANT,
    assert_stored,
    clock,
    credential,
    dump,
    granted,
    heartbeat,
    lapse,
    new_agent,
    pairs,
    register,
    registry,
    registry_contacts,
    remove,
    second_run_event,
    without_times,
)

# --- agent_register ----------------------------------------------------------


async def test_register_creates_an_agent_and_counts_as_a_heartbeat(store, redis_client):
    k, agent_id = store.keys, agent_id_for(TENANT, "sdr")
    before, _ = await clock(redis_client)
    reply = await register(store, "sdr")
    after, _ = await clock(redis_client)

    code, flat, heartbeat_ms = reply
    assert code == Reply.CREATED
    assert before <= heartbeat_ms <= after
    agent = await redis_client.hgetall(k.agent(TENANT, agent_id))
    assert pairs(flat) == agent
    assert agent == {
        "id": agent_id,
        "agentName": "sdr",
        "agentRole": "general",
        "metadata": "{}",
        "registeredAt": str(heartbeat_ms),
        "updatedAt": str(heartbeat_ms),
        "credential": credential(agent_id),  # the digest only: the credential itself is never stored
    }
    assert await redis_client.zscore(k.heartbeats(TENANT), agent_id) == heartbeat_ms
    assert await redis_client.zrange(k.agents(TENANT), 0, -1, withscores=True) == [(agent_id, heartbeat_ms)]


async def test_register_again_updates_and_keeps_registered_at(store, redis_client):
    k, agent_id = store.keys, agent_id_for(TENANT, "sdr")
    first = await register(store, "sdr", "outbound", '{"tier": 1}')
    registered_at = pairs(first[1])["registeredAt"]
    # Move the earlier writes back in time, so the update is visible without sleeping.
    await redis_client.hset(k.agent(TENANT, agent_id), "updatedAt", "1")
    await lapse(store, agent_id)

    code, flat, heartbeat_ms = await register(store, "sdr", "retention", '{"tier": 2}', new_credential="b" * 64)

    assert code == Reply.OK
    agent = await redis_client.hgetall(k.agent(TENANT, agent_id))
    assert pairs(flat) == agent
    assert agent["registeredAt"] == registered_at
    assert agent["updatedAt"] == str(heartbeat_ms) != "1"
    assert agent["agentRole"] == "retention"
    assert agent["metadata"] == '{"tier": 2}'
    assert await redis_client.zscore(k.heartbeats(TENANT), agent_id) == heartbeat_ms
    # Still one agent, listed at its registration time.
    assert await redis_client.zrange(k.agents(TENANT), 0, -1, withscores=True) == [(agent_id, int(registered_at))]
    # A registration always brings a new credential: it replaces the earlier one, which is refused from now on.
    assert agent["credential"] == "b" * 64
    assert await heartbeat(store, agent_id) == [Reply.BAD_CREDENTIAL]
    assert (await heartbeat(store, agent_id, as_credential="b" * 64))[0] == Reply.OK


async def test_register_with_empty_role_and_metadata_keeps_the_current_ones(store, redis_client):
    k, agent_id = store.keys, agent_id_for(TENANT, "sdr")
    await register(store, "sdr", "outbound", '{"tier": 1}')

    code, flat, _ = await register(store, "sdr", "", "")

    assert code == Reply.OK
    agent = await redis_client.hgetall(k.agent(TENANT, agent_id))
    assert pairs(flat) == agent
    assert agent["agentRole"] == "outbound"
    assert agent["metadata"] == '{"tier": 1}'


# --- agent_heartbeat ---------------------------------------------------------


async def test_heartbeat_records_redis_time(store, redis_client):
    agent_id = await new_agent(store, "sdr")
    await lapse(store, agent_id)
    before, _ = await clock(redis_client)

    code, last = await heartbeat(store, agent_id)

    after, _ = await clock(redis_client)
    assert code == Reply.OK
    assert before <= last <= after
    assert await redis_client.zscore(store.keys.heartbeats(TENANT), agent_id) == last


async def test_heartbeat_of_an_unregistered_agent_is_bad_credential(store, redis_client, prefix):
    """An unknown agent has no credential, so whatever digest claims it is refused first."""
    await new_agent(store, "sdr")
    before = await dump(redis_client, prefix)

    assert await heartbeat(store, agent_id_for(TENANT, "nobody")) == [Reply.BAD_CREDENTIAL]

    assert await dump(redis_client, prefix) == before


# --- agent_remove ------------------------------------------------------------


async def test_remove_with_an_unreadable_lease_among_its_leases_writes_nothing(store, redis_client, prefix):
    """Every lease is read before the first write: a value that is not a lease (planted
    by hand) is an error, and the leases read before it are not deleted either."""
    k, agent_id = store.keys, await new_agent(store, "sdr")
    for contact in ("a@example.com", "b@example.com", "c@example.com"):
        await granted(store, agent_id, contact)
    await redis_client.set(k.lease(TENANT, "c@example.com"), "not a lease")
    before = await dump(redis_client, prefix)

    with pytest.raises(Exception, match="not a lease"):
        await remove(store, agent_id, await registry_contacts(store, agent_id))

    assert await dump(redis_client, prefix) == before


async def test_remove_deletes_the_agent_its_live_leases_and_its_registry(store, redis_client):
    k = store.keys
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    await granted(store, a, "one@example.com")
    await granted(store, a, "two@example.com")
    # a held three@ and four@; b took both over while a was inactive: a's entries for them are stale.
    earlier = await granted(store, a, "three@example.com")
    first_four = await granted(store, a, "four@example.com")
    await lapse(store, a)
    b_lease = await granted(store, b, "three@example.com")
    await granted(store, b, "four@example.com")
    # Then b lapsed and a took four@ back: a's registry names four@ twice, once stale, once live.
    assert (await heartbeat(store, a))[0] == Reply.OK
    await lapse(store, b)
    second_four = await granted(store, a, "four@example.com")
    assert (await heartbeat(store, b))[0] == Reply.OK
    # And a lease of a's that has expired: its entry outlived it (no lease key is left).
    await redis_client.hset(registry(store, a), "1000", "1000:gone@example.com")
    contacts = await registry_contacts(store, a)
    assert contacts == [
        "four@example.com",
        "gone@example.com",
        "one@example.com",
        "three@example.com",
        "two@example.com",
    ]
    for stale in (earlier, first_four, second_four):
        assert await redis_client.hget(registry(store, a), stale["fencingToken"]) is not None
    b_registry = await redis_client.hgetall(registry(store, b))

    # one@, two@ and four@ (counted once, though named twice).
    assert await remove(store, a, contacts) == [Reply.OK, 3]

    for contact in ("one@example.com", "two@example.com", "four@example.com"):
        assert not await redis_client.exists(k.lease(TENANT, contact)), contact
    await assert_stored(store, b_lease, "three@example.com")
    assert not await redis_client.exists(k.agent(TENANT, a), registry(store, a))
    assert await redis_client.zscore(k.agents(TENANT), a) is None
    assert await redis_client.zscore(k.heartbeats(TENANT), a) is None
    # b is untouched.
    assert await redis_client.exists(k.agent(TENANT, b))
    assert await redis_client.zscore(k.heartbeats(TENANT), b) is not None
    assert await redis_client.zscore(k.agents(TENANT), b) is not None
    assert await redis_client.hgetall(registry(store, b)) == b_registry


async def test_remove_keeps_a_registry_entry_naming_another_agents_live_lease(store, redis_client):
    """Two agents whose tags collide share a registry: removing one leaves the other's entries."""
    k = store.keys
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    mine = await granted(store, a, "one@example.com")
    theirs = await granted(store, b, "two@example.com")
    # Simulate the collision: b's lease is recorded in a's registry too.
    shared = f"{theirs['expiresAt']}:two@example.com"
    await redis_client.hset(registry(store, a), theirs["fencingToken"], shared)
    b_registry = await redis_client.hgetall(registry(store, b))
    contacts = await registry_contacts(store, a)
    assert contacts == ["one@example.com", "two@example.com"]

    assert await remove(store, a, contacts) == [Reply.OK, 1]

    assert not await redis_client.exists(k.lease(TENANT, "one@example.com"))
    assert await redis_client.hgetall(registry(store, a)) == {theirs["fencingToken"]: shared}
    assert await redis_client.hget(registry(store, a), mine["fencingToken"]) is None
    await assert_stored(store, theirs, "two@example.com")
    assert await redis_client.hgetall(registry(store, b)) == b_registry
    assert not await redis_client.exists(k.agent(TENANT, a))


async def test_remove_an_agent_without_leases(store, redis_client):
    agent_id = await new_agent(store, "sdr")

    assert await remove(store, agent_id, []) == [Reply.OK, 0]

    assert not await redis_client.exists(store.keys.agent(TENANT, agent_id), registry(store, agent_id))
    assert await redis_client.zscore(store.keys.heartbeats(TENANT), agent_id) is None


async def test_remove_an_unregistered_agent_is_agent_not_found(store, redis_client, prefix):
    await new_agent(store, "sdr")
    before = await dump(redis_client, prefix)

    assert await remove(store, agent_id_for(TENANT, "nobody"), []) == [Reply.AGENT_NOT_FOUND]

    assert await dump(redis_client, prefix) == before


async def test_remove_retries_when_the_registry_names_a_contact_not_passed_in(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    await granted(store, agent_id, "one@example.com")
    await granted(store, agent_id, "two@example.com")
    before = await dump(redis_client, prefix)

    # A lease granted since the store read the registry.
    assert await remove(store, agent_id, ["one@example.com"]) == [Reply.RETRY]
    assert await dump(redis_client, prefix) == before

    # Any entry counts, even one whose lease has expired: every contact must be passed.
    await redis_client.hset(registry(store, agent_id), "1000", "1000:gone@example.com")
    before = await dump(redis_client, prefix)
    assert await remove(store, agent_id, ["one@example.com", "two@example.com"]) == [Reply.RETRY]
    assert await dump(redis_client, prefix) == before


# --- safe to run twice -------------------------------------------------------
# The same call run twice (a retry after a lost reply) leaves the state of one run;
# only the times a run stamps may move.


async def test_register_twice_is_one_registration(store, redis_client, prefix):
    k, agent_id = store.keys, agent_id_for(TENANT, "sdr")
    await register(store, "sdr", "outbound", '{"a": 1}')
    once = await dump(redis_client, prefix)

    assert (await register(store, "sdr", "outbound", '{"a": 1}'))[0] == Reply.OK

    twice = await dump(redis_client, prefix)
    again = second_run_event(store, once, twice)
    assert (again["type"], again["agentId"], again["created"]) == ("agent.registered", agent_id, "0")
    assert without_times(twice) == without_times(once)
    assert twice[k.agent(TENANT, agent_id)][1]["registeredAt"] == once[k.agent(TENANT, agent_id)][1]["registeredAt"]
    assert twice[k.agents(TENANT)] == once[k.agents(TENANT)]


async def test_heartbeat_twice_is_one_heartbeat(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    await heartbeat(store, agent_id)
    once = await dump(redis_client, prefix)

    code, last = await heartbeat(store, agent_id)

    assert code == Reply.OK
    assert without_times(await dump(redis_client, prefix)) == without_times(once)
    assert await redis_client.zrange(store.keys.heartbeats(TENANT), 0, -1, withscores=True) == [(agent_id, last)]


async def test_remove_twice_is_one_removal(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    await new_agent(store, "support")
    await granted(store, agent_id)
    contacts = await registry_contacts(store, agent_id)
    assert await remove(store, agent_id, contacts) == [Reply.OK, 1]
    once = await dump(redis_client, prefix)

    assert await remove(store, agent_id, contacts) == [Reply.AGENT_NOT_FOUND]

    assert await dump(redis_client, prefix) == once
