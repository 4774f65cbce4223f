"""lease_acquire, lease_renew and lease_release: every reply, the lease string and
registry entry each leaves, the registry's dropping of expired entries, and that
each is safe to run twice. Fencing tokens, lease ids and lease_send_check are in
test_lease_fencing_scripts.py; a wrong credential, in test_credential_scripts.py; how
the tests work, in scripts_support.py.
"""

from __future__ import annotations

import pytest

from concord.server.errors import ConcordError
from concord.server.store.keys import agent_id_for
from concord.server.store.keys import lease_id as lease_id_of
from concord.server.store.replies import Reply
from tests.lua.scripts_support import (
    CONTACT,
    HOUR_MS,
    KEY_ID,
    MINUTE_MS,
    TENANT,
    acquire,
    assert_stored,
    clock,
    dump,
    granted,
    heartbeat,
    lapse,
    lease_of,
    new_agent,
    registry,
    release,
    renew,
    second_run_event,
    without_times,
)

# --- lease_acquire -----------------------------------------------------------


async def test_acquire_grants_a_free_contact(store, redis_client, prefix):
    k, agent_id = store.keys, await new_agent(store, "sdr")
    before_ms, before_us = await clock(redis_client)

    reply = await acquire(store, agent_id, intent="outreach", duration_ms=MINUTE_MS)

    after_ms, _ = await clock(redis_client)
    assert reply[0] == Reply.CREATED
    lease = lease_of(reply)
    assert (lease["agentId"], lease["agentName"], lease["intent"]) == (agent_id, "sdr", "outreach")
    acquired, expires, token = int(lease["acquiredAt"]), int(lease["expiresAt"]), int(lease["fencingToken"])
    assert before_ms <= acquired <= after_ms
    assert expires == acquired + MINUTE_MS
    assert token >= before_us
    assert lease["id"] == lease_id_of(agent_id, token)
    # The lease is one string, which expires on its own at expiresAt.
    lease_key = k.lease(TENANT, CONTACT)
    assert await redis_client.get(lease_key) == f"{agent_id.removeprefix('agent_')}|{token}|{acquired}|sdr|outreach"
    assert await redis_client.pexpiretime(lease_key) == expires
    assert 0 < await redis_client.pttl(lease_key) <= MINUTE_MS
    # The holder's registry records it under its token, and expires with it.
    assert await redis_client.hgetall(registry(store, agent_id)) == {str(token): f"{expires}:{CONTACT}"}
    assert await redis_client.pexpiretime(registry(store, agent_id)) == expires
    assert await redis_client.get(k.fence(TENANT)) == lease["fencingToken"]
    # Nothing else (no lease-id pointer, no per-agent index) but the grant's event.
    assert set(await dump(redis_client, prefix)) == {
        k.agent(TENANT, agent_id),
        k.agents(TENANT),
        k.heartbeats(TENANT),
        k.active_since(TENANT),  # written by registering, not by the grant
        k.agent_roles(TENANT),  # likewise
        lease_key,
        registry(store, agent_id),
        k.fence(TENANT),
        k.events(TENANT),
    }
    ((_, last),) = await redis_client.xrevrange(k.events(TENANT), count=1)
    assert last == {
        "type": "lease.acquired",
        "actor": agent_id,
        "actorRole": "agent",
        "agentId": agent_id,
        "agentName": "sdr",
        "contactEmail": CONTACT,
        "fencingToken": str(token),
        "expiresAt": str(expires),
        "intent": "outreach",
    }


async def test_acquire_keeps_an_intent_holding_the_separator(store, redis_client):
    agent_id = await new_agent(store, "sdr")

    lease = await granted(store, agent_id, intent="a|b||c")

    assert lease["intent"] == "a|b||c"
    await assert_stored(store, lease)
    # A read of the stored lease (the store's) gives it back whole.
    assert (await store.leases.get(TENANT, lease["id"])).intent == "a|b||c"


async def test_acquire_again_by_the_holder_extends_it_in_one_call(store, redis_client):
    """The holder asking again gets {OK, lease} at once: same id and token, a later expiry."""
    k, agent_id = store.keys, await new_agent(store, "sdr")
    first = await granted(store, agent_id, intent="outreach", duration_ms=MINUTE_MS)

    reply = await acquire(store, agent_id, intent="", duration_ms=2 * MINUTE_MS)

    assert reply[0] == Reply.OK
    lease = lease_of(reply)
    for field in ("id", "agentId", "agentName", "acquiredAt", "fencingToken"):
        assert lease[field] == first[field], field
    assert lease["intent"] == "outreach"  # '' keeps the current intent
    expires = int(lease["expiresAt"])
    assert expires > int(first["expiresAt"])
    await assert_stored(store, lease)
    assert await redis_client.hgetall(registry(store, agent_id)) == {lease["fencingToken"]: f"{expires}:{CONTACT}"}
    assert await redis_client.pexpiretime(registry(store, agent_id)) == expires
    assert await redis_client.get(k.fence(TENANT)) == first["fencingToken"]

    # A given intent replaces the current one.
    renamed = lease_of(await acquire(store, agent_id, intent="renewal"))
    assert (renamed["id"], renamed["intent"]) == (first["id"], "renewal")
    await assert_stored(store, renamed)

    # A shorter duration moves the lease's expiry, and its registry entry, earlier;
    # the registry itself keeps the later expiry it had.
    shorter = lease_of(await acquire(store, agent_id, duration_ms=10_000))
    assert int(shorter["expiresAt"]) < expires
    await assert_stored(store, shorter)
    assert await redis_client.hget(registry(store, agent_id), first["fencingToken"]) == (
        f"{shorter['expiresAt']}:{CONTACT}"
    )
    assert await redis_client.pexpiretime(registry(store, agent_id)) >= expires


async def test_acquire_by_the_holder_after_releasing_is_a_new_lease(store, redis_client):
    """An extension needs the lease to be held still; once released, asking again grants anew."""
    agent_id = await new_agent(store, "sdr")
    old = await granted(store, agent_id)
    assert (await release(store, old["id"], agent_id=agent_id))[0] == Reply.OK

    new = await granted(store, agent_id)

    assert int(new["fencingToken"]) > int(old["fencingToken"])
    assert new["id"] != old["id"]
    await assert_stored(store, new)
    assert await redis_client.hgetall(registry(store, agent_id)) == {
        new["fencingToken"]: f"{new['expiresAt']}:{CONTACT}"
    }


async def test_acquire_of_a_contact_held_by_an_active_agent_is_lease_conflict(store, redis_client, prefix):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    held = await granted(store, a, intent="outreach")
    before = await dump(redis_client, prefix)

    reply = await acquire(store, b, intent="ticket")

    assert reply == [Reply.LEASE_CONFLICT, a, "sdr", "outreach", int(held["expiresAt"])]
    assert await dump(redis_client, prefix) == before


async def test_acquire_takes_over_the_lease_of_an_inactive_holder(store, redis_client):
    k = store.keys
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    old = await granted(store, a, intent="outreach")
    await lapse(store, a)

    reply = await acquire(store, b)

    assert reply[0] == Reply.CREATED
    new = lease_of(reply)
    assert new["id"] != old["id"]
    assert int(new["fencingToken"]) > int(old["fencingToken"])
    # The lease is wholly b's: nothing of a's lease (its intent) is left in the string.
    assert (new["agentId"], new["agentName"], new["intent"]) == (b, "support", "")
    await assert_stored(store, new)
    assert await redis_client.get(k.fence(TENANT)) == new["fencingToken"]
    # a's registry keeps its entry, now stale; reads check it against the lease and ignore it.
    assert await redis_client.hgetall(registry(store, a)) == {old["fencingToken"]: f"{old['expiresAt']}:{CONTACT}"}
    with pytest.raises(ConcordError) as gone:
        await store.leases.get(TENANT, old["id"])
    assert gone.value.code == "lease_not_found"
    assert (await store.leases.page(TENANT, a, None, 10, None)).leases == []
    assert [lease.id for lease in (await store.leases.page(TENANT, b, None, 10, None)).leases] == [new["id"]]
    assert [lease.id for lease in (await store.leases.page(TENANT, None, CONTACT, 10, None)).leases] == [new["id"]]


async def test_acquire_by_an_unregistered_agent_is_bad_credential(store, redis_client, prefix):
    """An unknown agent has no credential, so whatever digest claims it is refused first."""
    await new_agent(store, "sdr")
    before = await dump(redis_client, prefix)

    assert await acquire(store, agent_id_for(TENANT, "nobody")) == [Reply.BAD_CREDENTIAL]

    assert await dump(redis_client, prefix) == before


async def test_acquire_by_an_inactive_agent_is_agent_inactive(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    await lapse(store, agent_id)
    before = await dump(redis_client, prefix)

    assert await acquire(store, agent_id) == [Reply.AGENT_INACTIVE]

    # Its own lease too: an inactive holder cannot extend it.
    assert (await heartbeat(store, agent_id))[0] == Reply.OK
    await granted(store, agent_id)
    await lapse(store, agent_id)
    before = await dump(redis_client, prefix)
    assert await acquire(store, agent_id) == [Reply.AGENT_INACTIVE]
    assert await dump(redis_client, prefix) == before


# --- the lease registry ------------------------------------------------------
# Each write of an entry (acquire, extension, renew) samples two entries of the
# registry (HRANDFIELD 2) and deletes those whose expiresAt has passed. A registry
# of at most two entries is sampled whole, which makes these checks exact.


async def test_an_acquire_drops_an_expired_registry_entry(store, redis_client):
    agent_id = await new_agent(store, "sdr")
    await redis_client.hset(registry(store, agent_id), "1000", "1000:gone@example.com")

    lease = await granted(store, agent_id)

    assert await redis_client.hgetall(registry(store, agent_id)) == {
        lease["fencingToken"]: f"{lease['expiresAt']}:{CONTACT}"
    }


async def test_an_acquire_keeps_registry_entries_not_yet_expired(store, redis_client):
    agent_id = await new_agent(store, "sdr")
    later = (await clock(redis_client))[0] + HOUR_MS
    await redis_client.hset(registry(store, agent_id), "1000", f"{later}:other@example.com")

    lease = await granted(store, agent_id)

    assert await redis_client.hgetall(registry(store, agent_id)) == {
        "1000": f"{later}:other@example.com",
        lease["fencingToken"]: f"{lease['expiresAt']}:{CONTACT}",
    }
    # The registry expires with the longest lease written to it; a shorter one later does not shorten it.
    assert await redis_client.pexpiretime(registry(store, agent_id)) == int(lease["expiresAt"])
    longest = await granted(store, agent_id, "long@example.com", duration_ms=2 * HOUR_MS)
    assert await redis_client.pexpiretime(registry(store, agent_id)) == int(longest["expiresAt"])
    await granted(store, agent_id, "short@example.com", duration_ms=MINUTE_MS)
    assert await redis_client.pexpiretime(registry(store, agent_id)) == int(longest["expiresAt"])
    assert len(await redis_client.hkeys(registry(store, agent_id))) == 4


async def test_an_acquire_drops_at_most_two_expired_registry_entries(store, redis_client):
    agent_id = await new_agent(store, "sdr")
    expired = {str(1000 + i): f"{1000 + i}:gone{i}@example.com" for i in range(5)}
    # Each round: five expired entries and one write; two of the six are sampled, so one or two go.
    # (Rounds make a sample larger than two show, whatever the draw: it would drop three half the time.)
    for _ in range(12):
        await redis_client.delete(registry(store, agent_id))
        await redis_client.hset(registry(store, agent_id), mapping=expired)

        reply = await acquire(store, agent_id)

        assert reply[0] in (Reply.CREATED, Reply.OK)
        lease = lease_of(reply)
        entries = await redis_client.hgetall(registry(store, agent_id))
        assert entries.pop(lease["fencingToken"]) == f"{lease['expiresAt']}:{CONTACT}"
        assert entries.items() <= expired.items()
        assert 3 <= len(entries) <= 4, entries


async def test_a_renewal_and_an_extension_drop_expired_registry_entries_too(store, redis_client):
    agent_id = await new_agent(store, "sdr")
    lease = await granted(store, agent_id)
    await redis_client.hset(registry(store, agent_id), "1000", "1000:gone@example.com")

    assert (await renew(store, lease["id"], agent_id))[0] == Reply.OK
    assert list(await redis_client.hkeys(registry(store, agent_id))) == [lease["fencingToken"]]

    await redis_client.hset(registry(store, agent_id), "1000", "1000:gone@example.com")
    assert (await acquire(store, agent_id))[0] == Reply.OK
    assert list(await redis_client.hkeys(registry(store, agent_id))) == [lease["fencingToken"]]


# --- lease_renew -------------------------------------------------------------


async def test_renew_moves_the_expiry_and_keeps_id_and_token(store, redis_client):
    agent_id = await new_agent(store, "sdr")
    lease = await granted(store, agent_id, duration_ms=MINUTE_MS)
    before, _ = await clock(redis_client)

    reply = await renew(store, lease["id"], agent_id, duration_ms=10 * MINUTE_MS)

    after, _ = await clock(redis_client)
    assert reply[0] == Reply.OK
    renewed = lease_of(reply)
    assert {f: v for f, v in renewed.items() if f != "expiresAt"} == {
        f: v for f, v in lease.items() if f != "expiresAt"
    }
    expires = int(renewed["expiresAt"])
    assert before + 10 * MINUTE_MS <= expires <= after + 10 * MINUTE_MS
    await assert_stored(store, renewed)
    assert await redis_client.hgetall(registry(store, agent_id)) == {lease["fencingToken"]: f"{expires}:{CONTACT}"}
    assert await redis_client.pexpiretime(registry(store, agent_id)) == expires


async def test_renew_of_another_lease_id_is_lease_not_found(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    lease = await granted(store, agent_id)
    before = await dump(redis_client, prefix)

    # The contact is leased, but not with this token (expired, released or taken over).
    other = lease_id_of(agent_id, int(lease["fencingToken"]) - 1)
    assert await renew(store, other, agent_id) == [Reply.LEASE_NOT_FOUND]
    # No lease on the contact at all.
    assert await renew(store, lease["id"], agent_id, "free@example.com") == [Reply.LEASE_NOT_FOUND]

    assert await dump(redis_client, prefix) == before


async def test_renew_of_a_taken_over_lease_is_lease_not_found(store, redis_client, prefix):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    old = await granted(store, a)
    await lapse(store, a)
    await granted(store, b)
    assert (await heartbeat(store, a))[0] == Reply.OK  # active again: only the token decides
    before = await dump(redis_client, prefix)

    assert await renew(store, old["id"], a) == [Reply.LEASE_NOT_FOUND]

    assert await dump(redis_client, prefix) == before


async def test_renew_by_another_agent_is_not_lease_holder(store, redis_client, prefix):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    lease = await granted(store, a)
    before = await dump(redis_client, prefix)

    # b, with its own credential, is not the holder.
    assert await renew(store, lease["id"], b) == [Reply.NOT_LEASE_HOLDER, a]
    # An unknown agent has no credential: refused before the lease is even looked at.
    assert await renew(store, lease["id"], agent_id_for(TENANT, "nobody")) == [Reply.BAD_CREDENTIAL]

    assert await dump(redis_client, prefix) == before


async def test_renew_by_an_inactive_holder_is_agent_inactive(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    lease = await granted(store, agent_id)
    await lapse(store, agent_id)
    before = await dump(redis_client, prefix)

    assert await renew(store, lease["id"], agent_id) == [Reply.AGENT_INACTIVE]

    assert await dump(redis_client, prefix) == before


# --- lease_release -----------------------------------------------------------


async def test_release_by_the_holder_deletes_the_lease_and_its_registry_entry(store, redis_client):
    k, agent_id = store.keys, await new_agent(store, "sdr")
    lease = await granted(store, agent_id)
    other = await granted(store, agent_id, "other@example.com")

    reply = await release(store, lease["id"], agent_id=agent_id)
    assert reply[0] == Reply.OK and int(lease["acquiredAt"]) <= reply[1] < int(lease["expiresAt"])

    assert not await redis_client.exists(k.lease(TENANT, CONTACT))
    assert await redis_client.hgetall(registry(store, agent_id)) == {
        other["fencingToken"]: f"{other['expiresAt']}:other@example.com"
    }
    await assert_stored(store, other, "other@example.com")
    # Released twice: the second finds nothing.
    assert await release(store, lease["id"], agent_id=agent_id) == [Reply.LEASE_NOT_FOUND]

    # The last lease released: its registry is gone.
    assert (await release(store, other["id"], "other@example.com", agent_id))[0] == Reply.OK
    assert not await redis_client.exists(k.lease(TENANT, "other@example.com"), registry(store, agent_id))


async def test_release_of_an_unknown_lease_id_is_lease_not_found(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    lease = await granted(store, agent_id)
    before = await dump(redis_client, prefix)

    other = lease_id_of(agent_id, int(lease["fencingToken"]) + 1)
    assert await release(store, other, agent_id=agent_id) == [Reply.LEASE_NOT_FOUND]
    assert await release(store, other) == [Reply.LEASE_NOT_FOUND]
    assert await release(store, lease["id"], "free@example.com") == [Reply.LEASE_NOT_FOUND]

    assert await dump(redis_client, prefix) == before


async def test_release_of_a_taken_over_lease_is_lease_not_found(store, redis_client, prefix):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    old = await granted(store, a)
    await lapse(store, a)
    await granted(store, b)
    before = await dump(redis_client, prefix)

    # Neither its old holder nor anyone may end b's lease with a's old id.
    assert await release(store, old["id"], agent_id=a) == [Reply.LEASE_NOT_FOUND]
    assert await release(store, old["id"]) == [Reply.LEASE_NOT_FOUND]

    assert await dump(redis_client, prefix) == before


async def test_release_by_another_agent_is_not_lease_holder(store, redis_client, prefix):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    lease = await granted(store, a)
    before = await dump(redis_client, prefix)

    assert await release(store, lease["id"], agent_id=b) == [Reply.NOT_LEASE_HOLDER, a]

    assert await dump(redis_client, prefix) == before


async def test_release_by_an_admin_key_without_an_agent_is_a_forced_release(store, redis_client):
    """No agent and no credential: the service passes that only for an admin key. Any lease
    of the tenant goes, and its event says it was forced, by that key."""
    k, agent_id = store.keys, await new_agent(store, "sdr")
    lease = await granted(store, agent_id)

    assert (await release(store, lease["id"], agent_id=""))[0] == Reply.OK

    assert not await redis_client.exists(k.lease(TENANT, CONTACT), registry(store, agent_id))
    ((_, last),) = await redis_client.xrevrange(k.events(TENANT), count=1)
    assert last == {
        "type": "lease.released",
        "actor": KEY_ID,
        "actorRole": "admin",
        "agentId": agent_id,
        "contactEmail": CONTACT,
        "fencingToken": lease["fencingToken"],
        "reason": "forced",
    }


async def test_release_by_an_admin_key_naming_an_agent_releases_only_its_lease(store, redis_client, prefix):
    """An admin key that names the holder (?agentId) with no credential: only that agent's
    lease goes, forced, recorded as the key's."""
    k = store.keys
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    lease = await granted(store, a)
    before = await dump(redis_client, prefix)

    assert await release(store, lease["id"], agent_id=b, as_credential="") == [Reply.NOT_LEASE_HOLDER, a]
    assert await dump(redis_client, prefix) == before

    assert (await release(store, lease["id"], agent_id=a, as_credential=""))[0] == Reply.OK
    assert not await redis_client.exists(k.lease(TENANT, CONTACT), registry(store, a))
    ((_, last),) = await redis_client.xrevrange(k.events(TENANT), count=1)
    assert (last["actor"], last["actorRole"], last["agentId"], last["reason"]) == (KEY_ID, "admin", a, "forced")


async def test_release_by_the_holder_is_recorded_as_the_agents(store, redis_client):
    k, agent_id = store.keys, await new_agent(store, "sdr")
    lease = await granted(store, agent_id)

    assert (await release(store, lease["id"], agent_id=agent_id))[0] == Reply.OK

    ((_, last),) = await redis_client.xrevrange(k.events(TENANT), count=1)
    assert last == {
        "type": "lease.released",
        "actor": agent_id,
        "actorRole": "agent",
        "agentId": agent_id,
        "contactEmail": CONTACT,
        "fencingToken": lease["fencingToken"],
        "reason": "released",
    }


# --- safe to run twice -------------------------------------------------------
# The same call run twice (a retry after a lost reply) leaves the state of one run;
# only the times a run stamps may move.


async def test_acquire_twice_is_one_lease(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    first = await acquire(store, agent_id, intent="outreach")
    once = await dump(redis_client, prefix)

    second = await acquire(store, agent_id, intent="outreach")

    assert (first[0], second[0]) == (Reply.CREATED, Reply.OK)
    assert {f: v for f, v in lease_of(second).items() if f != "expiresAt"} == {
        f: v for f, v in lease_of(first).items() if f != "expiresAt"
    }
    twice = await dump(redis_client, prefix)
    again = second_run_event(store, once, twice)
    assert (again["type"], again["fencingToken"]) == ("lease.renewed", lease_of(first)["fencingToken"])
    assert without_times(twice) == without_times(once)
    assert twice[store.keys.fence(TENANT)] == once[store.keys.fence(TENANT)]
    await assert_stored(store, lease_of(second))


async def test_renew_twice_is_one_renewal(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    lease = await granted(store, agent_id)
    first = await renew(store, lease["id"], agent_id, duration_ms=5 * MINUTE_MS)
    once = await dump(redis_client, prefix)

    second = await renew(store, lease["id"], agent_id, duration_ms=5 * MINUTE_MS)

    assert (first[0], second[0]) == (Reply.OK, Reply.OK)
    assert lease_of(second)["fencingToken"] == lease["fencingToken"]
    twice = await dump(redis_client, prefix)
    assert second_run_event(store, once, twice)["type"] == "lease.renewed"
    assert without_times(twice) == without_times(once)
    await assert_stored(store, lease_of(second))


async def test_release_twice_is_one_release(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    lease = await granted(store, agent_id)
    await granted(store, agent_id, "other@example.com")
    assert (await release(store, lease["id"], agent_id=agent_id))[0] == Reply.OK
    once = await dump(redis_client, prefix)

    assert await release(store, lease["id"], agent_id=agent_id) == [Reply.LEASE_NOT_FOUND]

    assert await dump(redis_client, prefix) == once
