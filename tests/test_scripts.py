"""Every documented reply of every Lua script, on fakeredis and on a real Redis.

The tests call the scripts directly (``store.scripts.<name>``) with keys from the
key schema and check two things each time: the raw reply, and what Redis holds
afterwards. An agent is made inactive by moving its heartbeat back to the epoch
(ZADD score 1), never by sleeping. "Nothing written" is checked by comparing a
dump of every key under the test's own prefix before and after the call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service.keys import agent_id_for, new_id
from service.store import IDEMPOTENCY_MS, LEASE_FIELDS, MAX_CONSENSUS_TIMEOUT_MS, RETENTION_MS, Reply, Store
from tests.helpers import eventually, snapshot

TENANT = "acme"
CONTACT = "alice@example.com"
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
MAX_AGE_MS = MAX_CONSENSUS_TIMEOUT_MS + RETENTION_MS


# --- reading Redis -----------------------------------------------------------


async def clock(redis: Redis) -> tuple[int, int]:
    """Redis's time as (milliseconds, microseconds), as the scripts read it."""
    seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000, seconds * 1_000_000 + micros


async def dump(redis: Redis, prefix: str) -> dict[str, tuple[Any, ...]]:
    """Every key under ``prefix`` -> (type, contents, absolute expiry ms or -1)."""
    return await snapshot(redis, f"{prefix}:*", expiry=True)


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
        keys=[k.agent(TENANT, agent_id), k.agents(TENANT), k.heartbeats(TENANT)],
        args=[agent_id, name, role, metadata],
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


async def remove(store: Store, agent_id: str, contacts: list[str]) -> list:
    k = store.keys
    return await store.scripts.agent_remove(
        keys=[k.agent(TENANT, agent_id), k.agents(TENANT), k.heartbeats(TENANT), k.agent_leases(TENANT, agent_id)]
        + [k.lease(TENANT, c) for c in contacts],
        args=[agent_id, *contacts],
    )


async def acquire(
    store: Store,
    agent_id: str,
    contact: str = CONTACT,
    lease_id: str | None = None,
    intent: str = "",
    duration_ms: int = MINUTE_MS,
    extend_only: bool = False,
) -> list:
    k = store.keys
    lease_id = lease_id or new_id("lease")
    return await store.scripts.lease_acquire(
        keys=[
            k.agent(TENANT, agent_id),
            k.heartbeats(TENANT),
            k.lease(TENANT, contact),
            k.lease_id(TENANT, lease_id),
            k.agent_leases(TENANT, agent_id),
            k.fence(TENANT),
        ],
        args=[agent_id, lease_id, contact, intent, duration_ms, store.window_ms, "1" if extend_only else "0"],
    )


def lease_of(reply: list) -> dict[str, str]:
    """The lease of a CREATED/OK lease reply, as the hash fields it came from."""
    return dict(zip(LEASE_FIELDS, reply[1:], strict=True))


async def granted(store: Store, agent_id: str, contact: str = CONTACT, **kwargs: Any) -> dict[str, str]:
    reply = await acquire(store, agent_id, contact, **kwargs)
    assert reply[0] == Reply.CREATED, reply
    return lease_of(reply)


async def renew(store: Store, lease_id: str, agent_id: str, contact: str = CONTACT, duration_ms: int = MINUTE_MS):
    k = store.keys
    return await store.scripts.lease_renew(
        keys=[k.heartbeats(TENANT), k.lease(TENANT, contact), k.lease_id(TENANT, lease_id), k.agent_leases(TENANT, agent_id)],
        args=[lease_id, agent_id, contact, duration_ms, store.window_ms],
    )


async def release(store: Store, lease_id: str, contact: str = CONTACT, agent_id: str = "") -> list:
    k = store.keys
    return await store.scripts.lease_release(
        keys=[k.lease(TENANT, contact), k.lease_id(TENANT, lease_id)], args=[lease_id, agent_id]
    )


async def send_check(store: Store, agent_id: str, contact: str = CONTACT, token: str = "") -> list:
    k = store.keys
    return await store.scripts.lease_send_check(
        keys=[k.heartbeats(TENANT), k.lease(TENANT, contact)], args=[agent_id, token, store.window_ms]
    )


def consensus_keys(store: Store, consensus_id: str) -> list[str]:
    k = store.keys
    return [
        k.consensus(TENANT, consensus_id),
        k.votes(TENANT, consensus_id),
        k.heartbeats(TENANT),
        *(k.consensus_list(TENANT, s) for s in ("all", "pending", "approved", "rejected", "expired")),
        k.consensus_due(TENANT),
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
        args=[consensus_id, requester, action, contact, reason, timeout_ms, store.window_ms, RETENTION_MS, MAX_AGE_MS,
              "", IDEMPOTENCY_MS],
    )


async def opened(store: Store, requester: str, **kwargs: Any) -> str:
    """Open a consensus request and return its id."""
    reply = await request(store, requester, **kwargs)
    assert reply[0] == Reply.CREATED, reply
    return pairs(reply[1])["id"]


async def vote(store: Store, consensus_id: str, agent_id: str, choice: str, reason: str = "") -> list:
    return await store.scripts.consensus_vote(
        keys=consensus_keys(store, consensus_id) + [store.keys.agent(TENANT, agent_id)],
        args=[agent_id, choice, reason, store.window_ms, RETENTION_MS],
    )


async def read(store: Store, consensus_id: str) -> list:
    return await store.scripts.consensus_read(
        keys=consensus_keys(store, consensus_id), args=[consensus_id, store.window_ms, RETENTION_MS]
    )


@dataclass
class Cons:
    """A consensus reply: {code, {request hash}, {votes hash}, approve, reject, eligible, needed}."""

    code: int
    fields: dict[str, str]
    votes: dict[str, str]
    tally: tuple[int, int, int, int]

    @property
    def status(self) -> str:
        return self.fields["status"]


def cons(reply: list) -> Cons:
    assert len(reply) == 7, reply
    code, flat, votes, *tally = reply
    return Cons(code, pairs(flat), pairs(votes), tuple(tally))


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


async def test_remove_deletes_the_agent_and_only_the_leases_it_still_holds(store, redis_client):
    k = store.keys
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    await granted(store, a, "one@example.com")
    await granted(store, a, "two@example.com")
    # a held three@ once; it is now b's, but a's index (a hint) still names it.
    earlier = await granted(store, a, "three@example.com")
    assert (await release(store, earlier["id"], "three@example.com"))[0] == Reply.OK
    b_lease = await granted(store, b, "three@example.com")
    contacts = await redis_client.zrange(k.agent_leases(TENANT, a), 0, -1)
    assert sorted(contacts) == ["one@example.com", "three@example.com", "two@example.com"]

    assert await remove(store, a, contacts) == [Reply.OK, 2]

    assert not await redis_client.exists(k.lease(TENANT, "one@example.com"), k.lease(TENANT, "two@example.com"))
    assert await redis_client.hgetall(k.lease(TENANT, "three@example.com")) == b_lease
    assert not await redis_client.exists(k.agent(TENANT, a), k.agent_leases(TENANT, a))
    assert await redis_client.zscore(k.agents(TENANT), a) is None
    assert await redis_client.zscore(k.heartbeats(TENANT), a) is None
    # b is untouched.
    assert await redis_client.exists(k.agent(TENANT, b))
    assert await redis_client.zscore(k.heartbeats(TENANT), b) is not None
    assert await redis_client.zscore(k.agents(TENANT), b) is not None


async def test_remove_an_agent_without_leases(store, redis_client):
    agent_id = await new_agent(store, "sdr")

    assert await remove(store, agent_id, []) == [Reply.OK, 0]

    assert not await redis_client.exists(store.keys.agent(TENANT, agent_id))
    assert await redis_client.zscore(store.keys.heartbeats(TENANT), agent_id) is None


async def test_remove_an_unregistered_agent_is_agent_not_found(store, redis_client, prefix):
    await new_agent(store, "sdr")
    before = await dump(redis_client, prefix)

    assert await remove(store, agent_id_for(TENANT, "nobody"), []) == [Reply.AGENT_NOT_FOUND]

    assert await dump(redis_client, prefix) == before


async def test_remove_retries_when_the_index_holds_a_contact_not_passed_in(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    await granted(store, agent_id, "one@example.com")
    await granted(store, agent_id, "two@example.com")
    before = await dump(redis_client, prefix)

    assert await remove(store, agent_id, ["one@example.com"]) == [Reply.RETRY]

    assert await dump(redis_client, prefix) == before


# --- lease_acquire -----------------------------------------------------------


async def test_acquire_grants_a_free_contact(store, redis_client):
    k, agent_id = store.keys, await new_agent(store, "sdr")
    lease_id = new_id("lease")
    before_ms, before_us = await clock(redis_client)

    reply = await acquire(store, agent_id, lease_id=lease_id, intent="outreach", duration_ms=MINUTE_MS)

    after_ms, _ = await clock(redis_client)
    assert reply[0] == Reply.CREATED
    lease = lease_of(reply)
    lease_key = k.lease(TENANT, CONTACT)
    assert await redis_client.hgetall(lease_key) == lease
    assert (lease["id"], lease["agentId"], lease["agentName"], lease["intent"]) == (lease_id, agent_id, "sdr", "outreach")
    acquired, expires = int(lease["acquiredAt"]), int(lease["expiresAt"])
    assert before_ms <= acquired <= after_ms
    assert expires == acquired + MINUTE_MS
    assert await redis_client.pexpiretime(lease_key) == expires
    assert 0 < await redis_client.pttl(lease_key) <= MINUTE_MS
    # The id pointer and the agent's index expire with the lease.
    pointer = k.lease_id(TENANT, lease_id)
    assert await redis_client.get(pointer) == CONTACT
    assert await redis_client.pexpiretime(pointer) == expires
    index = k.agent_leases(TENANT, agent_id)
    assert await redis_client.zrange(index, 0, -1, withscores=True) == [(CONTACT, expires)]
    assert await redis_client.pexpiretime(index) == expires
    token = int(lease["fencingToken"])
    assert token >= before_us
    assert await redis_client.get(k.fence(TENANT)) == lease["fencingToken"]


async def test_acquire_again_by_the_holder_with_its_lease_id_extends_it(store, redis_client):
    k, agent_id = store.keys, await new_agent(store, "sdr")
    first = await granted(store, agent_id, intent="outreach", duration_ms=MINUTE_MS)

    reply = await acquire(store, agent_id, lease_id=first["id"], intent="", duration_ms=2 * MINUTE_MS)

    assert reply[0] == Reply.OK
    lease = lease_of(reply)
    assert await redis_client.hgetall(k.lease(TENANT, CONTACT)) == lease
    for field in ("id", "agentId", "agentName", "acquiredAt", "fencingToken"):
        assert lease[field] == first[field], field
    assert lease["intent"] == "outreach"  # '' keeps the current intent
    expires = int(lease["expiresAt"])
    assert expires > int(first["expiresAt"])
    assert await redis_client.pexpiretime(k.lease(TENANT, CONTACT)) == expires
    assert await redis_client.pexpiretime(k.lease_id(TENANT, first["id"])) == expires
    assert await redis_client.zscore(k.agent_leases(TENANT, agent_id), CONTACT) == expires
    assert await redis_client.get(k.fence(TENANT)) == first["fencingToken"]

    # A given intent replaces the current one.
    assert lease_of(await acquire(store, agent_id, lease_id=first["id"], intent="renewal"))["intent"] == "renewal"


async def test_acquire_by_the_holder_with_a_fresh_id_names_the_held_lease(store, redis_client, prefix):
    k, agent_id = store.keys, await new_agent(store, "sdr")
    lease = await granted(store, agent_id)
    before = await dump(redis_client, prefix)
    fresh = new_id("lease")

    assert await acquire(store, agent_id, lease_id=fresh) == [Reply.HELD_BY_CALLER, lease["id"]]

    assert await dump(redis_client, prefix) == before
    assert not await redis_client.exists(k.lease_id(TENANT, fresh))


async def test_acquire_extend_only_with_the_held_id_extends(store, redis_client):
    agent_id = await new_agent(store, "sdr")
    lease = await granted(store, agent_id)

    reply = await acquire(store, agent_id, lease_id=lease["id"], duration_ms=2 * MINUTE_MS, extend_only=True)

    assert reply[0] == Reply.OK
    assert lease_of(reply)["id"] == lease["id"]
    assert int(lease_of(reply)["expiresAt"]) > int(lease["expiresAt"])


async def test_acquire_extend_only_of_a_lease_no_longer_held_is_retry(store, redis_client, prefix):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    gone = new_id("lease")
    before = await dump(redis_client, prefix)

    # The contact is free: extend_only never grants.
    assert await acquire(store, a, lease_id=gone, extend_only=True) == [Reply.RETRY]
    assert await dump(redis_client, prefix) == before

    # The contact is another active agent's: still RETRY, and nothing written.
    await granted(store, b)
    before = await dump(redis_client, prefix)
    assert await acquire(store, a, lease_id=gone, extend_only=True) == [Reply.RETRY]
    assert await dump(redis_client, prefix) == before


async def test_acquire_of_a_contact_held_by_an_active_agent_is_lease_conflict(store, redis_client, prefix):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    held = await granted(store, a, intent="outreach")
    before = await dump(redis_client, prefix)

    reply = await acquire(store, b, intent="ticket")

    assert reply == [Reply.LEASE_CONFLICT, a, "sdr", "outreach", held["expiresAt"]]
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
    # The lease is wholly b's: nothing of a's lease (its intent) is left in the hash.
    assert await redis_client.hgetall(k.lease(TENANT, CONTACT)) == new
    assert (new["agentId"], new["agentName"], new["intent"]) == (b, "support", "")
    assert await redis_client.get(k.lease_id(TENANT, new["id"])) == CONTACT
    assert await redis_client.get(k.fence(TENANT)) == new["fencingToken"]


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


async def test_fencing_tokens_keep_growing_after_redis_loses_the_fence(store, redis_client):
    agent_id = await new_agent(store, "sdr")
    tokens = [int((await granted(store, agent_id, f"c{i}@example.com"))["fencingToken"]) for i in range(3)]

    # Redis restarted empty: the last token granted is forgotten.
    await redis_client.delete(store.keys.fence(TENANT))
    _, before_us = await clock(redis_client)
    token = int((await granted(store, agent_id, "after@example.com"))["fencingToken"])

    assert token > max(tokens)
    assert token >= before_us


# --- lease_renew -------------------------------------------------------------


async def test_renew_moves_the_expiry_and_keeps_id_and_token(store, redis_client):
    k, agent_id = store.keys, await new_agent(store, "sdr")
    lease = await granted(store, agent_id, duration_ms=MINUTE_MS)
    before, _ = await clock(redis_client)

    reply = await renew(store, lease["id"], agent_id, duration_ms=10 * MINUTE_MS)

    after, _ = await clock(redis_client)
    assert reply[0] == Reply.OK
    renewed = lease_of(reply)
    assert await redis_client.hgetall(k.lease(TENANT, CONTACT)) == renewed
    assert {f: v for f, v in renewed.items() if f != "expiresAt"} == {f: v for f, v in lease.items() if f != "expiresAt"}
    expires = int(renewed["expiresAt"])
    assert before + 10 * MINUTE_MS <= expires <= after + 10 * MINUTE_MS
    assert await redis_client.pexpiretime(k.lease(TENANT, CONTACT)) == expires
    assert await redis_client.pexpiretime(k.lease_id(TENANT, lease["id"])) == expires
    assert await redis_client.zscore(k.agent_leases(TENANT, agent_id), CONTACT) == expires
    assert await redis_client.pexpiretime(k.agent_leases(TENANT, agent_id)) == expires


async def test_renew_of_another_lease_id_is_lease_not_found(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    await granted(store, agent_id)
    before = await dump(redis_client, prefix)

    # The contact is leased, but not under this id (expired, released or taken over).
    assert await renew(store, new_id("lease"), agent_id) == [Reply.LEASE_NOT_FOUND]
    # No lease on the contact at all.
    assert await renew(store, new_id("lease"), agent_id, "free@example.com") == [Reply.LEASE_NOT_FOUND]

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


async def test_release_by_the_holder_deletes_the_lease_and_its_pointer(store, redis_client):
    k, agent_id = store.keys, await new_agent(store, "sdr")
    lease = await granted(store, agent_id)

    reply = await release(store, lease["id"], agent_id=agent_id)
    assert reply[0] == Reply.OK and int(lease["acquiredAt"]) <= reply[1] < int(lease["expiresAt"])

    assert not await redis_client.exists(k.lease(TENANT, CONTACT), k.lease_id(TENANT, lease["id"]))
    # Released twice: the second finds nothing.
    assert await release(store, lease["id"], agent_id=agent_id) == [Reply.LEASE_NOT_FOUND]


async def test_release_of_an_unknown_lease_id_is_lease_not_found(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    await granted(store, agent_id)
    before = await dump(redis_client, prefix)

    assert await release(store, new_id("lease"), agent_id=agent_id) == [Reply.LEASE_NOT_FOUND]
    assert await release(store, new_id("lease"), "free@example.com") == [Reply.LEASE_NOT_FOUND]

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

    assert not await redis_client.exists(k.lease(TENANT, CONTACT), k.lease_id(TENANT, lease["id"]))


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

    assert await send_check(store, b) == [Reply.LEASE_CONFLICT, a, "sdr", "outreach", lease["expiresAt"]]

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
        Reply.STALE_FENCING_TOKEN, a, "sdr", "outreach", lease["expiresAt"],
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
    assert reply.code == Reply.OK
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
    created = int((await redis_client.hget(k.consensus(TENANT, consensus_id), "createdAt")))

    # eligible 4 -> needed floor(4/2)+1 = 3
    assert cons(await vote(store, consensus_id, peers[0], "approve")).tally == (1, 0, 4, 3)
    reply = cons(await vote(store, consensus_id, peers[1], "reject"))
    assert (reply.status, reply.tally) == ("pending", (1, 1, 4, 3))
    assert cons(await vote(store, consensus_id, peers[2], "approve")).status == "pending"
    before, _ = await clock(redis_client)
    reply = cons(await vote(store, consensus_id, peers[3], "approve"))
    after, _ = await clock(redis_client)

    assert reply.code == Reply.OK
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

    assert again.code == Reply.OK
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
    lease_id = new_id("lease")
    first = await acquire(store, agent_id, lease_id=lease_id, intent="outreach")
    once = await dump(redis_client, prefix)

    second = await acquire(store, agent_id, lease_id=lease_id, intent="outreach")

    assert (first[0], second[0]) == (Reply.CREATED, Reply.OK)
    assert {f: v for f, v in lease_of(second).items() if f != "expiresAt"} == {
        f: v for f, v in lease_of(first).items() if f != "expiresAt"
    }
    twice = await dump(redis_client, prefix)
    assert without_times(twice) == without_times(once)
    assert twice[store.keys.fence(TENANT)] == once[store.keys.fence(TENANT)]


async def test_renew_twice_is_one_renewal(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    lease = await granted(store, agent_id)
    first = await renew(store, lease["id"], agent_id, duration_ms=5 * MINUTE_MS)
    once = await dump(redis_client, prefix)

    second = await renew(store, lease["id"], agent_id, duration_ms=5 * MINUTE_MS)

    assert (first[0], second[0]) == (Reply.OK, Reply.OK)
    assert lease_of(second)["fencingToken"] == lease["fencingToken"]
    assert without_times(await dump(redis_client, prefix)) == without_times(once)


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

    assert second.code == Reply.OK
    assert (second.fields, second.votes, second.tally) == (first.fields, first.votes, first.tally)
    assert second.tally == (1, 0, 2, 2)
    assert list(second.votes) == [voter]
    assert await dump(redis_client, prefix) == once
