"""Fault injection on real processes: private redis-server processes and real
`concord serve` processes, broken on purpose under load, then checked.

Each fault records the figures docs/reliability.md quotes (trials, acknowledged
operations, losses, double grants, duplicate votes, flips, the slowest 503): one
line per fault on stdout (``pytest -s``), and a JSON line appended to the file
named by CONCORD_FAULT_REPORT when it is set. The figures are written before the
test asserts on them, so a failing run reports what it saw.

1. Redis SIGKILLed and restarted on its directory with ``appendonly yes`` +
   ``appendfsync always``, five times, under load: every lease, vote, decision and
   registration acknowledged (a 2xx received) is there afterwards, through the API
   and in Redis, with its expiry unchanged; a lease whose expiry passed while Redis
   was down is gone; an acknowledged lease still refuses another agent.
2. Redis restarted empty: tests/api/test_liveness.py
   (test_fencing_tokens_keep_growing_across_a_redis_restart_that_lost_the_data)
   shows tokens keep growing; here, what that means for a live lease's holder:
   the lease is gone, another agent may take the contact, and the old holder's
   token is refused at send-check.
3. Redis stalled under concurrent load, three ways: SIGSTOP; ``DEBUG SLEEP 3``; and
   a proxy that lets every command through but holds the replies back. Every
   request sent during the stall answers 503 store_unavailable (none hangs);
   afterwards nothing was applied twice, and sending each 503'd request again is
   harmless. (Whether a frozen Redis later runs a command that timed out depends
   on whether the client dropped the connection before Redis read it; with held
   replies every 503'd change did happen, so every retry meets it.) Also: a script
   whose reply is lost on the wire is run again by redis-py's retry (as the
   service's client is configured), and that second run changes nothing more.
4. One of three `concord serve` processes SIGKILLed under contention: the other two
   answer every request (no error but the expected 409s), and the grants they and
   the killed one made never overlap on a contact; tokens follow grant order.
5. A lease holder that stalls past its lease's expiry: another agent takes the
   contact and the stalled holder's token is stale at send-check. (The variant
   where the holder's heartbeats lapse is test_liveness.py's
   test_a_lapsed_agent_loses_its_vote_and_its_lease.)
6. Keys of the wrong type: tests/lua/test_wrong_types.py.
7. An evicting maxmemory-policy: tests/system/test_faults.py (a warning at start-up).

No test sleeps to wait: each polls for its condition with a deadline. Timing is
asserted only as "did not hang" (STALL_BOUND), never finely.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import redis
import redis.asyncio

from concord.server.errors import ConcordError
from concord.server.redis.connect import connect
from concord.server.settings import Settings
from concord.server.store import Store
from concord.server.store.keys import Keys, agent_id_for, agent_tag, lease_id
from concord.server.store.scripts import LIB, lib_text, sources
from tests.support.api import V1, C, iso, ms, problem
from tests.support.helpers import (
    RedisServer,
    ServiceProcess,
    eventually,
    redis_server,
    running_stack,
    service,
    wait_until,
)
from tests.support.reports import FaultRecord, fault_record

pytestmark = pytest.mark.real

# The service's deadline for one request's Redis work in these tests (seconds).
REDIS_TIMEOUT = 1
# A request that has not answered within this is hung. It is a generous bound on
# the 1 s deadline, not a timing to meet: only a hang fails it.
STALL_BOUND = 5.0
AOF_ALWAYS = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")
NO_PERSISTENCE = ("--save", "", "--appendonly", "no")


# --- requests under load --------------------------------------------------------------


@dataclass
class Call:
    """One HTTP request of a load, and what became of it."""

    kind: str  # register | lease | renew | release | send-check | consensus | vote | heartbeat
    subject: dict[str, Any]  # what it was about, enough to check it or send it again
    process: int  # which service process it went to
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no HTTP answer at all (refused, reset, or hung past the client's timeout)
    body: Any
    error: str | None = None

    @property
    def acked(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.subject} -> {self.status} {self.code or ''} in {self.seconds:.2f}s {self.error or ''}"
        )


async def send(
    client: httpx.AsyncClient,
    kind: str,
    subject: dict[str, Any],
    method: str,
    path: str,
    *,
    json_body: Any = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    process: int = 0,
) -> Call:
    started = time.monotonic()
    try:
        r = await client.request(method, path, json=json_body, params=params, headers=headers)
    except httpx.TransportError as exc:
        return Call(kind, subject, process, started, time.monotonic(), None, None, repr(exc))
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return Call(kind, subject, process, started, time.monotonic(), r.status_code, body)


class Load:
    """Worker coroutines sending requests until stopped; every request is recorded.

    ``async with Load() as load`` cancels whatever is still running when the block
    ends; ``await load.stop()`` lets each worker finish its request and re-raises a
    worker's exception."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.stopping = False
        self.tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stopping = True
        if exc_info[0] is not None:
            for task in self.tasks:
                task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def start(self, *workers: Awaitable[None]) -> None:
        self.tasks += [asyncio.ensure_future(worker) for worker in workers]

    async def send(self, *args: Any, **kwargs: Any) -> Call:
        call = await send(*args, **kwargs)
        self.calls.append(call)
        return call

    async def until(self, predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
        async def check() -> object:
            for task in self.tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            return predicate()

        await eventually(check, timeout=timeout, what=what)

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*self.tasks)

    def count(
        self, kind: str | None = None, *, acked: bool | None = None, since: float | None = None, **subject: Any
    ) -> int:
        return sum(1 for c in self.matching(kind, acked=acked, since=since, **subject))

    def matching(
        self, kind: str | None = None, *, acked: bool | None = None, since: float | None = None, **subject: Any
    ) -> Iterator[Call]:
        for c in self.calls:
            if kind is not None and c.kind != kind:
                continue
            if acked is not None and c.acked != acked:
                continue
            if since is not None and c.started < since:
                continue
            if any(c.subject.get(name) != value for name, value in subject.items()):
                continue
            yield c


async def bounded(coros: Iterable[Awaitable[Any]], limit: int = 32) -> list[Any]:
    """Await many requests, at most ``limit`` at a time."""
    gate = asyncio.Semaphore(limit)

    async def one(coro: Awaitable[Any]) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


def keys_setting(tenants: dict[str, str]) -> str:
    return ",".join(f"{tenant}:{key}" for tenant, key in tenants.items())


async def register(client: httpx.AsyncClient, name: str) -> dict:
    r = await client.post(f"{V1}/register", json={"agentName": name})
    assert r.status_code in (200, 201), r.text
    return r.json()


def past(when_ms: float) -> bool:
    """Is this host's clock, which is also Redis's, past ``when_ms``?"""
    return time.time() * 1000 > when_ms + 5


def redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def service_ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False


# --- 1. Redis SIGKILLed, restarted from its append-only file --------------------------

LEASES, VOTES, REGS = "leases", "votes", "regs"
KILL_TENANTS = {LEASES: "leases-key-0123456789", VOTES: "votes-key-0123456789", REGS: "regs-key-0123456789"}
KILL_TRIALS = 5
LEASE_WORKERS = 4
VOTE_WORKERS = 2
VOTERS_PER_REQUEST = 3  # of 4 eligible voters: 3 is the majority, so the third vote decides


async def lease_worker(load: Load, client: httpx.AsyncClient, agent: dict, trial: int, w: int) -> None:
    """Fresh contacts, one after another; every other lease lasts one second, so
    some are alive when Redis dies and expire while it is down."""
    n = 0
    while not load.stopping:
        short = n % 2 == 0
        contact = f"k{trial}-w{w}-{n}@leases.example.com"
        body = {"agentId": agent["id"], "contactEmail": contact, "durationSeconds": 1 if short else 3600}
        await load.send(
            client, "lease", {"trial": trial, "contact": contact, "short": short}, "POST", f"{C}/lease", json_body=body
        )
        n += 1


async def vote_worker(
    load: Load, client: httpx.AsyncClient, requester: dict, voters: list[dict], trial: int, w: int
) -> None:
    """Open a request, then three of the four eligible voters vote alike: the third
    vote decides it (approved or rejected, alternately)."""
    n = 0
    while not load.stopping:
        choice = "approve" if n % 2 == 0 else "reject"
        body = {"requestingAgentId": requester["id"], "action": f"k{trial}-v{w}-{n}", "timeoutSeconds": 3600}
        opened = await load.send(client, "consensus", {"trial": trial}, "POST", f"{C}/consensus", json_body=body)
        n += 1
        if not opened.acked:
            continue
        cid = opened.body["id"]
        for voter in voters[:VOTERS_PER_REQUEST]:
            if load.stopping:
                break
            subject = {"trial": trial, "consensus": cid, "voter": voter["id"], "vote": choice}
            cast = await load.send(
                client,
                "vote",
                subject,
                "POST",
                f"{C}/consensus/{cid}/vote",
                json_body={"agentId": voter["id"], "vote": choice},
            )
            if not cast.acked:
                break


async def registration_worker(load: Load, client: httpx.AsyncClient, trial: int) -> None:
    n = 0
    while not load.stopping:
        name = f"k{trial}-r{n}"
        await load.send(
            client, "register", {"trial": trial, "name": name}, "POST", f"{V1}/register", json_body={"agentName": name}
        )
        n += 1


@dataclass
class KillFindings:
    """What the checks after a restart found; each list holds descriptions."""

    losses: list[str] = field(default_factory=list)
    kept_past_expiry: list[str] = field(default_factory=list)
    flips: list[str] = field(default_factory=list)
    duplicate_votes: list[str] = field(default_factory=list)
    double_grants: list[str] = field(default_factory=list)


def lease_string(lease: dict) -> str:
    """The Redis string of a lease (keys.lease), as the API answered it:
    "<agent uuid>|<fencingToken>|<acquiredAt>|<agentName>|<intent>"; its expiry is the key's own."""
    holder = lease["agentId"].removeprefix("agent_")
    return f"{holder}|{lease['fencingToken']}|{ms(lease['acquiredAt'])}|{lease['agentName']}|{lease['intent'] or ''}"


def registry_entry(lease: dict) -> str:
    """A lease's entry in its holder's registry (keys.lease_registry), under its fencing token."""
    return f"{ms(lease['expiresAt'])}:{lease['contactEmail']}"


async def check_leases_survived(
    server: RedisServer, keys: Keys, clients: dict[str, httpx.AsyncClient], leases: list[Call], found: KillFindings
) -> int:
    """Each acknowledged lease is in Redis exactly as granted, expiring when it
    would have (PEXPIRETIME = expiresAt), with its entry in its holder's registry
    (which expires no earlier), or gone if that time has passed. Returns how many
    had passed."""
    db = server.client()
    try:
        now = redis_now_ms(db)
        pipe = db.pipeline(transaction=False)
        for c in leases:
            lease_key = keys.lease(LEASES, c.body["contactEmail"])
            registry = keys.lease_registry(LEASES, agent_tag(c.body["agentId"]))
            pipe.get(lease_key).pexpiretime(lease_key).hget(registry, str(c.body["fencingToken"]))
            pipe.pexpiretime(registry)
        stored = pipe.execute()
    finally:
        db.close()
    expired = 0
    for i, c in enumerate(leases):
        held, held_until, entry, registry_until = stored[4 * i : 4 * i + 4]
        lease, expires = c.body, ms(c.body["expiresAt"])
        if expires <= now:
            expired += 1
            # The lease key is gone. Its registry entry may stay a while, stale (reads
            # check it against the lease), but only as it was written.
            if held is not None or entry not in (None, registry_entry(lease)):
                found.kept_past_expiry.append(
                    f"{lease['id']} expired at {lease['expiresAt']} but is in Redis: {held!r}, registry {entry!r}"
                )
        elif (held, held_until, entry) != (lease_string(lease), expires, registry_entry(lease)) or not (
            registry_until >= expires
        ):
            found.losses.append(
                f"lease {lease} is {held!r} (expiring {held_until}), registry entry {entry!r} "
                f"(registry expiring {registry_until})"
            )
    # Through the API too: the same lease, or 404 once expired.
    answers = await bounded(clients[LEASES].get(f"{C}/lease/{c.body['id']}") for c in leases)
    for c, r in zip(leases, answers):
        if ms(c.body["expiresAt"]) <= now:
            if r.status_code != 404:
                found.kept_past_expiry.append(f"GET {c.body['id']} after its expiry: {r.status_code} {r.text}")
        elif r.status_code != 200 or r.json() != c.body:
            found.losses.append(f"GET {c.body['id']}: {r.status_code} {r.text}, acknowledged as {c.body}")
    return expired


async def check_votes_survived(client: httpx.AsyncClient, calls: list[Call], found: KillFindings) -> None:
    """Each acknowledged request is there, each acknowledged vote is in it as cast,
    each acknowledged decision is still the decision, and the tally counts each
    voter once."""
    requests = {c.body["id"]: c.body for c in calls if c.kind == "consensus" and c.acked}
    votes = [c for c in calls if c.kind == "vote" and c.acked]
    answers = await bounded(client.get(f"{C}/consensus/{cid}") for cid in requests)
    now = dict(zip(requests, answers))
    for cid, opened in requests.items():
        r = now[cid]
        if r.status_code != 200:
            found.losses.append(f"consensus {cid}: {r.status_code} {r.text}")
            continue
        after = r.json()
        for name in ("requestingAgentId", "action", "createdAt", "expiresAt"):
            if after[name] != opened[name]:
                found.losses.append(f"consensus {cid}: {name} {opened[name]} became {after[name]}")
        voters = [v["agentId"] for v in after["votes"]]
        tally = after["tally"]
        if len(voters) != len(set(voters)) or tally["approve"] + tally["reject"] != len(voters):
            found.duplicate_votes.append(f"consensus {cid}: tally {tally}, votes {after['votes']}")
    for c in votes:
        cid, voter = c.subject["consensus"], c.subject["voter"]
        if now[cid].status_code != 200:
            continue
        after = now[cid].json()
        cast = next(v for v in c.body["votes"] if v["agentId"] == voter)
        if cast not in after["votes"]:
            found.losses.append(f"vote {cast} on {cid} is not among {after['votes']}")
        if c.body["status"] != "pending" and (after["status"], after["resolvedAt"]) != (
            c.body["status"],
            c.body["resolvedAt"],
        ):
            found.flips.append(
                f"{cid} was {c.body['status']} at {c.body['resolvedAt']}, "
                f"now {after['status']} at {after['resolvedAt']}"
            )


def check_redis_holds_votes_and_agents(server: RedisServer, keys: Keys, calls: list[Call], found: KillFindings) -> None:
    """In Redis too: each acknowledged vote is in its request's votes hash as cast,
    each acknowledged decision in the request's hash, each registered agent's hash there."""
    votes = [c for c in calls if c.kind == "vote" and c.acked]
    agents = [c.body for c in calls if c.kind == "register" and c.acked]
    db = server.client()
    try:
        pipe = db.pipeline(transaction=False)
        for c in votes:
            pipe.hget(keys.votes(VOTES, c.subject["consensus"]), c.subject["voter"])
            pipe.hmget(keys.consensus(VOTES, c.subject["consensus"]), "status", "resolvedAt")
        for agent in agents:
            pipe.hget(keys.agent(REGS, agent["id"]), "registeredAt")
        stored = pipe.execute()
    finally:
        db.close()
    for i, c in enumerate(votes):
        record, (status, resolved) = stored[2 * i], stored[2 * i + 1]
        if record is None or not record.startswith(f"{c.subject['vote']}|"):
            found.losses.append(f"vote {c.subject} is {record!r} in Redis")
        if c.body["status"] != "pending" and (status, resolved) != (c.body["status"], str(ms(c.body["resolvedAt"]))):
            found.flips.append(f"{c.subject['consensus']} was {c.body['status']}, in Redis {status} at {resolved}")
    for agent, registered in zip(agents, stored[2 * len(votes) :]):
        if registered != str(ms(agent["registeredAt"])):
            found.losses.append(f"agent {agent['agentName']} has registeredAt {registered!r} in Redis")


async def check_agents_survived(client: httpx.AsyncClient, calls: list[Call], found: KillFindings) -> None:
    agents = [c.body for c in calls if c.kind == "register" and c.acked]
    answers = await bounded(client.get(f"{V1}/agents/{a['id']}") for a in agents)
    for agent, r in zip(agents, answers):
        if r.status_code != 200 or (r.json()["agentName"], r.json()["registeredAt"]) != (
            agent["agentName"],
            agent["registeredAt"],
        ):
            found.losses.append(f"agent {agent['agentName']}: {r.status_code} {r.text}")


async def check_still_exclusive(
    client: httpx.AsyncClient, rival: dict, leases: list[Call], now_ms: int, found: KillFindings
) -> int:
    """Another agent asking for a contact whose acknowledged lease is alive is refused."""
    alive = [c.body for c in leases if ms(c.body["expiresAt"]) > now_ms + 60_000]
    answers = await bounded(
        client.post(f"{C}/lease", json={"agentId": rival["id"], "contactEmail": lease["contactEmail"]})
        for lease in alive
    )
    for lease, r in zip(alive, answers):
        if r.status_code != 409 or r.json()["leaseHolder"]["agentId"] != lease["agentId"]:
            found.double_grants.append(
                f"{lease['contactEmail']} held by {lease['agentId']}: rival got {r.status_code} {r.text}"
            )
    return len(alive)


async def test_redis_sigkilled_and_restarted_from_its_aof_keeps_every_acknowledged_change(
    real_redis_url: str, tmp_path: Path
):
    settings = {"CONCORD_API_KEYS": keys_setting(KILL_TENANTS), "CONCORD_REDIS_TIMEOUT_SECONDS": str(REDIS_TIMEOUT)}
    with (
        fault_record(
            "redis-sigkill-aof-always",
            "SIGKILL redis-server under load, restart it on its directory with appendonly yes + appendfsync always",
        ) as record,
        running_stack(tmp_path, settings, *AOF_ALWAYS) as stack,
    ):
        servers = [stack.redis]
        found = KillFindings()
        every: list[Call] = []
        expired_while_down = exclusive_checked = 0
        try:
            async with (
                stack.service.client(KILL_TENANTS[LEASES]) as leases_client,
                stack.service.client(KILL_TENANTS[VOTES]) as votes_client,
                stack.service.client(KILL_TENANTS[REGS]) as regs_client,
            ):
                clients = {LEASES: leases_client, VOTES: votes_client, REGS: regs_client}
                holders = [await register(leases_client, f"holder-{w}") for w in range(LEASE_WORKERS)]
                rival = await register(leases_client, "rival")
                requester = await register(votes_client, "requester")
                voters = [await register(votes_client, f"voter-{v}") for v in range(4)]

                for trial in range(KILL_TRIALS):
                    async with Load() as load:
                        load.start(
                            *(lease_worker(load, leases_client, holders[w], trial, w) for w in range(LEASE_WORKERS)),
                            *(
                                vote_worker(load, votes_client, requester, voters, trial, w)
                                for w in range(VOTE_WORKERS)
                            ),
                            registration_worker(load, regs_client, trial),
                        )
                        await load.until(
                            lambda: (
                                load.count("lease", acked=True, short=True) >= 6
                                and load.count("lease", acked=True, short=False) >= 6
                                and load.count("vote", acked=True) >= 6
                                and load.count("register", acked=True) >= 5
                            ),
                            what="acknowledged leases, votes and registrations before the kill",
                        )
                        killed_at = time.time() * 1000
                        servers[-1].kill()  # SIGKILL, with requests in flight
                        await load.stop()
                    every += load.calls
                    trial_leases = [c for c in load.matching("lease", acked=True)]
                    short_alive = [
                        ms(c.body["expiresAt"])
                        for c in trial_leases
                        if c.subject["short"] and ms(c.body["expiresAt"]) > killed_at
                    ]
                    expired_while_down += len(short_alive)
                    # Stay down until the short leases alive at the kill have expired (by the wall clock
                    # of this host, which is Redis's clock too).
                    wait_until(
                        functools.partial(past, max(short_alive, default=0)),
                        timeout=5,
                        what="the short leases to expire",
                    )

                    servers.append(RedisServer(stack.redis.directory, *AOF_ALWAYS, port=stack.redis.port).start())
                    await eventually(
                        lambda: service_ready(leases_client), timeout=15, what="the service to reach Redis"
                    )

                    acked_leases = [c for c in every if c.kind == "lease" and c.acked]
                    await check_leases_survived(servers[-1], stack.keys, clients, acked_leases, found)
                    await check_votes_survived(votes_client, every, found)
                    await check_agents_survived(regs_client, every, found)
                    check_redis_holds_votes_and_agents(servers[-1], stack.keys, every, found)
                    db = servers[-1].client()
                    try:
                        now = redis_now_ms(db)
                    finally:
                        db.close()
                    exclusive_checked += await check_still_exclusive(leases_client, rival, trial_leases, now, found)

                    record.trials = trial + 1
                    record.acknowledged = sum(c.acked for c in every)
                    record.losses = len(found.losses) + len(found.kept_past_expiry)
                    record.double_grants = len(found.double_grants)
                    record.duplicate_votes = len(found.duplicate_votes)
                    record.flips = len(found.flips)
                    acked = Counter(c.kind for c in every if c.acked)
                    record.extra = {
                        "acknowledged_leases": acked["lease"],
                        "acknowledged_votes": acked["vote"],
                        "acknowledged_requests": acked["consensus"],
                        "acknowledged_decisions": sum(
                            c.acked and c.kind == "vote" and c.body["status"] != "pending" for c in every
                        ),
                        "acknowledged_registrations": acked["register"],
                        "unacknowledged_in_flight": sum(not c.acked for c in every),
                        "leases_expired_while_down": expired_while_down,
                        "leases_kept_past_expiry": len(found.kept_past_expiry),
                        "exclusivity_checks": exclusive_checked,
                    }
                    if record.losses or record.double_grants or record.duplicate_votes or record.flips:
                        break  # the next trial would only report the same damage again
        finally:
            for server in servers:
                server.kill()

        assert found.losses == [], found.losses[:10]
        assert found.kept_past_expiry == [], found.kept_past_expiry[:10]
        assert found.flips == [] and found.duplicate_votes == [], (found.flips[:10], found.duplicate_votes[:10])
        assert found.double_grants == [], found.double_grants[:10]
        # The clock kept running while Redis was down: some leases alive at a kill had
        # expired by the restart, and were gone.
        assert expired_while_down > 0
        assert record.extra["acknowledged_decisions"] > 0


# --- 2. Redis restarted empty -----------------------------------------------------------

EMPTY_TENANT, EMPTY_KEY = "amnesia", "amnesia-key-0123456789"
EMPTY_TRIALS = 3


async def test_after_an_empty_restart_a_live_lease_is_lost_but_its_holder_is_fenced_out(
    real_redis_url: str, tmp_path: Path
):
    """What an empty restart means for a live lease (not promised to survive; the
    docs/api.md says so): the lease and its agents are gone and another agent may take
    the contact at once, but the old holder's token stays refused, before and after
    that new grant. That tokens keep growing across the restart is
    test_liveness.py::test_fencing_tokens_keep_growing_across_a_redis_restart_that_lost_the_data."""
    settings = {"CONCORD_API_KEYS": f"{EMPTY_TENANT}:{EMPTY_KEY}", "CONCORD_REDIS_TIMEOUT_SECONDS": str(REDIS_TIMEOUT)}
    with (
        fault_record("redis-empty-restart", "SIGKILL redis-server without persistence, restart it empty") as record,
        running_stack(tmp_path, settings, *NO_PERSISTENCE) as stack,
    ):
        servers = [stack.redis]
        refused = regressions = 0
        try:
            async with stack.service.client(EMPTY_KEY) as client:
                tokens: list[int] = []
                for trial in range(EMPTY_TRIALS):
                    holder, other = await register(client, "holder"), await register(client, "other")
                    contact = f"live-{trial}@example.com"
                    granted = await client.post(
                        f"{C}/lease", json={"agentId": holder["id"], "contactEmail": contact, "durationMinutes": 60}
                    )
                    assert granted.status_code == 201, granted.text
                    lease = granted.json()
                    tokens.append(lease["fencingToken"])

                    servers[-1].kill()
                    fresh = RedisServer(
                        stack.redis.directory / f"empty-{trial}", *NO_PERSISTENCE, port=stack.redis.port
                    )
                    servers.append(fresh.start())
                    await eventually(lambda: service_ready(client), timeout=15, what="the service to reach Redis")

                    # Everything is gone: the lease (an hour from expiry) and both agents.
                    problem(await client.get(f"{C}/lease/{lease['id']}"), 404, "lease_not_found")
                    problem(await client.get(f"{V1}/agents/{holder['id']}"), 404, "agent_not_found")
                    back = await client.post(f"{V1}/register", json={"agentName": "holder"})
                    assert back.status_code == 201 and back.json()["id"] == holder["id"], back.text
                    record.losses += 1

                    # The contact looks free, but the old holder may not send with its old token...
                    check = await client.post(
                        f"{C}/send-check",
                        json={"agentId": holder["id"], "contactEmail": contact, "fencingToken": lease["fencingToken"]},
                    )
                    assert check.json() == {"allowed": False, "reason": "stale_fencing_token"}, check.text
                    refused += 1
                    # ...and another agent takes the contact while the lost lease would still run.
                    await register(client, "other")
                    taken = await client.post(f"{C}/lease", json={"agentId": other["id"], "contactEmail": contact})
                    assert taken.status_code == 201, taken.text
                    record.double_grants += 1
                    regressions += taken.json()["fencingToken"] <= max(tokens)
                    tokens.append(taken.json()["fencingToken"])
                    check = await client.post(
                        f"{C}/send-check",
                        json={"agentId": holder["id"], "contactEmail": contact, "fencingToken": lease["fencingToken"]},
                    )
                    body = check.json()
                    assert body["allowed"] is False and body["reason"] == "stale_fencing_token", body
                    assert body["leaseHolder"]["agentId"] == other["id"], body
                    refused += 1
                    record.trials, record.acknowledged = trial + 1, trial + 1
                    record.extra = {
                        "zero_promised": False,
                        "live_leases_lost": record.losses,
                        "contacts_regranted_while_lost_lease_ran": record.double_grants,
                        "stale_tokens_refused": refused,
                        "token_regressions": regressions,
                    }
        finally:
            for server in servers:
                server.kill()
        assert regressions == 0, tokens
        assert tokens == sorted(tokens), tokens


# --- 3. Redis stalled -----------------------------------------------------------------------

STALL, STALL_REGS = "stall", "stallregs"
STALL_TENANTS = {STALL: "stall-key-0123456789", STALL_REGS: "stallregs-key-0123456789"}
POOL = [f"pooled-{i}" for i in range(6)]  # names registered again and again, by two workers at once
STALL_VOTERS = 12  # 0-9 vote in the background, 10 and 11 in the burst sent during the stall
DEBUG_ENABLED = (*NO_PERSISTENCE, "--enable-debug-command", "local")


async def stalled(port: int) -> bool:
    """True when the Redis at ``port`` (or a proxy there) does not answer a PING within 0.3 s."""
    probe = redis.asyncio.Redis(port=port, socket_timeout=0.3, socket_connect_timeout=0.3)
    try:
        await asyncio.wait_for(probe.ping(), 0.3)
        return False
    except (TimeoutError, redis.exceptions.RedisError):
        return True
    finally:
        await probe.aclose()


def consensus_body(chair: dict, action: str) -> dict:
    return {"requestingAgentId": chair["id"], "action": action, "timeoutSeconds": 3600}


async def open_request(load: Load, client: httpx.AsyncClient, chair: dict, action: str, worker: str) -> Call:
    """A consensus request with an Idempotency-Key of its own, as a careful client sends it."""
    body = consensus_body(chair, action)
    subject = {"action": action, "body": body, "key": f"idem-{action}", "worker": worker}
    return await load.send(
        client,
        "consensus",
        subject,
        "POST",
        f"{C}/consensus",
        json_body=body,
        headers={"Idempotency-Key": subject["key"]},
    )


async def cast_vote(load: Load, client: httpx.AsyncClient, cid: str, voter: dict, vote: str, worker: str) -> Call:
    subject = {"consensus": cid, "voter": voter["id"], "vote": vote, "worker": worker}
    return await load.send(
        client, "vote", subject, "POST", f"{C}/consensus/{cid}/vote", json_body={"agentId": voter["id"], "vote": vote}
    )


def register_call(load: Load, client: httpx.AsyncClient, name: str, worker: str) -> Awaitable[Call]:
    return load.send(
        client, "register", {"name": name, "worker": worker}, "POST", f"{V1}/register", json_body={"agentName": name}
    )


def lease_call(load: Load, client: httpx.AsyncClient, agent: dict, contact: str, worker: str) -> Awaitable[Call]:
    return load.send(
        client,
        "lease",
        {"contact": contact, "agent": agent["id"], "worker": worker},
        "POST",
        f"{C}/lease",
        json_body={"agentId": agent["id"], "contactEmail": contact, "durationSeconds": 600},
    )


async def stall_registrations(load: Load, client: httpx.AsyncClient, w: int) -> None:
    n = 0
    while not load.stopping:
        name = POOL[(n + w) % len(POOL)] if n % 2 == 0 else f"fresh-{w}-{n}"
        await register_call(load, client, name, f"register-{w}")
        n += 1


async def stall_leases(load: Load, client: httpx.AsyncClient, agent: dict) -> None:
    n = 0
    while not load.stopping:
        await lease_call(load, client, agent, f"bg-{n}@stall.example.com", "lease")
        n += 1


async def stall_consensus(load: Load, client: httpx.AsyncClient, chair: dict, voters: list[dict]) -> None:
    """Open a request, then voters 0-9 vote on it all at once (half approve, half
    reject: 12 are eligible and 7 needed, so nothing is ever decided)."""
    n = 0
    while not load.stopping:
        opened = await open_request(load, client, chair, f"bg-{n}", "consensus")
        n += 1
        if opened.acked:
            await asyncio.gather(
                *(
                    cast_vote(
                        load, client, opened.body["id"], voter, "approve" if i % 2 == 0 else "reject", "consensus"
                    )
                    for i, voter in enumerate(voters[:10])
                )
            )


def consensus_in_redis(server: RedisServer, keys: Keys) -> dict[str, dict[str, str]]:
    """Every consensus request of the stall tenant in Redis: id -> its hash."""
    db = server.client()
    try:
        found = {}
        for key in db.scan_iter(match=keys.consensus(STALL, "cons_*"), count=1000):
            if not key.endswith(":votes"):
                found[key.rsplit(":", 1)[1]] = db.hgetall(key)
        return found
    finally:
        db.close()


async def retry_harmlessly(
    call: Call, clients: dict[str, httpx.AsyncClient], server: RedisServer, keys: Keys
) -> tuple[str | None, bool]:
    """Send a request that answered 503 again, now that Redis is back, and check
    the answer is what it would be had the first attempt been applied exactly once
    or not at all. Returns what was wrong (or None), and whether the first attempt
    had been applied in spite of its 503."""
    s = call.subject
    if call.kind == "register":
        agent_id = agent_id_for(STALL_REGS, s["name"])
        before = await clients[STALL_REGS].get(f"{V1}/agents/{agent_id}")
        applied = before.status_code == 200
        r = await clients[STALL_REGS].post(f"{V1}/register", json={"agentName": s["name"]})
        if r.status_code != (200 if applied else 201) or r.json()["id"] != agent_id:
            return f"{call}: retry {r.status_code} {r.text}, before {before.status_code}", applied
        if applied and r.json()["registeredAt"] != before.json()["registeredAt"]:
            return (
                f"{call}: registeredAt moved from {before.json()['registeredAt']} to {r.json()['registeredAt']}",
                applied,
            )
    elif call.kind == "heartbeat":
        applied = False  # a heartbeat leaves no trace to tell; it is an upsert of one score
        r = await clients[STALL].post(f"{C}/heartbeat", json={"agentId": s["agent"]})
        if r.status_code != 200:
            return f"{call}: retry {r.status_code} {r.text}", applied
    elif call.kind == "vote":
        url = f"{C}/consensus/{s['consensus']}"
        before = (await clients[STALL].get(url)).json()
        applied = any(v["agentId"] == s["voter"] for v in before["votes"])
        r = await clients[STALL].post(f"{url}/vote", json={"agentId": s["voter"], "vote": s["vote"]})
        if r.status_code != 200:
            return f"{call}: retry {r.status_code} {r.text}", applied
        after = r.json()
        if applied and (after["votes"], after["tally"]) != (before["votes"], before["tally"]):
            return f"{call}: a repeated vote changed {before} into {after}", applied
        if [v["vote"] for v in after["votes"] if v["agentId"] == s["voter"]] != [s["vote"]]:
            return f"{call}: the vote is not counted once: {after}", applied
    elif call.kind == "consensus":
        before = [cid for cid, h in consensus_in_redis(server, keys).items() if h["action"] == s["action"]]
        applied = bool(before)
        r = await clients[STALL].post(f"{C}/consensus", json=s["body"], headers={"Idempotency-Key": s["key"]})
        if r.status_code != 201 or (applied and r.json()["id"] != before[0]) or len(before) > 1:
            return f"{call}: retry {r.status_code} {r.text}, before {before}", applied
    elif call.kind == "lease":
        db = server.client()
        try:
            before = db.get(keys.lease(STALL_REGS, s["contact"]))
        finally:
            db.close()
        applied = before is not None
        r = await clients[STALL_REGS].post(
            f"{C}/lease", json={"agentId": s["agent"], "contactEmail": s["contact"], "durationSeconds": 600}
        )
        if applied:  # the holder's own lease comes back, same id and token
            holder, token = before.split("|", 2)[:2]
            held = (f"agent_{holder}", lease_id(f"agent_{holder}", int(token)), token)
            if (
                holder != s["agent"].removeprefix("agent_")
                or r.status_code != 200
                or (r.json()["agentId"], r.json()["id"], str(r.json()["fencingToken"])) != held
            ):
                return f"{call}: retry {r.status_code} {r.text}, lease before {before}", applied
        elif r.status_code != 201:
            return f"{call}: retry {r.status_code} {r.text}", applied
    else:
        raise AssertionError(f"no retry for {call.kind}")
    return None, applied


class FaultyProxy:
    """A TCP proxy in front of one Redis that can break the way back.

    ``lose_next_reply()``: the next script call (EVALSHA) goes through to Redis and
    runs, but instead of its reply the client gets its connection closed; redis-py
    then sends the call again on a new connection. ``hold_replies()``: Redis runs
    every command at once, but no reply goes back until ``release_replies()``, so
    the service times out (503) on changes that were made."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.script_calls = 0  # EVALSHA commands passed to Redis
        self.replies_lost = 0
        self._lose_next = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self._flowing.set()
        for writer in list(self._writers):
            writer.close()  # each connection's pipes see the end and finish
        if self._pipes:
            await asyncio.wait(list(self._pipes), timeout=5)
        await self._server.wait_closed()

    def lose_next_reply(self) -> None:
        self._lose_next = True

    def hold_replies(self) -> None:
        self._flowing.clear()

    def release_replies(self) -> None:
        self._flowing.set()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._pipes.add(asyncio.current_task())  # type: ignore[arg-type]
        self._writers.add(client_writer)
        try:
            redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        self._writers.add(redis_writer)
        cut = asyncio.Event()  # set when this connection's next reply is to be lost

        async def upward() -> None:
            while data := await client_reader.read(1 << 16):
                calls = data.count(b"EVALSHA")
                self.script_calls += calls
                if calls and self._lose_next:
                    self._lose_next = False
                    cut.set()
                redis_writer.write(data)
                await redis_writer.drain()

        async def downward() -> None:
            while data := await redis_reader.read(1 << 16):
                await self._flowing.wait()
                if cut.is_set():
                    if data.startswith(b"-NOSCRIPT"):  # not run: redis-py loads it and calls again
                        cut.clear()
                        self._lose_next = True
                    else:
                        self.replies_lost += 1
                        return
                client_writer.write(data)
                await client_writer.drain()

        try:
            pipes = [asyncio.ensure_future(upward()), asyncio.ensure_future(downward())]
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            for writer in (client_writer, redis_writer):
                writer.close()
                self._writers.discard(writer)
            self._pipes.discard(asyncio.current_task())  # type: ignore[arg-type]


@pytest.fixture
def stall_redis(real_redis_url: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server that accepts DEBUG from localhost. (real_redis_url only
    decides whether a real Redis may be used: skip, or fail if required.)"""
    with redis_server(tmp_path / "redis", *DEBUG_ENABLED) as server:
        yield server


STALLS = {
    "SIGSTOP": "SIGSTOP redis-server, SIGCONT once every worker met the stall",
    "DEBUG SLEEP": "DEBUG SLEEP 3 sent from another connection",
    "replies held": "a proxy passes every command to Redis at once but holds the replies back",
}


@pytest.mark.parametrize("stall", list(STALLS))
async def test_a_stalled_redis_answers_503_promptly_and_applies_nothing_twice(
    stall_redis: RedisServer, tmp_path: Path, stall: str
):
    server = stall_redis
    assert server.process is not None
    prefix = f"t{os.urandom(6).hex()}"
    keys = Keys(prefix)
    with fault_record(
        f"redis-stall-{stall.replace(' ', '-').lower()}", f"{STALLS[stall]}, under concurrent load"
    ) as record:
        async with FaultyProxy(server.port) as proxy:
            redis_url = proxy.url if stall == "replies held" else server.url
            settings = {
                "CONCORD_REDIS_URL": redis_url,
                "CONCORD_KEY_PREFIX": prefix,
                "CONCORD_API_KEYS": keys_setting(STALL_TENANTS),
                "CONCORD_REDIS_TIMEOUT_SECONDS": str(REDIS_TIMEOUT),
            }
            # Started and stopped off the event loop, which serves the proxy meanwhile.
            proc = ServiceProcess(settings, log=tmp_path / "concord.log")
            await asyncio.to_thread(proc.start)
            try:
                await stall_under_load(proc, server, proxy, keys, stall, record)
            finally:
                await asyncio.to_thread(proc.stop)


async def stall_under_load(
    proc: ServiceProcess, server: RedisServer, proxy: FaultyProxy, keys: Keys, stall: str, record: FaultRecord
) -> None:
    assert server.process is not None
    probe_port = proxy.port if stall == "replies held" else server.port
    async with (
        proc.client(STALL_TENANTS[STALL]) as stall_client,
        proc.client(STALL_TENANTS[STALL_REGS]) as regs_client,
        Load() as load,
    ):
        clients = {STALL: stall_client, STALL_REGS: regs_client}
        chair = await register(stall_client, "chair")
        voters = [await register(stall_client, f"voter-{i:02d}") for i in range(STALL_VOTERS)]
        leaser = await register(regs_client, "leaser")
        # Many open connections to Redis first, as a busy service has: requests during
        # the stall go out on them at once (on a new connection they would wait for the
        # handshake, and never be sent).
        await bounded((stall_client.post(f"{C}/heartbeat", json={"agentId": chair["id"]}) for _ in range(64)), limit=64)
        workers = ["register-0", "register-1", "lease", "consensus"]
        load.start(
            stall_registrations(load, regs_client, 0),
            stall_registrations(load, regs_client, 1),
            stall_leases(load, regs_client, leaser),
            stall_consensus(load, stall_client, chair, voters),
        )
        await load.until(
            lambda: load.count("consensus", acked=True) >= 3 and load.count("vote", acked=True) >= 10,
            what="load before the stall",
        )

        sleeper: asyncio.Future | None = None
        sleeping = server.client(socket_timeout=30)
        try:
            if stall == "SIGSTOP":
                server.process.send_signal(signal.SIGSTOP)
            elif stall == "DEBUG SLEEP":
                sleeper = asyncio.ensure_future(asyncio.to_thread(sleeping.execute_command, "DEBUG", "SLEEP", "3"))
            else:
                proxy.hold_replies()
            await eventually(lambda: stalled(probe_port), timeout=5, what="Redis to stall")
            stalled_at = time.monotonic()

            # A burst of every kind of change, all at once, while Redis is known to be stalled.
            recent = [c.body["id"] for c in load.matching("consensus", acked=True)][-4:]
            burst = await asyncio.gather(
                *(
                    register_call(load, regs_client, name, "burst")
                    for name in [*POOL, *(f"burst-{i}" for i in range(4))]
                ),
                *(
                    load.send(
                        stall_client,
                        "heartbeat",
                        {"agent": a["id"], "worker": "burst"},
                        "POST",
                        f"{C}/heartbeat",
                        json_body={"agentId": a["id"]},
                    )
                    for a in (chair, voters[0])
                ),
                *(cast_vote(load, stall_client, cid, voters[10], "approve", "burst") for cid in recent),
                *(cast_vote(load, stall_client, cid, voters[11], "reject", "burst") for cid in recent),
                *(open_request(load, stall_client, chair, f"burst-{i}", "burst") for i in range(4)),
                *(lease_call(load, regs_client, leaser, f"burst-{i}@stall.example.com", "burst") for i in range(4)),
            )
            if sleeper is None:
                # The background load meets the stall too; then it ends.
                await load.until(
                    lambda: all(load.count(worker=w, since=stalled_at, acked=False) for w in workers),
                    what="every background worker to meet the stall",
                )
            else:
                await sleeper  # DEBUG SLEEP ends by itself
        finally:
            if stall == "SIGSTOP":
                server.process.send_signal(signal.SIGCONT)
            proxy.release_replies()
            if sleeper is not None:
                await asyncio.gather(sleeper, return_exceptions=True)
            sleeping.close()
        resumed = time.monotonic()
        await load.until(
            lambda: all(load.count(worker=w, since=resumed, acked=True) for w in workers),
            what="every background worker to succeed again",
        )
        await load.stop()

        calls = load.calls
        for c in calls:
            if c.status == 503:
                record.saw_503(c.seconds)
        # Nothing hung, and nothing answered but success or 503 store_unavailable.
        assert all(c.status is not None and c.seconds <= STALL_BOUND for c in calls), [
            str(c) for c in calls if c.status is None or c.seconds > STALL_BOUND
        ]
        odd = [str(c) for c in calls if not c.acked and (c.status != 503 or c.code != "store_unavailable")]
        assert odd == [], odd[:10]
        assert all(c.status == 503 for c in burst), [str(c) for c in burst if c.status != 503]

        # Afterwards, nothing was applied twice.
        losses, twice = [], []
        db = server.client()
        try:
            agents_in_redis = db.zcard(keys.agents(STALL_REGS))
            for c in load.matching("lease", acked=True):
                lease_key = keys.lease(STALL_REGS, c.subject["contact"])
                held, held_until = db.get(lease_key), db.pexpiretime(lease_key)
                entries = db.hgetall(keys.lease_registry(STALL_REGS, agent_tag(c.body["agentId"])))
                # A second run of the grant extends the holder's own lease: same id and token,
                # one registry entry for that token, at the lease's expiry.
                if held != lease_string(c.body) or entries.get(str(c.body["fencingToken"])) != (
                    f"{held_until}:{c.subject['contact']}"
                ):
                    losses.append(f"lease {c.body} is {held!r} until {held_until}, registry {entries}")
                twice += [
                    f"lease {c.body['id']}: registry entry {token} -> {entry} for the same contact"
                    for token, entry in entries.items()
                    if entry.partition(":")[2] == c.subject["contact"] and token != str(c.body["fencingToken"])
                ]
        finally:
            db.close()
        listed = (await regs_client.get(f"{V1}/agents", params={"limit": "1000"})).json()["agents"]
        assert agents_in_redis == len(listed)
        names = Counter(a["agentName"] for a in listed)
        first_registered: dict[str, str] = {}
        for c in load.matching("register", acked=True):
            first_registered.setdefault(c.body["agentName"], c.body["registeredAt"])
        losses += [f"agent {name}" for name in first_registered if name not in names]
        twice += [f"agent {name} x{n}" for name, n in names.items() if n > 1]
        twice += [
            f"agent {a['agentName']} re-created at {a['registeredAt']}"
            for a in listed
            if a["agentName"] in first_registered and a["registeredAt"] != first_registered[a["agentName"]]
        ]

        requests = consensus_in_redis(server, keys)
        attempts = load.count("consensus")
        twice += [
            f"request {action} x{n}" for action, n in Counter(h["action"] for h in requests.values()).items() if n > 1
        ]
        losses += [
            f"request {c.body['id']}" for c in load.matching("consensus", acked=True) if c.body["id"] not in requests
        ]
        assert len(requests) <= attempts, (len(requests), attempts)

        attempted = {(c.subject["consensus"], c.subject["voter"]): c.subject["vote"] for c in load.matching("vote")}
        reads = await bounded(stall_client.get(f"{C}/consensus/{cid}") for cid in requests)
        duplicate_votes, flips, now = [], [], {}
        for cid, r in zip(requests, reads):
            assert r.status_code == 200, r.text
            now[cid] = after = r.json()
            voted = [v["agentId"] for v in after["votes"]]
            tally = after["tally"]
            if len(voted) != len(set(voted)) or tally["approve"] + tally["reject"] != len(voted):
                duplicate_votes.append(f"{cid}: {tally} {after['votes']}")
            if after["status"] != "pending":
                flips.append(f"{cid} became {after['status']}, which no vote allows")
            twice += [
                f"vote {v} on {cid} was never sent"
                for v in after["votes"]
                if attempted.get((cid, v["agentId"])) != v["vote"]
            ]
        for c in load.matching("vote", acked=True):
            cast = next(v for v in c.body["votes"] if v["agentId"] == c.subject["voter"])
            if cast not in now[c.subject["consensus"]]["votes"]:
                losses.append(f"vote {cast} on {c.subject['consensus']}")

        # Each request that answered 503, sent again now: harmless, applied before or not.
        unanswered: dict[tuple, Call] = {}
        what = {
            "register": ("name",),
            "heartbeat": ("agent",),
            "vote": ("consensus", "voter"),
            "consensus": ("action",),
            "lease": ("contact",),
        }
        for c in calls:
            if c.status == 503:
                unanswered.setdefault((c.kind, *(c.subject[k] for k in what[c.kind])), c)
        harmful, applied_anyway = [], Counter()
        for c in unanswered.values():  # one at a time: each compares before and after
            problem_found, applied = await retry_harmlessly(c, clients, server, keys)
            if applied and not (c.kind == "register" and c.subject["name"] in POOL):  # pooled names existed before
                applied_anyway[c.kind] += 1
            if problem_found is not None:
                harmful.append(problem_found)
        after_retries = Counter(h["action"] for h in consensus_in_redis(server, keys).values())
        twice += [f"request {action} x{n} after the retries" for action, n in after_retries.items() if n > 1]

        record.trials = 1
        record.acknowledged = sum(c.acked for c in calls)
        record.losses = len(losses)
        record.duplicate_votes = len(duplicate_votes)
        record.flips = len(flips)
        record.extra = {
            "requests": len(calls),
            "answered_503": sum(c.status == 503 for c in calls),
            "burst_503": sum(c.status == 503 for c in burst),
            "applied_twice": len(twice),
            "consensus_attempts": attempts,
            "consensus_in_redis": len(requests),
            "retried_after_503": len(unanswered),
            "applied_in_spite_of_503": dict(applied_anyway),
            "harmful_retries": len(harmful),
        }
        assert losses == [], losses[:10]
        assert twice == [], twice[:10]
        assert duplicate_votes == [] and flips == [], (duplicate_votes[:10], flips[:10])
        assert harmful == [], harmful[:10]


# --- 3b. A lost reply: the service runs the script again -------------------------------------

LOST = "lostreply"


def first(result: Any) -> Any:
    """The value of a store answer that may come with a flag: (value, created) -> value."""
    return result[0] if isinstance(result, tuple) else result


async def test_a_script_whose_reply_is_lost_runs_again_and_changes_nothing_more(stall_redis: RedisServer):
    """The service's own Redis client (service.app.connect) and store talk to Redis
    through a proxy that lets one script call through and then cuts the connection
    instead of passing its reply back. The batcher (service.wire.Batcher) sends
    the call again on a new connection, so the script runs twice; the second
    run must change nothing. What the caller hears may differ from a single run
    (a registration says "updated", a release "not found"), which is harmless."""
    prefix = f"t{os.urandom(6).hex()}"
    keys = Keys(prefix)
    db = stall_redis.client()
    reruns, answers = 0, {}
    with fault_record(
        "lost-reply-script-rerun",
        "a proxy cuts the connection after a script ran, before its reply; the service retries the call",
    ) as record:
        async with FaultyProxy(stall_redis.port) as proxy:
            for name, source in sources().items():  # loaded already, as in a running service
                if name != LIB:
                    db.script_load(lib_text() + "\n" + source.text)
            client = connect(Settings(redis_url=proxy.url, redis_timeout_seconds=REDIS_TIMEOUT))
            store = Store(client, keys, 300)
            try:

                async def lost_once(operation: Callable[[], Awaitable[Any]]) -> Any:
                    """Run ``operation`` (one script call) with its first reply lost."""
                    nonlocal reruns
                    calls, lost = proxy.script_calls, proxy.replies_lost
                    proxy.lose_next_reply()
                    try:
                        result = await operation()
                    except ConcordError as exc:
                        result = exc
                    assert proxy.replies_lost == lost + 1, "the proxy lost no reply"
                    assert proxy.script_calls == calls + 2, f"{proxy.script_calls - calls} script calls, expected 2"
                    reruns += 1
                    return result

                def count(pattern: str) -> int:
                    return sum(1 for _ in db.scan_iter(match=f"{keys.tenant(LOST)}:{pattern}", count=1000))

                # Registration: one agent, created once.
                sdr, created = await lost_once(lambda: store.agents.register(LOST, "sdr", None, None))
                answers["register"] = "updated" if not created else "created"
                assert db.zcard(keys.agents(LOST)) == 1 and db.zcard(keys.heartbeats(LOST)) == 1
                assert db.hget(keys.agent(LOST, sdr.id), "registeredAt") == str(ms(sdr.registered_at))

                beat = await lost_once(lambda: store.agents.heartbeat(LOST, sdr.id))
                assert db.zscore(keys.heartbeats(LOST), sdr.id) == ms(beat.last_heartbeat)

                # A grant: one lease, one token taken from the fence.
                lease, created = await lost_once(
                    lambda: store.leases.acquire(LOST, sdr.id, "alice@example.com", None, 600_000)
                )
                answers["acquire"] = "extended" if not created else "granted"
                assert db.get(keys.fence(LOST)) == str(lease.fencing_token)
                lease_key, registry = (
                    keys.lease(LOST, "alice@example.com"),
                    keys.lease_registry(LOST, agent_tag(sdr.id)),
                )
                holder, token = db.get(lease_key).split("|", 2)[:2]
                assert (f"agent_{holder}", token) == (sdr.id, str(lease.fencing_token))
                assert lease.id == lease_id(sdr.id, lease.fencing_token)
                assert db.pexpiretime(lease_key) == ms(lease.expires_at)
                assert db.hgetall(registry) == {str(lease.fencing_token): f"{ms(lease.expires_at)}:alice@example.com"}
                assert count("lease:*") == 1 and count("leases:*") == 1

                renewed = await lost_once(lambda: store.leases.renew(LOST, lease.id, sdr.id, 900_000))
                assert (renewed.id, renewed.fencing_token) == (lease.id, lease.fencing_token)
                assert db.get(keys.fence(LOST)) == str(lease.fencing_token)
                assert db.pexpiretime(lease_key) == ms(renewed.expires_at)
                assert db.hgetall(registry) == {str(lease.fencing_token): f"{ms(renewed.expires_at)}:alice@example.com"}

                # A consensus request: one request, in each of its lists once.
                peers = [first(await store.agents.register(LOST, f"peer-{i}", None, None)) for i in range(3)]
                request = first(
                    await lost_once(lambda: store.consensus.request(LOST, sdr.id, "offer", None, None, 3_600_000))
                )
                assert count("consensus:cons_*") == 1
                for listed in ("all", "pending"):
                    assert db.zrange(keys.consensus_list(LOST, listed), 0, -1) == [request.id]
                assert db.zrange(keys.consensus_due(LOST), 0, -1) == [request.id]

                # Votes: each counted once; the deciding one decides once.
                voted = await lost_once(lambda: store.consensus.vote(LOST, request.id, peers[0].id, "approve", None))
                assert (voted.status, voted.tally.approve, len(voted.votes)) == ("pending", 1, 1)
                assert db.hlen(keys.votes(LOST, request.id)) == 1
                decided = await lost_once(lambda: store.consensus.vote(LOST, request.id, peers[1].id, "approve", None))
                assert (decided.status, decided.tally.approve, len(decided.votes)) == ("approved", 2, 2), decided
                assert db.hlen(keys.votes(LOST, request.id)) == 2
                assert db.zrange(keys.consensus_list(LOST, "approved"), 0, -1) == [request.id]
                assert db.zcard(keys.consensus_list(LOST, "pending")) == 0
                read = await store.consensus.get(LOST, request.id)
                assert (read.status, read.resolved_at, read.votes) == ("approved", decided.resolved_at, decided.votes)

                # Release and deregistration: done once; the second run finds nothing to do.
                released = await lost_once(lambda: store.leases.release(LOST, lease.id, sdr.id))
                answers["release"] = getattr(released, "code", "released")
                assert not db.exists(lease_key, registry)
                assert db.get(keys.fence(LOST)) == str(lease.fencing_token)
                removed = await lost_once(lambda: store.agents.remove(LOST, peers[2].id))
                answers["remove"] = getattr(removed, "code", "removed")
                assert not db.exists(keys.agent(LOST, peers[2].id))
                assert db.zscore(keys.agents(LOST), peers[2].id) is None
                assert db.zcard(keys.agents(LOST)) == 3
            finally:
                await client.aclose()
                db.close()
            record.trials = reruns
            record.acknowledged = reruns
            record.extra = {"scripts_run_twice": reruns, "changed_twice": 0, "answers_after_a_rerun": answers}


# --- 4. One of three service processes SIGKILLed ----------------------------------------------

FLEET, FLEET_KEY = "fleet", "fleet-key-0123456789"
PROCESSES = 3
FLEET_AGENTS = 12  # agent i talks to process i % 3; process 0 is killed
HOT_CONTACTS = [f"hot-{k}@contested.example.com" for k in range(8)]
APPROVERS = 8  # agents 0-7 approve, 8-11 reject; 12 eligible, 7 needed


@dataclass
class Grant:
    """A lease as granted (201) and, as far as this client saw, ended."""

    lease: dict
    process: int
    sent: float  # monotonic time the grant request was sent
    answered: float
    end_ms: int | None  # releasedAt if released, else the last expiresAt; None: unknown (a request went unanswered)

    @property
    def token(self) -> int:
        return self.lease["fencingToken"]


async def fleet_agent(
    load: Load,
    client: httpx.AsyncClient,
    agent: dict,
    i: int,
    process: int,
    cid: str,
    dead: set[int],
    grants: list[Grant],
) -> None:
    """Vote once, then contend for the hot contacts: take one, renew it, check
    with its token, release it, take another."""
    rng = random.Random(i)
    vote = "approve" if i < APPROVERS else "reject"
    await load.send(
        client,
        "vote",
        {"agent": agent["id"], "vote": vote},
        "POST",
        f"{C}/consensus/{cid}/vote",
        json_body={"agentId": agent["id"], "vote": vote},
        process=process,
    )
    while not load.stopping and process not in dead:
        contact = rng.choice(HOT_CONTACTS)
        asked = await load.send(
            client,
            "lease",
            {"agent": agent["id"], "contact": contact},
            "POST",
            f"{C}/lease",
            json_body={"agentId": agent["id"], "contactEmail": contact, "durationSeconds": 5},
            process=process,
        )
        if asked.status != 201:
            continue
        grant = Grant(asked.body, process, asked.started, asked.ended, ms(asked.body["expiresAt"]))
        grants.append(grant)
        lease_url = f"{C}/lease/{grant.lease['id']}"
        renewed = await load.send(
            client,
            "renew",
            {"agent": agent["id"]},
            "POST",
            f"{lease_url}/renew",
            json_body={"agentId": agent["id"], "durationSeconds": 5},
            process=process,
        )
        if renewed.status == 200:
            grant.end_ms = ms(renewed.body["expiresAt"])
        elif renewed.status is None:
            grant.end_ms = None
        await load.send(
            client,
            "send-check",
            {"agent": agent["id"], "contact": contact},
            "POST",
            f"{C}/send-check",
            json_body={"agentId": agent["id"], "contactEmail": contact, "fencingToken": grant.token},
            process=process,
        )
        released = await load.send(
            client,
            "release",
            {"agent": agent["id"]},
            "DELETE",
            lease_url,
            params={"agentId": agent["id"]},
            process=process,
        )
        if released.status == 200 and grant.end_ms is not None:
            grant.end_ms = ms(released.body["releasedAt"])
        elif released.status is None:
            grant.end_ms = None


def expected_answer(c: Call) -> bool:
    """Is this what a healthy service answers? Successes, and the 409s contention makes."""
    if c.kind == "lease":
        return c.status in (200, 201) or (c.status == 409 and c.code == "lease_conflict")
    if c.kind == "vote":
        return c.status == 200 or (c.status == 409 and c.code == "consensus_closed")
    if c.kind == "send-check":
        return c.status == 200 and c.body == {"allowed": True}
    return c.status == 200


def overlapping_grants(grants: list[Grant]) -> list[str]:
    """Grants of one contact whose lifetimes overlap, or whose tokens disagree with their order."""
    found = []
    by_contact: dict[str, list[Grant]] = defaultdict(list)
    for g in grants:
        by_contact[g.lease["contactEmail"]].append(g)
    for contact, held in by_contact.items():
        held.sort(key=lambda g: g.token)
        for earlier, later in itertools.pairwise(held):
            if earlier.end_ms is not None and ms(later.lease["acquiredAt"]) < earlier.end_ms:
                found.append(f"{contact}: {later.lease} granted before {earlier.lease} ended at {earlier.end_ms}")
    return found


def tokens_out_of_order(grants: list[Grant]) -> list[str]:
    """A grant answered before another was asked must carry the smaller token."""
    found = []
    by_answer = sorted(grants, key=lambda g: g.answered)
    for later in grants:
        before = [g for g in by_answer if g.answered < later.sent]
        if before and max(g.token for g in before) >= later.token:
            found.append(f"{later.lease} has a token no larger than a grant answered before it was asked")
    return found


def test_the_grant_checkers_catch_overlaps_and_tokens_out_of_order():
    """The checks of fault 4, shown to fail on histories that break the promise."""

    def grant(token: int, acquired: int, end: int | None, sent: float, answered: float) -> Grant:
        lease = {"contactEmail": "a@example.com", "fencingToken": token, "acquiredAt": iso(acquired)}
        return Grant(lease, 1, sent, answered, end)

    fine = [grant(10, 1_000, 2_000, 0.0, 0.1), grant(11, 2_000, 3_000, 0.2, 0.3)]
    assert overlapping_grants(fine) == [] and tokens_out_of_order(fine) == []
    overlap = [grant(10, 1_000, 2_000, 0.0, 0.1), grant(11, 1_999, 3_000, 0.2, 0.3)]
    assert len(overlapping_grants(overlap)) == 1
    unknown_end = [grant(10, 1_000, None, 0.0, 0.1), grant(11, 1_500, 3_000, 0.2, 0.3)]
    assert overlapping_grants(unknown_end) == []  # not checkable, and counted apart
    backwards = [grant(11, 1_000, 2_000, 0.0, 0.1), grant(10, 2_000, 3_000, 0.2, 0.3)]
    assert len(tokens_out_of_order(backwards)) == 1


async def test_one_of_three_service_processes_sigkilled_under_load(real_redis_url: str, tmp_path: Path):
    settings = {"CONCORD_API_KEYS": f"{FLEET}:{FLEET_KEY}", "CONCORD_REDIS_TIMEOUT_SECONDS": str(REDIS_TIMEOUT)}
    with (
        fault_record(
            "service-process-sigkill",
            "SIGKILL one of three concord serve processes on one Redis, under lease contention and a vote",
        ) as record,
        running_stack(tmp_path, settings) as stack,
        ExitStack() as others,
    ):
        env = {"CONCORD_REDIS_URL": stack.redis.url, "CONCORD_KEY_PREFIX": stack.keys.prefix, **settings}
        procs = [stack.service] + [
            others.enter_context(service(env, tmp_path / f"concord-{p}.log")) for p in range(1, PROCESSES)
        ]
        async with AsyncExitStack() as clients_stack:
            clients = [await clients_stack.enter_async_context(p.client(FLEET_KEY)) for p in procs]
            agents = [await register(clients[i % PROCESSES], f"agent-{i:02d}") for i in range(FLEET_AGENTS)]
            chair = await register(clients[1], "chair")
            opened = await clients[1].post(f"{C}/consensus", json={"requestingAgentId": chair["id"], "action": "merge"})
            assert opened.status_code == 201 and opened.json()["tally"]["needed"] == 7, opened.text
            cid = opened.json()["id"]

            dead: set[int] = set()
            grants: list[Grant] = []
            async with Load() as load:
                load.start(
                    *(
                        fleet_agent(load, clients[i % PROCESSES], a, i, i % PROCESSES, cid, dead, grants)
                        for i, a in enumerate(agents)
                    )
                )
                await load.until(
                    lambda: len(grants) >= 40 and len({g.process for g in grants}) == PROCESSES,
                    what="grants on every process before the kill",
                )
                victim = procs[0].process
                assert victim is not None
                os.killpg(victim.pid, signal.SIGKILL)
                victim.wait(timeout=10)
                dead.add(0)
                killed = time.monotonic()
                await load.until(
                    lambda: (
                        sum(g.sent > killed for g in grants) >= 40
                        and all(
                            load.count(since=killed, acked=True, agent=a["id"])
                            for i, a in enumerate(agents)
                            if i % PROCESSES
                        )
                    ),
                    what="every agent of the surviving processes to be served after the kill",
                )
                await load.stop()

            survivors = [c for c in load.calls if c.process != 0]
            unexpected = [str(c) for c in survivors if not expected_answer(c)]
            read = await clients[1].get(f"{C}/consensus/{cid}")
            assert read.status_code == 200, read.text
            final = read.json()
            voters = [v["agentId"] for v in final["votes"]]
            duplicate_votes = (
                len(voters) - len(set(voters)) + abs(final["tally"]["approve"] + final["tally"]["reject"] - len(voters))
            )
            flips = [
                str(c)
                for c in load.matching("vote", acked=True)
                if c.body["status"] != "pending"
                and (c.body["status"], c.body["resolvedAt"]) != (final["status"], final["resolvedAt"])
            ]
            double = overlapping_grants(grants)
            disorder = tokens_out_of_order(grants)
            holders = await bounded(clients[1].get(f"{C}/leases", params={"contactEmail": c}) for c in HOT_CONTACTS)
            many_holders = [r.text for r in holders if r.status_code != 200 or len(r.json()["leases"]) > 1]

            record.trials = 1
            record.acknowledged = sum(c.acked for c in load.calls)
            record.double_grants = len(double)
            record.duplicate_votes = duplicate_votes
            record.flips = len(flips)
            record.extra = {
                "processes": PROCESSES,
                "grants_observed": len(grants),
                "grants_after_kill": sum(g.sent > killed for g in grants),
                "survivor_requests": len(survivors),
                "survivor_requests_after_kill": sum(c.started > killed for c in survivors),
                "survivor_errors": len(unexpected),
                "victim_requests_unanswered": sum(c.status is None for c in load.calls if c.process == 0),
                "tokens_out_of_order": len(disorder),
                "grants_with_unknown_end": sum(g.end_ms is None for g in grants),
                "vote": f"{final['status']} {final['tally']}",
            }
            assert unexpected == [], unexpected[:10]
            assert double == [] and disorder == [], (double[:5], disorder[:5])
            assert duplicate_votes == 0 and flips == [], (final, flips[:5])
            assert many_holders == [], many_holders
            assert len({g.token for g in grants}) == len(grants)


# --- 5. A lease holder stalls past its lease -----------------------------------------------------

STALE, STALE_KEY = "stale", "stale-key-0123456789"
STALE_TRIALS = 3


async def test_a_holder_that_stalls_past_its_lease_is_fenced_out(real_redis_url: str, tmp_path: Path):
    """The realistic pause: the holder's process freezes (a GC pause, a stuck call)
    for longer than its one-second lease but shorter than the heartbeat window, so
    it is still an active agent when it wakes. Meanwhile the lease expired and
    another agent took the contact; the woken holder's token is stale. (A holder
    whose heartbeats lapse: test_liveness.py::test_a_lapsed_agent_loses_its_vote_and_its_lease.)"""
    settings = {"CONCORD_API_KEYS": f"{STALE}:{STALE_KEY}", "CONCORD_REDIS_TIMEOUT_SECONDS": str(REDIS_TIMEOUT)}
    with (
        fault_record(
            "holder-stalls-past-lease",
            "the holder does nothing while its 1 s lease expires; another agent takes the contact",
        ) as record,
        running_stack(tmp_path, settings) as stack,
    ):
        async with stack.service.client(STALE_KEY) as client:

            async def trial(n: int) -> None:
                contact = f"paused-{n}@example.com"
                sleeper, taker = await register(client, f"sleeper-{n}"), await register(client, f"taker-{n}")
                granted = await client.post(
                    f"{C}/lease", json={"agentId": sleeper["id"], "contactEmail": contact, "durationSeconds": 1}
                )
                assert granted.status_code == 201, granted.text
                old = granted.json()
                record.acknowledged += 1

                async def expired() -> bool:  # the sleeper does nothing; the taker watches
                    r = await client.get(f"{C}/lease/{old['id']}")
                    assert r.status_code in (200, 404), r.text
                    return r.status_code == 404

                await eventually(expired, timeout=15, what="the one-second lease to expire")
                taken = await client.post(f"{C}/lease", json={"agentId": taker["id"], "contactEmail": contact})
                assert taken.status_code == 201, taken.text
                new = taken.json()
                assert new["fencingToken"] > old["fencingToken"] and new["id"] != old["id"], (old, new)

                # The sleeper wakes: still an active agent, but its token is stale.
                woke = (await client.get(f"{V1}/agents/{sleeper['id']}")).json()
                assert woke["status"] == "active", woke
                check = await client.post(
                    f"{C}/send-check",
                    json={"agentId": sleeper["id"], "contactEmail": contact, "fencingToken": old["fencingToken"]},
                )
                assert check.status_code == 200, check.text
                body = check.json()
                assert body["allowed"] is False and body["reason"] == "stale_fencing_token", body
                assert body["leaseHolder"] == {
                    "agentId": taker["id"],
                    "agentName": taker["agentName"],
                    "intent": None,
                    "expiresAt": new["expiresAt"],
                }, body
                if body["allowed"]:
                    record.double_grants += 1
                # Without a token it meets the conflict; its old lease cannot be renewed or released.
                plain = await client.post(f"{C}/send-check", json={"agentId": sleeper["id"], "contactEmail": contact})
                assert plain.json()["reason"] == "lease_conflict", plain.text
                problem(
                    await client.post(f"{C}/lease/{old['id']}/renew", json={"agentId": sleeper["id"]}),
                    404,
                    "lease_not_found",
                )
                problem(
                    await client.delete(f"{C}/lease/{old['id']}", params={"agentId": sleeper["id"]}),
                    404,
                    "lease_not_found",
                )
                again = problem(
                    await client.post(f"{C}/lease", json={"agentId": sleeper["id"], "contactEmail": contact}),
                    409,
                    "lease_conflict",
                )
                assert again["leaseHolder"]["agentId"] == taker["id"], again
                mine = await client.post(
                    f"{C}/send-check",
                    json={"agentId": taker["id"], "contactEmail": contact, "fencingToken": new["fencingToken"]},
                )
                assert mine.json() == {"allowed": True}, mine.text
                record.extra["stale_tokens_refused"] = record.extra.get("stale_tokens_refused", 0) + 1

            await asyncio.gather(*(trial(n) for n in range(STALE_TRIALS)))
            record.trials = STALE_TRIALS
