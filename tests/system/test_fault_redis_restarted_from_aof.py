"""Fault 1: Redis SIGKILLed under load and restarted on its directory with
``appendonly yes`` + ``appendfsync always``, five times; every acknowledged change
is there afterwards, with its expiry unchanged.

The overview of the fault-injection suite, with what each fault records:
tests/system/faults_support.py.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from concord.server.store.keys import Keys, agent_tag
from tests.support.api import V1, C, ms
from tests.support.helpers import RedisServer, eventually, running_stack, wait_until
from tests.support.reports import fault_record
from tests.system.faults_support import (
    REDIS_TIMEOUT,
    Call,
    Load,
    bounded,
    keys_setting,
    lease_string,
    register,
    service_ready,
)

pytestmark = pytest.mark.real

AOF_ALWAYS = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")


# --- 1. Redis SIGKILLed, restarted from its append-only file --------------------------

LEASES, VOTES, REGS = "leases", "votes", "regs"
KILL_TENANTS = {LEASES: "leases-key-0123456789", VOTES: "votes-key-0123456789", REGS: "regs-key-0123456789"}
KILL_TRIALS = 5
LEASE_WORKERS = 4
VOTE_WORKERS = 2
VOTERS_PER_REQUEST = 3  # of 4 eligible voters: 3 is the majority, so the third vote decides


def past(when_ms: float) -> bool:
    """Is this host's clock, which is also Redis's, past ``when_ms``?"""
    return time.time() * 1000 > when_ms + 5


def redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


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
