"""Quotas: what one tenant may hold at once (docs/api.md, Quotas).

On fakeredis, a real Redis and a cluster, in process: an admin reads, sets and
resets a tenant's quotas; past each one (agents, leases per agent, pending
consensus requests) the change is 403 quota_exceeded naming the quota and its
value, with nothing written, while another tenant is not held back. Streams and
long polls, counted per worker process, on a running `concord serve`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from concord.server.settings import ConfigError, Quotas, Settings, parse_quotas
from tests.support.api import (
    OTHER_TENANT,
    TENANT,
    V1,
    C,
    acquire,
    bearer,
    credential_of,
    invalid,
    ok,
    problem,
    register,
    request_consensus,
    tenant_snapshot,
)
from tests.support.helpers import HANG_SECONDS, Stack, eventually, running_stack

QUOTAS = f"{V1}/quotas"
DEFAULTS = {"agents": 10_000, "leasesPerAgent": 1_000, "pendingConsensus": 1_000, "streams": 100}


def exceeded(response, quota: str, limit: int) -> dict:
    body = problem(response, 403, "quota_exceeded", quota=quota, limit=limit)
    assert f"{limit:,}" in body["detail"] and "PUT /v1/agent/quotas" in body["detail"]
    return body


async def test_an_admin_reads_sets_and_resets_the_tenants_quotas(client, other_client):
    assert ok(await client.get(QUOTAS)) == {"tenantId": TENANT, **DEFAULTS}

    changed = ok(await client.put(QUOTAS, json={"agents": 5, "streams": 2}))

    assert changed == {"tenantId": TENANT, **DEFAULTS, "agents": 5, "streams": 2}
    assert ok(await client.get(QUOTAS)) == changed
    assert ok(await client.put(QUOTAS, json={"leasesPerAgent": 7}))["agents"] == 5  # the others stay
    assert ok(await other_client.get(QUOTAS)) == {"tenantId": OTHER_TENANT, **DEFAULTS}
    assert ok(await client.delete(QUOTAS)) == {"tenantId": TENANT, **DEFAULTS}
    assert ok(await client.get(QUOTAS)) == {"tenantId": TENANT, **DEFAULTS}


@pytest.mark.parametrize("body, field", [({"agents": 0}, "$.agents"), ({"streams": 10**10}, "$.streams")])
async def test_a_quota_out_of_range_is_refused(client, body, field):
    invalid(await client.put(QUOTAS, json=body), field)


async def test_only_an_admin_changes_quotas(client, redis_client, keys):
    agent = await register(client, "sdr")
    as_agent = bearer(credential_of(client, agent["id"]))
    assert ok(await client.get(QUOTAS, headers=as_agent))["agents"] == DEFAULTS["agents"]
    for method in ("PUT", "DELETE"):
        r = await client.request(method, QUOTAS, json={"agents": 1} if method == "PUT" else None, headers=as_agent)
        problem(r, 403, "insufficient_scope", keyRole="agent")
    assert not await redis_client.exists(keys.quotas(TENANT))


async def test_registering_past_the_agents_quota_is_refused_with_nothing_written(
    client, other_client, redis_client, keys
):
    ok(await client.put(QUOTAS, json={"agents": 2}))
    first, _ = await register(client, "a-1"), await register(client, "a-2")
    before = await tenant_snapshot(redis_client, keys, TENANT)

    exceeded(await client.post(f"{V1}/register", json={"agentName": "a-3"}), "agents", 2)

    assert await tenant_snapshot(redis_client, keys, TENANT) == before
    # Registering an agent again is no new agent; another tenant has its own quota.
    assert (await client.post(f"{V1}/register", json={"agentName": "a-1"})).status_code == 200
    await register(other_client, "b-1")
    ok(await client.delete(f"{V1}/agents/{first['id']}"))
    await register(client, "a-3")


async def test_a_lease_past_the_agents_quota_is_refused_and_an_extension_is_not(client, redis_client, keys):
    ok(await client.put(QUOTAS, json={"leasesPerAgent": 2}))
    sdr, other = await register(client, "sdr"), await register(client, "other")
    held = [await acquire(client, sdr["id"], f"c{i}@example.com") for i in range(2)]
    before = await tenant_snapshot(redis_client, keys, TENANT)

    r = await client.post(f"{C}/lease", json={"agentId": sdr["id"], "contactEmail": "c2@example.com"})
    exceeded(r, "leasesPerAgent", 2)

    assert await tenant_snapshot(redis_client, keys, TENANT) == before
    again = await client.post(f"{C}/lease", json={"agentId": sdr["id"], "contactEmail": "c0@example.com"})
    assert ok(again)["fencingToken"] == held[0]["fencingToken"]  # its own lease, extended
    await acquire(client, other["id"], "c2@example.com")  # the quota is per agent
    ok(await client.delete(f"{C}/lease/{held[1]['id']}"))
    await acquire(client, sdr["id"], "c3@example.com")


async def test_a_request_past_the_pending_quota_is_refused(client, redis_client, keys):
    ok(await client.put(QUOTAS, json={"pendingConsensus": 1}))
    sdr, peer = await register(client, "sdr"), await register(client, "peer")
    pending = await request_consensus(client, sdr["id"])
    before = await tenant_snapshot(redis_client, keys, TENANT)

    r = await client.post(f"{C}/consensus", json={"requestingAgentId": sdr["id"], "action": "another"})
    exceeded(r, "pendingConsensus", 1)

    assert await tenant_snapshot(redis_client, keys, TENANT) == before
    vote = {"agentId": peer["id"], "vote": "approve"}
    assert ok(await client.post(f"{C}/consensus/{pending['id']}/vote", json=vote))["status"] == "approved"
    await request_consensus(client, sdr["id"])  # decided requests do not count


def test_concord_quotas_parse_as_documented():
    assert parse_quotas("") == Quotas()
    assert parse_quotas("agents=20000, leasesPerAgent=50") == Quotas(agents=20_000, leases_per_agent=50)
    assert Settings.from_env({"CONCORD_QUOTAS": "streams=3"}).quotas.streams == 3


@pytest.mark.parametrize("raw", ["agents", "agents=0", "agents=x", "sessions=4", "agents=1,agents=2", "streams=1e3"])
def test_a_malformed_concord_quotas_is_refused_naming_it(raw):
    with pytest.raises(ConfigError, match="CONCORD_QUOTAS"):
        parse_quotas(raw)


# --- streams and long polls, on a running service -----------------------------

STREAM_KEY = "acme-quota-streams-0123456789"


@pytest.fixture(scope="module")
def one_stream(real_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = {"CONCORD_API_KEYS": f"{TENANT}:{STREAM_KEY}", "CONCORD_QUOTAS": "streams=1"}
    with running_stack(tmp_path_factory.mktemp("quota-streams"), settings) as stack:
        yield stack


@pytest.mark.real
async def test_a_stream_past_the_streams_quota_is_refused_until_one_closes(one_stream: Stack):
    async with one_stream.service.client(STREAM_KEY) as client:
        assert ok(await client.get(QUOTAS))["streams"] == 1
        sdr = await register(client, "poll-sdr")
        await register(client, "poll-peer")
        cons = await request_consensus(client, sdr["id"])
        path = f"{C}/consensus/{cons['id']}"
        # A stream's 200 comes once it listens (streaming.py): from then on it holds the one place.
        async with client.stream("GET", f"{C}/events") as stream:
            assert stream.status_code == 200
            exceeded(await client.get(path, params={"waitSeconds": 30}), "streams", 1)
            exceeded(await client.get(f"{C}/events"), "streams", 1)
            assert ok(await client.get(path))["status"] == "pending"  # a read that does not wait is no stream

        async def polls() -> bool:
            r = await asyncio.wait_for(client.get(path, params={"waitSeconds": 1}), HANG_SECONDS)
            return r.status_code == 200

        await eventually(polls, what="the closed stream's place to be free")
