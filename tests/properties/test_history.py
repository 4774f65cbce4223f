"""The history checker (tests/properties/history.py), and the contention run it judges.

First the checker on small hand-made histories: a clean one passes, and every kind
of violation is found (a checker that cannot fail proves nothing). Then the run:
4 `concord serve` processes on one private redis-server, 40 agents fighting over
120 contacts with short leases, renewals, re-acquires, releases and expiries, until
at least 10,000 grants; every answer goes into the history and the checker must
find nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import ssl
import time
from collections import Counter
from collections.abc import Container
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.properties.history import DEFAULT_TOLERANCE_MS, Conflict, Extension, Grant, History, Release, check
from tests.support.api import V1, C, ms
from tests.support.helpers import HANG_SECONDS, ServiceProcess, running_stack, service

# --- the checker on hand-made histories ------------------------------------------

X, Y, Z = "agent_x", "agent_y", "agent_z"


def grant(lease_id: str, agent: str, at: int, expires: int, contact: str = "a@example.com", token: int | None = None):
    # Tokens as the service makes them: Redis's time in microseconds, or just above.
    return Grant(contact, lease_id, agent, token if token is not None else at * 1000, at, expires, process="p1")


def clean() -> History:
    """Two contacts, every kind of event, each boundary met exactly but not crossed."""
    return History(
        grants=[
            grant("L1", X, 1000, 2000),
            # L1 was released at 1800: a grant at that very millisecond is fine.
            grant("L2", Y, 1800, 2800, token=1_800_001),
            # L2 expired at 2800 (lives through 2800): the next grant comes at 2801.
            grant("L3", X, 2801, 3801),
            grant("B1", Z, 1500, 2500, contact="b@example.com"),
        ],
        extensions=[Extension("L1", 2500, at=1500, agent_id=X, fencing_token=1_000_000)],
        releases=[Release("L1", 1800, process="p2")],
        conflicts=[
            Conflict("a@example.com", X, 2000, sent_ms=1100, answered_ms=1200, agent_id=Y),  # before the renew
            Conflict("a@example.com", X, 2500, sent_ms=1600, answered_ms=1700, agent_id=Z),  # after it
            Conflict("a@example.com", Y, 2800, sent_ms=2700, answered_ms=2790, agent_id=X),
            Conflict("b@example.com", Z, 2500, sent_ms=2400, answered_ms=2600, agent_id=X),
        ],
        finished_ms=3000,
    )


def kinds(history: History, **options: Any) -> Counter:
    return Counter(v.kind for v in check(history, **options).violations)


def test_a_clean_history_passes_and_is_counted():
    report = check(clean())
    assert report.violations == [], report.summary()
    assert (report.grants, report.extensions, report.releases, report.conflicts) == (4, 1, 1, 4)
    # L2 and B1 expired before the end; L3 (until 3801) was still held at 3000.
    assert (report.expiries, report.still_held) == (2, 1)
    assert (report.contacts, report.contested_contacts, report.processes) == (2, 2, 2)
    json.dumps(report.as_dict())  # the report is plain JSON


def test_a_grant_at_or_before_the_previous_expiry_is_an_overlap():
    history = clean()
    history.grants[2] = grant("L3", X, 2800, 3800)  # L2 still lives at 2800
    assert kinds(history) == {"overlap_expiry": 1}
    (violation,) = check(history).violations
    assert "L3" in violation.detail and "L2" in violation.detail, violation


def test_an_extension_moves_the_end_of_a_lease():
    history = History(
        grants=[grant("L1", X, 1000, 2000), grant("L2", Y, 2200, 3200)],
        extensions=[Extension("L1", 2500, at=1500)],  # L1 now runs to 2500, past L2's grant
    )
    assert kinds(history) == {"overlap_expiry": 1}
    # A shorter renew moves the end earlier: the last extension counts, not the largest.
    history.extensions.append(Extension("L1", 2100, at=1600))
    assert kinds(history) == {}


def test_a_grant_before_the_release_is_an_overlap():
    history = clean()
    history.grants[1] = grant("L2", Y, 1799, 2800)
    assert kinds(history) == {"overlap_release": 1}


def test_a_token_lower_than_an_earlier_grants_is_found():
    history = clean()
    # B1 (granted at 1500) outranks L2 (granted later, at 1800); contacts do not matter.
    history.grants[3] = grant("B1", Z, 1500, 2500, contact="b@example.com", token=1_900_000)
    assert kinds(history) == {"token_order": 1}


def test_a_token_granted_twice_is_found():
    history = clean()
    history.grants[3] = grant("B1", Z, 1000, 2500, contact="b@example.com", token=1_000_000)  # L1's
    assert kinds(history) == {"token_duplicate": 1}


def test_a_token_below_the_clock_is_found():
    history = clean()
    history.grants[3] = grant("B1", Z, 1500, 2500, contact="b@example.com", token=1_499_999)
    assert kinds(history) == {"token_below_clock": 1}


def test_a_conflict_naming_a_non_holder_is_found():
    history = clean()
    history.conflicts += [
        Conflict("a@example.com", Z, 2000, sent_ms=1100, answered_ms=1200),  # Z never held a@
        Conflict("a@example.com", X, 2001, sent_ms=1100, answered_ms=1200),  # X did, never until 2001
        Conflict("b@example.com", X, 2000, sent_ms=1100, answered_ms=1200),  # X's expiry, other contact
    ]
    assert kinds(history) == {"conflict_unknown_holder": 3}


def test_a_conflict_naming_a_holder_whose_lease_had_ended_is_found():
    history = clean()
    history.conflicts += [
        # X's lease was released at 1800, and renewed to 2500 at 1500.
        Conflict("a@example.com", X, 2500, sent_ms=1900, answered_ms=1950),  # after the release
        Conflict("a@example.com", X, 2000, sent_ms=1560, answered_ms=1700),  # the renew replaced 2000 at 1500
        Conflict("a@example.com", Y, 2800, sent_ms=2900, answered_ms=2950),  # L2 expired at 2800
        Conflict("a@example.com", X, 3801, sent_ms=1000, answered_ms=1100),  # L3 was granted only at 2801
    ]
    assert kinds(history) == {"conflict_stale_holder": 4}


def test_the_tolerance_is_what_separates_a_late_conflict_from_a_stale_one():
    history = clean()
    history.conflicts = [Conflict("a@example.com", Y, 2800, sent_ms=2840, answered_ms=2860)]
    assert kinds(history) == {}  # 40 ms after L2's end: within the default 50 ms
    assert kinds(history, tolerance_ms=0) == {"conflict_stale_holder": 1}


def test_a_conflict_naming_the_asker_is_found():
    history = clean()
    history.conflicts.append(Conflict("a@example.com", X, 2500, sent_ms=1600, answered_ms=1700, agent_id=X))
    assert kinds(history) == {"conflict_self": 1}


def test_events_that_cannot_be_true_are_found():
    history = clean()
    history.extensions += [
        Extension("L9", 5000, at=4000),  # never granted
        Extension("L2", 2800, at=1800, agent_id=X),  # L2 is Y's
        Extension("L2", 2800, at=1800, fencing_token=7),  # L2's token is 1_800_001
        Extension("L3", 4000, at=2700),  # before L3 was granted
        Extension("L1", 2600, at=1900),  # after L1's release at 1800
    ]
    history.releases += [Release("L9", 4000), Release("L1", 1900)]  # never granted; released twice
    history.grants.append(grant("L3", Y, 2900, 3900))  # one id granted twice
    assert kinds(history) == {"unknown_lease": 2, "inconsistent_lease": 5, "duplicate_lease_id": 1}


def test_a_server_time_outside_its_request_flight_is_a_clock_violation():
    history = clean()
    history.grants[0] = Grant("a@example.com", "L1", X, 1_000_000, 1000, 2000, sent_ms=1000.5, answered_ms=1010)
    history.releases[0] = Release("L1", 1800, sent_ms=1700, answered_ms=1799.5)  # 0.5 ms: rounding, fine
    report = check(history)
    assert report.violations == [] and report.clock_checked == 2, report.summary()
    history.grants[0] = Grant("a@example.com", "L1", X, 1_000_000, 1000, 2000, sent_ms=1100, answered_ms=1110)
    assert kinds(history) == {"clock": 1}


# --- the contention run -------------------------------------------------------------

TENANT, API_KEY = "history", "history-key-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {API_KEY}"}  # registers the agents; each then acts with its own credential
PROCESSES = 4
AGENTS = 40  # one request in flight per agent: at most 40 at once
CONTACTS = 120
HOT = 20  # 40 % of the picks go to these, so they are fought over
TARGET_GRANTS = 10_000
HEARTBEAT_EVERY_S = 60.0  # well inside the default 300 s window: no agent lapses, no takeover
SEED = 20240611  # of the random choices; the interleaving, and so the history, still varies per run


def now_ms() -> float:
    """The local wall clock in ms: the clock Redis reads on this host."""
    return time.time() * 1000


def contact_of(n: int) -> str:
    return f"lead-{n:03d}@history{n % 7}.example.com"


@dataclass
class Agent:
    index: int
    name: str
    # One client per agent (one connection to each process): httpcore's pool scans
    # its connections on every request, so one pool shared by 40 agents costs more.
    client: httpx.AsyncClient
    id: str = ""
    sent: int = 0  # requests so far; picks the process (round robin)
    last_heartbeat: float = field(default_factory=time.monotonic)


@dataclass
class Lease:
    id: str
    contact: str
    expires_at: int


class Contention:
    """Agents that acquire, renew, re-acquire, release and abandon leases, recording every answer."""

    def __init__(self, urls: list[str], seed: int) -> None:
        self.urls = urls
        self.history = History()
        self.rng = random.Random(seed)
        self.statuses: Counter = Counter()
        self.done = asyncio.Event()

    async def call(self, agent: Agent, op: str, method: str, url: str, expected: Container[int], **kw: Any):
        """One request, round robin over the processes; an answer outside ``expected`` fails the run."""
        process = (agent.index + agent.sent) % len(self.urls)
        agent.sent += 1
        sent = now_ms()
        response = await agent.client.request(method, self.urls[process] + url, **kw)
        answered = now_ms()
        self.statuses[f"{op} {response.status_code}"] += 1
        assert response.status_code in expected, (
            f"{op} by {agent.name} via process {process}: {response.status_code} {response.text}"
        )
        return response, response.json(), sent, answered, f"p{process}"

    async def register(self, agent: Agent) -> None:
        """With the tenant's admin key; from then on the agent's client carries the
        agent's own credential, as a fleet's process does."""
        _, body, *_ = await self.call(
            agent, "register", "POST", f"{V1}/register", {201}, json={"agentName": agent.name}, headers=ADMIN
        )
        agent.id = body["id"]
        agent.client.headers["Authorization"] = f"Bearer {body['credential']}"

    async def heartbeat(self, agent: Agent) -> None:
        if time.monotonic() - agent.last_heartbeat > HEARTBEAT_EVERY_S:
            await self.call(agent, "heartbeat", "POST", f"{C}/heartbeat", {200}, json={"agentId": agent.id})
            agent.last_heartbeat = time.monotonic()

    def pick(self) -> str:
        n = self.rng.randrange(HOT) if self.rng.random() < 0.4 else self.rng.randrange(CONTACTS)
        return contact_of(n)

    async def acquire(self, agent: Agent, contact: str) -> Lease | None:
        seconds = self.rng.choice((1, 2))
        spelled = contact.upper() if self.rng.random() < 0.1 else contact  # normalized by the service
        response, body, sent, answered, process = await self.call(
            agent,
            "acquire",
            "POST",
            f"{C}/lease",
            {200, 201, 409},
            json={"agentId": agent.id, "contactEmail": spelled, "durationSeconds": seconds},
        )
        if response.status_code == 409:
            assert body["code"] == "lease_conflict" and body["conflict"] is True, body
            assert body["contactEmail"] == contact, body
            holder = body["leaseHolder"]
            self.history.conflicts.append(
                Conflict(contact, holder["agentId"], ms(holder["expiresAt"]), sent, answered, agent.id, TENANT, process)
            )
            return None
        assert body["agentId"] == agent.id and body["contactEmail"] == contact and body["conflict"] is False, body
        expires_at = ms(body["expiresAt"])
        if response.status_code == 201:
            self.history.grants.append(
                Grant(
                    contact,
                    body["id"],
                    agent.id,
                    body["fencingToken"],
                    ms(body["acquiredAt"]),
                    expires_at,
                    TENANT,
                    process,
                    sent,
                    answered,
                )
            )
            if len(self.history.grants) >= TARGET_GRANTS:
                self.done.set()
        else:  # 200: this agent already held it; same lease, expiry = now + duration
            self.history.extensions.append(
                Extension(
                    body["id"],
                    expires_at,
                    expires_at - seconds * 1000,
                    agent.id,
                    body["fencingToken"],
                    process,
                    sent,
                    answered,
                )
            )
        return Lease(body["id"], contact, expires_at)

    async def renew(self, agent: Agent, lease: Lease, expected: frozenset[int] = frozenset({200, 404})) -> Lease | None:
        seconds = self.rng.choice((1, 2))
        response, body, sent, answered, process = await self.call(
            agent,
            "renew",
            "POST",
            f"{C}/lease/{lease.id}/renew",
            expected,
            json={"agentId": agent.id, "durationSeconds": seconds},
        )
        if response.status_code == 404:  # it expired first
            assert body["code"] == "lease_not_found", body
            return None
        assert body["id"] == lease.id and body["agentId"] == agent.id, body
        expires_at = ms(body["expiresAt"])
        self.history.extensions.append(
            Extension(
                lease.id,
                expires_at,
                expires_at - seconds * 1000,
                agent.id,
                body["fencingToken"],
                process,
                sent,
                answered,
            )
        )
        return Lease(lease.id, lease.contact, expires_at)

    async def release(self, agent: Agent, lease: Lease, expected: frozenset[int] = frozenset({200, 404})) -> None:
        response, body, sent, answered, process = await self.call(
            agent, "release", "DELETE", f"{C}/lease/{lease.id}", expected, params={"agentId": agent.id}
        )
        if response.status_code == 404:  # it expired first
            assert body["code"] == "lease_not_found", body
            return
        assert body["id"] == lease.id and body["released"] is True, body
        self.history.releases.append(Release(lease.id, ms(body["releasedAt"]), process, sent, answered))

    async def hold(self, agent: Agent, lease: Lease) -> None:
        """Keep the lease a little (renew, or acquire again), then release it, abandon it,
        or wait out its expiry and see it gone."""
        for _ in range(self.rng.choice((0, 0, 1, 1, 2))):
            if self.rng.random() < 0.5:
                lease = await self.renew(agent, lease)
            else:  # 200 if still ours; 201 if it expired and we got it again; 409 if another did
                lease = await self.acquire(agent, lease.contact)
            if lease is None:
                return
        end = self.rng.random()
        if end < 0.80:
            await self.release(agent, lease)
        elif end < 0.98:
            pass  # left to expire while the agent moves on
        else:
            # A deliberate pause until the known expiresAt (plus the clock tolerance):
            # then the lease must be gone, for its holder too.
            await asyncio.sleep(max(0.0, (lease.expires_at + DEFAULT_TOLERANCE_MS - now_ms()) / 1000))
            if self.rng.random() < 0.5:
                await self.renew(agent, lease, expected=frozenset({404}))
            else:
                await self.release(agent, lease, expected=frozenset({404}))

    async def agent_loop(self, agent: Agent) -> None:
        while not self.done.is_set():
            await self.heartbeat(agent)
            lease = await self.acquire(agent, self.pick())
            if lease is not None:
                await self.hold(agent, lease)

    async def run(self, agents: list[Agent]) -> None:
        for agent in agents:  # each registered once, so each is active for the whole run
            await self.register(agent)
        async with asyncio.TaskGroup() as group:  # an unexpected answer cancels every agent
            for agent in agents:
                group.create_task(self.agent_loop(agent))
        self.history.finished_ms = now_ms()


def assert_checker_bites(history: History) -> None:
    """The checker is not vacuous on this very history: forget one release that a
    later grant relied on, or misquote one conflict's holder, and it must object."""
    expiries: dict[str, list[int]] = {g.lease_id: [g.expires_at] for g in history.grants}
    for e in history.extensions:
        expiries[e.lease_id].append(e.expires_at)
    by_id = {g.lease_id: g for g in history.grants}
    next_grant = {}  # lease id -> the next grant of its contact
    by_contact: dict[str, list[Grant]] = {}
    for g in sorted(history.grants, key=lambda g: g.acquired_at):
        if g.contact in by_contact:
            next_grant[by_contact[g.contact][-1].lease_id] = g
        by_contact.setdefault(g.contact, []).append(g)
    relied = next(
        r
        for r in history.releases
        if r.lease_id in next_grant and next_grant[r.lease_id].acquired_at <= min(expiries[r.lease_id])
    )
    forgot = dataclasses.replace(history, releases=[r for r in history.releases if r is not relied])
    assert {v.kind for v in check(forgot).violations} == {"overlap_expiry"}, (relied, by_id[relied.lease_id])

    c = history.conflicts[0]
    misquoted = dataclasses.replace(c, holder_expires_at=c.holder_expires_at + 1)
    wrong = dataclasses.replace(history, conflicts=[misquoted, *history.conflicts[1:]])
    assert [v.kind for v in check(wrong).violations] == ["conflict_unknown_holder"], c


async def contend(urls: list[str], seed: int = SEED) -> tuple[Contention, float]:
    """Run the agents against the service processes at ``urls``; the run and its seconds."""
    run = Contention(urls, seed)
    tls = ssl.create_default_context()  # unused (plain HTTP), but built once rather than per client
    async with AsyncExitStack() as clients:
        agents = []
        for i in range(AGENTS):
            client = httpx.AsyncClient(timeout=HANG_SECONDS, verify=tls)
            agents.append(Agent(i, f"history-agent-{i:02d}", await clients.enter_async_context(client)))
        started = time.monotonic()
        await run.run(agents)
        return run, time.monotonic() - started


@pytest.mark.real
@pytest.mark.timeout(900)
async def test_contention_history_has_no_violation(real_redis_url: str, tmp_path: Path):
    """(real_redis_url only decides whether a real Redis may be used: skip, or fail if
    required. The run starts a private redis-server of its own.)"""
    # Access logs off: at hundreds of requests a second they would cost the 2 cores.
    settings = {"CONCORD_API_KEYS": f"{TENANT}:{API_KEY}", "CONCORD_LOG_LEVEL": "warning"}
    with running_stack(tmp_path, settings) as stack, ExitStack() as more:
        same = {"CONCORD_REDIS_URL": stack.redis.url, "CONCORD_KEY_PREFIX": stack.keys.prefix, **settings}
        processes: list[ServiceProcess] = [stack.service] + [
            more.enter_context(service(same, tmp_path / f"concord-{n}.log")) for n in range(1, PROCESSES)
        ]
        run, seconds = await contend([p.url for p in processes])
        redis_version = stack.redis.version()

    checking = time.monotonic()
    report = check(run.history)
    check_seconds = time.monotonic() - checking
    # For the record, not a verdict: how (c) fares with no tolerance at all.
    strict = check(run.history, tolerance_ms=0)
    requests = sum(run.statuses.values())
    figures = {
        **report.as_dict(),
        "violationsAtZeroTolerance": strict.violation_counts(),
        "runSeconds": round(seconds, 1),
        "checkSeconds": round(check_seconds, 1),
        "requests": requests,
        "requestsPerSecond": round(requests / seconds),
        "agents": AGENTS,
        "contactsOffered": CONTACTS,
        "answers": dict(sorted(run.statuses.items())),
        "redis": redis_version,
        "seed": SEED,
    }
    print(
        f"\nhistory check of a contention run ({seconds:.1f} s, {requests} requests, "
        f"{AGENTS} agents, {PROCESSES} processes, redis {redis_version}):"
    )
    print(report.summary())
    print(f"with 0 ms tolerance: {len(strict.violations)} violations {strict.violation_counts() or ''}".rstrip())
    print(f"checked in {check_seconds:.1f} s; answers:", dict(sorted(run.statuses.items())))
    if os.environ.get("CONCORD_HISTORY_REPORT"):
        Path(os.environ["CONCORD_HISTORY_REPORT"]).write_text(json.dumps(figures, indent=2) + "\n")

    assert report.violations == [], report.summary(max_violations=50)
    assert_checker_bites(run.history)
    assert report.grants >= TARGET_GRANTS, report.summary()
    assert report.contacts >= 100 and report.contested_contacts >= 100, report.summary()
    assert report.processes == PROCESSES, report.summary()
    # The mix really happened: every kind of event, and leases ending both ways.
    assert min(report.extensions, report.releases, report.expiries, report.conflicts) > 0, report.summary()
