"""Agent credentials: each agent acts only with its own (docs/api.md, Agent credentials).

Registering answers a credential ``concord-agent.<tenant>.<agentId>.<secret>`` once;
Redis keeps only its SHA-256 in the agent's hash. Registering again, rotating and
deregistering each end the current credential at once; a forged one is refused. An
agent credential may leave its agent id out, may not name another agent, and keeps
the product page's bodies (tenantId + agentId) working. An admin key's forced
release is recorded as the key's.

Every test runs on fakeredis, a real Redis and the cluster (the redis_client fixture),
on an app whose CONCORD_API_KEYS has a key of every role (test_key_roles.py).
"""

from __future__ import annotations

import httpx
import pytest

from concord.server.store import Store
from tests.api.credential_support import CREDENTIAL, as_credential, digest, forged
from tests.api.test_key_roles import ROLE_KEYS, as_key
from tests.api.test_key_roles import role_app as role_app  # fixtures: pytest finds them here
from tests.support.api import TENANT, V1, C, ms, ok, problem, tenant_snapshot, unknown_id, verdict
from tests.support.helpers import eventually

CONTACT = "alice@example.com"
AGENT_FIELDS = {
    "id",
    "tenantId",
    "agentName",
    "agentRole",
    "status",
    "lastHeartbeat",
    "registeredAt",
    "updatedAt",
    "metadata",
    "kind",
}


@pytest.fixture
async def admin(role_app):
    async with as_key(role_app, ROLE_KEYS["admin"]) as client:
        yield client


async def enrol(admin: httpx.AsyncClient, name: str, status: int = 201, **fields) -> dict:
    return ok(await admin.post(f"{V1}/register", json={"agentName": name, **fields}), status)


async def events(admin: httpx.AsyncClient) -> list[dict]:
    return ok(await admin.get(f"{C}/events", params={"after": "0", "limit": 1000}))["events"]


async def beat(app, token: str, agent_id: str | None = None) -> httpx.Response:
    async with as_credential(app, token) as agent:
        return await agent.post(f"{C}/heartbeat", json={"agentId": agent_id} if agent_id else {})


async def read(app, token: str, path: str = f"{V1}/agents") -> httpx.Response:
    async with as_credential(app, token) as agent:
        return await agent.get(path)


# --- registering ------------------------------------------------------------------


async def test_registering_answers_a_credential_once_and_redis_keeps_only_its_digest(
    role_app, admin, redis_client, keys
):
    agent = await enrol(admin, "sdr-1")
    credential = agent["credential"]
    found = CREDENTIAL.fullmatch(credential)
    assert found and found["tenant"] == TENANT and found["agent"] == agent["id"], credential
    assert set(agent) == AGENT_FIELDS | {"credential"}

    assert await redis_client.hget(keys.agent(TENANT, agent["id"]), "credential") == digest(credential)
    stored = await tenant_snapshot(redis_client, keys, TENANT)
    secret = credential.rsplit(".", 1)[1]
    assert secret not in repr(stored), "Redis holds the credential's secret"
    # Shown once: no read answers it again.
    got = ok(await read(role_app, credential, f"{V1}/agents/{agent['id']}"))
    assert set(got) == AGENT_FIELDS
    listed = ok(await admin.get(f"{V1}/agents"))
    assert secret not in repr(listed) and secret not in repr(await events(admin))
    # And it works: the agent heartbeats with it.
    assert ok(await beat(role_app, credential, agent["id"]))["agentId"] == agent["id"]


async def test_registering_again_answers_a_new_credential_and_the_old_one_is_refused_at_once(
    role_app, admin, redis_client, keys
):
    first = await enrol(admin, "pod")
    ok(await beat(role_app, first["credential"], first["id"]))  # an acting call: nothing cached for reads
    again = await enrol(admin, "pod", 200)  # a restarted pod registers again
    assert again["id"] == first["id"] and again["credential"] != first["credential"]
    assert CREDENTIAL.fullmatch(again["credential"])
    assert await redis_client.hget(keys.agent(TENANT, first["id"]), "credential") == digest(again["credential"])

    before = await tenant_snapshot(redis_client, keys, TENANT)
    body = problem(await beat(role_app, first["credential"], first["id"]), 401, "unauthorized")
    assert first["id"] in body["detail"] and "POST /v1/agent/register" in body["detail"], body
    problem(await read(role_app, first["credential"]), 401, "unauthorized")
    assert await tenant_snapshot(redis_client, keys, TENANT) == before  # nothing written for either
    ok(await beat(role_app, again["credential"], first["id"]))
    ok(await read(role_app, again["credential"]))


async def test_a_credential_proven_on_a_read_is_refused_within_a_second_of_its_rotation(role_app, admin):
    """Reads prove a credential through a cache of at most a second: once rotated, it
    is refused on reads within that bound (polled, with a deadline), and at once on
    acting calls."""
    agent = await enrol(admin, "reader")
    ok(await read(role_app, agent["credential"]))  # proven, and remembered
    ok(await admin.post(f"{V1}/agents/{agent['id']}/credentials"))
    problem(await beat(role_app, agent["credential"], agent["id"]), 401, "unauthorized")

    async def refused() -> bool:
        return (await read(role_app, agent["credential"])).status_code == 401

    await eventually(refused, timeout=5, what="the rotated credential to be refused on reads")


async def test_a_read_of_a_consensus_request_refuses_a_rotated_credential_at_once(role_app, admin):
    """The script that reads a request proves the reader's credential, as the acting
    scripts do: no cache lies between a rotation and the refusal."""
    agent, peer = await enrol(admin, "asker"), await enrol(admin, "peer")
    async with as_credential(role_app, agent["credential"]) as asker:
        cons = ok(await asker.post(f"{C}/consensus", json={"action": "x"}), 201)
    async with as_credential(role_app, peer["credential"]) as reader:
        ok(await reader.get(f"{C}/consensus/{cons['id']}"))
        ok(await admin.post(f"{V1}/agents/{peer['id']}/credentials"))
        body = problem(await reader.get(f"{C}/consensus/{cons['id']}"), 401, "unauthorized")
        assert peer["id"] in body["detail"], body
        # A request that does not exist answers alike: the credential is refused first.
        problem(await reader.get(f"{C}/consensus/cons_{'0' * 8}-0000-4000-8000-{'0' * 12}"), 401, "unauthorized")


# --- rotating -----------------------------------------------------------------------


async def test_an_admin_key_rotates_a_credential_and_the_old_one_is_refused(role_app, admin, redis_client, keys):
    agent = await enrol(admin, "rotated")
    rotated = ok(await admin.post(f"{V1}/agents/{agent['id']}/credentials"))
    assert set(rotated) == {"agentId", "credential", "rotatedAt"}
    assert rotated["agentId"] == agent["id"] and rotated["credential"] != agent["credential"]
    found = CREDENTIAL.fullmatch(rotated["credential"])
    assert found and found["agent"] == agent["id"] and found["tenant"] == TENANT
    assert ms(rotated["rotatedAt"]) >= ms(agent["registeredAt"])
    assert await redis_client.hget(keys.agent(TENANT, agent["id"]), "credential") == digest(rotated["credential"])

    problem(await beat(role_app, agent["credential"], agent["id"]), 401, "unauthorized")
    problem(await read(role_app, agent["credential"]), 401, "unauthorized")
    ok(await beat(role_app, rotated["credential"], agent["id"]))
    # Rotating is not re-registering: the agent keeps its record.
    got = ok(await admin.get(f"{V1}/agents/{agent['id']}"))
    assert got["registeredAt"] == agent["registeredAt"] and got["updatedAt"] == agent["updatedAt"]
    event = [e for e in await events(admin) if e["type"] == "agent.credential_rotated"]
    assert len(event) == 1 and event[0]["agentId"] == agent["id"], event
    assert event[0]["actor"] == "cfg-1" and event[0]["actorRole"] == "admin", event


async def test_an_enroll_key_rotates_within_its_roles_only(role_app, admin, redis_client, keys):
    sdr = await enrol(admin, "sdr-1", agentRole="sdr")
    cfo = await enrol(admin, "cfo", agentRole="finance")
    limited_key, grant = await Store(redis_client, keys).apikeys.create(TENANT, "enroll", ("sdr", "support"))
    async with as_key(role_app, limited_key) as enroll, as_key(role_app, ROLE_KEYS["enroll"]) as any_role:
        rotated = ok(await enroll.post(f"{V1}/agents/{sdr['id']}/credentials"))
        ok(await beat(role_app, rotated["credential"], sdr["id"]))
        before = await tenant_snapshot(redis_client, keys, TENANT)
        refused = problem(
            await enroll.post(f"{V1}/agents/{cfo['id']}/credentials"), 403, "insufficient_scope", keyRole="enroll"
        )
        assert "sdr, support" in refused["detail"] and "'finance'" in refused["detail"], refused
        assert await tenant_snapshot(redis_client, keys, TENANT) == before  # nothing written
        ok(await beat(role_app, cfo["credential"], cfo["id"]))  # the finance agent's credential still works
        # An enroll key without roles rotates any agent.
        ok(await any_role.post(f"{V1}/agents/{cfo['id']}/credentials"))
        problem(await beat(role_app, cfo["credential"], cfo["id"]), 401, "unauthorized")
    actors = [(e["actor"], e["actorRole"]) for e in await events(admin) if e["type"] == "agent.credential_rotated"]
    assert actors == [(grant.id, "enroll"), ("cfg-2", "enroll")], actors


async def test_no_agent_credential_and_no_other_key_rotates(role_app, admin, redis_client, keys):
    victim, other = await enrol(admin, "victim"), await enrol(admin, "other")
    before = await tenant_snapshot(redis_client, keys, TENANT)
    path = f"{V1}/agents/{victim['id']}/credentials"
    for token, role in ((victim["credential"], "agent"), (other["credential"], "agent")):
        async with as_credential(role_app, token) as agent:
            problem(await agent.post(path), 403, "insufficient_scope", keyRole=role)
    for role in ("gate", "read"):
        async with as_key(role_app, ROLE_KEYS[role]) as key:
            problem(await key.post(path), 403, "insufficient_scope", keyRole=role)
    assert await tenant_snapshot(redis_client, keys, TENANT) == before
    ok(await beat(role_app, victim["credential"], victim["id"]))


@pytest.mark.parametrize("agent_id", [unknown_id("agent"), "not-an-agent-id"])
async def test_rotating_an_unknown_agent_is_404(admin, redis_client, keys, agent_id):
    before = await tenant_snapshot(redis_client, keys, TENANT)
    body = problem(await admin.post(f"{V1}/agents/{agent_id}/credentials"), 404, "agent_not_found")
    assert agent_id in body["detail"]
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


# --- deregistering --------------------------------------------------------------------


async def test_deregistering_revokes_the_credential(role_app, admin, redis_client, keys):
    agent = await enrol(admin, "leaver")
    ok(await admin.delete(f"{V1}/agents/{agent['id']}"))
    before = await tenant_snapshot(redis_client, keys, TENANT)
    problem(await beat(role_app, agent["credential"], agent["id"]), 401, "unauthorized")
    problem(await beat(role_app, agent["credential"]), 401, "unauthorized")
    problem(await read(role_app, agent["credential"]), 401, "unauthorized")
    assert await tenant_snapshot(redis_client, keys, TENANT) == before  # the heartbeat registered no one
    # Registered again, it has a new credential; the revoked one stays refused.
    again = await enrol(admin, "leaver")
    ok(await beat(role_app, again["credential"]))
    problem(await beat(role_app, agent["credential"]), 401, "unauthorized")


# --- acting with a credential ---------------------------------------------------------


async def test_a_credential_may_leave_its_agent_id_out_everywhere(role_app, admin):
    a, b = await enrol(admin, "a"), await enrol(admin, "b")
    async with as_credential(role_app, a["credential"]) as as_a, as_credential(role_app, b["credential"]) as as_b:
        assert ok(await as_a.post(f"{C}/heartbeat", json={}))["agentId"] == a["id"]
        lease = ok(await as_a.post(f"{C}/lease", json={"contactEmail": CONTACT}), 201)
        assert lease["agentId"] == a["id"]
        renewed = ok(await as_a.post(f"{C}/lease/{lease['id']}/renew", json={}))
        assert renewed["fencingToken"] == lease["fencingToken"]
        check = ok(await as_a.post(f"{C}/send-check", json={"contactEmail": CONTACT}))
        assert verdict(check, CONTACT) == {"allowed": True}
        assert ok(await as_b.post(f"{C}/send-check", json={"contactEmail": CONTACT}))["allowed"] is False
        mine = ok(await as_a.get(f"{C}/leases", params={"agentId": a["id"]}))
        assert [x["id"] for x in mine["leases"]] == [lease["id"]]
        assert ok(await as_a.delete(f"{C}/lease/{lease['id']}"))["released"] is True
        cons = ok(await as_a.post(f"{C}/consensus", json={"action": "send-discount"}), 201)
        assert cons["requestingAgentId"] == a["id"]
        voted = ok(await as_b.post(f"{C}/consensus/{cons['id']}/vote", json={"vote": "approve"}))
        assert [v["agentId"] for v in voted["votes"]] == [b["id"]]
    kinds = [(e["type"], e["actor"], e["actorRole"]) for e in await events(admin) if e["actorRole"] == "agent"]
    assert kinds == [
        ("lease.acquired", a["id"], "agent"),
        ("lease.renewed", a["id"], "agent"),
        ("lease.released", a["id"], "agent"),
        ("consensus.requested", a["id"], "agent"),
        ("consensus.voted", b["id"], "agent"),
        *kinds[5:],  # the vote may also decide the request
    ], kinds


async def test_naming_another_agent_is_403_agent_mismatch_with_nothing_written(role_app, admin, redis_client, keys):
    a, b = await enrol(admin, "a"), await enrol(admin, "b")
    before = await tenant_snapshot(redis_client, keys, TENANT)
    async with as_credential(role_app, b["credential"]) as as_b:
        body = problem(
            await as_b.post(f"{C}/heartbeat", json={"agentId": a["id"]}), 403, "agent_mismatch", agentId=b["id"]
        )
        assert a["id"] in body["detail"] and "leave the agent id out" in body["detail"], body
        problem(
            await as_b.post(f"{C}/lease", json={"agentId": a["id"], "contactEmail": CONTACT}), 403, "agent_mismatch"
        )
        problem(
            await as_b.post(f"{C}/consensus", json={"requestingAgentId": a["id"], "action": "x"}), 403, "agent_mismatch"
        )
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


async def test_the_product_pages_bodies_work_with_the_credential(role_app, admin):
    """The bodies the product page shows (tenantId and agentId in each) keep working
    when sent with the agent's own credential."""
    a, b = await enrol(admin, "page-a"), await enrol(admin, "page-b")
    async with as_credential(role_app, a["credential"]) as as_a, as_credential(role_app, b["credential"]) as as_b:
        own = {"tenantId": TENANT, "agentId": a["id"]}
        assert ok(await as_a.post(f"{C}/heartbeat", json=own))["agentId"] == a["id"]
        lease = ok(await as_a.post(f"{C}/lease", json={**own, "contactEmail": CONTACT, "intent": "outreach"}), 201)
        ok(await as_a.post(f"{C}/lease/{lease['id']}/renew", json={**own, "durationMinutes": 10}))
        check = {**own, "contactEmail": CONTACT, "fencingToken": lease["fencingToken"]}
        assert verdict(ok(await as_a.post(f"{C}/send-check", json=check)), CONTACT) == {"allowed": True}
        ask = {"tenantId": TENANT, "requestingAgentId": a["id"], "action": "send-discount"}
        cons = ok(await as_a.post(f"{C}/consensus", json=ask), 201)
        ballot = {"tenantId": TENANT, "agentId": b["id"], "vote": "approve"}
        ok(await as_b.post(f"{C}/consensus/{cons['id']}/vote", json=ballot))
        released = await as_a.delete(f"{C}/lease/{lease['id']}", params={"tenantId": TENANT, "agentId": a["id"]})
        assert ok(released)["released"] is True


async def test_a_forged_secret_for_a_real_agent_is_401_everywhere(role_app, admin, redis_client, keys):
    a, b = await enrol(admin, "real"), await enrol(admin, "peer")
    async with as_credential(role_app, a["credential"]) as as_a:
        lease = ok(await as_a.post(f"{C}/lease", json={"contactEmail": CONTACT}), 201)
    async with as_credential(role_app, b["credential"]) as as_b:
        cons = ok(await as_b.post(f"{C}/consensus", json={"action": "x"}), 201)
    before = await tenant_snapshot(redis_client, keys, TENANT)
    fake = forged(TENANT, a["id"])
    async with as_credential(role_app, fake) as forger:
        acting = [
            forger.post(f"{C}/heartbeat", json={"agentId": a["id"]}),
            forger.post(f"{C}/lease", json={"contactEmail": "bob@example.com"}),
            forger.post(f"{C}/lease/{lease['id']}/renew", json={}),
            forger.delete(f"{C}/lease/{lease['id']}"),
            forger.post(f"{C}/send-check", json={"contactEmail": CONTACT}),
            forger.post(f"{C}/consensus", json={"action": "x"}),
            forger.post(f"{C}/consensus/{cons['id']}/vote", json={"vote": "approve"}),
        ]
        reads = [
            forger.get(f"{V1}/agents"),
            forger.get(f"{V1}/agents/{a['id']}"),
            forger.get(f"{C}/lease/{lease['id']}"),
            forger.get(f"{C}/leases", params={"agentId": a["id"]}),
            forger.get(f"{C}/consensus"),
            forger.get(f"{C}/consensus/{cons['id']}"),
            forger.get(f"{C}/events", params={"after": "0", "limit": 10}),
        ]
        for call in (*acting, *reads):
            body = problem(await call, 401, "unauthorized")
            assert CONTACT not in body["detail"] and "real" not in body["detail"].split(), body
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


async def test_an_admin_forced_release_is_recorded_as_the_keys(role_app, admin, redis_client, keys):
    a = await enrol(admin, "holder")
    async with as_credential(role_app, a["credential"]) as as_a:
        first = ok(await as_a.post(f"{C}/lease", json={"contactEmail": CONTACT}), 201)
        second = ok(await as_a.post(f"{C}/lease", json={"contactEmail": "bob@example.com"}), 201)
        assert ok(await as_a.delete(f"{C}/lease/{second['id']}"))["released"] is True
    assert ok(await admin.delete(f"{C}/lease/{first['id']}"))["released"] is True
    assert not await redis_client.exists(keys.lease(TENANT, CONTACT))
    released = [e for e in await events(admin) if e["type"] == "lease.released"]
    assert [(e["fencingToken"], e["reason"], e["actor"], e["actorRole"], e["agentId"]) for e in released] == [
        (second["fencingToken"], "released", a["id"], "agent", a["id"]),
        (first["fencingToken"], "forced", "cfg-1", "admin", a["id"]),
    ], released
