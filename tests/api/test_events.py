"""Live events: every change writes its event in the same script, in order; pages,
filters, the Server-Sent Event stream with Last-Event-ID, tenant isolation, and the
consensus long poll (``waitSeconds``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from concord.server.principals import KeyGrant
from concord.server.settings import key_digest
from concord.server.store import Store
from tests.conftest import OTHER_TENANT, TENANT
from tests.support.api import (
    V1,
    C,
    Fleet,
    acquire,
    bearer,
    credential_of,
    invalid,
    make_inactive,
    ok,
    problem,
    register,
    request_consensus,
)
from tests.support.helpers import HANG_SECONDS, Stack, eventually, running_stack

KEY, OTHER_KEY = "acme-events-key-0123456789", "globex-events-key-0123456789"
ADMIN = ("cfg-1", "admin")  # the `client` fixture's key: the first of CONCORD_API_KEYS
SERVICE = ("concord", "service")  # the clock, or lapsed voters, decided


async def page(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    return ok(await client.get(f"{C}/events", params={"after": "0", "limit": 1000, **params}))


def actor(e: dict[str, Any]) -> tuple[str, str]:
    """Who wrote the event: (actor, actorRole)."""
    return e["actor"], e["actorRole"]


def brief(e: dict[str, Any]) -> tuple[Any, ...]:
    """An event without its id and times: type, then who and what."""
    keep = ("agentId", "contactEmail", "previousAgentId", "consensusId", "vote", "status", "reason", "created")
    return (e["type"], *(e.get(name) for name in keep))


# --- every change, its event, in order -----------------------------------------------


async def test_every_change_writes_one_event_in_order_and_refusals_write_none(client, redis_client, keys):
    sdr = await register(client, "sdr")
    ok(await client.post(f"{V1}/register", json={"agentName": "sdr", "agentRole": "sdr"}))  # an update
    ret, sup = await register(client, "retention"), await register(client, "support")
    s, r, u = sdr["id"], ret["id"], sup["id"]

    lease = await acquire(client, s, "alice@example.com", intent="outbound")
    await acquire(client, s, "alice@example.com", status=200)  # the holder again: extended
    ok(await client.post(f"{C}/lease/{lease['id']}/renew", json={"agentId": s, "durationSeconds": 600}))
    problem(
        await client.post(f"{C}/lease", json={"agentId": r, "contactEmail": "alice@example.com"}), 409, "lease_conflict"
    )
    ok(await client.post(f"{C}/send-check", json={"agentId": r, "contactEmail": "alice@example.com"}))
    ok(await client.delete(f"{C}/lease/{lease['id']}", params={"agentId": s}))
    theirs = await acquire(client, r, "bob@example.com")
    await make_inactive(redis_client, keys, TENANT, r)
    taken = await acquire(client, u, "bob@example.com")

    cons = await request_consensus(client, s, action="pricing_override")
    ok(await client.post(f"{C}/consensus/{cons['id']}/vote", json={"agentId": u, "vote": "approve"}))
    ok(await client.post(f"{C}/consensus/{cons['id']}/vote", json={"agentId": u, "vote": "approve"}))  # again
    problem(
        await client.post(f"{C}/consensus/{cons['id']}/vote", json={"agentId": u, "vote": "reject"}),
        409,
        "already_voted",
    )
    ok(await client.delete(f"{V1}/agents/{u}"))

    events = (await page(client))["events"]
    assert [brief(e) for e in events] == [
        ("agent.registered", s, None, None, None, None, None, None, True),
        ("agent.registered", s, None, None, None, None, None, None, False),
        ("agent.registered", r, None, None, None, None, None, None, True),
        ("agent.registered", u, None, None, None, None, None, None, True),
        ("lease.acquired", s, "alice@example.com", None, None, None, None, None, None),
        ("lease.renewed", s, "alice@example.com", None, None, None, None, None, None),
        ("lease.renewed", s, "alice@example.com", None, None, None, None, None, None),
        ("lease.released", s, "alice@example.com", None, None, None, None, "released", None),
        ("lease.acquired", r, "bob@example.com", None, None, None, None, None, None),
        ("lease.taken_over", u, "bob@example.com", r, None, None, None, None, None),
        ("consensus.requested", s, None, None, cons["id"], None, None, None, None),
        ("consensus.voted", u, None, None, cons["id"], "approve", None, None, None),
        # The retention agent lapsed: support's approval is a majority of the one eligible peer.
        ("consensus.resolved", s, None, None, cons["id"], None, "approved", None, None),
        ("lease.released", u, "bob@example.com", None, None, None, None, "agent_removed", None),
        ("agent.removed", u, None, None, None, None, None, None, None),
    ]
    # Who made each change: the admin key registered and deregistered; each agent, with
    # its own credential, made its own changes (the vote that decided, the resolution too).
    assert [actor(e) for e in events] == [
        *[ADMIN] * 4,
        *[(s, "agent")] * 4,
        (r, "agent"),
        (u, "agent"),
        (s, "agent"),
        (u, "agent"),
        (u, "agent"),
        ADMIN,
        ADMIN,
    ]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) and len(set(ids)) == len(ids)
    acquired, taken_over, resolved, removed = events[4], events[9], events[12], events[14]
    assert acquired["leaseId"] == lease["id"] and acquired["fencingToken"] == lease["fencingToken"]
    assert acquired["intent"] == "outbound" and acquired["agentName"] == "sdr"
    assert taken_over["leaseId"] == taken["id"] and taken_over["previousLeaseId"] == theirs["id"]
    assert taken_over["previousFencingToken"] == theirs["fencingToken"] < taken_over["fencingToken"]
    assert taken_over["expiresAt"] == taken["expiresAt"]
    assert (resolved["approve"], resolved["reject"], resolved["eligible"], resolved["needed"]) == (1, 0, 1, 1)
    assert removed["releasedLeases"] == 1 and removed["agentName"] == "support"
    assert all(e["tenantId"] == TENANT and e["at"].endswith("Z") for e in events)
    # What Redis holds is what the page shows: one stream entry per event.
    assert await redis_client.xlen(keys.events(TENANT)) == len(events)


async def test_an_expiry_is_an_event_written_by_whoever_settles_it(client, redis_client, keys):
    sdr, peer = await register(client, "sdr"), await register(client, "peer")
    cons = await request_consensus(client, sdr["id"], timeoutSeconds=1)
    seconds, micros = await redis_client.time()
    past = seconds * 1000 + micros // 1000 - 1  # its deadline moved into the past
    await redis_client.hset(keys.consensus(TENANT, cons["id"]), "expiresAt", past)
    await redis_client.zadd(keys.consensus_due(TENANT), {cons["id"]: past})
    ok(await client.get(f"{C}/consensus", params={"status": "expired"}))  # a list settles what is due
    expired = (await page(client, type="consensus.expired"))["events"]
    assert [(e["consensusId"], e["status"], e["eligible"]) for e in expired] == [(cons["id"], "expired", 1)]
    # Written by a read (the admin key's), but the clock decided: the service's, not the reader's.
    assert [actor(e) for e in expired] == [SERVICE]
    # Read again: decided once, so no second event.
    ok(await client.get(f"{C}/consensus/{cons['id']}"))
    assert len((await page(client, type="consensus"))["events"]) == 2
    assert peer  # an eligible peer that never voted


STORE_KEY = KeyGrant(id="cfg-1", tenant=TENANT)  # the admin key a store call is made for


async def test_no_events_are_written_with_a_cap_of_zero(redis_client, keys):
    store = Store(redis_client, keys, events_max_length=0)
    agent, _ = await store.agents.register(TENANT, "quiet", None, None, STORE_KEY)
    await store.leases.acquire(TENANT, agent.id, "alice@example.com", None, 60_000, key_digest(agent.credential))
    await store.agents.rotate(TENANT, agent.id, STORE_KEY)
    await store.aclose()
    assert await redis_client.exists(keys.events(TENANT)) == 0


async def test_the_stream_is_capped_near_its_length(redis_client, keys):
    store = Store(redis_client, keys, events_max_length=100)
    agent, _ = await store.agents.register(TENANT, "chatty", None, None, STORE_KEY)
    credential = key_digest(agent.credential)
    for n in range(400):
        await store.leases.acquire(TENANT, agent.id, f"c{n}@example.com", None, 60_000, credential)
    await store.aclose()
    # MAXLEN ~ trims whole stream nodes: near the cap, never unbounded.
    assert 100 <= await redis_client.xlen(keys.events(TENANT)) < 300
    newest = await redis_client.xrevrange(keys.events(TENANT), count=1)
    assert newest[0][1]["contactEmail"] == "c399@example.com"


# --- who acted ----------------------------------------------------------------------------


async def test_a_forced_release_and_a_rotation_are_the_admin_keys(client):
    """An admin key may release any lease: a forced release, recorded as the key's,
    about the holder. Rotating a credential is recorded as the key's too, and neither
    event holds a credential."""
    sdr = await register(client, "sdr")
    lease = await acquire(client, sdr["id"], "alice@example.com")
    ok(await client.delete(f"{C}/lease/{lease['id']}"))  # no agentId: the admin key's own call
    rotated = ok(await client.post(f"{V1}/agents/{sdr['id']}/credentials"))
    released, rotation = (await page(client, type="lease.released,agent.credential_rotated"))["events"]
    assert (released["type"], actor(released), released["reason"]) == ("lease.released", ADMIN, "forced")
    assert (released["agentId"], released["leaseId"], released["contactEmail"]) == (
        sdr["id"],
        lease["id"],
        "alice@example.com",
    )
    assert (rotation["type"], actor(rotation), rotation["agentId"]) == ("agent.credential_rotated", ADMIN, sdr["id"])
    text = json.dumps([released, rotation])
    assert sdr["credential"] not in text and rotated["credential"] not in text
    assert "concord-agent." not in json.dumps((await page(client))["events"])


async def test_a_release_by_its_holder_is_the_agents(client):
    sdr = await register(client, "sdr")
    lease = await acquire(client, sdr["id"], "alice@example.com")
    # The holder's credential, with the agentId left out: filled in from the credential.
    ok(await client.delete(f"{C}/lease/{lease['id']}", headers=bearer(credential_of(client, sdr["id"]))))
    (released,) = (await page(client, type="lease.released"))["events"]
    assert (actor(released), released["agentId"], released["reason"]) == ((sdr["id"], "agent"), sdr["id"], "released")


async def test_the_events_of_one_agent_name_another_when_another_acted(client, redis_client, keys):
    """agentId is whom the event is about, actor who acted: a takeover is the new
    holder's, about it, naming the lapsed one as previousAgentId."""
    old, new = await register(client, "old"), await register(client, "new")
    await acquire(client, old["id"], "bob@example.com")
    await make_inactive(redis_client, keys, TENANT, old["id"])
    await acquire(client, new["id"], "bob@example.com")
    (taken,) = (await page(client, type="lease.taken_over"))["events"]
    assert (actor(taken), taken["agentId"], taken["previousAgentId"]) == ((new["id"], "agent"), new["id"], old["id"])
    # Filtering by the lapsed agent finds the takeover too: it names it.
    assert [e["type"] for e in (await page(client, agentId=old["id"], type="lease"))["events"]] == [
        "lease.acquired",
        "lease.taken_over",
    ]


# --- pages and filters ------------------------------------------------------------------


async def test_pages_follow_next_after_and_filters_select(client):
    sdr, peer = await register(client, "sdr"), await register(client, "peer")
    for contact in ("a@example.com", "b@example.com", "c@example.com"):
        await acquire(client, sdr["id"], contact)
    await acquire(client, peer["id"], "d@example.com")

    seen, after = [], "0"
    while True:
        body = await page(client, after=after, limit=2)
        seen += body["events"]
        assert len(body["events"]) <= 2
        after = body["nextAfter"]
        if not body["hasMore"]:
            break
    assert [e["type"] for e in seen] == ["agent.registered"] * 2 + ["lease.acquired"] * 4
    assert (await page(client, after=after))["events"] == []  # caught up: the same position again
    assert (await page(client, after=after))["nextAfter"] == after

    assert [e["contactEmail"] for e in (await page(client, type="lease", agentId=sdr["id"]))["events"]] == [
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ]
    assert [e["agentId"] for e in (await page(client, contactEmail=" D@Example.com"))["events"]] == [peer["id"]]
    assert len((await page(client, type="agent.registered,lease.acquired"))["events"]) == 6
    assert (await page(client, type="consensus"))["events"] == []


@pytest.mark.parametrize(
    "params, field",
    [
        ({"type": "lease.stolen"}, "$.type"),
        ({"after": "yesterday"}, "$.after"),
        ({"after": "1-2-3"}, "$.after"),
        ({"after": "99999999999999999999"}, "$.after"),
        ({"limit": 0}, "$.limit"),
        ({"contactEmail": "x"}, "$.contactEmail"),
    ],
)
async def test_bad_page_parameters_are_422(client, params, field):
    invalid(await client.get(f"{C}/events", params=params), field)


async def test_a_malformed_last_event_id_is_422(client):
    invalid(await client.get(f"{C}/events", headers={"Last-Event-ID": "not-an-id"}), "header Last-Event-ID")


async def test_tenants_never_see_each_others_events_in_pages(client, other_client):
    mine = await register(client, "sdr")
    await acquire(client, mine["id"], "alice@example.com")
    theirs = await register(other_client, "sdr")
    body = await page(other_client)
    assert [(e["type"], e["agentId"], e["tenantId"]) for e in body["events"]] == [
        ("agent.registered", theirs["id"], OTHER_TENANT)
    ]
    assert "alice@example.com" not in json.dumps(body)


# --- the long poll ------------------------------------------------------------------------


async def test_wait_seconds_is_bounded(client):
    sdr = await register(client, "sdr")
    cons = await request_consensus(client, sdr["id"])
    invalid(await client.get(f"{C}/consensus/{cons['id']}", params={"waitSeconds": 61}), "$.waitSeconds")
    invalid(await client.get(f"{C}/consensus/{cons['id']}", params={"waitSeconds": -1}), "$.waitSeconds")
    # 0 is a plain read; a decided request answers at once whatever the wait.
    assert ok(await client.get(f"{C}/consensus/{cons['id']}", params={"waitSeconds": 0}))["status"] == "pending"


# --- over real HTTP: the live stream and the long poll ------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two workers on a private redis-server: a stream held on one worker sees
    changes made through the other, since events come from Redis."""
    settings = {"CONCORD_API_KEYS": f"{TENANT}:{KEY},{OTHER_TENANT}:{OTHER_KEY}"}
    with running_stack(tmp_path_factory.mktemp("events"), settings, workers=2) as running:
        yield running


def fleet(stack: Stack, key: str) -> httpx.AsyncClient:
    """A client of the stack's service that authenticates as a fleet does: each agent
    it registered with that agent's credential, everything else with ``key``."""
    return httpx.AsyncClient(base_url=stack.service.url, auth=Fleet(key), timeout=HANG_SECONDS)


async def sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The events of a Server-Sent Event response, as {id, event, data}."""
    frame: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in frame:
                yield {**frame, "data": json.loads(frame["data"])}
            frame = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            frame[name] = value.removeprefix(" ")


async def take(events: AsyncIterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    taken = []
    async with asyncio.timeout(HANG_SECONDS):
        async for e in events:
            taken.append(e)
            if len(taken) == n:
                return taken
    raise AssertionError(f"the stream ended after {len(taken)} of {n} events")


@pytest.mark.real
async def test_a_stream_delivers_each_change_live_and_resumes_without_loss(stack: Stack):
    async with fleet(stack, KEY) as client, fleet(stack, OTHER_KEY) as other:
        sdr = await register(client, "stream-sdr")
        async with client.stream("GET", f"{C}/events", params={"agentId": sdr["id"]}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            frames = sse(response)
            for n in range(3):
                await acquire(client, sdr["id"], f"live{n}@example.com")
                await register(other, "stream-sdr")  # another tenant's changes, in between
            first = await take(frames, 2)
        assert [f["data"]["contactEmail"] for f in first] == ["live0@example.com", "live1@example.com"]
        assert all(f["event"] == f["data"]["type"] == "lease.acquired" and f["id"] == f["data"]["id"] for f in first)

        # Disconnected: more changes happen; reconnecting after the last id seen misses none of them.
        for n in range(3, 6):
            await acquire(client, sdr["id"], f"live{n}@example.com")
        async with client.stream(
            "GET", f"{C}/events", params={"agentId": sdr["id"]}, headers={"Last-Event-ID": first[-1]["id"]}
        ) as response:
            frames = sse(response)
            rest = await take(frames, 4)
            await acquire(client, sdr["id"], "live6@example.com")
            rest += await take(frames, 1)
        assert [f["data"]["contactEmail"] for f in rest] == [f"live{n}@example.com" for n in range(2, 7)]
        ids = [f["id"] for f in first + rest]
        assert len(set(ids)) == len(ids)

        # The other tenant's stream, from its start, holds its own events only.
        async with other.stream("GET", f"{C}/events", headers={"Last-Event-ID": "0"}) as response:
            theirs = await take(sse(response), 3)
        assert {(f["data"]["tenantId"], f["data"]["type"]) for f in theirs} == {(OTHER_TENANT, "agent.registered")}


@pytest.mark.real
async def test_a_stream_without_last_event_id_starts_with_the_next_event(stack: Stack):
    async with fleet(stack, KEY) as client:
        sdr = await register(client, "next-sdr")
        await acquire(client, sdr["id"], "before@example.com")
        async with client.stream("GET", f"{C}/events", params={"type": "lease", "agentId": sdr["id"]}) as response:
            frames = sse(response)
            await acquire(client, sdr["id"], "after@example.com")
            (only,) = await take(frames, 1)
        assert only["data"]["contactEmail"] == "after@example.com"


@pytest.mark.real
async def test_a_long_poll_answers_when_the_request_is_decided(stack: Stack):
    async with fleet(stack, KEY) as client:
        sdr, peer = await register(client, "poll-sdr"), await register(client, "poll-peer")
        # Only these two may count: other tests' agents of this tenant lapse when made inactive.
        for agent in ok(await client.get(f"{V1}/agents", params={"limit": 1000}))["agents"]:
            if agent["id"] not in (sdr["id"], peer["id"]):
                ok(await client.delete(f"{V1}/agents/{agent['id']}"))
        cons = await request_consensus(client, sdr["id"])
        waiting = asyncio.ensure_future(client.get(f"{C}/consensus/{cons['id']}", params={"waitSeconds": 60}))
        # The poll is parked until the vote: it has not answered while the request is pending.
        await eventually(lambda: _pending(client, cons["id"]), what="the request to be readable")
        assert not waiting.done()
        ok(await client.post(f"{C}/consensus/{cons['id']}/vote", json={"agentId": peer["id"], "vote": "approve"}))
        answer = ok(await asyncio.wait_for(waiting, HANG_SECONDS))
        assert answer["status"] == "approved" and answer["id"] == cons["id"]


async def _pending(client: httpx.AsyncClient, consensus_id: str) -> bool:
    return ok(await client.get(f"{C}/consensus/{consensus_id}"))["status"] == "pending"


@pytest.mark.real
async def test_a_long_poll_answers_pending_at_its_end_and_expired_at_the_deadline(stack: Stack):
    async with fleet(stack, KEY) as client:
        sdr = await register(client, "expiry-sdr")
        slow = await request_consensus(client, sdr["id"], timeoutSeconds=3600)
        answer = ok(await client.get(f"{C}/consensus/{slow['id']}", params={"waitSeconds": 1}))
        assert answer["status"] == "pending"
        # Nobody reads or votes: the expiry reaches the poll through the feed's sweep.
        quick = await request_consensus(client, sdr["id"], timeoutSeconds=1)
        answer = ok(await client.get(f"{C}/consensus/{quick['id']}", params={"waitSeconds": 30}))
        assert answer["status"] == "expired" and answer["resolvedAt"] == answer["expiresAt"]
        expired = [
            e for e in (await page(client, type="consensus.expired"))["events"] if e["consensusId"] == quick["id"]
        ]
        assert [actor(e) for e in expired] == [SERVICE]  # the sweep settled it, not a caller


@pytest.mark.real
async def test_a_stream_of_an_unknown_key_is_401_not_a_stream(stack: Stack):
    async with stack.service.client("wrong-key") as client:
        problem(await client.get(f"{C}/events"), 401, "unauthorized")


@pytest.mark.real
async def test_a_stream_with_a_rotated_agent_credential_is_401_not_a_stream(stack: Stack):
    """An agent may read its tenant's stream with its credential; once the credential
    is rotated, the old one opens no stream (refused within the one second a read's
    proof is remembered)."""
    async with fleet(stack, KEY) as client:
        sdr = await register(client, "rotated-reader")
        old = bearer(sdr["credential"])
        async with client.stream("GET", f"{C}/events", headers=old) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        ok(await client.post(f"{V1}/agents/{sdr['id']}/credentials"))

        async def refused() -> bool:
            async with client.stream("GET", f"{C}/events", headers=old) as response:
                if response.status_code == 200:
                    return False
                await response.aread()
                problem(response, 401, "unauthorized")
                return True

        await eventually(refused, timeout=HANG_SECONDS, what="the rotated credential to be refused", every=0.1)
