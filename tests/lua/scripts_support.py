"""What the tests of the Lua scripts share: constants, readers of Redis, and each
script run with the keys and arguments the store passes it.

The tests (test_agent_scripts.py, test_lease_scripts.py, test_lease_fencing_scripts.py,
test_consensus_scripts.py, test_credential_scripts.py) check every documented reply of
every Lua script, on fakeredis and on a real Redis; lua/rate_limit.lua's buckets are in
tests/api/test_rate_limits.py, its credential check in test_credential_scripts.py.

Each agent is registered with the digest ``credential(agent_id)`` and every helper
that acts as an agent passes it, unless told ``as_credential``: another digest, or
'' for an API key (whose role the service has checked before calling the script).

The tests call the scripts directly (``store.scripts.<name>``) with keys from the
key schema and check two things each time: the raw reply, and what Redis holds
afterwards. An agent is made inactive by moving its heartbeat back to the epoch
(ZADD score 1), never by sleeping. "Nothing written" is checked by comparing a
dump of every key under the test's own prefix before and after the call.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from concord.server.store import Store
from concord.server.store.consensus import IDEMPOTENCY_MS, MAX_CONSENSUS_TIMEOUT_MS, RETENTION_MS
from concord.server.store.keys import agent_id_for, agent_tag, new_id, parse_lease_id
from concord.server.store.keys import lease_id as lease_id_of
from concord.server.store.replies import Reply
from tests.support.helpers import snapshot

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


async def events(store: Store) -> list[dict[str, str]]:
    """The tenant's event stream, oldest first: each entry's fields."""
    return [fields for _, fields in await store.redis.xrange(store.keys.events(TENANT))]


def actors(entries: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    """(type, actor, actorRole) of each event."""
    return [(e["type"], e.get("actor"), e.get("actorRole")) for e in entries]


# --- running the scripts -----------------------------------------------------

KEY_ID = "cfg-1"  # the API key the scripts are told registers, rotates, removes and force-releases
FORGED = hashlib.sha256(b"a credential nobody was given").hexdigest()


def credential(agent_id: str) -> str:
    """The credential digest these tests register each agent with, and act as it with
    (the store passes the SHA-256 hex of a random credential; any digest will do here)."""
    return hashlib.sha256(f"credential of {agent_id}".encode()).hexdigest()


def digest(agent_id: str, as_credential: str | None) -> str:
    """What an acting helper passes: ``as_credential``, or the agent's own digest."""
    return credential(agent_id) if as_credential is None else as_credential


async def register(
    store: Store,
    name: str,
    role: str = "",
    metadata: str = "",
    allowed_roles: str = "",
    new_credential: str | None = None,
    key_role: str = "admin",
    kind: str = "agent",
) -> list:
    """agent_register of a member of ``kind`` by the key KEY_ID (of ``key_role``),
    storing ``new_credential`` (by default the agent's ``credential(agent_id)``)."""
    agent_id = agent_id_for(TENANT, name)
    k = store.keys
    return await store.scripts.agent_register(
        keys=[
            k.agent(TENANT, agent_id),
            k.agents(TENANT),
            k.heartbeats(TENANT),
            k.events(TENANT),
            k.active_since(TENANT),
            k.quotas(TENANT),
            k.humans(TENANT),
            k.agent_roles(TENANT),
        ],
        args=[
            agent_id,
            name,
            role,
            metadata,
            EVENTS_MAX,
            allowed_roles,
            digest(agent_id, new_credential),
            KEY_ID,
            key_role,
            store.ctx.window_ms,
            store.ctx.quotas.agents,
            kind,
        ],
    )


async def rotate(
    store: Store,
    agent_id: str,
    new_credential: str,
    allowed_roles: str = "",
    key_role: str = "admin",
    human_credential: str = "",
) -> list:
    """agent_credential by the key KEY_ID (of ``key_role``): ``new_credential`` replaces
    the agent's (``human_credential`` a human's)."""
    k = store.keys
    return await store.scripts.agent_credential(
        keys=[k.agent(TENANT, agent_id), k.events(TENANT)],
        args=[
            agent_id,
            new_credential,
            allowed_roles,
            EVENTS_MAX,
            KEY_ID,
            key_role,
            human_credential or new_credential,
        ],
    )


async def new_agent(store: Store, name: str) -> str:
    """Register ``name`` (active now) and return its id."""
    assert (await register(store, name))[0] == Reply.CREATED
    return agent_id_for(TENANT, name)


async def lapse(store: Store, agent_id: str) -> None:
    """Make a registered agent inactive: its last heartbeat moves back to the epoch.
    The lapse mark goes too, so the next consensus script sweeps every lapsed agent
    (a lapse in time is swept as it happens; one made by hand is behind the mark)."""
    assert await store.redis.zadd(store.keys.heartbeats(TENANT), {agent_id: 1}, xx=True, ch=True) == 1
    await store.redis.delete(store.keys.lapse_mark(TENANT))


async def heartbeat(store: Store, agent_id: str, as_credential: str | None = None) -> list:
    k = store.keys
    return await store.scripts.agent_heartbeat(
        keys=[k.heartbeats(TENANT), k.agent(TENANT, agent_id), k.active_since(TENANT)],
        args=[agent_id, digest(agent_id, as_credential), store.ctx.window_ms],
    )


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
            k.active_since(TENANT),
            k.humans(TENANT),
            k.agent_roles(TENANT),
        ]
        + [k.lease(TENANT, c) for c in contacts],
        args=[agent_id, EVENTS_MAX, KEY_ID, *contacts],
    )


async def acquire(
    store: Store,
    agent_id: str,
    contact: str = CONTACT,
    intent: str = "",
    duration_ms: int = MINUTE_MS,
    as_credential: str | None = None,
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
            k.quotas(TENANT),
            k.suppressions(TENANT),
        ],
        args=[
            agent_id,
            contact,
            intent,
            duration_ms,
            store.ctx.window_ms,
            EVENTS_MAX,
            digest(agent_id, as_credential),
            store.ctx.quotas.leases_per_agent,
        ],
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


async def renew(
    store: Store,
    lease_id: str,
    agent_id: str,
    contact: str = CONTACT,
    duration_ms: int = MINUTE_MS,
    as_credential: str | None = None,
) -> list:
    """lease_renew with the keys the store passes: the registry of the tag, and the token, in the lease id."""
    k = store.keys
    tag, token = parse_lease_id(lease_id)
    return await store.scripts.lease_renew(
        keys=[
            k.heartbeats(TENANT),
            k.lease(TENANT, contact),
            k.lease_registry(TENANT, tag),
            k.events(TENANT),
            k.agent(TENANT, agent_id),
        ],
        args=[token, agent_id, contact, duration_ms, store.ctx.window_ms, EVENTS_MAX, digest(agent_id, as_credential)],
    )


async def release(
    store: Store, lease_id: str, contact: str = CONTACT, agent_id: str = "", as_credential: str | None = None
) -> list:
    """lease_release by ``agent_id`` with its credential (or ``as_credential``), or, with
    no agent or with ``as_credential=''``, by the admin key KEY_ID: a forced release."""
    k = store.keys
    tag, token = parse_lease_id(lease_id)
    as_agent = (credential(agent_id) if agent_id else "") if as_credential is None else as_credential
    return await store.scripts.lease_release(
        keys=[k.lease(TENANT, contact), k.lease_registry(TENANT, tag), k.events(TENANT), k.agent(TENANT, agent_id)],
        args=[token, agent_id, contact, EVENTS_MAX, as_agent, "" if as_agent else KEY_ID],
    )


async def send_check(
    store: Store, agent_id: str, contact: str = CONTACT, token: str = "", as_credential: str = ""
) -> list:
    """lease_send_check as a gate key asks it (''), or with ``as_credential``, an agent's digest."""
    k = store.keys
    return await store.scripts.lease_send_check(
        keys=[k.heartbeats(TENANT), k.lease(TENANT, contact), k.agent(TENANT, agent_id), k.suppressions(TENANT)],
        args=[agent_id, token, store.ctx.window_ms, as_credential, contact],
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
        k.active_since(TENANT),
        k.lapse_mark(TENANT),
        k.electorate(TENANT, consensus_id),
    ]


async def request(
    store: Store,
    requester: str,
    consensus_id: str | None = None,
    timeout_ms: int = HOUR_MS,
    action: str = "unsubscribe",
    contact: str = "",
    reason: str = "",
    as_credential: str | None = None,
) -> list:
    consensus_id = consensus_id or new_id("cons")
    return await store.scripts.consensus_request(
        keys=consensus_keys(store, consensus_id)
        + [
            store.keys.agent(TENANT, requester),
            store.keys.quotas(TENANT),
            store.keys.consensus_policies(TENANT),
            store.keys.agent_roles(TENANT),
        ],
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
            digest(requester, as_credential),
            store.ctx.quotas.pending_consensus,
        ],
    )


async def opened(store: Store, requester: str, **kwargs: Any) -> str:
    """Open a consensus request and return its id."""
    reply = await request(store, requester, **kwargs)
    assert reply[0] == Reply.CREATED, reply
    return pairs(reply[1])["id"]


async def vote(
    store: Store, consensus_id: str, agent_id: str, choice: str, reason: str = "", as_credential: str | None = None
) -> list:
    return await store.scripts.consensus_vote(
        keys=consensus_keys(store, consensus_id) + [store.keys.agent(TENANT, agent_id), store.keys.humans(TENANT)],
        args=[agent_id, choice, reason, store.ctx.window_ms, RETENTION_MS, EVENTS_MAX, digest(agent_id, as_credential)],
    )


async def take_token(store: Store, agent_id: str = "", as_credential: str | None = None, burst: int = 5) -> list:
    """rate_limit as the store calls it: the tenant's bucket, and with ``agent_id``
    (a call with that agent's credential) the agent's too; without one, as an API key ('')."""
    k = store.keys
    rate = 1 / 1000  # a token a second, in tokens per millisecond
    buckets = [k.rate_bucket(TENANT)] + ([k.rate_bucket(TENANT, agent_id)] if agent_id else [])
    return await store.scripts.rate_limit(
        keys=[k.agent(TENANT, agent_id)] + buckets,
        args=[(digest(agent_id, as_credential) if agent_id else "") if as_credential is None else as_credential]
        + [rate, burst] * len(buckets),
    )


async def read(store: Store, consensus_id: str, reader: str = "", as_credential: str = "") -> list:
    """consensus_read as an API key ('') or, with ``reader``, as that member with ``as_credential``."""
    return await store.scripts.consensus_read(
        keys=consensus_keys(store, consensus_id) + [store.keys.agent(TENANT, reader)],
        args=[consensus_id, store.ctx.window_ms, RETENTION_MS, EVENTS_MAX, as_credential],
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
