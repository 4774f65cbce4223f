"""The key schema's promise on a real Redis Cluster: every key of a tenant shares
one slot, so every script, which names several of them, runs on one shard.

The slots are the cluster's own answers (CLUSTER KEYSLOT), never a CRC16 computed
here, and a script call's keys are also sent to the cluster as one EVAL: the
cluster refuses keys of two slots with CROSSSLOT, so a schema break fails these
tests the way it would fail in production.
"""

from __future__ import annotations

import asyncio
import typing
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import fakeredis
import fakeredis.aioredis
import pytest
import redis

from concord.protocol import (
    ConsensusPolicyBody,
    ConsensusStatus,
    FieldError,
    SuppressionItem,
    normalize_email,
    suppression_entry,
)
from concord.server.principals import AgentPrincipal, KeyGrant
from concord.server.settings import PREFIX_RE, TENANT_RE, RateLimit, key_digest
from concord.server.store import Store, scripts
from concord.server.store.keys import Keys, agent_id_for, agent_tag, new_id
from tests.support.cluster import Cluster

# Tenant ids at the edges of 1-64 of A-Z a-z 0-9 _ -: one character, the longest,
# only punctuation, ones that read as numbers, and two that differ only in case.
TENANTS = ["-", "_", "--", "-_-", "a" * 64, "Z" * 64, "9" * 64, "-" * 64, "0", "123", "-1", "1e9", "0x1F",
           "acme", "ACME", "a-b_c"]  # fmt: skip
# Contacts that normalize_email accepts and that hold what Cluster reads as hash-tag
# syntax (braces, empty braces, another tenant's tag), glob characters, every other
# character the local part allows, and 64-character local parts made of braces.
CONTACTS = ["{x}@example.com", "a}{b@example.com", "}{@example.com", "{}@example.com", "{acme}@example.com",
            "{ACME}@EXAMPLE.COM", "x.{y}.z@example.com", "*@example.com", "?@example.com", "*?@example.com",
            "'/=^~|`#$%&!+-_@example.com", "{" * 64 + "@example.com", "}" * 64 + "@example.com",
            "{" + "a" * 62 + "}@example.com", "{a}@" + ".".join(["b" * 63] * 3) + ".com"]  # fmt: skip
PREFIXES = ["concord", "a:b.c-d_e", "x" * 64]
STATUSES = ("all", *typing.get_args(ConsensusStatus))
# What Store.take_token is given in the scenario: both buckets, so both keys appear.
LIMITS = {"tenant": RateLimit(per_second=1000, burst=100), "agent": RateLimit(per_second=100, burst=10)}
# A script with no effect: the cluster checks the declared keys before running it.
COUNT_KEYS = "return #KEYS"


def tenant_keys(keys: Keys, tenant: str, contact: str) -> dict[str, str]:
    """One key of every kind of ``tenant``, those that take an id built from ``contact``."""
    agent_id, consensus_id = agent_id_for(tenant, "agent-1"), new_id("cons")
    built = {
        "agent": keys.agent(tenant, agent_id),
        "agents": keys.agents(tenant),
        "heartbeats": keys.heartbeats(tenant),
        "active_since": keys.active_since(tenant),
        "lapse_mark": keys.lapse_mark(tenant),
        "humans": keys.humans(tenant),
        "agent_roles": keys.agent_roles(tenant),
        "consensus_policies": keys.consensus_policies(tenant),
        "quotas": keys.quotas(tenant),
        "suppressions": keys.suppressions(tenant),
        "suppression_index": keys.suppression_index(tenant),
        "lease": keys.lease(tenant, contact),
        "lease_registry": keys.lease_registry(tenant, agent_tag(agent_id)),
        "fence": keys.fence(tenant),
        "consensus": keys.consensus(tenant, consensus_id),
        "votes": keys.votes(tenant, consensus_id),
        "electorate": keys.electorate(tenant, consensus_id),
        "consensus_due": keys.consensus_due(tenant),
        "idempotency": keys.idempotency(tenant, key_digest(f"{{{contact}}}:retry")),
        "rate_bucket": keys.rate_bucket(tenant),
        "rate_bucket:agent": keys.rate_bucket(tenant, agent_id),
        "events": keys.events(tenant),
    }
    built.update({f"consensus_list:{status}": keys.consensus_list(tenant, status) for status in STATUSES})
    return built


def keyslots(on: Cluster, names: Iterable[str]) -> list[int]:
    """CLUSTER KEYSLOT of each name, asked of one node in one pipeline."""
    with on.live_nodes()[0].client() as client:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.execute_command("CLUSTER", "KEYSLOT", name)
        return [int(slot) for slot in pipe.execute()]


def eval_on_owner(on: Cluster, names: list[str]) -> int:
    """Run COUNT_KEYS with ``names`` as KEYS on the master of the first name's slot.
    A node refuses keys of two slots (CROSSSLOT) and keys it does not serve (MOVED)."""
    (slot,) = keyslots(on, names[:1])
    with on.master_of_slot(slot).client() as client:
        return client.eval(COUNT_KEYS, len(names), *names)


# --- every key of a tenant ------------------------------------------------------------------------


def test_the_adversarial_inputs_are_ones_the_service_accepts():
    """Otherwise the slot tests below would prove something about keys that can never exist."""
    assert all(TENANT_RE.fullmatch(tenant) for tenant in TENANTS)
    assert all(PREFIX_RE.fullmatch(prefix) for prefix in PREFIXES)
    normalized = [normalize_email(contact) for contact in CONTACTS]
    assert len(set(normalized)) == len(CONTACTS) - 1  # {ACME}@EXAMPLE.COM is {acme}@example.com
    assert max(len(c.partition("@")[0]) for c in normalized) == 64
    # A colon never reaches a key through a contact: it is not an address character.
    for contact in ("x:y@example.com", "{a}:b@example.com"):
        with pytest.raises(FieldError):
            normalize_email(contact)


def test_every_kind_of_key_is_covered():
    """A kind added to keys.py without a line in tenant_keys fails here."""
    kinds = {name for name in dir(Keys) if not name.startswith("_")} - {"prefix", "tenant", "api_keys"}
    covered = {name.partition(":")[0] for name in tenant_keys(Keys(), "acme", "a@example.com")}
    assert covered == kinds


@pytest.mark.real
def test_every_key_of_a_tenant_is_in_the_slot_of_its_tag(cluster):
    """For every prefix, tenant and contact: CLUSTER KEYSLOT of each key equals that of
    "{tenant}", which is what Cluster hashes (only the first {...} of a name counts)."""
    rows = [
        (prefix, tenant, kind, name)
        for prefix in PREFIXES
        for tenant in TENANTS
        for contact in map(normalize_email, CONTACTS)
        for kind, name in tenant_keys(Keys(prefix), tenant, contact).items()
    ]
    tags = {tenant: slot for tenant, slot in zip(TENANTS, keyslots(cluster, (f"{{{t}}}" for t in TENANTS)))}
    wrong = [
        f"{kind} key {name!r} of tenant {tenant!r} (prefix {prefix!r}) is in slot {slot}, its tag in {tags[tenant]}"
        for (prefix, tenant, kind, name), slot in zip(rows, keyslots(cluster, (row[3] for row in rows)))
        if slot != tags[tenant]
    ]
    assert not wrong, "\n".join(wrong[:20])
    # The tenants' tags themselves are distinct inputs, not all one slot by accident.
    assert len(set(tags.values())) > len(TENANTS) // 2


# --- every script call of the Store ---------------------------------------------------------------


@dataclass(frozen=True)
class ScriptCall:
    tenant: str
    script: str
    keys: tuple[str, ...]


async def run_scenario(tenant: str, keys: Keys) -> None:
    """Every script of lua/ at least once, through the Store's own methods, on fakeredis,
    with contacts that carry braces: the agents act with their own credentials, an
    admin key registers, rotates, force-releases and deregisters."""
    store = Store(fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True), keys)
    admin = KeyGrant(id="cfg-1", tenant=tenant)
    try:
        contacts = [normalize_email(c) for c in ("{x}@example.com", "a}{b@example.com", "}" * 64 + "@example.com")]
        (alice, _), (bob, _), (carol, _) = [
            await store.agents.register(tenant, name, None, None, admin) for name in "abc"
        ]
        rotated = await store.agents.rotate(tenant, carol.id, admin)
        own = {agent.id: key_digest(agent.credential) for agent in (alice, bob)}
        own[carol.id] = key_digest(rotated.credential)
        for agent in (alice, bob, carol):
            await store.agents.heartbeat(tenant, agent.id, own[agent.id])
        held, spare, third, forced = [
            await store.leases.acquire(tenant, alice.id, c, "outreach", 60_000, own[alice.id])
            for c in (*contacts, "f@example.com")
        ]
        await store.leases.renew(tenant, held[0].id, alice.id, 120_000, own[alice.id])
        await store.leases.send_check(tenant, alice.id, contacts[0], held[0].fencing_token, own[alice.id])
        await store.leases.send_check(tenant, bob.id, contacts[0], None, "")  # a gate key's: alice holds it
        await store.leases.release(tenant, spare[0].id, alice.id, AgentPrincipal(tenant, alice.id, own[alice.id]))
        await store.leases.release(tenant, forced[0].id, None, admin)  # forced: KEYS[4] names no agent
        ask = (tenant, alice.id, "send", contacts[0], "{why}", 60_000, own[alice.id])
        request, _ = await store.consensus.request(*ask, idempotency_key="{retry}:1")
        _, replayed = await store.consensus.request(*ask, idempotency_key="{retry}:1")
        assert replayed
        await store.consensus.vote(tenant, request.id, bob.id, "approve", None, own[bob.id])
        # A policy with voter roles and a human approval: the electorate set, the humans zset.
        rules = ConsensusPolicyBody(voter_roles=["general"], human_approvals=1)
        await store.policies.set(tenant, "{wire}", rules, admin)
        human, _ = await store.agents.register(tenant, "{dana}", None, None, admin, "human")
        guarded, _ = await store.consensus.request(tenant, alice.id, "{wire}", None, None, 60_000, own[alice.id])
        await store.consensus.vote(tenant, guarded.id, human.id, "approve", None, key_digest(human.credential))
        await store.policies.delete(tenant, "{wire}", admin)
        # A suppression of an awkward contact, one batch of an import, and a lift.
        await store.suppressions.put(tenant, suppression_entry(contacts[1]), "bounced", "{note}", admin)
        await store.suppressions.load(tenant, [SuppressionItem(entry="@{x}.example", reason="manual")], admin)
        await store.leases.send_check(tenant, bob.id, contacts[1], None, "")  # refused: suppressed
        await store.suppressions.remove(tenant, suppression_entry(contacts[1]), admin.id)
        await store.consensus.get(tenant, request.id)
        await store.consensus.page(tenant, None, 10, None)  # consensus_read in a pipeline
        await store.limits.take_token(AgentPrincipal(tenant, carol.id, own[carol.id]), LIMITS)
        await store.limits.take_token(admin, LIMITS)  # a key: the tenant's bucket only
        removed = await store.agents.remove(tenant, alice.id, admin)  # still holding two leases
        assert removed.released_leases == 2 and third[0].contact_email == contacts[2]
    finally:
        await store.redis.aclose()


@pytest.fixture(scope="module")
def script_calls() -> list[ScriptCall]:
    """The KEYS of every script call the scenario made, for three awkward tenants."""
    record: list[ScriptCall] = []
    tenant_of_call: dict[str, str] = {}
    original = scripts.Script.__call__

    def recording(self, keys, *rest, **options):
        record.append(ScriptCall(tenant_of_call["now"], self.name, tuple(keys)))
        return original(self, keys, *rest, **options)

    async def scenarios() -> None:
        for tenant in ("-", "a" * 64, "0x1F"):
            tenant_of_call["now"] = tenant
            await run_scenario(tenant, Keys("concord"))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scripts.Script, "__call__", recording)
        asyncio.run(scenarios())
    return record


def test_the_scenario_runs_every_script(script_calls):
    every_script = set(scripts.sources()) - {scripts.LIB}
    assert {call.script for call in script_calls} == every_script
    # The calls that name the most keys: the agent and both rate buckets, a consensus
    # request with an Idempotency-Key, and a removal that releases two leases.
    assert max(len(c.keys) for c in script_calls if c.script == "rate_limit") == 3
    assert max(len(c.keys) for c in script_calls if c.script == "consensus_request") == 18
    assert max(len(c.keys) for c in script_calls if c.script == "agent_remove") == 10


@pytest.mark.real
def test_every_script_call_names_keys_of_one_slot(cluster, script_calls):
    """Per call, CLUSTER KEYSLOT of every key is the slot of the tenant's tag."""
    names = [name for call in script_calls for name in call.keys]
    slots = iter(keyslots(cluster, names))
    tags = dict(zip(("-", "a" * 64, "0x1F"), keyslots(cluster, ["{-}", "{" + "a" * 64 + "}", "{0x1F}"])))
    wrong = []
    for call in script_calls:
        call_slots = {name: next(slots) for name in call.keys}
        if set(call_slots.values()) != {tags[call.tenant]}:
            wrong.append(f"{call.script} of tenant {call.tenant!r}: {call_slots}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.real
def test_the_cluster_accepts_each_script_calls_keys_in_one_eval(cluster, script_calls):
    """The cluster is the judge: each call's KEYS, sent as one EVAL to the master of
    their slot, are accepted (no CROSSSLOT, no MOVED)."""
    distinct = {(call.script, call.keys) for call in script_calls}
    for script, names in sorted(distinct):
        assert eval_on_owner(cluster, list(names)) == len(names), script


@pytest.mark.real
def test_a_cross_slot_call_is_refused_by_the_cluster(cluster, script_calls):
    """What the tests above would meet if the schema broke: the same script's keys
    without the hash tag, or two tenants' keys in one call, get CROSSSLOT (which
    redis-py raises as ClusterCrossSlotError)."""
    acquire = next(call for call in script_calls if call.script == "lease_acquire")
    untagged = [name.replace("{", "").replace("}", "") for name in acquire.keys]
    assert len(set(keyslots(cluster, untagged))) > 1
    with pytest.raises(redis.exceptions.ClusterCrossSlotError):
        eval_on_owner(cluster, untagged)
    keys = Keys("concord")
    two_tenants = [keys.fence("acme"), keys.fence("globex")]
    assert len(set(keyslots(cluster, two_tenants))) == 2
    with pytest.raises(redis.exceptions.ClusterCrossSlotError):
        eval_on_owner(cluster, two_tenants)


# --- spread over the masters ----------------------------------------------------------------------


@pytest.mark.real
def test_a_thousand_tenants_spread_over_every_master(cluster):
    """Each master of the 3 holds at least 20% of 1,000 tenants (a third each, ideally)."""
    masters = cluster.masters()
    assert len(masters) == 3
    keys = Keys("concord")
    slots = keyslots(cluster, (keys.tenant(f"tenant-{i}") for i in range(1000)))
    owner = {
        slot: master.node_id for master in masters for start, end in master.slots for slot in range(start, end + 1)
    }
    held = Counter(owner[slot] for slot in slots)
    assert sum(held.values()) == 1000
    assert {master.node_id for master in masters} == set(held)
    assert min(held.values()) >= 200, {cluster.node(node_id).port: n for node_id, n in held.items()}


# --- the API-key table ----------------------------------------------------------------------------


@pytest.mark.real
def test_the_api_key_table_needs_no_shared_slot(cluster, script_calls):
    """``<p>:apikeys`` is tenant-independent, so it has no hash tag and lives in one
    slot of its own, on whichever master serves that slot. That is enough because
    every API-key operation (HGET to authenticate, HSET to create, HDEL to revoke,
    HGETALL to list) is a single-key command: the cluster client routes it to the
    slot's master from any node (another node answers MOVED), and no script ever
    names the table next to a tenant's keys."""
    keys = Keys(f"apikeys-{new_id('test')}")
    table = keys.api_keys()
    assert "{" not in table
    assert all(table not in call.keys for call in script_calls)
    with cluster.client() as client:
        client.hset(table, key_digest("acme-key"), "acme")
        try:
            (slot,) = keyslots(cluster, [table])
            owner = cluster.master_of_slot(slot)
            for master in cluster.masters():
                with cluster.node(master.node_id).client() as direct:
                    if master.node_id == owner.node_id:
                        assert direct.hget(table, key_digest("acme-key")) == "acme"
                    else:
                        with pytest.raises(redis.exceptions.MovedError, match=f"^{slot} 127.0.0.1:{owner.port}$"):
                            direct.hget(table, key_digest("acme-key"))
            assert client.hget(table, key_digest("acme-key")) == "acme"
        finally:
            client.delete(table)
