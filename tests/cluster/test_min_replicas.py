"""CONCORD_MIN_REPLICAS: a state change is answered only once that many replicas
hold it (WAIT on the connection that wrote it), on one Redis with a replica and on
a Redis Cluster. When the replicas do not confirm in time the answer is 503
`store_unavailable`, the change stands on the master, and sending it again is
harmless; reads are never held up by replicas.

A replica is made to stop confirming by SIGSTOP (it then reads nothing of its
master's stream until SIGCONT). The cluster variant uses a cluster of its own,
since a paused node must not trouble the session's cluster."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio

from concord.server.app import create_app
from concord.server.redis.batcher import Replication
from concord.server.settings import ConfigError, Settings, key_digest, parse_api_keys
from concord.server.store.keys import Keys
from tests.conftest import API_KEY, TENANT, running
from tests.support.api import V1, C, Fleet, ok, problem
from tests.support.cluster import redis_cluster
from tests.support.helpers import RedisServer, redis_server, wait_until

pytestmark = pytest.mark.real


@pytest.mark.parametrize("value, expected", [("0", 0), ("1", 1), ("2", 2)])
def test_min_replicas_is_a_setting(value: str, expected: int):
    settings = Settings.from_env({"CONCORD_REDIS_URL": "redis://r:6379", "CONCORD_MIN_REPLICAS": value})
    assert settings.min_replicas == expected
    # WAIT gives the replicas half the Redis deadline; the other half is the write's.
    assert Replication.within(settings.min_replicas, settings.redis_timeout_seconds).timeout_ms == 1000


@pytest.mark.parametrize(
    "env, message",
    [
        ({"CONCORD_MIN_REPLICAS": "1"}, "needs CONCORD_REDIS_URL"),
        ({"CONCORD_REDIS_URL": "redis://r:6379", "CONCORD_MIN_REPLICAS": "-1"}, "CONCORD_MIN_REPLICAS"),
        ({"CONCORD_REDIS_URL": "redis://r:6379", "CONCORD_MIN_REPLICAS": "one"}, "CONCORD_MIN_REPLICAS"),
    ],
)
def test_min_replicas_is_checked_at_start(env: dict[str, str], message: str):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


@dataclass
class Replicated:
    """A Redis deployment with one replica behind the tenant's master."""

    client: Callable[[], redis.asyncio.Redis]  # the service's client
    replica: RedisServer  # the replica of the master holding the tenant
    cluster: bool

    def replica_client(self) -> redis.Redis:
        client = self.replica.client(socket_timeout=5)
        if self.cluster:
            client.execute_command("READONLY")  # a cluster replica answers reads of its master's slots
        return client

    @contextmanager
    def replica_paused(self) -> Iterator[None]:
        os.kill(self.replica.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.replica.process.pid, signal.SIGCONT)


@contextmanager
def one_redis_and_a_replica(directory: Path) -> Iterator[Replicated]:
    with (
        redis_server(directory / "master") as master,
        redis_server(directory / "replica", "--save", "", "--replicaof", "127.0.0.1", str(master.port)) as replica,
    ):
        with master.client() as client:
            wait_until(lambda: "online" in str(client.info("replication").get("slave0")), what="the replica in sync")
        yield Replicated(lambda: redis.asyncio.Redis.from_url(master.url, decode_responses=True), replica, False)


@contextmanager
def a_cluster(directory: Path) -> Iterator[Replicated]:
    with redis_cluster(directory) as cluster:
        master = cluster.master_of_slot(cluster.client().keyslot(f"{{{TENANT}}}"))
        (replica,) = cluster.replicas_of(master)
        yield Replicated(cluster.async_client, replica.server, True)


@pytest.fixture(params=["redis", "cluster"])
def replicated(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replicated]:
    with (one_redis_and_a_replica if request.param == "redis" else a_cluster)(tmp_path) as deployment:
        yield deployment


@asynccontextmanager
async def concord(
    deployment: Replicated, prefix: str, min_replicas: int = 1, redis_timeout_seconds: float = 1.0
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        redis_url="redis://injected-by-tests",
        redis_cluster=deployment.cluster,
        api_keys=parse_api_keys(f"{TENANT}:{API_KEY}"),
        key_prefix=prefix,
        redis_timeout_seconds=redis_timeout_seconds,
        min_replicas=min_replicas,
    )
    client = deployment.client()
    if deployment.cluster:
        await client.initialize()
    try:
        async with running(create_app(settings, client)) as app:
            transport = httpx.ASGITransport(app=app)
            # As a fleet: the admin key registers, each agent acts with its own credential.
            async with httpx.AsyncClient(transport=transport, base_url="http://concord.test", auth=Fleet(API_KEY)) as c:
                yield c
    finally:
        await client.aclose()


async def test_an_answered_change_is_already_on_the_replica(replicated: Replicated, prefix: str):
    keys = Keys(prefix)
    # A deadline that a loaded machine's replica meets (WAIT gets half of it): this
    # test is about what an answer guarantees, not about the time it may take.
    async with concord(replicated, prefix, redis_timeout_seconds=10.0) as client:
        agent = ok(await client.post(f"{V1}/register", json={"agentName": "sdr"}), 201)
        lease = ok(await client.post(f"{C}/lease", json={"agentId": agent["id"], "contactEmail": "a@x.io"}), 201)
        # Read from the replica straight after the answer: no waiting, WAIT did it.
        with replicated.replica_client() as replica:
            assert replica.hget(keys.agent(TENANT, agent["id"]), "agentName") == "sdr"
            # Its credential too: after a failover to this replica the agent keeps acting.
            assert replica.hget(keys.agent(TENANT, agent["id"]), "credential") == key_digest(agent["credential"])
            assert replica.get(keys.lease(TENANT, "a@x.io")) is not None
            assert replica.get(keys.fence(TENANT)) == str(lease["fencingToken"])


async def test_a_change_the_replica_does_not_confirm_answers_503_and_is_safe_to_retry(
    replicated: Replicated, prefix: str
):
    async with concord(replicated, prefix) as client:
        agent = ok(await client.post(f"{V1}/register", json={"agentName": "sdr"}), 201)
        # Redis learns the script first: a call that meets NOSCRIPT with the replica
        # down would wait for it twice, and meet the request's deadline instead.
        ok(await client.post(f"{C}/lease", json={"agentId": agent["id"], "contactEmail": "first@x.io"}), 201)
        body = {"agentId": agent["id"], "contactEmail": "a@x.io"}
        with replicated.replica_paused():
            refused = problem(await client.post(f"{C}/lease", json=body), 503, "store_unavailable")
            assert "CONCORD_MIN_REPLICAS" in refused["detail"] and "safe" in refused["detail"]
            # Reads wait for no replica.
            check = await client.post(f"{C}/send-check", json={"agentId": agent["id"], "contactEmail": "a@x.io"})
            assert ok(check)["allowed"] is True  # the lease was made on the master: it is the agent's own
        # The same request again, once the replica is back: the lease the 503 made, confirmed.
        again = await client.post(f"{C}/lease", json=body)
        assert again.status_code == 200, again.text  # an extension of its own lease, not a new grant
        assert again.json()["agentId"] == agent["id"]


async def test_without_min_replicas_nothing_waits_for_the_replica(replicated: Replicated, prefix: str):
    async with concord(replicated, prefix, min_replicas=0) as client:
        agent = ok(await client.post(f"{V1}/register", json={"agentName": "sdr"}), 201)
        with replicated.replica_paused():
            ok(await client.post(f"{C}/lease", json={"agentId": agent["id"], "contactEmail": "a@x.io"}), 201)
