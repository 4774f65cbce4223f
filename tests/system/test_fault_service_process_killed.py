"""Fault 4: one of three `concord serve` processes SIGKILLed under lease contention
and a vote; the others answer every request, and no two grants of a contact
overlap.

The overview of the fault-injection suite, with what each fault records:
tests/system/faults_support.py.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from collections import defaultdict
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.api import C, iso, ms
from tests.support.helpers import running_stack, service
from tests.support.reports import fault_record
from tests.system.faults_support import REDIS_TIMEOUT, Call, Load, bounded, register

pytestmark = pytest.mark.real


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
        return c.status == 200 and c.body.get("allowed") is True and "reason" not in c.body
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
