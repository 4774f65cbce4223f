"""Concurrency promises, kept by real processes: one `concord serve --workers 4`
on one private redis-server, hit by many clients at the same moment.

- Exactly one winner: 32 agents ask for one contact at once, for 100 contacts;
  each contact gets one 201, every other answer is a 409 naming that winner, and
  Redis holds one lease per contact, the winner's.
- Votes: 30 agents vote at once on one request; the tally counts each counted
  voter once, the status leaves pending exactly once, and never flips after.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack

import httpx
import pytest

from concord.server.store.keys import agent_tag, lease_id
from tests.support.api import V1, C, closed, ms, problem
from tests.support.helpers import Stack, running_stack, wait_until

# --- this module's deployment ----------------------------------------------------

RACE_TENANT, RACE_KEY = "racers", "racers-key-0123456789abcdef"
VOTE_TENANT, VOTE_KEY = "voters", "voters-key-0123456789abcdef"
CLOSED_TENANT, CLOSED_KEY = "closers", "closers-key-0123456789abcdef"
WORKERS = 4
RACERS = 32
CONTACTS = 100
VOTERS = 30

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def deployment(real_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One `concord serve --workers 4` on one private redis-server. (real_redis_url
    only decides whether a real Redis may be used: skip, or fail if required.)"""
    settings = {"CONCORD_API_KEYS": f"{RACE_TENANT}:{RACE_KEY},{VOTE_TENANT}:{VOTE_KEY},{CLOSED_TENANT}:{CLOSED_KEY}"}
    with running_stack(tmp_path_factory.mktemp("concurrency"), settings, workers=WORKERS) as stack:
        # Ready once one worker answers; the race is only a race across workers
        # once all four of them accept connections.
        wait_until(
            lambda: stack.service.log_text().count("Application startup complete") >= WORKERS,
            timeout=30,
            what=f"{WORKERS} workers started",
        )
        yield stack


async def register(client: httpx.AsyncClient, name: str) -> dict:
    response = await client.post(f"{V1}/register", json={"agentName": name})
    assert response.status_code == 201, response.text
    return response.json()


def spellings(contact: str, n: int) -> list[str]:
    """``n`` ways of writing one address that all normalize to it."""
    local, domain = contact.split("@")
    forms = [contact, contact.upper(), f"  {local.title()}@{domain.upper()} ", f"\t{contact}\n"]
    return [forms[i % len(forms)] for i in range(n)]


async def test_exactly_one_winner_per_contact(deployment: Stack):
    async with AsyncExitStack() as stack:
        # One client, hence one connection, per agent: 32 connections spread over the workers.
        clients = [await stack.enter_async_context(deployment.service.client(RACE_KEY)) for _ in range(RACERS)]
        agents = await asyncio.gather(*(register(c, f"racer-{i:02d}") for i, c in enumerate(clients)))
        by_id = {a["id"]: a for a in agents}
        assert len(by_id) == RACERS

        winners: dict[str, dict] = {}
        for n in range(CONTACTS):
            contact = f"lead-{n}@prospect-{n % 7}.example.com"
            barrier = asyncio.Barrier(RACERS)

            async def ask(i: int, email: str, barrier: asyncio.Barrier) -> httpx.Response:
                body = {"agentId": agents[i]["id"], "contactEmail": email, "intent": f"outreach-{i}"}
                request = clients[i].build_request("POST", f"{C}/lease", json=body)
                await barrier.wait()  # every request is built; all go at once
                return await clients[i].send(request)

            answers = await asyncio.gather(
                *(ask(i, email, barrier) for i, email in enumerate(spellings(contact, RACERS)))
            )

            statuses = Counter(r.status_code for r in answers)
            assert statuses == {201: 1, 409: RACERS - 1}, (contact, statuses, [r.text for r in answers])
            (won,) = [r.json() for r in answers if r.status_code == 201]
            assert won["contactEmail"] == contact and won["conflict"] is False, won
            winner = by_id[won["agentId"]]
            assert won["agentName"] == winner["agentName"], won
            for r in answers:
                if r.status_code == 409:
                    body = problem(r, 409, "lease_conflict")
                    assert body["conflict"] is True, body
                    assert body["leaseHolder"]["agentId"] == winner["id"], (contact, body, won)
                    assert body["leaseHolder"]["agentName"] == winner["agentName"], body
            winners[contact] = won

    # Each grant's token is larger than every earlier one (the rounds ran one after another).
    tokens = [winners[c]["fencingToken"] for c in winners]
    assert tokens == sorted(tokens) and len(set(tokens)) == CONTACTS, tokens

    # Redis holds exactly one lease per contact, the winner's, and no trace of a loser's.
    keys, redis = deployment.keys, deployment.redis.client()
    try:
        for contact, won in winners.items():
            key = keys.lease(RACE_TENANT, contact)
            holder, token, acquired_at, name, intent = redis.get(key).split("|", 4)
            assert f"agent_{holder}" == won["agentId"] and int(token) == won["fencingToken"], (contact, won)
            assert lease_id(f"agent_{holder}", int(token)) == won["id"], (contact, won)
            assert (int(acquired_at), name, intent) == (ms(won["acquiredAt"]), won["agentName"], won["intent"]), won
            assert redis.pexpiretime(key) == ms(won["expiresAt"]), (contact, won)
        # Each agent's registry names exactly the contacts it won, under the winning tokens:
        # a loser has no entry for a contact it lost.
        registries = {
            name: redis.hgetall(name)
            for name in redis.scan_iter(match=keys.lease_registry(RACE_TENANT, "*"), count=1000)
        }
        expected: dict[str, dict[str, str]] = {}
        for contact, won in winners.items():
            entries = expected.setdefault(keys.lease_registry(RACE_TENANT, agent_tag(won["agentId"])), {})
            entries[str(won["fencingToken"])] = f"{ms(won['expiresAt'])}:{contact}"
        assert registries == expected, registries
        # And nothing else: no key but the agents' (their runs of activity and roles), the leases,
        # the registries, the fence and the events.
        everything = set(redis.scan_iter(match=f"{keys.tenant(RACE_TENANT)}:*", count=1000))
        assert everything == (
            {keys.agent(RACE_TENANT, agent_id) for agent_id in by_id}
            | {keys.agents(RACE_TENANT), keys.heartbeats(RACE_TENANT), keys.active_since(RACE_TENANT)}
            | {keys.agent_roles(RACE_TENANT)}
            | {keys.fence(RACE_TENANT)}
            | {keys.lease(RACE_TENANT, contact) for contact in winners}
            | set(expected)
            | {keys.events(RACE_TENANT)}
        ), everything
        # The stream tells the same story: one grant per contact, the winner's; refusals write nothing.
        grants = [
            fields for _, fields in redis.xrange(keys.events(RACE_TENANT)) if fields["type"] != "agent.registered"
        ]
        assert [(g["type"], g["contactEmail"], g["agentId"], int(g["fencingToken"])) for g in grants] == [
            ("lease.acquired", contact, won["agentId"], won["fencingToken"]) for contact, won in winners.items()
        ]
    finally:
        redis.close()


async def test_votes_at_once_count_each_voter_once_and_decide_once(deployment: Stack):
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(deployment.service.client(VOTE_KEY)) for _ in range(VOTERS + 1)]
        requester, *voters = await asyncio.gather(*(register(c, f"voter-{i:02d}") for i, c in enumerate(clients)))
        created = await clients[0].post(
            f"{C}/consensus",
            json={"requestingAgentId": requester["id"], "action": "send-discount", "contactEmail": "vip@example.com"},
        )
        assert created.status_code == 201, created.text
        consensus = created.json()
        assert consensus["tally"] == {"approve": 0, "reject": 0, "eligible": VOTERS, "needed": VOTERS // 2 + 1}
        url = f"{C}/consensus/{consensus['id']}/vote"
        needed = VOTERS // 2 + 1  # 16 of 30

        # 20 approve, 10 reject: approval is reached whatever the order, after 16 to 26 counted votes.
        choice = {v["id"]: ("approve" if i < 20 else "reject") for i, v in enumerate(voters)}
        barrier = asyncio.Barrier(VOTERS)

        async def vote(i: int) -> httpx.Response:
            agent_id = voters[i]["id"]
            request = clients[i + 1].build_request("POST", url, json={"agentId": agent_id, "vote": choice[agent_id]})
            await barrier.wait()
            return await clients[i + 1].send(request)

        answers = dict(zip(choice, await asyncio.gather(*(vote(i) for i in range(VOTERS)))))

        counted = {agent_id: r.json() for agent_id, r in answers.items() if r.status_code == 200}
        refused = {agent_id: r for agent_id, r in answers.items() if r.status_code != 200}
        for r in refused.values():
            closed(r, "approved")
        assert needed <= len(counted) <= needed + 10, len(counted)
        assert sum(choice[a] == "approve" for a in counted) == needed  # the 16th approval decided it

        # Votes were counted one at a time: each answer's tally is its place in that order,
        # and the status is pending before the deciding vote, approved from it on.
        by_place = sorted(counted.values(), key=lambda c: c["tally"]["approve"] + c["tally"]["reject"])
        assert [c["tally"]["approve"] + c["tally"]["reject"] for c in by_place] == list(range(1, len(counted) + 1))
        assert [c["status"] for c in by_place] == ["pending"] * (len(counted) - 1) + ["approved"]
        for c in by_place:
            assert len(c["votes"]) == c["tally"]["approve"] + c["tally"]["reject"], c
            assert (c["resolvedAt"] is None) == (c["status"] == "pending"), c
        decided = by_place[-1]
        final_tally = {
            "approve": needed,
            "reject": len(counted) - needed,
            "eligible": VOTERS,
            "needed": needed,
        }
        assert decided["tally"] == final_tally, decided

        # After the decision: reads, retries of counted votes, changed votes, and late
        # votes, all at once. Nothing flips, and nothing is counted again.
        late = await register(clients[0], "voter-late")
        some_counted = list(counted)[:5]
        some_refused = list(refused)[:5]
        flip = {"approve": "reject", "reject": "approve"}

        async def read() -> httpx.Response:
            return await clients[0].get(f"{C}/consensus/{consensus['id']}")

        retries = [clients[0].post(url, json={"agentId": a, "vote": choice[a]}) for a in some_counted]
        changes = [clients[0].post(url, json={"agentId": a, "vote": flip[choice[a]]}) for a in some_counted]
        lates = [clients[0].post(url, json={"agentId": a, "vote": "reject"}) for a in some_refused + [late["id"]]]
        reads = [read() for _ in range(10)]
        results = await asyncio.gather(*retries, *changes, *lates, *reads)
        retried = results[: len(retries)]
        changed = results[len(retries) : len(retries) + len(changes)]
        too_late = results[len(retries) + len(changes) : -len(reads)]
        read_back = results[-len(reads) :]

        for r in retried:  # a retry of a counted vote is answered as before: 200, unchanged
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "approved" and r.json()["tally"] == final_tally, r.json()
        for agent_id, r in zip(some_counted, changed):
            assert problem(r, 409, "already_voted")["vote"] == choice[agent_id]
        for r in too_late:
            closed(r, "approved")
        own = await clients[0].post(url, json={"agentId": requester["id"], "vote": "approve"})
        problem(own, 403, "requester_cannot_vote")

        for r in read_back + [await read()]:
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["status"] == "approved" and body["tally"] == final_tally, body
            assert body["resolvedAt"] == decided["resolvedAt"], body
            assert {v["agentId"] for v in body["votes"]} == set(counted), body["votes"]
            assert {v["agentId"]: v["vote"] for v in body["votes"]} == {a: choice[a] for a in counted}

        approved = await clients[0].get(f"{C}/consensus", params={"status": "approved"})
        pending = await clients[0].get(f"{C}/consensus", params={"status": "pending"})
        assert [c["id"] for c in approved.json()["consensus"]] == [consensus["id"]], approved.text
        assert pending.json()["consensus"] == [], pending.text


async def test_a_vote_on_a_closed_request_is_an_rfc9457_problem(deployment: Stack):
    """Every error is RFC 9457 problem+json whose ``status`` is the HTTP status; the
    request's current status must travel in a member of its own, not replace it."""
    async with deployment.service.client(CLOSED_KEY) as client:
        requester, approver = [await register(client, f"closed-{n}") for n in ("req", "yes")]
        created = await client.post(f"{C}/consensus", json={"requestingAgentId": requester["id"], "action": "a"})
        assert created.status_code == 201, created.text
        url = f"{C}/consensus/{created.json()['id']}/vote"
        decided = await client.post(url, json={"agentId": approver["id"], "vote": "approve"})
        assert decided.status_code == 200 and decided.json()["status"] == "approved", decided.text
        late = await register(client, "closed-late")  # after the decision: its vote comes too late
        answer = await client.post(url, json={"agentId": late["id"], "vote": "approve"})
        body = problem(answer, 409, "consensus_closed")
        assert "approved" in body.values(), body
