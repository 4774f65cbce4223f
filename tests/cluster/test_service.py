"""`concord serve` on a Redis Cluster (CONCORD_REDIS_CLUSTER=true): configuration,
and the service's own Redis work across the cluster: the batcher's replacement
(scripts through the cluster client), the event feed's blocked XREAD on the
tenant's master, and Redis's time asked of that master."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import redis.asyncio

from concord.server.settings import ConfigError, Settings
from concord.server.store.agents import Agents
from tests.support.api import V1, C, acquire, ok, problem, register, request_consensus, unknown_id
from tests.support.cluster import Cluster
from tests.support.helpers import HANG_SECONDS, ServiceProcess, service

KEY = "acme-cluster-key-0123456789"


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("false", False), ("", False)])
def test_cluster_mode_is_a_setting(value: str, expected: bool):
    env = {"CONCORD_REDIS_URL": "redis://node-1:6379", "CONCORD_REDIS_CLUSTER": value or "false"}
    assert Settings.from_env(env).redis_cluster is expected


@pytest.mark.parametrize(
    "env",
    [
        {"CONCORD_REDIS_CLUSTER": "true"},
        {"CONCORD_REDIS_CLUSTER": "true", "CONCORD_REDIS_URL": "unix:///r.sock"},
        {"CONCORD_REDIS_CLUSTER": "maybe", "CONCORD_REDIS_URL": "redis://node-1:6379"},
    ],
)
def test_cluster_mode_needs_a_node_to_start_from(env: dict[str, str]):
    with pytest.raises(ConfigError, match="CONCORD_REDIS_CLUSTER"):
        Settings.from_env(env)


@pytest.fixture(scope="module")
def on_cluster(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """Two workers on the session's cluster, under a prefix of their own."""
    settings = {
        "CONCORD_REDIS_URL": cluster.url,
        "CONCORD_REDIS_CLUSTER": "true",
        "CONCORD_API_KEYS": f"acme:{KEY}",
        "CONCORD_KEY_PREFIX": "cluster-service",
    }
    with service(settings, tmp_path_factory.mktemp("cluster-service") / "concord.log", workers=2) as proc:
        yield proc


@pytest.mark.real
async def test_the_api_works_end_to_end_on_a_cluster(on_cluster: ServiceProcess, cluster: Cluster):
    async with on_cluster.client(KEY) as client:
        sdr, peer = await register(client, "sdr"), await register(client, "peer")
        lease = await acquire(client, sdr["id"], "alice@example.com")
        conflict = await client.post(f"{C}/lease", json={"agentId": peer["id"], "contactEmail": "alice@example.com"})
        assert conflict.status_code == 409 and conflict.json()["leaseHolder"]["agentId"] == sdr["id"]
        # Reads that show liveness take Redis's time from the tenant's master.
        assert ok(await client.get(f"{V1}/agents/{sdr['id']}"))["status"] == "active"
        assert {a["status"] for a in ok(await client.get(f"{V1}/agents"))["agents"]} == {"active"}
        cons = await request_consensus(client, sdr["id"])
        waiting = asyncio.ensure_future(client.get(f"{C}/consensus/{cons['id']}", params={"waitSeconds": 30}))
        ok(await client.post(f"{C}/consensus/{cons['id']}/vote", json={"agentId": peer["id"], "vote": "approve"}))
        assert ok(await asyncio.wait_for(waiting, HANG_SECONDS))["status"] == "approved"
        assert [c["status"] for c in ok(await client.get(f"{C}/consensus"))["consensus"]] == ["approved"]
        ok(await client.delete(f"{C}/lease/{lease['id']}", params={"agentId": sdr["id"]}))

        # Every key lives on the master of the tenant's slot, as the key schema says.
        db = cluster.client()
        try:
            slot = db.keyslot("{acme}")
            owner = cluster.master_of_slot(slot).client()
            assert owner.exists("cluster-service:{acme}:events") == 1
            assert owner.xlen("cluster-service:{acme}:events") == 7  # 2 agents, grant, request, vote, decision, release
        finally:
            db.close()


@pytest.mark.real
async def test_a_live_stream_on_a_cluster_gets_each_change(on_cluster: ServiceProcess):
    async with on_cluster.client(KEY) as client:
        agent = await register(client, "streamer")
        async with client.stream("GET", f"{C}/events", params={"agentId": agent["id"], "type": "lease"}) as stream:
            assert stream.status_code == 200
            await acquire(client, agent["id"], "bob@example.com")
            async with asyncio.timeout(HANG_SECONDS):
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        event = json.loads(line.removeprefix("data:"))
                        break
        assert (event["type"], event["contactEmail"]) == ("lease.acquired", "bob@example.com")


async def _closed_under_the_command(self, tenant: str, agent_id: str):
    # What redis-py's asyncio cluster client does when a failover makes it close a
    # connection a command is using: the command meets the connection's missing writer.
    connection = redis.asyncio.Connection()  # never connected: no writer, like one closed under a command
    await connection._send_packed_command([b"PING"])


async def _our_own_bug(self, tenant: str, agent_id: str):
    return None.name  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "broken, status, code",
    [(_closed_under_the_command, 503, "store_unavailable"), (_our_own_bug, 500, "internal_error")],
)
async def test_redis_pys_own_failures_are_503_and_ours_500(
    client, monkeypatch: pytest.MonkeyPatch, broken, status: int, code: str
):
    monkeypatch.setattr(Agents, "get", broken)
    problem(await client.get(f"{V1}/agents/{unknown_id('agent')}"), status, code)
