"""Liveness, in real time: `concord serve` with a one-second heartbeat window on
a private redis-server.

An agent that stops heartbeating turns inactive: it cannot vote, it drops out of
a request's eligible peers, and its lease stops protecting the contact, so
another agent takes it over with a larger fencing token, and the lapsed agent's
old token is refused at send-check. Tokens keep growing across takeovers and
across a Redis restart that lost every key. Heartbeats keep an agent active.

Nothing here sleeps to wait: each test polls with a deadline until the window
has passed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import V1, C, problem, verdict
from tests.support.api import Fleet as FleetAuth
from tests.support.helpers import HANG_SECONDS, Stack, eventually, redis_server, running_stack

pytestmark = pytest.mark.real

TENANT, API_KEY = "acme", "acme-liveness-key-0123456789"
WINDOW = 1  # seconds: CONCORD_HEARTBEAT_WINDOW_SECONDS
# Long enough for a lapse to show many times over; only a hang reaches it.
LAPSE_DEADLINE = 15.0


@pytest.fixture
def stack(real_redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """A private redis-server without persistence and a service with a 1 s window.
    (real_redis_url only decides whether a real Redis may be used: skip, or fail if required.)"""
    settings = {"CONCORD_API_KEYS": f"{TENANT}:{API_KEY}", "CONCORD_HEARTBEAT_WINDOW_SECONDS": str(WINDOW)}
    with running_stack(tmp_path, settings) as stack:
        yield stack


async def poll(check: Callable[[], Awaitable[object]], what: str, every: float = 0.1) -> object:
    """Await ``check()`` until truthy; only a hang reaches LAPSE_DEADLINE."""
    return await eventually(check, timeout=LAPSE_DEADLINE, what=what, every=every)


def fleet_client(stack: Stack) -> httpx.AsyncClient:
    """A client of the service that authenticates as a fleet does: each agent it
    registered with that agent's credential, everything else with the tenant's key."""
    return httpx.AsyncClient(base_url=stack.service.url, auth=FleetAuth(API_KEY), timeout=HANG_SECONDS)


class Fleet:
    """The agents of one tenant, driven over HTTP, each with its own credential."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def register(self, name: str, expect: int = 201) -> dict:
        r = await self.client.post(f"{V1}/register", json={"agentName": name})
        assert r.status_code == expect, r.text
        return r.json()

    async def heartbeat(self, *agents: dict) -> None:
        for agent in agents:
            r = await self.client.post(f"{C}/heartbeat", json={"agentId": agent["id"]})
            assert r.status_code == 200 and r.json()["status"] == "active", r.text

    async def status(self, agent: dict) -> str:
        r = await self.client.get(f"{V1}/agents/{agent['id']}")
        assert r.status_code == 200, r.text
        return r.json()["status"]

    async def lapse(self, agent: dict, *alive: dict) -> None:
        """Wait until ``agent`` is inactive, heartbeating the ``alive`` ones meanwhile."""

        async def lapsed() -> bool:
            await self.heartbeat(*alive)
            return await self.status(agent) == "inactive"

        await poll(lapsed, f"agent {agent['agentName']} to turn inactive")

    async def lease(self, agent: dict, contact: str) -> httpx.Response:
        return await self.client.post(f"{C}/lease", json={"agentId": agent["id"], "contactEmail": contact})

    async def send_check(self, agent: dict, contact: str, token: int | None = None) -> dict:
        body = {"agentId": agent["id"], "contactEmail": contact}
        if token is not None:
            body["fencingToken"] = token
        r = await self.client.post(f"{C}/send-check", json=body)
        assert r.status_code == 200, r.text
        return verdict(r.json(), contact)


async def test_heartbeats_keep_an_agent_active_across_several_windows(stack: Stack):
    async with fleet_client(stack) as client:
        fleet = Fleet(client)
        steady, silent = await fleet.register("steady"), await fleet.register("silent")
        started = time.monotonic()
        beats: list[str] = []

        async def several_windows_passed() -> bool:
            # Checked before each heartbeat: the previous one, one poll interval ago, still counts.
            assert await fleet.status(steady) == "active"
            r = await client.post(f"{C}/heartbeat", json={"agentId": steady["id"]})
            assert r.status_code == 200, r.text
            beats.append(r.json()["lastHeartbeat"])
            return time.monotonic() - started > 4 * WINDOW and await fleet.status(silent) == "inactive"

        await poll(several_windows_passed, "four heartbeat windows", every=0.25)
        assert beats == sorted(beats) and len(set(beats)) > 4, beats

        listed = await client.get(f"{V1}/agents", params={"status": "active"})
        assert [a["id"] for a in listed.json()["agents"]] == [steady["id"]], listed.text
        # A heartbeat brings a lapsed agent back.
        await fleet.heartbeat(silent)
        assert await fleet.status(silent) == "active"


async def test_a_lapsed_agent_loses_its_vote_and_its_lease(stack: Stack):
    async with fleet_client(stack) as client:
        fleet = Fleet(client)
        a, b, c, requester = [await fleet.register(name) for name in ("sdr", "retention", "support", "manager")]
        contact = "alice@example.com"

        created = await client.post(f"{C}/consensus", json={"requestingAgentId": requester["id"], "action": "offer"})
        assert created.status_code == 201, created.text
        consensus = created.json()
        assert consensus["tally"] == {"approve": 0, "reject": 0, "eligible": 3, "needed": 2}

        first = await fleet.lease(a, contact)
        assert first.status_code == 201, first.text
        lease_a = first.json()
        problem(await fleet.lease(b, contact), 409, "lease_conflict")

        # A stops heartbeating; the others keep going.
        await fleet.lapse(a, b, c, requester)
        assert (await client.get(f"{V1}/agents/{a['id']}")).json()["lastHeartbeat"] == a["lastHeartbeat"]
        inactive = await client.get(f"{V1}/agents", params={"status": "inactive"})
        assert [x["id"] for x in inactive.json()["agents"]] == [a["id"]], inactive.text

        # It cannot vote, and it no longer counts among the eligible peers.
        await fleet.heartbeat(b, c, requester)
        vote = await client.post(f"{C}/consensus/{consensus['id']}/vote", json={"agentId": a["id"], "vote": "approve"})
        problem(vote, 409, "agent_inactive")
        read = await client.get(f"{C}/consensus/{consensus['id']}")
        assert read.json()["status"] == "pending", read.text
        assert read.json()["tally"] == {"approve": 0, "reject": 0, "eligible": 2, "needed": 2}, read.text

        # Its lease protects nothing: B takes the contact over, under a new id and a larger token.
        await fleet.heartbeat(b)
        taken = await fleet.lease(b, contact)
        assert taken.status_code == 201, taken.text
        lease_b = taken.json()
        assert lease_b["agentId"] == b["id"] and lease_b["id"] != lease_a["id"], lease_b
        assert lease_b["fencingToken"] > lease_a["fencingToken"], (lease_a, lease_b)
        problem(await client.get(f"{C}/lease/{lease_a['id']}"), 404, "lease_not_found")

        # A, lapsed, may not send at all; back again, its old token is stale and B holds the contact.
        assert await fleet.send_check(a, contact, lease_a["fencingToken"]) == {
            "allowed": False,
            "reason": "agent_inactive",
        }
        await fleet.heartbeat(a, b)
        stale = await fleet.send_check(a, contact, lease_a["fencingToken"])
        assert stale["allowed"] is False and stale["reason"] == "stale_fencing_token", stale
        assert stale["leaseHolder"]["agentId"] == b["id"], stale
        assert (await fleet.send_check(a, contact))["reason"] == "lease_conflict"
        assert await fleet.send_check(b, contact, lease_b["fencingToken"]) == {"allowed": True}
        conflict = problem(await fleet.lease(a, contact), 409, "lease_conflict")
        assert conflict["leaseHolder"]["agentId"] == b["id"], conflict

        # Now B lapses and C takes over: the token grows again, and B's token is stale.
        await fleet.lapse(b, a, c, requester)
        await fleet.heartbeat(c)
        again = await fleet.lease(c, contact)
        assert again.status_code == 201, again.text
        lease_c = again.json()
        assert lease_c["agentId"] == c["id"] and lease_c["id"] not in (lease_a["id"], lease_b["id"]), lease_c
        assert lease_a["fencingToken"] < lease_b["fencingToken"] < lease_c["fencingToken"]
        await fleet.heartbeat(b)
        assert (await fleet.send_check(b, contact, lease_b["fencingToken"]))["reason"] == "stale_fencing_token"
        assert await fleet.send_check(c, contact, lease_c["fencingToken"]) == {"allowed": True}


async def test_fencing_tokens_keep_growing_across_a_redis_restart_that_lost_the_data(stack: Stack):
    contacts = ["alice@example.com", "bob@example.com", "carol@example.com"]
    async with fleet_client(stack) as client:
        fleet = Fleet(client)
        a = await fleet.register("sdr")
        tokens = []
        for contact in contacts:
            r = await fleet.lease(a, contact)
            assert r.status_code == 201, r.text
            tokens.append(r.json()["fencingToken"])
        assert tokens == sorted(set(tokens)), tokens
        redis = stack.redis.client()
        try:
            assert int(redis.get(stack.keys.fence(TENANT))) == tokens[-1]
        finally:
            redis.close()

        # Redis stops without saving and comes back empty on the same port.
        stack.redis.stop()
        with redis_server(stack.directory / "redis-again", port=stack.redis.port) as fresh:
            empty = fresh.client()
            try:
                assert empty.dbsize() == 0
            finally:
                empty.close()

            async def registered() -> httpx.Response | None:
                r = await client.post(f"{V1}/register", json={"agentName": "sdr"})
                return r if r.status_code in (200, 201) else None

            answer = await poll(registered, "the service to reach the restarted Redis")
            assert answer.status_code == 201, answer.text  # the agent was lost with the data
            again = answer.json()
            assert again["id"] == a["id"]  # the same name is the same agent
            # Its credential before the loss is not the new one: registering again is how
            # a restarted agent gets going, with the credential that registering answered.
            lost = await client.post(f"{C}/heartbeat", json={}, headers={"Authorization": f"Bearer {a['credential']}"})
            problem(lost, 401, "unauthorized")

            later = []
            for contact in contacts:
                r = await fleet.lease(again, contact)
                assert r.status_code == 201, r.text  # the lost leases are gone: a new grant
                later.append(r.json()["fencingToken"])
            assert min(later) > max(tokens), (tokens, later)
            assert later == sorted(set(later)), later
