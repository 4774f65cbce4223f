"""The agent credential in the scripts: each script that acts as an agent
(agent_heartbeat, lease_acquire, lease_renew, lease_release, lease_send_check,
consensus_request, consensus_vote, rate_limit) refuses a digest that is not the
agent's current one with {BAD_CREDENTIAL}, before anything is written; '' (an API
key, whose role the service has checked) where the script allows one; the digest
agent_register and agent_credential store; and the actor every event names
(the agent id / 'agent', the key id / its role, 'concord' / 'service' for what a
read settles). How the tests work: scripts_support.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from redis.exceptions import ResponseError

from concord.server.store.keys import agent_id_for
from concord.server.store.replies import Reply
from concord.server.store.scripts import LIB, sources
from tests.lua.scripts_support import (
    FORGED,
    KEY_ID,
    TENANT,
    acquire,
    actors,
    clock,
    cons,
    credential,
    dump,
    events,
    granted,
    heartbeat,
    lapse,
    new_agent,
    opened,
    read,
    register,
    registry_contacts,
    release,
    remove,
    renew,
    request,
    rotate,
    send_check,
    take_token,
    vote,
)

FREE = "free@example.com"
NEW = "c" * 64  # a digest the agent is given anew (rotated, or registered again)


@dataclass
class Scene:
    """sdr holds a lease on CONTACT and asked for a pending consensus; peer and third
    may vote on it (two eligible: one vote does not decide it)."""

    sdr: str
    peer: str
    lease_id: str
    pending: str


async def scene(store) -> Scene:
    sdr, peer = await new_agent(store, "sdr"), await new_agent(store, "peer")
    await new_agent(store, "third")
    lease = await granted(store, sdr)
    return Scene(sdr, peer, lease["id"], await opened(store, sdr))


Act = Callable[[Any, Scene, str, str | None], Awaitable[list]]


@dataclass(frozen=True)
class Acting:
    """A call of ``script`` as the agent ``who`` names in the scene, with a digest
    (None: that agent's own); with its own credential the call goes through."""

    script: str
    who: str  # "sdr" or "peer"
    act: Act


ACTING = [
    Acting("agent_heartbeat", "sdr", lambda st, s, a, c: heartbeat(st, a, as_credential=c)),
    Acting("lease_acquire", "sdr", lambda st, s, a, c: acquire(st, a, FREE, as_credential=c)),
    Acting("lease_renew", "sdr", lambda st, s, a, c: renew(st, s.lease_id, a, as_credential=c)),
    Acting("lease_release", "sdr", lambda st, s, a, c: release(st, s.lease_id, agent_id=a, as_credential=c)),
    Acting(
        "lease_send_check",
        "sdr",
        lambda st, s, a, c: send_check(st, a, as_credential=credential(a) if c is None else c),
    ),
    Acting("consensus_request", "sdr", lambda st, s, a, c: request(st, a, as_credential=c)),
    Acting("consensus_vote", "peer", lambda st, s, a, c: vote(st, s.pending, a, "approve", as_credential=c)),
    Acting("rate_limit", "sdr", lambda st, s, a, c: take_token(st, a, as_credential=c)),
    # A member's read of a request: proven in the script that reads (a key's: '').
    Acting("consensus_read", "peer", lambda st, s, a, c: read(st, s.pending, a, credential(a) if c is None else c)),
]
by_acting = pytest.mark.parametrize("acting", ACTING, ids=[a.script for a in ACTING])


def test_every_script_that_acts_as_an_agent_has_its_case():
    """A script whose header takes an agent's credential digest is one of ACTING (agent_register
    and agent_credential take a new one to store: their tests are below)."""
    takes = {
        name
        for name, source in sources().items()
        if name != LIB and "credential" in source.args and name not in ("agent_register", "agent_credential")
    }
    assert takes == {a.script for a in ACTING}


@by_acting
async def test_the_agents_own_credential_is_accepted(acting: Acting, store):
    """The control of the refusals below: the same call with the agent's current digest goes through."""
    s = await scene(store)

    reply = await acting.act(store, s, getattr(s, acting.who), None)

    assert reply[0] in (Reply.OK, Reply.CREATED), reply


# Each way a digest fails to be the agent's current one: (scene, agent it acts as) -> (agent id, digest).
async def _forged(store, s: Scene, who: str) -> tuple[str, str]:
    return who, FORGED


async def _another_agents(store, s: Scene, who: str) -> tuple[str, str]:
    other = s.peer if who == s.sdr else s.sdr
    return who, credential(other)


async def _unregistered(store, s: Scene, who: str) -> tuple[str, str]:
    nobody = agent_id_for(TENANT, "nobody")
    return nobody, credential(nobody)


async def _rotated_away(store, s: Scene, who: str) -> tuple[str, str]:
    assert (await rotate(store, who, NEW))[0] == Reply.OK
    return who, credential(who)


async def _replaced_by_a_registration(store, s: Scene, who: str) -> tuple[str, str]:
    name = "sdr" if who == s.sdr else "peer"
    assert (await register(store, name, new_credential=NEW))[0] == Reply.OK
    return who, credential(who)


async def _deregistered(store, s: Scene, who: str) -> tuple[str, str]:
    assert (await remove(store, who, await registry_contacts(store, who)))[0] == Reply.OK
    return who, credential(who)


BAD = {
    "forged": _forged,
    "another agent's": _another_agents,
    "unregistered agent": _unregistered,
    "rotated away": _rotated_away,
    "replaced by a registration": _replaced_by_a_registration,
    "deregistered": _deregistered,
}


@by_acting
@pytest.mark.parametrize("way", BAD)
async def test_a_credential_that_is_not_the_agents_current_one_is_refused_with_nothing_written(
    acting: Acting, way: str, store, redis_client, prefix
):
    s = await scene(store)
    agent_id, digest = await BAD[way](store, s, getattr(s, acting.who))
    before = await dump(redis_client, prefix)

    assert await acting.act(store, s, agent_id, digest) == [Reply.BAD_CREDENTIAL]

    assert await dump(redis_client, prefix) == before


@by_acting
async def test_after_a_rotation_the_new_credential_is_accepted(acting: Acting, store):
    s = await scene(store)
    who = getattr(s, acting.who)
    assert (await rotate(store, who, NEW))[0] == Reply.OK

    reply = await acting.act(store, s, who, NEW)

    assert reply[0] in (Reply.OK, Reply.CREATED), reply


# --- '' : an API key, where the script takes one ----------------------------

AGENT_ONLY = [
    a for a in ACTING if a.script not in ("lease_release", "lease_send_check", "rate_limit", "consensus_read")
]


@pytest.mark.parametrize("acting", AGENT_ONLY, ids=[a.script for a in AGENT_ONLY])
async def test_an_api_key_never_acts_as_an_agent(acting: Acting, store, redis_client, prefix):
    """'' (an API key) in a script only an agent's own credential may run: refused, nothing
    written. The service refuses keys there first (403 insufficient_scope); the script
    does not rely on it."""
    s = await scene(store)
    before = await dump(redis_client, prefix)

    assert await acting.act(store, s, getattr(s, acting.who), "") == [Reply.BAD_CREDENTIAL]

    assert await dump(redis_client, prefix) == before


async def test_send_check_by_a_gate_key_needs_no_credential_and_writes_nothing(store, redis_client, prefix):
    """A gate key asks for any agent of the tenant: '' is not checked against the agent's digest."""
    s = await scene(store)
    before = await dump(redis_client, prefix)

    assert await send_check(store, s.sdr) == [Reply.OK]
    assert await send_check(store, s.peer, FREE) == [Reply.OK]
    assert (await send_check(store, s.peer))[0] == Reply.LEASE_CONFLICT  # the answers are the agent's, as ever
    assert await send_check(store, agent_id_for(TENANT, "nobody")) == [Reply.AGENT_NOT_FOUND]

    assert await dump(redis_client, prefix) == before


async def test_rate_limit_for_a_key_takes_from_the_tenants_bucket_only(store, redis_client):
    k = store.keys
    s = await scene(store)

    assert await take_token(store, as_credential="") == [0]

    assert float(await redis_client.hget(k.rate_bucket(TENANT), "tokens")) == pytest.approx(4, abs=0.1)
    assert not await redis_client.exists(k.rate_bucket(TENANT, s.sdr))
    # With the agent's own credential, from both buckets.
    assert await take_token(store, s.sdr) == [0]
    assert float(await redis_client.hget(k.rate_bucket(TENANT), "tokens")) == pytest.approx(3, abs=0.1)
    assert float(await redis_client.hget(k.rate_bucket(TENANT, s.sdr), "tokens")) == pytest.approx(4, abs=0.1)


async def test_a_forged_credential_takes_no_token_even_from_an_empty_bucket(store, redis_client, prefix):
    """The credential is checked before the buckets: a forger learns nothing of them (no RATE_LIMITED)."""
    s = await scene(store)
    for _ in range(5):
        assert await take_token(store, s.sdr) == [0]
    assert (await take_token(store, s.sdr))[0] == Reply.RATE_LIMITED
    before = await dump(redis_client, prefix)

    assert await take_token(store, s.sdr, as_credential=FORGED) == [Reply.BAD_CREDENTIAL]

    assert await dump(redis_client, prefix) == before


# --- agent_register: the digest it stores ------------------------------------


async def test_a_refused_registration_keeps_the_agents_credential(store, redis_client, prefix):
    """ROLE_NOT_ALLOWED writes nothing: the agent's current credential still works."""
    k, agent_id = store.keys, await new_agent(store, "sdr")
    before = await dump(redis_client, prefix)

    assert await register(store, "sdr", allowed_roles="support", new_credential=NEW, key_role="enroll") == [
        Reply.ROLE_NOT_ALLOWED,
        "general",
    ]

    assert await dump(redis_client, prefix) == before
    assert await redis_client.hget(k.agent(TENANT, agent_id), "credential") == credential(agent_id)
    assert (await heartbeat(store, agent_id))[0] == Reply.OK


# --- agent_credential --------------------------------------------------------


async def test_rotate_replaces_the_credential_and_records_who_did_it(store, redis_client):
    k, agent_id = store.keys, await new_agent(store, "sdr")
    agent_before = await redis_client.hgetall(k.agent(TENANT, agent_id))
    before_ms, _ = await clock(redis_client)

    code, rotated_at, kind = await rotate(store, agent_id, NEW)

    after_ms, _ = await clock(redis_client)
    assert code == Reply.OK and kind == "agent"
    assert before_ms <= rotated_at <= after_ms
    # Only the digest changes.
    assert await redis_client.hgetall(k.agent(TENANT, agent_id)) == {**agent_before, "credential": NEW}
    ((_, last),) = await redis_client.xrevrange(k.events(TENANT), count=1)
    assert last == {
        "type": "agent.credential_rotated",
        "actor": KEY_ID,
        "actorRole": "admin",
        "agentId": agent_id,
        "agentName": "sdr",
        "agentRole": "general",
    }
    # The old credential is refused at once; the new one acts.
    assert await heartbeat(store, agent_id) == [Reply.BAD_CREDENTIAL]
    assert (await heartbeat(store, agent_id, as_credential=NEW))[0] == Reply.OK
    # Again: each rotation replaces the one before.
    assert (await rotate(store, agent_id, "d" * 64))[0] == Reply.OK
    assert await heartbeat(store, agent_id, as_credential=NEW) == [Reply.BAD_CREDENTIAL]


async def test_rotate_by_an_enroll_key_for_the_agents_role(store, redis_client):
    k = store.keys
    assert (await register(store, "sdr", "support"))[0] == Reply.CREATED
    agent_id = agent_id_for(TENANT, "sdr")

    assert (await rotate(store, agent_id, NEW, allowed_roles="outbound\nsupport", key_role="enroll"))[0] == Reply.OK

    assert await redis_client.hget(k.agent(TENANT, agent_id), "credential") == NEW
    ((_, last),) = await redis_client.xrevrange(k.events(TENANT), count=1)
    assert (last["type"], last["actor"], last["actorRole"]) == ("agent.credential_rotated", KEY_ID, "enroll")


async def test_rotate_by_an_enroll_key_for_other_roles_is_role_not_allowed(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    before = await dump(redis_client, prefix)

    assert await rotate(store, agent_id, NEW, allowed_roles="support", key_role="enroll") == [
        Reply.ROLE_NOT_ALLOWED,
        "general",
    ]

    assert await dump(redis_client, prefix) == before
    assert (await heartbeat(store, agent_id))[0] == Reply.OK  # its credential still works


async def test_rotate_of_an_unregistered_agent_is_agent_not_found(store, redis_client, prefix):
    await new_agent(store, "sdr")
    before = await dump(redis_client, prefix)

    assert await rotate(store, agent_id_for(TENANT, "nobody"), NEW) == [Reply.AGENT_NOT_FOUND]

    assert await dump(redis_client, prefix) == before  # no hash made for it, no event


@pytest.mark.parametrize("planted", ["agent_key", "events_key"])
async def test_rotate_with_a_key_of_the_wrong_type_is_wrongtype_with_nothing_written(
    planted: str, store, redis_client, prefix
):
    k, agent_id = store.keys, await new_agent(store, "sdr")
    key = k.agent(TENANT, agent_id) if planted == "agent_key" else k.events(TENANT)
    await redis_client.delete(key)
    await redis_client.set(key, "planted")
    before = await dump(redis_client, prefix)

    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await rotate(store, agent_id, NEW)

    assert await dump(redis_client, prefix) == before


# --- the actor of every event ------------------------------------------------


async def test_registering_and_removing_are_recorded_as_the_keys(store):
    agent_id = await new_agent(store, "sdr")
    assert (await register(store, "sdr", "support", allowed_roles="support", key_role="enroll"))[0] == Reply.OK
    lease = await granted(store, agent_id)

    assert await remove(store, agent_id, await registry_contacts(store, agent_id)) == [Reply.OK, 1]

    entries = await events(store)
    assert actors(entries) == [
        ("agent.registered", KEY_ID, "admin"),
        ("agent.registered", KEY_ID, "enroll"),
        ("lease.acquired", agent_id, "agent"),
        ("lease.released", KEY_ID, "admin"),
        ("agent.removed", KEY_ID, "admin"),
    ]
    assert (entries[3]["reason"], entries[3]["fencingToken"]) == ("agent_removed", lease["fencingToken"])


async def test_leases_are_recorded_as_the_agents_that_took_them(store):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    old = await granted(store, a)
    assert (await acquire(store, a))[0] == Reply.OK  # an extension
    assert (await renew(store, old["id"], a))[0] == Reply.OK
    await lapse(store, a)
    taken = await granted(store, b)  # a takeover
    assert (await release(store, taken["id"], agent_id=b))[0] == Reply.OK

    assert actors((await events(store))[2:]) == [
        ("lease.acquired", a, "agent"),
        ("lease.renewed", a, "agent"),
        ("lease.renewed", a, "agent"),
        ("lease.taken_over", b, "agent"),
        ("lease.released", b, "agent"),
    ]


async def test_consensus_is_recorded_as_the_agents_and_a_vote_that_decides_as_the_voters(store):
    requester = await new_agent(store, "sdr")
    a, b = await new_agent(store, "peer-a"), await new_agent(store, "peer-b")
    consensus_id = await opened(store, requester)
    await vote(store, consensus_id, a, "approve")

    assert cons(await vote(store, consensus_id, b, "approve")).status == "approved"

    assert actors((await events(store))[3:]) == [
        ("consensus.requested", requester, "agent"),
        ("consensus.voted", a, "agent"),
        ("consensus.voted", b, "agent"),
        ("consensus.resolved", b, "agent"),
    ]


async def test_what_a_read_settles_is_recorded_as_the_services(store, redis_client):
    """A read decides only what the clock or lapsed voters decide: no caller is the actor."""
    k = store.keys
    requester = await new_agent(store, "sdr")
    a, b = await new_agent(store, "peer-a"), await new_agent(store, "peer-b")
    shrunk, overdue = await opened(store, requester), await opened(store, requester)
    await vote(store, shrunk, a, "approve")
    await lapse(store, b)
    past = (await clock(redis_client))[0] - 1000
    await redis_client.hset(k.consensus(TENANT, overdue), "expiresAt", str(past))
    seen = len(await events(store))

    assert cons(await read(store, shrunk)).status == "approved"
    assert cons(await read(store, overdue)).status == "expired"

    assert actors((await events(store))[seen:]) == [
        ("consensus.resolved", "concord", "service"),
        ("consensus.expired", "concord", "service"),
    ]


async def test_every_event_names_an_actor_and_its_role(store, redis_client):
    """Each event every script can write, in one run: none without its actor."""
    s = await scene(store)
    await heartbeat(store, s.sdr)
    await acquire(store, s.sdr)
    await renew(store, s.lease_id, s.sdr)
    assert (await rotate(store, s.peer, NEW))[0] == Reply.OK
    await vote(store, s.pending, s.peer, "approve", as_credential=NEW)
    third = agent_id_for(TENANT, "third")
    assert cons(await vote(store, s.pending, third, "approve")).status == "approved"
    overdue = await opened(store, s.sdr)
    past = (await clock(redis_client))[0] - 1000
    await redis_client.hset(store.keys.consensus(TENANT, overdue), "expiresAt", str(past))
    assert cons(await read(store, overdue)).status == "expired"
    await lapse(store, s.sdr)
    taken = await granted(store, s.peer, as_credential=NEW)
    await release(store, taken["id"])  # forced
    await granted(store, s.peer, FREE, as_credential=NEW)
    await remove(store, s.peer, await registry_contacts(store, s.peer))

    entries = await events(store)
    kinds = {e["type"] for e in entries}
    assert kinds == {
        "agent.registered",
        "agent.credential_rotated",
        "agent.removed",
        "lease.acquired",
        "lease.renewed",
        "lease.taken_over",
        "lease.released",
        "consensus.requested",
        "consensus.voted",
        "consensus.resolved",
        "consensus.expired",
    }
    for entry in entries:
        assert entry["actor"] and entry["actorRole"] in ("agent", "admin", "service"), entry
        if entry["actorRole"] == "agent" and entry["type"] != "consensus.resolved":
            # An agent acts only as itself: the event's agent (a takeover's new holder).
            assert entry["actor"] == entry["agentId"], entry
        elif entry["actorRole"] == "agent":
            assert entry["actor"] == third, entry  # the vote that decided it
        else:
            assert entry["actor"] == (KEY_ID if entry["actorRole"] == "admin" else "concord"), entry
    assert [e["reason"] for e in entries if e["type"] == "lease.released"] == ["forced", "agent_removed"]
