"""Faults, with real processes: `concord serve` on a private redis-server that is
stopped, frozen, or configured to evict.

A stopped or frozen Redis makes every endpoint answer 503 problem+json
`store_unavailable` within a few seconds (a hang is the failure), /readyz 503 and
/healthz 200; once Redis is back the service works again without a restart. A
Redis that may evict keys with a TTL (the leases) is a warning in the log at
start-up.

The fault-injection suite with figures, one module per fault and its overview in
tests/system/faults_support.py: Redis SIGKILLed and restarted from its AOF
(test_fault_redis_restarted_from_aof.py), restarted empty
(test_fault_redis_restarted_empty.py), stalled under concurrent load with nothing
applied twice (test_fault_redis_stalled.py, and test_fault_redis_reply_lost.py for
a lost reply), a service process SIGKILLed (test_fault_service_process_killed.py),
a holder stalled past its lease (test_fault_holder_stalled_past_lease.py), all in
tests/system/; keys of the wrong type are tests/lua/test_wrong_types.py.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.api import V1, C, problem
from tests.support.helpers import Stack, eventually, redis_server, running_stack

pytestmark = pytest.mark.real

TENANT, API_KEY = "acme", "acme-faults-key-0123456789"
# Redis keeps what it was told before it stopped, so the state the service sees
# again after a restart is the state it left.
PERSISTENT = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")


@pytest.fixture
def stack(real_redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """A persistent private redis-server and a service whose Redis deadline is 1 s.
    (real_redis_url only decides whether a real Redis may be used: skip, or fail if required.)"""
    settings = {"CONCORD_API_KEYS": f"{TENANT}:{API_KEY}", "CONCORD_REDIS_TIMEOUT_SECONDS": "1"}
    with running_stack(tmp_path, settings, *PERSISTENT) as stack:
        yield stack


@dataclass
class World:
    """Things that exist before the fault, so every endpoint has something to ask about."""

    agent: dict
    peer: dict
    lease: dict
    consensus: dict


async def build_world(client: httpx.AsyncClient) -> World:
    agent = (await client.post(f"{V1}/register", json={"agentName": "sdr"})).json()
    peer = (await client.post(f"{V1}/register", json={"agentName": "support"})).json()
    lease = await client.post(f"{C}/lease", json={"agentId": agent["id"], "contactEmail": "alice@example.com"})
    assert lease.status_code == 201, lease.text
    consensus = await client.post(f"{C}/consensus", json={"requestingAgentId": agent["id"], "action": "offer"})
    assert consensus.status_code == 201, consensus.text
    return World(agent, peer, lease.json(), consensus.json())


def every_endpoint(w: World) -> list[tuple[str, str, dict | None, dict | None]]:
    """(method, path, json body, query) for each /v1 endpoint, aimed at live things."""
    lease, cons = f"{C}/lease/{w.lease['id']}", f"{C}/consensus/{w.consensus['id']}"
    agent_id, email = w.agent["id"], "alice@example.com"
    return [
        ("POST", f"{V1}/register", {"agentName": "newcomer"}, None),
        ("GET", f"{V1}/agents", None, None),
        ("GET", f"{V1}/agents/{agent_id}", None, None),
        ("DELETE", f"{V1}/agents/{w.peer['id']}", None, None),
        ("POST", f"{C}/heartbeat", {"agentId": agent_id}, None),
        ("POST", f"{C}/lease", {"agentId": agent_id, "contactEmail": "bob@example.com"}, None),
        ("GET", lease, None, None),
        ("POST", f"{lease}/renew", {"agentId": agent_id, "durationMinutes": 5}, None),
        ("DELETE", lease, None, {"agentId": agent_id}),
        ("GET", f"{C}/leases", None, {"agentId": agent_id}),
        ("POST", f"{C}/send-check", {"agentId": agent_id, "contactEmail": email}, None),
        ("POST", f"{C}/consensus", {"requestingAgentId": agent_id, "action": "offer"}, None),
        ("GET", f"{C}/consensus", None, None),
        ("GET", cons, None, None),
        ("POST", f"{cons}/vote", {"agentId": w.peer["id"], "vote": "approve"}, None),
    ]


async def assert_unavailable(client: httpx.AsyncClient, w: World) -> None:
    """Every endpoint, all asked at once, answers 503 store_unavailable. The client's
    timeout is the bound: a request still unanswered after it raises, and that is the failure."""
    endpoints = every_endpoint(w)
    answers = await asyncio.gather(
        *(client.request(method, path, json=body, params=query) for method, path, body, query in endpoints)
    )
    for (method, path, _, _), r in zip(endpoints, answers):
        assert r.status_code == 503, (method, path, r.status_code, r.text)
        problem(r, 503, "store_unavailable")
        assert r.headers.get("retry-after") == "1", (method, path, r.headers)
    ready = await client.get("/readyz")
    problem(ready, 503, "store_unavailable")
    health = await client.get("/healthz")
    assert health.status_code == 200, health.text


async def assert_working(client: httpx.AsyncClient, w: World, state_kept: bool) -> None:
    """The service answers from Redis again. ``state_kept``: nothing sent during the
    fault reached Redis, so the state is exactly the one from before it."""

    async def registers() -> bool:
        r = await client.post(f"{V1}/register", json={"agentName": "sdr"})
        return r.status_code == 200

    await eventually(registers, timeout=15, what="the service to reach Redis again")
    assert (await client.get("/readyz")).status_code == 200
    fresh = await client.post(f"{V1}/register", json={"agentName": f"after-{uuid.uuid4().hex[:8]}"})
    assert fresh.status_code == 201, fresh.text
    lease = await client.post(f"{C}/lease", json={"agentId": fresh.json()["id"], "contactEmail": "dave@example.com"})
    assert lease.status_code == 201, lease.text
    assert lease.json()["fencingToken"] > w.lease["fencingToken"], lease.text
    if not state_kept:
        return
    held = await client.get(f"{C}/lease/{w.lease['id']}")
    assert held.status_code == 200 and held.json()["fencingToken"] == w.lease["fencingToken"], held.text
    renewed = await client.post(f"{C}/lease/{w.lease['id']}/renew", json={"agentId": w.agent["id"]})
    assert renewed.status_code == 200, renewed.text
    taken = await client.post(f"{C}/lease", json={"agentId": w.peer["id"], "contactEmail": "alice@example.com"})
    problem(taken, 409, "lease_conflict")


async def test_redis_stopped_mid_run_gives_503_and_the_service_recovers(stack: Stack):
    async with stack.service.client(API_KEY) as client:
        world = await build_world(client)
        stack.redis.stop()
        await assert_unavailable(client, world)
        with redis_server(stack.redis.directory, *PERSISTENT, port=stack.redis.port):
            await assert_working(client, world, state_kept=True)


async def test_redis_frozen_mid_run_gives_503_and_the_service_recovers(stack: Stack):
    assert stack.redis.process is not None
    async with stack.service.client(API_KEY) as client:
        world = await build_world(client)
        stack.redis.process.send_signal(signal.SIGSTOP)
        try:
            await assert_unavailable(client, world)
        finally:
            stack.redis.process.send_signal(signal.SIGCONT)
        # Commands sent to the frozen Redis run once it thaws: the state may have moved.
        await assert_working(client, world, state_kept=False)


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_an_evicting_maxmemory_policy_is_a_startup_warning(real_redis_url: str, tmp_path: Path, policy: str):
    config = ("--save", "", "--maxmemory", "100mb", "--maxmemory-policy", policy)
    with running_stack(tmp_path, {"CONCORD_API_KEYS": f"{TENANT}:{API_KEY}"}, *config) as stack:
        lines = [line for line in stack.service.log_text().splitlines() if "maxmemory-policy" in line]
        assert len(lines) == 1, stack.service.log_text()
        assert "WARNING" in lines[0] and policy in lines[0] and "noeviction" in lines[0], lines


def test_noeviction_gives_no_maxmemory_warning(real_redis_url: str, tmp_path: Path):
    config = ("--save", "", "--maxmemory", "100mb", "--maxmemory-policy", "noeviction")
    with running_stack(tmp_path, {"CONCORD_API_KEYS": f"{TENANT}:{API_KEY}"}, *config) as stack:
        # Ready means the lifespan, which checks the policy, has run and logged.
        log = stack.service.log_text()
        assert "Application startup complete" in log, log
        assert "maxmemory" not in log and "WARNING" not in log, log
