"""Every documented reply of every Lua script, on fakeredis and on a real Redis.

The tests call the scripts directly (``store.scripts.<name>``) with keys from the
key schema and check two things each time: the raw reply, and what Redis holds
afterwards. An agent is made inactive by moving its heartbeat back to the epoch
(ZADD score 1), never by sleeping. "Nothing written" is checked by comparing a
dump of every key under the test's own prefix before and after the call.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis

from concord.protocol import UUID
from concord.server.errors import ConcordError
from concord.server.store import Store
from concord.server.store.consensus import IDEMPOTENCY_MS, MAX_CONSENSUS_TIMEOUT_MS, RETENTION_MS
from concord.server.store.keys import agent_id_for, agent_tag, new_id, parse_lease_id
from concord.server.store.keys import lease_id as lease_id_of
from concord.server.store.replies import Reply
from tests.support.helpers import eventually, snapshot

TENANT = "acme"
CONTACT = "alice@example.com"
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
MAX_AGE_MS = MAX_CONSENSUS_TIMEOUT_MS + RETENTION_MS
EVENTS_MAX = 10_000


# --- reading Redis -----------------------------------------------------------


async def clock(redis: Redis) -> tuple[int, int]:
    """Redis's time as (milliseconds, microseconds), as the scripts read it."""
    seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000, seconds * 1_000_000 + micros


async def dump(redis: Redis, prefix: str) -> dict[str, tuple[Any, ...]]:
    """Every key under ``prefix`` -> (type, contents, absolute expiry ms or -1)."""
    return await snapshot(redis, f"{prefix}:*", expiry=True)


def second_run_event(store: Store, once: dict, twice: dict) -> dict[str, str]:
    """Take the event stream out of two dumps, taken after one run and after a second
    one, and return the one event the second run added. A second run leaves the state
    of one run, but the stream records it for what it is: an update of the agent, an
    extension of the lease (docs/api.md, "Retrying safely")."""
    key = store.keys.events(TENANT)
    (_, before, _), (_, after, _) = once.pop(key), twice.pop(key)
    assert after[:-1] == before, (before, after)
    return after[-1][1]


_MS = re.compile(r"(?<!\d)1\d{12}(?!\d)")  # a Unix time in milliseconds (fencing tokens have 16 digits)


def without_times(value: Any) -> Any:
    """``value`` with every millisecond timestamp replaced by "<ms>": what a second run may move."""
    if isinstance(value, dict):
        return {without_times(k): without_times(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(without_times(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        value = str(value)
    return _MS.sub("<ms>", value) if isinstance(value, str) else value


def pairs(flat: list[str]) -> dict[str, str]:
    it = iter(flat)
    return dict(zip(it, it))


# --- running the scripts -----------------------------------------------------


async def register(store: Store, name: str, role: str = "", metadata: str = "") -> list:
    agent_id = agent_id_for(TENANT, name)
    k = store.keys
    return await store.scripts.agent_register(
        keys=[k.agent(TENANT, agent_id), k.agents(TENANT), k.heartbeats(TENANT), k.events(TENANT)],
        args=[agent_id, name, role, metadata, EVENTS_MAX],
    )


async def new_agent(store: Store, name: str) -> str:
    """Register ``name`` (active now) and return its id."""
    assert (await register(store, name))[0] == Reply.CREATED
    return agent_id_for(TENANT, name)


async def lapse(store: Store, agent_id: str) -> None:
    """Make a registered agent inactive: its last heartbeat moves back to the epoch."""
    assert await store.redis.zadd(store.keys.heartbeats(TENANT), {agent_id: 1}, xx=True, ch=True) == 1


async def heartbeat(store: Store, agent_id: str) -> list:
    return await store.scripts.agent_heartbeat(keys=[store.keys.heartbeats(TENANT)], args=[agent_id])


def registry(store: Store, agent_id: str) -> str:
    """The key of ``agent_id``'s lease registry (named by its tag)."""
    return store.keys.lease_registry(TENANT, agent_tag(agent_id))


async def registry_contacts(store: Store, agent_id: str) -> list[str]:
    """The distinct contacts an agent's registry names, as the store reads them before agent_remove."""
    return sorted({entry.partition(":")[2] for entry in await store.redis.hvals(registry(store, agent_id))})


async def remove(store: Store, agent_id: str, contacts: list[str]) -> list:
    k = store.keys
    return await store.scripts.agent_remove(
        keys=[
            k.agent(TENANT, agent_id),
            k.agents(TENANT),
            k.heartbeats(TENANT),
            registry(store, agent_id),
            k.events(TENANT),
        ]
        + [k.lease(TENANT, c) for c in contacts],
        args=[agent_id, EVENTS_MAX, *contacts],
    )


async def acquire(
    store: Store, agent_id: str, contact: str = CONTACT, intent: str = "", duration_ms: int = MINUTE_MS
) -> list:
    k = store.keys
    return await store.scripts.lease_acquire(
        keys=[
            k.agent(TENANT, agent_id),
            k.heartbeats(TENANT),
            k.lease(TENANT, contact),
            registry(store, agent_id),
            k.fence(TENANT),
            k.events(TENANT),
        ],
        args=[agent_id, contact, intent, duration_ms, store.ctx.window_ms, EVENTS_MAX],
    )


# {code, agentId, agentName, intent, acquiredAt, expiresAt, fencingToken}: lua/lib.lua lease_reply.
LEASE_REPLY = ("agentId", "agentName", "intent", "acquiredAt", "expiresAt", "fencingToken")


def lease_of(reply: list) -> dict[str, str]:
    """The lease of a CREATED/OK lease reply, with the id the store gives it: keys.lease_id(holder, token)."""
    # lease_acquire's CREATED reply ends with the previous holder ('' for a free contact).
    assert len(reply) == len(LEASE_REPLY) + 1 + (reply[0] == Reply.CREATED and len(reply) == 8), reply
    lease = dict(zip(LEASE_REPLY, reply[1:7], strict=True))
    assert all(isinstance(value, str) for value in lease.values()), reply
    return {"id": lease_id_of(lease["agentId"], int(lease["fencingToken"])), **lease}


def lease_string(lease: dict[str, str]) -> str:
    """What the lease key holds: "<agent uuid without agent_>|<token>|<acquiredAt>|<agentName>|<intent>"."""
    assert lease["agentId"].startswith("agent_")
    uuid_part = lease["agentId"][len("agent_") :]
    return f"{uuid_part}|{lease['fencingToken']}|{lease['acquiredAt']}|{lease['agentName']}|{lease['intent']}"


async def assert_stored(store: Store, lease: dict[str, str], contact: str = CONTACT) -> None:
    """Redis holds ``lease`` on ``contact``: the lease string, expiring (PEXPIRETIME) at its expiresAt,
    and its holder's registry entry token -> "<expiresAt>:<contact>", the registry living at least as long."""
    db, key = store.redis, store.keys.lease(TENANT, contact)
    assert await db.type(key) == "string"
    assert await db.get(key) == lease_string(lease)
    assert await db.pexpiretime(key) == int(lease["expiresAt"])
    assert await db.type(registry(store, lease["agentId"])) == "hash"
    assert await db.hget(registry(store, lease["agentId"]), lease["fencingToken"]) == f"{lease['expiresAt']}:{contact}"
    assert await db.pexpiretime(registry(store, lease["agentId"])) >= int(lease["expiresAt"])


async def granted(store: Store, agent_id: str, contact: str = CONTACT, **kwargs: Any) -> dict[str, str]:
    reply = await acquire(store, agent_id, contact, **kwargs)
    assert reply[0] == Reply.CREATED, reply
    return lease_of(reply)


async def renew(store: Store, lease_id: str, agent_id: str, contact: str = CONTACT, duration_ms: int = MINUTE_MS):
    """lease_renew with the keys the store passes: the registry of the tag, and the token, in the lease id."""
    k = store.keys
    tag, token = parse_lease_id(lease_id)
    return await store.scripts.lease_renew(
        keys=[k.heartbeats(TENANT), k.lease(TENANT, contact), k.lease_registry(TENANT, tag), k.events(TENANT)],
        args=[token, agent_id, contact, duration_ms, store.ctx.window_ms, EVENTS_MAX],
    )


async def release(store: Store, lease_id: str, contact: str = CONTACT, agent_id: str = "") -> list:
    k = store.keys
    tag, token = parse_lease_id(lease_id)
    return await store.scripts.lease_release(
        keys=[k.lease(TENANT, contact), k.lease_registry(TENANT, tag), k.events(TENANT)],
        args=[token, agent_id, contact, EVENTS_MAX],
    )


async def send_check(store: Store, agent_id: str, contact: str = CONTACT, token: str = "") -> list:
    k = store.keys
    return await store.scripts.lease_send_check(
        keys=[k.heartbeats(TENANT), k.lease(TENANT, contact)], args=[agent_id, token, store.ctx.window_ms]
    )


def consensus_keys(store: Store, consensus_id: str) -> list[str]:
    k = store.keys
    return [
        k.consensus(TENANT, consensus_id),
        k.votes(TENANT, consensus_id),
        k.heartbeats(TENANT),
        *(k.consensus_list(TENANT, s) for s in ("all", "pending", "approved", "rejected", "expired")),
        k.consensus_due(TENANT),
        k.events(TENANT),
    ]


async def request(
    store: Store,
    requester: str,
    consensus_id: str | None = None,
    timeout_ms: int = HOUR_MS,
    action: str = "unsubscribe",
    contact: str = "",
    reason: str = "",
) -> list:
    consensus_id = consensus_id or new_id("cons")
    return await store.scripts.consensus_request(
        keys=consensus_keys(store, consensus_id),
        args=[
            consensus_id,
            requester,
            action,
            contact,
            reason,
            timeout_ms,
            store.ctx.window_ms,
            RETENTION_MS,
            MAX_AGE_MS,
            "",
            IDEMPOTENCY_MS,
            EVENTS_MAX,
        ],
    )


async def opened(store: Store, requester: str, **kwargs: Any) -> str:
    """Open a consensus request and return its id."""
    reply = await request(store, requester, **kwargs)
    assert reply[0] == Reply.CREATED, reply
    return pairs(reply[1])["id"]


async def vote(store: Store, consensus_id: str, agent_id: str, choice: str, reason: str = "") -> list:
    return await store.scripts.consensus_vote(
        keys=consensus_keys(store, consensus_id) + [store.keys.agent(TENANT, agent_id)],
        args=[agent_id, choice, reason, store.ctx.window_ms, RETENTION_MS, EVENTS_MAX],
    )


async def read(store: Store, consensus_id: str) -> list:
    return await store.scripts.consensus_read(
        keys=consensus_keys(store, consensus_id), args=[consensus_id, store.ctx.window_ms, RETENTION_MS, EVENTS_MAX]
    )


@dataclass
class Cons:
    """A consensus reply: {code, {request hash}, {votes hash}, approve, reject, eligible, needed, decided}."""

    code: int
    fields: dict[str, str]
    votes: dict[str, str]
    tally: tuple[int, int, int, int]
    decided: int  # 1 when this very call decided the request

    @property
    def status(self) -> str:
        return self.fields["status"]


def cons(reply: list) -> Cons:
    assert len(reply) == 8, reply
    code, flat, votes, *tally, decided = reply
    return Cons(code, pairs(flat), pairs(votes), tuple(tally), decided)


async def members(store: Store, status: str) -> set[str]:
    key = store.keys.consensus_list(TENANT, status) if status != "due" else store.keys.consensus_due(TENANT)
    return set(await store.redis.zrange(key, 0, -1))


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

    code, flat, heartbeat_ms = await register(store, "sdr", "retention", '{"tier": 2}')

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


async def test_heartbeat_of_an_unregistered_agent_is_agent_not_found(store, redis_client, prefix):
    await new_agent(store, "sdr")
    before = await dump(redis_client, prefix)

    assert await heartbeat(store, agent_id_for(TENANT, "nobody")) == [Reply.AGENT_NOT_FOUND]

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
        lease_key,
        registry(store, agent_id),
        k.fence(TENANT),
        k.events(TENANT),
    }
    ((_, last),) = await redis_client.xrevrange(k.events(TENANT), count=1)
    assert last == {
        "type": "lease.acquired",
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


async def test_acquire_by_an_unregistered_agent_is_agent_not_found(store, redis_client, prefix):
    await new_agent(store, "sdr")
    before = await dump(redis_client, prefix)

    assert await acquire(store, agent_id_for(TENANT, "nobody")) == [Reply.AGENT_NOT_FOUND]

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


async def test_fencing_tokens_strictly_increase_and_are_never_below_redis_time(store, redis_client):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    tokens = []
    for i in range(5):
        _, before_us = await clock(redis_client)
        lease = await granted(store, a, f"c{i}@example.com")
        assert int(lease["fencingToken"]) >= before_us
        tokens.append(int(lease["fencingToken"]))
    # Takeovers take tokens from the same sequence.
    await lapse(store, a)
    for i in range(2):
        tokens.append(int((await granted(store, b, f"c{i}@example.com"))["fencingToken"]))

    assert all(x < y for x, y in zip(tokens, tokens[1:])), tokens
    # Each token is in its lease's id, after the holder's tag.
    assert [parse_lease_id(lease_id_of(a, t))[1] for t in tokens] == tokens


async def test_fencing_tokens_keep_growing_after_redis_loses_the_fence(store, redis_client):
    agent_id = await new_agent(store, "sdr")
    tokens = [int((await granted(store, agent_id, f"c{i}@example.com"))["fencingToken"]) for i in range(3)]

    # Redis restarted empty: the last token granted is forgotten.
    await redis_client.delete(store.keys.fence(TENANT))
    _, before_us = await clock(redis_client)
    token = int((await granted(store, agent_id, "after@example.com"))["fencingToken"])

    assert token > max(tokens)
    assert token >= before_us


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

    assert await renew(store, lease["id"], b) == [Reply.NOT_LEASE_HOLDER, a]
    assert await renew(store, lease["id"], agent_id_for(TENANT, "nobody")) == [Reply.NOT_LEASE_HOLDER, a]

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


async def test_release_without_an_agent_lets_anyone_release(store, redis_client):
    k, agent_id = store.keys, await new_agent(store, "sdr")
    lease = await granted(store, agent_id)

    assert (await release(store, lease["id"], agent_id=""))[0] == Reply.OK

    assert not await redis_client.exists(k.lease(TENANT, CONTACT), registry(store, agent_id))


# --- lease ids -----------------------------------------------------------------

LEASE_ID_SHAPE = re.compile(f"lease_{UUID}")
SOME_AGENTS = [agent_id_for(TENANT, name) for name in ("sdr", "support", "x")] + [
    "agent_01234567-89ab-cdef-0123-456789abcdef",
    "agent_ffffffff-ffff-ffff-ffff-ffffffffffff",
    "agent_00000000-0000-0000-0000-000000000000",
]
SOME_TOKENS = [0, 1, 255, 1_700_000_000_000_000, 1_799_999_999_999_999, 2**63, 2**64 - 1]


def test_agent_tag_is_the_first_16_hex_digits_of_the_agents_uuid():
    assert agent_tag("agent_01234567-89ab-cdef-0123-456789abcdef") == "0123456789abcdef"
    for agent_id in SOME_AGENTS:
        tag = agent_tag(agent_id)
        assert re.fullmatch("[0-9a-f]{16}", tag)
        assert tag == uuid.UUID(agent_id.removeprefix("agent_")).hex[:16]


def test_a_lease_id_is_uuid_shaped_hex_of_the_holders_tag_and_the_token():
    assert lease_id_of("agent_01234567-89ab-cdef-0123-456789abcdef", 1) == "lease_01234567-89ab-cdef-0000-000000000001"
    # 1_700_000_000_000_000 (a token of Redis's microseconds, in 2023) is 0x00060a24181e4000.
    assert lease_id_of("agent_01234567-89ab-cdef-0123-456789abcdef", 1_700_000_000_000_000) == (
        "lease_01234567-89ab-cdef-0006-0a24181e4000"
    )
    for agent_id in SOME_AGENTS:
        for token in SOME_TOKENS:
            lease_id = lease_id_of(agent_id, token)
            assert LEASE_ID_SHAPE.fullmatch(lease_id), lease_id
            digits = uuid.UUID(lease_id.removeprefix("lease_")).hex
            assert digits[:16] == agent_tag(agent_id)
            assert int(digits[16:], 16) == token


def test_parse_lease_id_undoes_lease_id():
    for agent_id in SOME_AGENTS:
        for token in SOME_TOKENS:
            assert parse_lease_id(lease_id_of(agent_id, token)) == (agent_tag(agent_id), token)
    assert parse_lease_id("lease_01234567-89ab-cdef-0000-000000000001") == ("0123456789abcdef", 1)


def test_lease_ids_differ_by_holder_and_by_token():
    ids = {lease_id_of(agent_id, token) for agent_id in SOME_AGENTS for token in SOME_TOKENS}
    assert len(ids) == len(SOME_AGENTS) * len(SOME_TOKENS)


async def test_a_granted_lease_is_found_by_its_id(store, redis_client):
    """The id a reply gives (keys.lease_id) leads to the lease: its tag to the registry, its token to the entry."""
    agent_id = await new_agent(store, "sdr")
    lease = await granted(store, agent_id, intent="outreach")

    tag, token = parse_lease_id(lease["id"])

    assert (tag, token) == (agent_tag(agent_id), int(lease["fencingToken"]))
    entry = await redis_client.hget(store.keys.lease_registry(TENANT, tag), str(token))
    assert entry == f"{lease['expiresAt']}:{CONTACT}"
    found = await store.leases.get(TENANT, lease["id"])
    assert (found.id, found.agent_id, found.fencing_token, found.intent) == (lease["id"], agent_id, token, "outreach")


# --- lease_send_check (reads only: every test checks nothing was written) ----


async def test_send_check_allows_a_free_contact_and_the_callers_own_lease(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    assert await send_check(store, agent_id) == [Reply.OK]

    lease = await granted(store, agent_id)
    before = await dump(redis_client, prefix)
    assert await send_check(store, agent_id) == [Reply.OK]
    assert await send_check(store, agent_id, token=lease["fencingToken"]) == [Reply.OK]
    assert await dump(redis_client, prefix) == before


async def test_send_check_by_an_unregistered_agent_is_agent_not_found(store, redis_client, prefix):
    await granted(store, await new_agent(store, "sdr"))
    before = await dump(redis_client, prefix)

    assert await send_check(store, agent_id_for(TENANT, "nobody")) == [Reply.AGENT_NOT_FOUND]

    assert await dump(redis_client, prefix) == before


async def test_send_check_by_an_inactive_agent_is_agent_inactive(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    lease = await granted(store, agent_id)
    await lapse(store, agent_id)
    before = await dump(redis_client, prefix)

    # Even its own lease, with its current token: an inactive agent may not send.
    assert await send_check(store, agent_id) == [Reply.AGENT_INACTIVE]
    assert await send_check(store, agent_id, token=lease["fencingToken"]) == [Reply.AGENT_INACTIVE]

    assert await dump(redis_client, prefix) == before


async def test_send_check_of_a_contact_held_by_another_active_agent_is_lease_conflict(store, redis_client, prefix):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    lease = await granted(store, a, intent="outreach")
    before = await dump(redis_client, prefix)

    assert await send_check(store, b) == [Reply.LEASE_CONFLICT, a, "sdr", "outreach", int(lease["expiresAt"])]

    assert await dump(redis_client, prefix) == before


async def test_send_check_with_a_token_that_is_not_the_current_one_is_stale(store, redis_client, prefix):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    lease = await granted(store, a, intent="outreach")
    stale = str(int(lease["fencingToken"]) - 1)
    before = await dump(redis_client, prefix)

    # The holder with an old token: no holder to name.
    assert await send_check(store, a, token=stale) == [Reply.STALE_FENCING_TOKEN]
    # Another agent with the holder's very token: stale, and the active holder is named.
    assert await send_check(store, b, token=lease["fencingToken"]) == [
        Reply.STALE_FENCING_TOKEN,
        a,
        "sdr",
        "outreach",
        int(lease["expiresAt"]),
    ]
    # A token for a contact nobody holds.
    assert await send_check(store, a, "free@example.com", token=lease["fencingToken"]) == [Reply.STALE_FENCING_TOKEN]

    assert await dump(redis_client, prefix) == before


async def test_send_check_treats_a_lease_of_an_inactive_agent_as_free(store, redis_client, prefix):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    lease = await granted(store, a)
    await lapse(store, a)
    before = await dump(redis_client, prefix)

    assert await send_check(store, b) == [Reply.OK]
    # A token still proves nothing unless it is the caller's current one; no holder is named.
    assert await send_check(store, b, token=lease["fencingToken"]) == [Reply.STALE_FENCING_TOKEN]

    assert await dump(redis_client, prefix) == before


# --- consensus_request -------------------------------------------------------


async def test_request_opens_a_pending_consensus(store, redis_client):
    k = store.keys
    requester = await new_agent(store, "sdr")
    peers = [await new_agent(store, name) for name in ("retention", "support")]
    await lapse(store, await new_agent(store, "sleeper"))
    consensus_id = new_id("cons")
    before, _ = await clock(redis_client)

    reply = cons(await request(store, requester, consensus_id, timeout_ms=HOUR_MS, contact=CONTACT, reason="bounced"))

    after, _ = await clock(redis_client)
    assert reply.code == Reply.CREATED
    assert reply.fields == await redis_client.hgetall(k.consensus(TENANT, consensus_id))
    created = int(reply.fields["createdAt"])
    assert before <= created <= after
    assert reply.fields == {
        "id": consensus_id,
        "requestingAgentId": requester,
        "action": "unsubscribe",
        "contactEmail": CONTACT,
        "reason": "bounced",
        "status": "pending",
        "createdAt": str(created),
        "expiresAt": str(created + HOUR_MS),
    }
    assert reply.votes == {}
    # The two active peers are eligible; the requester and the inactive agent are not.
    assert reply.tally == (0, 0, len(peers), 2)
    assert await redis_client.pexpiretime(k.consensus(TENANT, consensus_id)) == created + HOUR_MS + RETENTION_MS
    assert await redis_client.zscore(k.consensus_list(TENANT, "all"), consensus_id) == created
    assert await redis_client.zscore(k.consensus_list(TENANT, "pending"), consensus_id) == created
    assert await redis_client.zscore(k.consensus_due(TENANT), consensus_id) == created + HOUR_MS
    for status in ("approved", "rejected", "expired"):
        assert await members(store, status) == set()


async def test_request_run_twice_with_one_id_returns_the_first_request(store, redis_client, prefix):
    requester = await new_agent(store, "sdr")
    await new_agent(store, "support")
    consensus_id = new_id("cons")
    first = cons(await request(store, requester, consensus_id, action="first"))
    before = await dump(redis_client, prefix)

    again = cons(await request(store, requester, consensus_id, action="second"))

    assert again.code == Reply.OK
    assert (again.fields, again.votes, again.tally) == (first.fields, first.votes, first.tally)
    assert again.fields["action"] == "first"
    assert await dump(redis_client, prefix) == before


async def test_request_by_an_unregistered_agent_is_agent_not_found(store, redis_client, prefix):
    await new_agent(store, "support")
    before = await dump(redis_client, prefix)

    assert await request(store, agent_id_for(TENANT, "nobody")) == [Reply.AGENT_NOT_FOUND]

    assert await dump(redis_client, prefix) == before


async def test_request_by_an_inactive_agent_is_agent_inactive(store, redis_client, prefix):
    requester = await new_agent(store, "sdr")
    await new_agent(store, "support")
    await lapse(store, requester)
    before = await dump(redis_client, prefix)

    assert await request(store, requester) == [Reply.AGENT_INACTIVE]

    assert await dump(redis_client, prefix) == before


async def test_request_prunes_list_entries_older_than_max_age(store, redis_client):
    k = store.keys
    requester = await new_agent(store, "sdr")
    for status in ("all", "approved", "rejected", "expired", "pending"):
        await redis_client.zadd(k.consensus_list(TENANT, status), {"cons_ancient": 1})

    consensus_id = await opened(store, requester)

    for status in ("all", "approved", "rejected", "expired"):
        assert await members(store, status) == ({consensus_id} if status == "all" else set()), status
    # Pending entries are settled by reads, not pruned by age.
    assert await members(store, "pending") == {"cons_ancient", consensus_id}


# --- consensus_vote ----------------------------------------------------------


async def test_vote_is_recorded(store, redis_client):
    k = store.keys
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    await new_agent(store, "retention")
    consensus_id = await opened(store, requester)
    before, _ = await clock(redis_client)

    reply = cons(await vote(store, consensus_id, voter, "approve", "looks right | to me"))

    after, _ = await clock(redis_client)
    assert (reply.code, reply.decided) == (Reply.CREATED, 0)  # a vote counted now; nothing decided
    assert reply.status == "pending"
    assert reply.tally == (1, 0, 2, 2)
    assert reply.votes == await redis_client.hgetall(k.votes(TENANT, consensus_id))
    choice, voted_at, name, reason = reply.votes[voter].split("|", 3)
    assert (choice, name, reason) == ("approve", "support", "looks right | to me")
    assert before <= int(voted_at) // 1000 <= after  # microseconds, so votes keep their casting order
    expires = int(reply.fields["expiresAt"])
    assert await redis_client.pexpiretime(k.votes(TENANT, consensus_id)) == expires + RETENTION_MS


async def test_vote_approves_once_approvals_reach_a_majority_of_the_eligible(store, redis_client):
    k = store.keys
    requester = await new_agent(store, "sdr")
    peers = [await new_agent(store, f"peer{i}") for i in range(4)]
    consensus_id = await opened(store, requester)
    created = int(await redis_client.hget(k.consensus(TENANT, consensus_id), "createdAt"))

    # eligible 4 -> needed floor(4/2)+1 = 3
    assert cons(await vote(store, consensus_id, peers[0], "approve")).tally == (1, 0, 4, 3)
    reply = cons(await vote(store, consensus_id, peers[1], "reject"))
    assert (reply.status, reply.tally) == ("pending", (1, 1, 4, 3))
    assert cons(await vote(store, consensus_id, peers[2], "approve")).status == "pending"
    before, _ = await clock(redis_client)
    reply = cons(await vote(store, consensus_id, peers[3], "approve"))
    after, _ = await clock(redis_client)

    assert (reply.code, reply.decided) == (Reply.CREATED, 1)  # this vote decided it
    assert (reply.status, reply.tally) == ("approved", (3, 1, 4, 3))
    stored = await redis_client.hgetall(k.consensus(TENANT, consensus_id))
    assert stored == reply.fields
    resolved = int(stored["resolvedAt"])
    assert before <= resolved <= after
    assert (stored["eligible"], stored["needed"]) == ("4", "3")
    assert await members(store, "approved") == {consensus_id}
    assert await redis_client.zscore(k.consensus_list(TENANT, "approved"), consensus_id) == created
    assert await members(store, "pending") == set()
    assert await members(store, "due") == set()
    assert await members(store, "all") == {consensus_id}
    assert await redis_client.pexpiretime(k.consensus(TENANT, consensus_id)) == resolved + RETENTION_MS
    assert await redis_client.pexpiretime(k.votes(TENANT, consensus_id)) == resolved + RETENTION_MS


async def test_vote_rejects_once_rejections_reach_a_majority_of_the_eligible(store, redis_client):
    requester = await new_agent(store, "sdr")
    peers = [await new_agent(store, f"peer{i}") for i in range(3)]
    consensus_id = await opened(store, requester)

    # eligible 3 -> needed 2
    assert cons(await vote(store, consensus_id, peers[0], "reject")).tally == (0, 1, 3, 2)
    assert cons(await vote(store, consensus_id, peers[1], "approve")).status == "pending"
    reply = cons(await vote(store, consensus_id, peers[2], "reject"))

    assert (reply.status, reply.tally) == ("rejected", (1, 2, 3, 2))
    assert "resolvedAt" in reply.fields
    assert await members(store, "rejected") == {consensus_id}
    assert await members(store, "pending") == set()
    assert await members(store, "due") == set()


async def test_a_decision_is_final_when_eligibility_changes_afterwards(store, redis_client):
    requester = await new_agent(store, "sdr")
    a, b = await new_agent(store, "peer-a"), await new_agent(store, "peer-b")
    consensus_id = await opened(store, requester)
    await vote(store, consensus_id, a, "approve")
    decided = cons(await vote(store, consensus_id, b, "approve"))
    assert (decided.status, decided.tally) == ("approved", (2, 0, 2, 2))

    # Many more agents become active, and the voters lapse: the decision stands.
    late = [await new_agent(store, f"late{i}") for i in range(5)]
    await lapse(store, a)
    await lapse(store, b)
    reply = cons(await read(store, consensus_id))
    assert reply.status == "approved"
    assert reply.fields["resolvedAt"] == decided.fields["resolvedAt"]
    assert reply.tally == (2, 0, 2, 2)  # eligible and needed frozen at the decision

    assert await vote(store, consensus_id, late[0], "reject") == [Reply.CONSENSUS_CLOSED, "approved"]
    assert await members(store, "approved") == {consensus_id}


async def test_with_no_eligible_peer_a_request_stays_pending(store, redis_client):
    requester = await new_agent(store, "sdr")
    await lapse(store, await new_agent(store, "sleeper"))
    consensus_id = await opened(store, requester)

    reply = cons(await read(store, consensus_id))

    assert (reply.status, reply.tally) == ("pending", (0, 0, 0, 1))
    assert "resolvedAt" not in reply.fields
    assert await members(store, "pending") == {consensus_id}


async def test_a_vote_whose_voter_lapsed_still_counts(store, redis_client):
    requester = await new_agent(store, "sdr")
    a, b, c = [await new_agent(store, name) for name in ("peer-a", "peer-b", "peer-c")]
    consensus_id = await opened(store, requester)
    assert cons(await vote(store, consensus_id, a, "approve")).tally == (1, 0, 3, 2)

    await lapse(store, a)
    # b and c are active, a is not, but a voted: eligible is still 3.
    assert cons(await read(store, consensus_id)).tally == (1, 0, 3, 2)

    reply = cons(await vote(store, consensus_id, b, "approve"))
    assert (reply.status, reply.tally) == ("approved", (2, 0, 3, 2))


async def test_vote_on_an_unknown_request_is_consensus_not_found(store, redis_client, prefix):
    voter = await new_agent(store, "support")
    before = await dump(redis_client, prefix)

    assert await vote(store, new_id("cons"), voter, "approve") == [Reply.CONSENSUS_NOT_FOUND]

    assert await dump(redis_client, prefix) == before


async def test_vote_by_an_unregistered_agent_is_agent_not_found(store, redis_client, prefix):
    requester = await new_agent(store, "sdr")
    await new_agent(store, "support")
    consensus_id = await opened(store, requester)
    before = await dump(redis_client, prefix)

    assert await vote(store, consensus_id, agent_id_for(TENANT, "nobody"), "approve") == [Reply.AGENT_NOT_FOUND]

    assert await dump(redis_client, prefix) == before


async def test_vote_by_the_requester_is_refused(store, redis_client, prefix):
    requester = await new_agent(store, "sdr")
    await new_agent(store, "support")
    consensus_id = await opened(store, requester)
    before = await dump(redis_client, prefix)

    assert await vote(store, consensus_id, requester, "approve") == [Reply.REQUESTER_CANNOT_VOTE]

    assert await dump(redis_client, prefix) == before


async def test_vote_by_an_inactive_agent_is_agent_inactive(store, redis_client, prefix):
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    await new_agent(store, "retention")
    consensus_id = await opened(store, requester)
    await lapse(store, voter)
    before = await dump(redis_client, prefix)

    assert await vote(store, consensus_id, voter, "approve") == [Reply.AGENT_INACTIVE]

    assert await dump(redis_client, prefix) == before


async def test_a_different_second_vote_is_already_voted(store, redis_client, prefix):
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    await new_agent(store, "retention")
    consensus_id = await opened(store, requester)
    await vote(store, consensus_id, voter, "approve")
    before = await dump(redis_client, prefix)

    assert await vote(store, consensus_id, voter, "reject") == [Reply.ALREADY_VOTED, "approve"]

    assert await dump(redis_client, prefix) == before


async def test_a_different_vote_after_the_decision_is_still_already_voted(store, redis_client):
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    consensus_id = await opened(store, requester)
    assert cons(await vote(store, consensus_id, voter, "approve")).status == "approved"

    assert await vote(store, consensus_id, voter, "reject") == [Reply.ALREADY_VOTED, "approve"]


async def test_repeating_the_deciding_vote_after_the_decision_succeeds(store, redis_client, prefix):
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    consensus_id = await opened(store, requester)
    decided = cons(await vote(store, consensus_id, voter, "approve"))
    assert decided.status == "approved"
    before = await dump(redis_client, prefix)

    again = cons(await vote(store, consensus_id, voter, "approve"))

    assert (again.code, again.decided, decided.decided) == (Reply.OK, 0, 1)
    assert (again.fields, again.votes, again.tally) == (decided.fields, decided.votes, decided.tally)
    assert await dump(redis_client, prefix) == before


async def test_vote_on_a_decided_request_is_consensus_closed(store, redis_client, prefix):
    requester, a, b = [await new_agent(store, name) for name in ("sdr", "peer-a", "peer-b")]
    consensus_id = await opened(store, requester)
    await vote(store, consensus_id, a, "reject")
    assert cons(await vote(store, consensus_id, b, "reject")).status == "rejected"
    late = await new_agent(store, "late")
    before = await dump(redis_client, prefix)

    assert await vote(store, consensus_id, late, "approve") == [Reply.CONSENSUS_CLOSED, "rejected"]

    assert await dump(redis_client, prefix) == before


async def test_vote_on_a_request_past_its_deadline_expires_it_and_is_consensus_closed(store, redis_client):
    k = store.keys
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    consensus_id = await opened(store, requester)
    past = (await clock(redis_client))[0] - 1000
    await redis_client.hset(k.consensus(TENANT, consensus_id), "expiresAt", str(past))

    assert await vote(store, consensus_id, voter, "approve") == [Reply.CONSENSUS_CLOSED, "expired"]

    stored = await redis_client.hgetall(k.consensus(TENANT, consensus_id))
    assert (stored["status"], stored["resolvedAt"]) == ("expired", str(past))
    assert not await redis_client.exists(k.votes(TENANT, consensus_id))
    assert await members(store, "expired") == {consensus_id}
    assert await members(store, "pending") == set()
    assert await members(store, "due") == set()


# --- consensus_read ----------------------------------------------------------


async def test_read_returns_the_request_and_writes_nothing_while_undecided(store, redis_client, prefix):
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    await new_agent(store, "retention")
    consensus_id = await opened(store, requester)
    voted = cons(await vote(store, consensus_id, voter, "reject", "no"))
    before = await dump(redis_client, prefix)

    reply = cons(await read(store, consensus_id))

    assert reply.code == Reply.OK
    assert (reply.fields, reply.votes, reply.tally) == (voted.fields, voted.votes, (0, 1, 2, 2))
    assert await dump(redis_client, prefix) == before


async def test_read_decides_a_request_whose_eligibility_shrank(store, redis_client):
    k = store.keys
    requester = await new_agent(store, "sdr")
    a, b, c = [await new_agent(store, name) for name in ("peer-a", "peer-b", "peer-c")]
    consensus_id = await opened(store, requester)
    assert cons(await vote(store, consensus_id, a, "approve")).tally == (1, 0, 3, 2)

    await lapse(store, b)
    await lapse(store, c)
    reply = cons(await read(store, consensus_id))

    # Only a is eligible now (active), and a approved: 1 >= floor(1/2)+1.
    assert (reply.status, reply.tally) == ("approved", (1, 0, 1, 1))
    stored = await redis_client.hgetall(k.consensus(TENANT, consensus_id))
    assert stored == reply.fields
    assert (stored["eligible"], stored["needed"]) == ("1", "1")
    assert await members(store, "approved") == {consensus_id}
    assert await members(store, "pending") == set()
    assert await members(store, "due") == set()


async def test_read_expires_a_request_at_its_deadline(store, redis_client):
    k = store.keys
    requester = await new_agent(store, "sdr")
    consensus_id = await opened(store, requester, timeout_ms=50)

    async def expired() -> Cons | None:
        reply = cons(await read(store, consensus_id))
        return reply if reply.status == "expired" else None

    reply = await eventually(expired, what=f"{consensus_id} to expire")

    assert reply.code == Reply.OK
    assert reply.fields["resolvedAt"] == reply.fields["expiresAt"]
    assert int(reply.fields["expiresAt"]) == int(reply.fields["createdAt"]) + 50
    assert await redis_client.hgetall(k.consensus(TENANT, consensus_id)) == reply.fields
    assert await members(store, "expired") == {consensus_id}
    assert await members(store, "pending") == set()
    assert await members(store, "due") == set()
    assert await redis_client.pexpiretime(k.consensus(TENANT, consensus_id)) == (
        int(reply.fields["expiresAt"]) + RETENTION_MS
    )


async def test_read_expires_rather_than_decides_a_request_past_its_deadline(store, redis_client):
    k = store.keys
    requester = await new_agent(store, "sdr")
    a, b, c = [await new_agent(store, name) for name in ("peer-a", "peer-b", "peer-c")]
    consensus_id = await opened(store, requester)
    await vote(store, consensus_id, a, "approve")
    past = (await clock(redis_client))[0] - 1000
    await redis_client.hset(k.consensus(TENANT, consensus_id), "expiresAt", str(past))
    # Eligibility shrank too, so the approval would now be enough; the deadline came first.
    await lapse(store, b)
    await lapse(store, c)

    reply = cons(await read(store, consensus_id))

    assert reply.status == "expired"
    assert reply.fields["resolvedAt"] == str(past)
    assert await members(store, "expired") == {consensus_id}


async def test_read_of_an_unknown_request_is_consensus_not_found_and_drops_its_list_entries(store, redis_client):
    k = store.keys
    gone = new_id("cons")
    kept = await opened(store, await new_agent(store, "sdr"))
    for status in ("all", "pending", "approved", "rejected", "expired"):
        await redis_client.zadd(k.consensus_list(TENANT, status), {gone: 1})
    await redis_client.zadd(k.consensus_due(TENANT), {gone: 1})

    assert await read(store, gone) == [Reply.CONSENSUS_NOT_FOUND]

    assert await members(store, "all") == {kept}
    assert await members(store, "pending") == {kept}
    assert await members(store, "due") == {kept}
    for status in ("approved", "rejected", "expired"):
        assert await members(store, status) == set()
    assert not await redis_client.exists(k.consensus(TENANT, gone), k.votes(TENANT, gone))


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


async def test_remove_twice_is_one_removal(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    await new_agent(store, "support")
    await granted(store, agent_id)
    contacts = await registry_contacts(store, agent_id)
    assert await remove(store, agent_id, contacts) == [Reply.OK, 1]
    once = await dump(redis_client, prefix)

    assert await remove(store, agent_id, contacts) == [Reply.AGENT_NOT_FOUND]

    assert await dump(redis_client, prefix) == once


async def test_consensus_request_twice_is_one_request(store, redis_client, prefix):
    requester = await new_agent(store, "sdr")
    await new_agent(store, "support")
    consensus_id = new_id("cons")
    first = await request(store, requester, consensus_id)
    once = await dump(redis_client, prefix)

    second = await request(store, requester, consensus_id)

    assert (first[0], second[0]) == (Reply.CREATED, Reply.OK)
    assert second[1:] == first[1:]
    assert await dump(redis_client, prefix) == once


async def test_vote_twice_is_one_vote(store, redis_client, prefix):
    requester, voter = await new_agent(store, "sdr"), await new_agent(store, "support")
    await new_agent(store, "retention")
    consensus_id = await opened(store, requester)
    first = cons(await vote(store, consensus_id, voter, "approve", "fine"))
    once = await dump(redis_client, prefix)

    second = cons(await vote(store, consensus_id, voter, "approve", "fine"))

    assert (first.code, second.code) == (Reply.CREATED, Reply.OK)
    assert (second.fields, second.votes, second.tally) == (first.fields, first.votes, first.tally)
    assert second.tally == (1, 0, 2, 2)
    assert list(second.votes) == [voter]
    assert await dump(redis_client, prefix) == once
