"""Fault 3: Redis stalled under concurrent load, three ways (SIGSTOP,
``DEBUG SLEEP 3``, replies held back by a proxy); every request in the stall
answers 503 promptly, nothing is applied twice, and each 503'd request sent again
is harmless.
The lost reply that makes the service run a script again is
tests/system/test_fault_redis_reply_lost.py.

The overview of the fault-injection suite, with what each fault records:
tests/system/faults_support.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio

from concord.server.store.keys import Keys, agent_id_for, agent_tag, lease_id
from tests.support.api import V1, C
from tests.support.helpers import RedisServer, ServiceProcess, eventually
from tests.support.reports import FaultRecord, fault_record
from tests.system.faults_support import (
    REDIS_TIMEOUT,
    STALL_BOUND,
    Call,
    FaultyProxy,
    Load,
    bounded,
    keys_setting,
    lease_string,
    register,
)
from tests.system.faults_support import stall_redis as stall_redis  # a fixture: pytest finds it by name

pytestmark = pytest.mark.real


# --- 3. Redis stalled -----------------------------------------------------------------------

STALL, STALL_REGS = "stall", "stallregs"
STALL_TENANTS = {STALL: "stall-key-0123456789", STALL_REGS: "stallregs-key-0123456789"}
POOL = [f"pooled-{i}" for i in range(6)]  # names registered again and again, by two workers at once
STALL_VOTERS = 12  # 0-9 vote in the background, 10 and 11 in the burst sent during the stall


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
