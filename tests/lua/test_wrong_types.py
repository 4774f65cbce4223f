"""Keys of the wrong type, planted where a script expects another: refused whole.

Redis does not roll back a script that fails halfway, so every script checks the
type of each key it writes before its first write (lua/lib.lua: wrong_type), and
reads the keys it only reads before that first write too. Here, for every
writing script and every key in its header, a key of another type is planted and
the operation is run through the Store, on fakeredis and on a real Redis: it
raises redis's ResponseError naming WRONGTYPE, and a dump of every key under the
test's prefix (values and expiry times) is the same after as before. Where the
Store reads the planted key itself before calling the script, the script is also
called directly with the keys the Store would pass, so its own check is proved.

Then over HTTP, on a real `concord serve`: each kind of change meets a planted
key and answers 500 problem+json `store_error` (no traceback, no Redis message in
the body), Redis is unchanged, and the next requests for other keys work.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from redis.exceptions import ResponseError

import concord.server.store.consensus as store_module
from concord.protocol import ConsensusPolicyBody
from concord.server.principals import AgentPrincipal, KeyGrant
from concord.server.settings import RateLimit, key_digest
from concord.server.store import Store
from concord.server.store.keys import Keys, agent_id_for, agent_tag, parse_lease_id
from concord.server.store.scripts import LIB, sources
from tests.lua.test_headers import checked_types, header_types
from tests.support.api import V1, C, Fleet, problem
from tests.support.helpers import HANG_SECONDS, Stack, running_stack, snapshot
from tests.support.reports import FaultRecord, fault_record

TENANT = "acme"
HELD, FREE = "held@example.com", "free@example.com"
# sdr's other lease, granted before HELD: agent_remove meets it first, so a missing check on
# HELD's key would show as ALSO's lease deleted before the refusal.
ALSO = "also@example.com"
FIXED_CONS = f"cons_{uuid.UUID(int=1)}"
IDEMPOTENCY_KEY = "retry-me-1"
SUPPRESSED = "@suppressed.example"  # the world's suppression, which lift_suppression lifts
LIMITS = {"tenant": RateLimit(per_second=100.0, burst=100), "agent": RateLimit(per_second=100.0, burst=100)}
# What is planted where a key of each type belongs.
PLANTED = {"hash": "string", "zset": "hash", "string": "list", "stream": "string", "set": "string"}
# Scripts that write nothing: a wrong type there is refused by the read itself.
READ_ONLY = {"lease_send_check"}
KEY = KeyGrant("cfg-1", TENANT)  # the admin key that registers, rotates and removes


# --- Redis, before and after ---------------------------------------------------------


async def plant(db: redis.asyncio.Redis, key: str, kind: str) -> None:
    """Replace ``key`` by a key of type ``kind`` (without expiry)."""
    await db.delete(key)
    if kind == "string":
        await db.set(key, "planted")
    elif kind == "hash":
        await db.hset(key, "planted", "1")
    elif kind == "list":
        await db.rpush(key, "planted")
    else:
        raise AssertionError(kind)


# --- the world each case starts from ------------------------------------------------


@dataclass
class World:
    """Made through the Store: agents sdr (holding leases on ALSO and HELD), peer and
    third (lapsed since the requests were made); a pending request by sdr; one past its
    deadline that a read would expire.
    Each agent acts with its own credential (``as_`` its principal)."""

    sdr: str
    peer: str
    third: str
    lease_id: str
    pending: str
    overdue: str
    digests: dict[str, str]

    def as_(self, agent_id: str) -> AgentPrincipal:
        return AgentPrincipal(TENANT, agent_id, self.digests[agent_id])

    def digest(self, agent_id: str) -> str:
        return self.digests[agent_id]


def _value(result: Any) -> Any:
    """A store answer that may come with a flag: (value, flag) -> value."""
    return result[0] if isinstance(result, tuple) else result


async def build_world(store: Store) -> World:
    registered = [
        _value(await store.agents.register(TENANT, name, None, None, KEY)) for name in ("sdr", "peer", "third")
    ]
    sdr, peer, third = (agent.id for agent in registered)
    digests = {agent.id: key_digest(agent.credential) for agent in registered}
    await store.leases.acquire(TENANT, sdr, ALSO, None, 600_000, digests[sdr])
    lease = _value(await store.leases.acquire(TENANT, sdr, HELD, "outreach", 600_000, digests[sdr]))
    pending = _value(await store.consensus.request(TENANT, sdr, "offer", None, None, 3_600_000, digests[sdr])).id
    overdue = _value(await store.consensus.request(TENANT, sdr, "late", None, None, 3_600_000, digests[sdr])).id
    seconds, micros = await store.redis.time()
    await store.redis.hset(
        store.keys.consensus(TENANT, overdue), "expiresAt", str(seconds * 1000 + micros // 1000 - 1000)
    )
    # A heartbeat of a returning agent begins its run in active-since.
    await store.redis.zadd(store.keys.heartbeats(TENANT), {third: 1}, xx=True)
    world = World(sdr, peer, third, lease.id, pending, overdue, digests)
    await store.limits.take_token(world.as_(sdr), LIMITS)
    await store.suppressions.put(TENANT, SUPPRESSED, "bounced", None, KEY)
    return world


def fixed_new_id(kind: str) -> str:
    """The ids the Store makes during a case, known in advance so their keys can be planted.
    (Lease ids are not made: keys.lease_id derives them from the holder and the token.)"""
    return {"cons": FIXED_CONS}[kind]


def registry_of(k: Keys, agent_id: str) -> str:
    """An agent's lease registry (keys.lease_registry of its tag)."""
    return k.lease_registry(TENANT, agent_tag(agent_id))


# --- the cases --------------------------------------------------------------------------

Op = Callable[[Store, World], Awaitable[Any]]
Target = Callable[[Keys, World], str]


@dataclass(frozen=True)
class Case:
    script: str
    key: str  # the name of the key in the script's header
    kind: str  # the type the script expects there
    target: Target
    op: Op
    via: str = "store"  # "store": through a Store method; "script": the script itself, keys as the Store passes them

    @property
    def id(self) -> str:
        return f"{self.script}-{self.key}" + ("-direct" if self.via == "script" else "")


def consensus_cases(script: str, op: Op, cons: Callable[[World], str]) -> list[Case]:
    lists = [
        ("all_key", "all"),
        ("pending_key", "pending"),
        ("approved_key", "approved"),
        ("rejected_key", "rejected"),
        ("expired_key", "expired"),
    ]
    return [
        Case(script, "cons_key", "hash", lambda k, w: k.consensus(TENANT, cons(w)), op),
        Case(script, "votes_key", "hash", lambda k, w: k.votes(TENANT, cons(w)), op),
        Case(script, "heartbeats_key", "zset", lambda k, w: k.heartbeats(TENANT), op),
        *(Case(script, name, "zset", lambda k, w, s=status: k.consensus_list(TENANT, s), op) for name, status in lists),
        Case(script, "due_key", "zset", lambda k, w: k.consensus_due(TENANT), op),
        Case(script, "events_key", "stream", lambda k, w: k.events(TENANT), op),
        Case(script, "since_key", "zset", lambda k, w: k.active_since(TENANT), op),
        Case(script, "mark_key", "string", lambda k, w: k.lapse_mark(TENANT), op),
        Case(script, "electorate_key", "set", lambda k, w: k.electorate(TENANT, cons(w)), op),
    ]


def events_key(k: Keys, w: World) -> str:
    return k.events(TENANT)


def register_newbie(store: Store, w: World) -> Awaitable[Any]:
    return store.agents.register(TENANT, "newbie", None, None, KEY)


def rotate_sdr(store: Store, w: World) -> Awaitable[Any]:
    return store.agents.rotate(TENANT, w.sdr, KEY)


def heartbeat_sdr(store: Store, w: World) -> Awaitable[Any]:
    return store.agents.heartbeat(TENANT, w.sdr, w.digest(w.sdr))


def heartbeat_returning(store: Store, w: World) -> Awaitable[Any]:
    return store.agents.heartbeat(TENANT, w.third, w.digest(w.third))


def remove_sdr(store: Store, w: World) -> Awaitable[Any]:
    return store.agents.remove(TENANT, w.sdr, KEY)


def remove_sdr_directly(store: Store, w: World) -> Awaitable[Any]:
    """agent_remove with the keys the Store passes (it reads the registry itself first)."""
    k = store.keys
    return store.scripts.agent_remove(
        [
            k.agent(TENANT, w.sdr),
            k.agents(TENANT),
            k.heartbeats(TENANT),
            registry_of(k, w.sdr),
            k.events(TENANT),
            k.active_since(TENANT),
            k.humans(TENANT),
            k.agent_roles(TENANT),
            k.lease(TENANT, ALSO),
            k.lease(TENANT, HELD),
        ],
        [w.sdr, store.ctx.events_max, KEY.id, ALSO, HELD],
    )


def acquire_free(store: Store, w: World) -> Awaitable[Any]:
    return store.leases.acquire(TENANT, w.sdr, FREE, None, 600_000, w.digest(w.sdr))


def acquire_held_again(store: Store, w: World) -> Awaitable[Any]:
    """The holder asking again: the extension rewrites the lease and its registry entry."""
    return store.leases.acquire(TENANT, w.sdr, HELD, None, 600_000, w.digest(w.sdr))


def renew_held(store: Store, w: World) -> Awaitable[Any]:
    return store.leases.renew(TENANT, w.lease_id, w.sdr, 600_000, w.digest(w.sdr))


def renew_held_directly(store: Store, w: World) -> Awaitable[Any]:
    """lease_renew with the keys the Store passes (it reads the registry itself first)."""
    k = store.keys
    tag, token = parse_lease_id(w.lease_id)
    return store.scripts.lease_renew(
        [
            k.heartbeats(TENANT),
            k.lease(TENANT, HELD),
            k.lease_registry(TENANT, tag),
            k.events(TENANT),
            k.agent(TENANT, w.sdr),
        ],
        [token, w.sdr, HELD, 600_000, store.ctx.window_ms, store.ctx.events_max, w.digest(w.sdr)],
    )


def release_held(store: Store, w: World) -> Awaitable[Any]:
    return store.leases.release(TENANT, w.lease_id, w.sdr, w.as_(w.sdr))


def release_held_directly(store: Store, w: World) -> Awaitable[Any]:
    """lease_release with the keys the Store passes (it reads the registry itself first)."""
    k = store.keys
    tag, token = parse_lease_id(w.lease_id)
    return store.scripts.lease_release(
        [k.lease(TENANT, HELD), k.lease_registry(TENANT, tag), k.events(TENANT), k.agent(TENANT, w.sdr)],
        [token, w.sdr, HELD, store.ctx.events_max, w.digest(w.sdr), ""],
    )


def request_new(store: Store, w: World) -> Awaitable[Any]:
    return store.consensus.request(TENANT, w.sdr, "discount", None, None, 3_600_000, w.digest(w.sdr), IDEMPOTENCY_KEY)


def vote_pending(store: Store, w: World) -> Awaitable[Any]:
    return store.consensus.vote(TENANT, w.pending, w.peer, "approve", None, w.digest(w.peer))


def suppress(store: Store, w: World) -> Awaitable[Any]:
    return store.suppressions.put(TENANT, "new@example.com", "unsubscribed", None, w.as_(w.sdr))


def lift_suppression(store: Store, w: World) -> Awaitable[Any]:
    return store.suppressions.remove(TENANT, SUPPRESSED, KEY.id)


def set_policy(store: Store, w: World) -> Awaitable[Any]:
    return store.policies.set(TENANT, "discount", ConsensusPolicyBody(rule="unanimous"), KEY)


def read_overdue(store: Store, w: World) -> Awaitable[Any]:
    return store.consensus.get(TENANT, w.overdue)


def read_overdue_as_sdr(store: Store, w: World) -> Awaitable[Any]:
    """A member's read: the script proves sdr's credential, reading its hash first."""
    return store.consensus.get(TENANT, w.overdue, w.sdr, w.digest(w.sdr))


def take_token(store: Store, w: World) -> Awaitable[Any]:
    return store.limits.take_token(w.as_(w.sdr), LIMITS)


CASES = [
    Case(
        "agent_register",
        "agent_key",
        "hash",
        lambda k, w: k.agent(TENANT, agent_id_for(TENANT, "newbie")),
        register_newbie,
    ),
    Case("agent_register", "agents_key", "zset", lambda k, w: k.agents(TENANT), register_newbie),
    Case("agent_register", "heartbeats_key", "zset", lambda k, w: k.heartbeats(TENANT), register_newbie),
    Case("agent_register", "events_key", "stream", events_key, register_newbie),
    Case("agent_register", "since_key", "zset", lambda k, w: k.active_since(TENANT), register_newbie),
    Case("agent_register", "quotas_key", "hash", lambda k, w: k.quotas(TENANT), register_newbie),
    Case("agent_register", "humans_key", "zset", lambda k, w: k.humans(TENANT), register_newbie),
    Case("agent_register", "roles_key", "hash", lambda k, w: k.agent_roles(TENANT), register_newbie),
    Case("agent_credential", "agent_key", "hash", lambda k, w: k.agent(TENANT, w.sdr), rotate_sdr),
    Case("agent_credential", "events_key", "stream", events_key, rotate_sdr),
    Case("agent_heartbeat", "heartbeats_key", "zset", lambda k, w: k.heartbeats(TENANT), heartbeat_sdr),
    Case("agent_heartbeat", "agent_key", "hash", lambda k, w: k.agent(TENANT, w.sdr), heartbeat_sdr),
    Case("agent_heartbeat", "since_key", "zset", lambda k, w: k.active_since(TENANT), heartbeat_returning),
    Case("agent_remove", "agent_key", "hash", lambda k, w: k.agent(TENANT, w.sdr), remove_sdr),
    Case("agent_remove", "agents_key", "zset", lambda k, w: k.agents(TENANT), remove_sdr),
    Case("agent_remove", "heartbeats_key", "zset", lambda k, w: k.heartbeats(TENANT), remove_sdr),
    Case("agent_remove", "registry_key", "hash", lambda k, w: registry_of(k, w.sdr), remove_sdr),
    Case("agent_remove", "events_key", "stream", events_key, remove_sdr),
    Case("agent_remove", "since_key", "zset", lambda k, w: k.active_since(TENANT), remove_sdr),
    Case("agent_remove", "humans_key", "zset", lambda k, w: k.humans(TENANT), remove_sdr),
    Case("agent_remove", "roles_key", "hash", lambda k, w: k.agent_roles(TENANT), remove_sdr),
    Case("agent_remove", "registry_key", "hash", lambda k, w: registry_of(k, w.sdr), remove_sdr_directly, "script"),
    Case("agent_remove", "lease_keys", "string", lambda k, w: k.lease(TENANT, HELD), remove_sdr),
    Case("agent_remove", "lease_keys", "string", lambda k, w: k.lease(TENANT, HELD), remove_sdr_directly, "script"),
    Case("lease_acquire", "agent_key", "hash", lambda k, w: k.agent(TENANT, w.sdr), acquire_free),
    Case("lease_acquire", "heartbeats_key", "zset", lambda k, w: k.heartbeats(TENANT), acquire_free),
    Case("lease_acquire", "lease_key", "string", lambda k, w: k.lease(TENANT, FREE), acquire_free),
    Case("lease_acquire", "lease_key", "string", lambda k, w: k.lease(TENANT, HELD), acquire_held_again),
    Case("lease_acquire", "registry_key", "hash", lambda k, w: registry_of(k, w.sdr), acquire_free),
    Case("lease_acquire", "registry_key", "hash", lambda k, w: registry_of(k, w.sdr), acquire_held_again),
    Case("lease_acquire", "fence_key", "string", lambda k, w: k.fence(TENANT), acquire_free),
    Case("lease_acquire", "quotas_key", "hash", lambda k, w: k.quotas(TENANT), acquire_free),
    Case("lease_acquire", "suppressions_key", "hash", lambda k, w: k.suppressions(TENANT), acquire_free),
    Case("lease_acquire", "suppressions_key", "hash", lambda k, w: k.suppressions(TENANT), acquire_held_again),
    Case("lease_acquire", "events_key", "stream", events_key, acquire_free),
    Case("lease_acquire", "events_key", "stream", events_key, acquire_held_again),
    Case("lease_renew", "heartbeats_key", "zset", lambda k, w: k.heartbeats(TENANT), renew_held),
    Case("lease_renew", "lease_key", "string", lambda k, w: k.lease(TENANT, HELD), renew_held),
    Case("lease_renew", "registry_key", "hash", lambda k, w: registry_of(k, w.sdr), renew_held),
    Case("lease_renew", "events_key", "stream", events_key, renew_held),
    Case("lease_renew", "registry_key", "hash", lambda k, w: registry_of(k, w.sdr), renew_held_directly, "script"),
    Case("lease_renew", "agent_key", "hash", lambda k, w: k.agent(TENANT, w.sdr), renew_held),
    Case("lease_release", "lease_key", "string", lambda k, w: k.lease(TENANT, HELD), release_held),
    Case("lease_release", "registry_key", "hash", lambda k, w: registry_of(k, w.sdr), release_held),
    Case("lease_release", "events_key", "stream", events_key, release_held),
    Case("lease_release", "registry_key", "hash", lambda k, w: registry_of(k, w.sdr), release_held_directly, "script"),
    Case("lease_release", "agent_key", "hash", lambda k, w: k.agent(TENANT, w.sdr), release_held),
    *consensus_cases("consensus_request", request_new, lambda w: FIXED_CONS),
    Case(
        "consensus_request",
        "idempotency_key",
        "hash",
        lambda k, w: k.idempotency(TENANT, key_digest(IDEMPOTENCY_KEY)),
        request_new,
    ),
    Case("consensus_request", "requester_key", "hash", lambda k, w: k.agent(TENANT, w.sdr), request_new),
    Case("consensus_request", "quotas_key", "hash", lambda k, w: k.quotas(TENANT), request_new),
    Case("consensus_request", "policies_key", "hash", lambda k, w: k.consensus_policies(TENANT), request_new),
    Case("consensus_request", "roles_key", "hash", lambda k, w: k.agent_roles(TENANT), request_new),
    *consensus_cases("consensus_vote", vote_pending, lambda w: w.pending),
    Case("consensus_vote", "voter_key", "hash", lambda k, w: k.agent(TENANT, w.peer), vote_pending),
    Case("consensus_vote", "humans_key", "zset", lambda k, w: k.humans(TENANT), vote_pending),
    Case("consensus_policy", "policies_key", "hash", lambda k, w: k.consensus_policies(TENANT), set_policy),
    Case("consensus_policy", "events_key", "stream", events_key, set_policy),
    Case("suppression_put", "suppressions_key", "hash", lambda k, w: k.suppressions(TENANT), suppress),
    Case("suppression_put", "index_key", "zset", lambda k, w: k.suppression_index(TENANT), suppress),
    Case("suppression_put", "events_key", "stream", events_key, suppress),
    Case("suppression_remove", "suppressions_key", "hash", lambda k, w: k.suppressions(TENANT), lift_suppression),
    Case("suppression_remove", "index_key", "zset", lambda k, w: k.suppression_index(TENANT), lift_suppression),
    Case("suppression_remove", "events_key", "stream", events_key, lift_suppression),
    *consensus_cases("consensus_read", read_overdue, lambda w: w.overdue),
    Case("consensus_read", "reader_key", "hash", lambda k, w: k.agent(TENANT, w.sdr), read_overdue_as_sdr),
    Case("rate_limit", "bucket_keys", "hash", lambda k, w: k.rate_bucket(TENANT), take_token),
    Case("rate_limit", "bucket_keys", "hash", lambda k, w: k.rate_bucket(TENANT, w.sdr), take_token),
    Case("rate_limit", "agent_key", "hash", lambda k, w: k.agent(TENANT, w.sdr), take_token),
]


# --- the figures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def figures() -> Iterator[Counter]:
    """Counts over the module's Store cases, reported once at its end."""
    seen: Counter = Counter()
    yield seen
    record = FaultRecord(
        "wrong-type-key-store",
        "a key of another type planted under every key of every writing script; the operation run through the Store",
    )
    record.trials = seen["cases"]
    record.losses = seen["half_written"]
    record.extra = {
        "fakeredis": seen["fakeredis"],
        "redis": seen["redis"],
        "refused": seen["refused"],
        "half_written": seen["half_written"],
    }
    record.write("passed" if seen["cases"] == seen["refused"] and not seen["half_written"] else "failed")


# --- through the Store, on fakeredis and on a real Redis ---------------------------------


def test_every_key_of_every_writing_script_has_a_case():
    """A script that gains a key (or a new writing script) needs a case here."""
    covered = {(case.script, case.key) for case in CASES}
    declared = {
        (name, key)
        for name, source in sources().items()
        if name != LIB and name not in READ_ONLY
        for key in source.keys
    }
    assert declared - covered == set(), f"keys without a wrong-type case: {sorted(declared - covered)}"
    assert covered - declared == set(), f"cases for keys no header declares: {sorted(covered - declared)}"
    # Each case expects the type the script's header names for the key (lease keys: strings; registries: hashes).
    for case in CASES:
        source = sources()[case.script]
        expected = header_types(source).get(case.key) or checked_types(source).get(case.key)
        assert case.kind == expected, (case.id, case.kind, expected)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_a_key_of_the_wrong_type_is_refused_before_anything_is_written(
    case: Case, store: Store, redis_client: redis.asyncio.Redis, prefix: str, monkeypatch, figures: Counter
):
    world = await build_world(store)
    monkeypatch.setattr(store_module, "new_id", fixed_new_id)
    key = case.target(store.keys, world)
    await plant(redis_client, key, PLANTED[case.kind])
    before = await snapshot(redis_client, f"{prefix}:*", expiry=True)
    backend = "fakeredis" if "fake" in type(redis_client).__module__ else "redis"
    figures["cases"] += 1
    figures[backend] += 1

    with pytest.raises(ResponseError) as refused:
        await case.op(store, world)
    figures["refused"] += "WRONGTYPE" in str(refused.value)
    after = await snapshot(redis_client, f"{prefix}:*", expiry=True)
    figures["half_written"] += after != before

    assert "WRONGTYPE" in str(refused.value), refused.value
    assert after == before, {
        k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)
    }
    assert after[key][0] == PLANTED[case.kind]


# --- over HTTP, on a real `concord serve` --------------------------------------------------

HTTP_TENANTS = [f"w{i:02d}" for i in range(18)]
CALM = "calm"
HTTP_KEYS = {tenant: f"{tenant}-wrongtype-key-0123456789" for tenant in [*HTTP_TENANTS, CALM]}


@dataclass
class HttpWorld:
    sdr: dict
    peer: dict
    lease: dict
    consensus: dict


@dataclass(frozen=True)
class HttpCase:
    """``request`` meets a planted ``target`` key; ``bystander`` is a request of the
    same tenant for other keys, which must still work."""

    name: str
    kind: str
    target: Callable[[Keys, str, HttpWorld], str]
    request: Callable[[HttpWorld], tuple[str, str, dict | None, dict | None, dict | None]]
    bystander: Callable[[HttpWorld], tuple[str, str, dict | None]]


def _lease(w: HttpWorld) -> str:
    return f"{C}/lease/{w.lease['id']}"


def _cons(w: HttpWorld) -> str:
    return f"{C}/consensus/{w.consensus['id']}"


def _heartbeat(w: HttpWorld) -> tuple[str, str, dict | None]:
    return ("POST", f"{C}/heartbeat", {"agentId": w.peer["id"]})


def _peer_lease(w: HttpWorld) -> tuple[str, str, dict | None]:
    return ("POST", f"{C}/lease", {"agentId": w.peer["id"], "contactEmail": "other@example.com"})


HTTP_CASES = [
    HttpCase(
        "suppress: suppression index",
        "zset",
        lambda k, t, w: k.suppression_index(t),
        lambda w: ("PUT", f"{C}/suppressions/new%40example.com", {"reason": "bounced"}, None, None),
        _peer_lease,
    ),
    HttpCase(
        "register: agent hash",
        "hash",
        lambda k, t, w: k.agent(t, w.sdr["id"]),
        lambda w: ("POST", f"{V1}/register", {"agentName": "sdr"}, None, None),
        _peer_lease,
    ),
    HttpCase(
        "register: agents zset",
        "zset",
        lambda k, t, w: k.agents(t),
        lambda w: ("POST", f"{V1}/register", {"agentName": "newbie"}, None, None),
        _heartbeat,
    ),
    HttpCase(
        "rotate: agent hash",
        "hash",
        lambda k, t, w: k.agent(t, w.sdr["id"]),
        lambda w: ("POST", f"{V1}/agents/{w.sdr['id']}/credentials", None, None, None),
        _peer_lease,
    ),
    HttpCase(
        "heartbeat: heartbeats zset",
        "zset",
        lambda k, t, w: k.heartbeats(t),
        lambda w: ("POST", f"{C}/heartbeat", {"agentId": w.sdr["id"]}, None, None),
        lambda w: ("GET", _lease(w), None),
    ),
    HttpCase(
        "deregister: lease registry",
        "hash",
        lambda k, t, w: k.lease_registry(t, agent_tag(w.sdr["id"])),
        lambda w: ("DELETE", f"{V1}/agents/{w.sdr['id']}", None, None, None),
        _peer_lease,
    ),
    HttpCase(
        "deregister: held lease",
        "string",
        lambda k, t, w: k.lease(t, "held@example.com"),
        lambda w: ("DELETE", f"{V1}/agents/{w.sdr['id']}", None, None, None),
        _peer_lease,
    ),
    HttpCase(
        "acquire: lease string",
        "string",
        lambda k, t, w: k.lease(t, "free@example.com"),
        lambda w: ("POST", f"{C}/lease", {"agentId": w.sdr["id"], "contactEmail": "free@example.com"}, None, None),
        _peer_lease,
    ),
    HttpCase(
        "acquire: fence",
        "string",
        lambda k, t, w: k.fence(t),
        lambda w: ("POST", f"{C}/lease", {"agentId": w.sdr["id"], "contactEmail": "free@example.com"}, None, None),
        _heartbeat,
    ),
    HttpCase(
        "acquire: agent's lease registry",
        "hash",
        lambda k, t, w: k.lease_registry(t, agent_tag(w.sdr["id"])),
        lambda w: ("POST", f"{C}/lease", {"agentId": w.sdr["id"], "contactEmail": "free@example.com"}, None, None),
        _peer_lease,
    ),
    HttpCase(
        "renew: lease registry",
        "hash",
        lambda k, t, w: k.lease_registry(t, agent_tag(w.sdr["id"])),
        lambda w: ("POST", f"{_lease(w)}/renew", {"agentId": w.sdr["id"]}, None, None),
        _peer_lease,
    ),
    HttpCase(
        "renew: lease string",
        "string",
        lambda k, t, w: k.lease(t, "held@example.com"),
        lambda w: ("POST", f"{_lease(w)}/renew", {"agentId": w.sdr["id"]}, None, None),
        _peer_lease,
    ),
    HttpCase(
        "release: lease string",
        "string",
        lambda k, t, w: k.lease(t, "held@example.com"),
        lambda w: ("DELETE", _lease(w), None, {"agentId": w.sdr["id"]}, None),
        _peer_lease,
    ),
    HttpCase(
        "request: pending list",
        "zset",
        lambda k, t, w: k.consensus_list(t, "pending"),
        lambda w: ("POST", f"{C}/consensus", {"requestingAgentId": w.sdr["id"], "action": "discount"}, None, None),
        _peer_lease,
    ),
    HttpCase(
        "request: idempotency record",
        "hash",
        lambda k, t, w: k.idempotency(t, key_digest("again-1")),
        lambda w: (
            "POST",
            f"{C}/consensus",
            {"requestingAgentId": w.sdr["id"], "action": "discount"},
            None,
            {"Idempotency-Key": "again-1"},
        ),
        lambda w: ("POST", f"{C}/consensus", {"requestingAgentId": w.sdr["id"], "action": "discount"}),
    ),
    HttpCase(
        "vote: votes hash",
        "hash",
        lambda k, t, w: k.votes(t, w.consensus["id"]),
        lambda w: ("POST", f"{_cons(w)}/vote", {"agentId": w.peer["id"], "vote": "approve"}, None, None),
        lambda w: ("POST", f"{C}/consensus", {"requestingAgentId": w.peer["id"], "action": "other"}),
    ),
    HttpCase(
        "vote: voter's agent hash",
        "hash",
        lambda k, t, w: k.agent(t, w.peer["id"]),
        lambda w: ("POST", f"{_cons(w)}/vote", {"agentId": w.peer["id"], "vote": "approve"}, None, None),
        lambda w: ("GET", _cons(w), None),
    ),
    HttpCase(
        "read: consensus hash",
        "hash",
        lambda k, t, w: k.consensus(t, w.consensus["id"]),
        lambda w: ("GET", _cons(w), None, None, None),
        lambda w: ("POST", f"{C}/consensus", {"requestingAgentId": w.peer["id"], "action": "other"}),
    ),
]
assert len(HTTP_CASES) <= len(HTTP_TENANTS)


def sync_plant(db: redis.Redis, key: str, kind: str) -> None:
    db.delete(key)
    if kind == "string":
        db.set(key, "planted")
    elif kind == "hash":
        db.hset(key, "planted", "1")
    elif kind == "list":
        db.rpush(key, "planted")
    else:
        raise AssertionError(kind)


def sync_dump(db: redis.Redis, prefix: str) -> dict[str, tuple[str, Any, int]]:
    state = {}
    for key in db.scan_iter(match=f"{prefix}:*", count=1000):
        kind = db.type(key)
        value = {
            "hash": db.hgetall,
            "zset": lambda k: db.zrange(k, 0, -1, withscores=True),
            "string": db.get,
            "list": lambda k: db.lrange(k, 0, -1),
            "stream": db.xrange,
        }[kind](key)
        state[key] = (kind, value, db.pexpiretime(key))
    return state


async def build_http_world(client: httpx.AsyncClient) -> HttpWorld:
    sdr = (await client.post(f"{V1}/register", json={"agentName": "sdr"})).json()
    peer = (await client.post(f"{V1}/register", json={"agentName": "peer"})).json()
    lease = await client.post(f"{C}/lease", json={"agentId": sdr["id"], "contactEmail": "held@example.com"})
    consensus = await client.post(f"{C}/consensus", json={"requestingAgentId": sdr["id"], "action": "offer"})
    assert lease.status_code == 201 and consensus.status_code == 201, (lease.text, consensus.text)
    return HttpWorld(sdr, peer, lease.json(), consensus.json())


def fleet(stack: Stack, api_key: str) -> httpx.AsyncClient:
    """A client of the service that goes as a fleet does (support/api.py Fleet): each agent
    it registered with that agent's credential, everything else with ``api_key``."""
    return httpx.AsyncClient(base_url=stack.service.url, auth=Fleet(api_key), timeout=HANG_SECONDS)


@pytest.fixture
def http_stack(real_redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """A private redis-server and `concord serve` with a tenant per case. (real_redis_url
    only decides whether a real Redis may be used: skip, or fail if required.)"""
    settings = {"CONCORD_API_KEYS": ",".join(f"{t}:{k}" for t, k in HTTP_KEYS.items())}
    with running_stack(tmp_path, settings) as stack:
        yield stack


@pytest.mark.real
async def test_a_key_of_the_wrong_type_is_a_store_error_over_http_and_other_keys_still_work(http_stack: Stack):
    stack, db = http_stack, http_stack.redis.client()
    with fault_record(
        "wrong-type-key-http",
        "a key of another type planted where each kind of change writes; the request sent to concord serve",
    ) as record:
        try:
            async with fleet(stack, HTTP_KEYS[CALM]) as calm:
                calm_agent = (await calm.post(f"{V1}/register", json={"agentName": "calm"})).json()
                for tenant, case in zip(HTTP_TENANTS, HTTP_CASES):
                    async with fleet(stack, HTTP_KEYS[tenant]) as client:
                        world = await build_http_world(client)
                        planted = case.target(stack.keys, tenant, world)
                        sync_plant(db, planted, PLANTED[case.kind])
                        before = sync_dump(db, stack.keys.tenant(tenant))

                        method, path, body, query, headers = case.request(world)
                        r = await client.request(method, path, json=body, params=query, headers=headers)
                        record.trials += 1
                        answer = problem(r, 500, "store_error")
                        assert set(answer) == {"type", "title", "status", "detail", "code"}, (case.name, answer)
                        assert "Traceback" not in r.text and "WRONGTYPE" not in r.text, (case.name, r.text)
                        after = sync_dump(db, stack.keys.tenant(tenant))
                        record.losses += after != before
                        assert after == before, case.name

                        # Other keys of the same tenant, and another tenant, still work.
                        method, path, body = case.bystander(world)
                        other = await client.request(method, path, json=body)
                        assert 200 <= other.status_code < 300, (case.name, other.status_code, other.text)
                        fine = await calm.post(
                            f"{C}/lease", json={"agentId": calm_agent["id"], "contactEmail": f"{tenant}@example.com"}
                        )
                        assert fine.status_code == 201, (case.name, fine.text)
                        record.acknowledged += 2
        finally:
            db.close()
        assert stack.service.process is not None and stack.service.process.poll() is None
        log = stack.service.log_text()
        assert log.count("Redis refused") == len(HTTP_CASES), log
        assert "Traceback" not in log, log
        record.extra = {"cases": record.trials, "half_written": record.losses, "other_requests_ok": record.acknowledged}
