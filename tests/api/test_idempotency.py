"""Retrying safely: the Idempotency-Key of POST /consensus, and the endpoints that
are idempotent by nature (docs/api.md, "Retrying safely").

On fakeredis and on a real Redis (and, for the race, across `concord serve`
worker processes):

* the same key and the same request answer the FIRST answer again: 201, the
  same bytes, `Idempotent-Replayed: true`, even after votes decided the request
  (the replay is the first answer, not the current state); "the same request"
  means the same meaning (normalized contact, timeout in any unit, tenantId given
  or not);
* the same key with another request is 422 idempotency_key_reused, and creates
  nothing;
* keys are per tenant: another tenant's identical key is independent;
* 20 concurrent POSTs with one key create exactly one request (checked in Redis);
* the key's record lives 24 hours (PTTL), holds only the key's SHA-256, and a
  replay does not extend it; once it is gone the key is new again;
* malformed keys (empty, over 255 characters, non-ASCII, spaces, control
  characters) are 422 and create nothing;
* an error answer is not remembered: a retry after it is evaluated afresh;
* a replay is the requester's: it needs the requester's current credential
  (a rotated one is 401 and replays nothing), and leaving requestingAgentId out,
  the credential's agent, is the same request;
* registering, heartbeating, acquiring, renewing, send-check and voting need no
  key: repeating them gives the same agent, lease, token and vote (and they
  ignore an Idempotency-Key header); registering again answers a new credential.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from concord.server.settings import key_digest
from concord.server.store.keys import Keys
from tests.support.api import (
    OTHER_TENANT,
    TENANT,
    V1,
    C,
    Fleet,
    bearer,
    credential_of,
    make_inactive,
    ok,
    problem,
    register,
    tenant_snapshot,
    verdict,
)
from tests.support.helpers import HANG_SECONDS, Stack, eventually, running_stack, wait_until

CONSENSUS = f"{C}/consensus"
DAY_MS = 24 * 3600 * 1000
REPLAYED = "idempotent-replayed"


def key(value: str | bytes) -> dict[str, str | bytes]:
    return {"Idempotency-Key": value}


async def ask(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    idempotency_key: str | bytes | None = None,
    credential: str | None = None,
) -> httpx.Response:
    """POST /consensus; as the requester the body names (the client's Fleet), or with ``credential``."""
    headers = key(idempotency_key) if idempotency_key is not None else {}
    if credential is not None:
        headers |= bearer(credential)
    return await client.post(CONSENSUS, json=body, headers=headers)


def created(response: httpx.Response) -> dict[str, Any]:
    """A first answer: 201, not marked as a replay."""
    body = ok(response, 201)
    assert REPLAYED not in response.headers, response.headers
    return body


def replayed(response: httpx.Response, first: httpx.Response) -> None:
    """A replay of ``first``: 201, marked, and byte for byte the first body."""
    assert response.status_code == 201, response.text
    assert response.headers.get(REPLAYED) == "true", response.headers
    assert response.content == first.content


async def requests_in_redis(redis_client, keys: Keys, tenant: str = TENANT) -> dict[str, int]:
    """How many consensus requests the tenant has in Redis: hashes and list entries."""
    hashes = [
        k
        async for k in redis_client.scan_iter(match=f"{keys.tenant(tenant)}:consensus:cons_*")
        if not k.endswith(":votes")
    ]
    return {
        "hashes": len(hashes),
        "all": await redis_client.zcard(keys.consensus_list(tenant, "all")),
        "pending": await redis_client.zcard(keys.consensus_list(tenant, "pending")),
        "due": await redis_client.zcard(keys.consensus_due(tenant)),
    }


ONE_REQUEST = {"hashes": 1, "all": 1, "pending": 1, "due": 1}
NO_REQUEST = {"hashes": 0, "all": 0, "pending": 0, "due": 0}


@pytest.fixture
async def agents(client) -> dict[str, str]:
    """A requester and two voters of tenant acme."""
    return {name: (await register(client, name))["id"] for name in ("requester", "voter-1", "voter-2")}


@pytest.fixture
def body(agents) -> dict[str, Any]:
    return {
        "requestingAgentId": agents["requester"],
        "action": "send-discount",
        "contactEmail": "alice@example.com",
        "reason": "a loyal customer",
        "timeoutMinutes": 30,
    }


# --- replay ----------------------------------------------------------------------


async def test_the_same_key_and_request_answer_the_first_answer(client, redis_client, keys, agents, body):
    first = await ask(client, body, "order-42")
    request = created(first)
    assert request["status"] == "pending" and request["votes"] == []
    replayed(await ask(client, body, "order-42"), first)

    for voter in ("voter-1", "voter-2"):
        ok(await client.post(f"{CONSENSUS}/{request['id']}/vote", json={"agentId": agents[voter], "vote": "approve"}))
    now = ok(await client.get(f"{CONSENSUS}/{request['id']}"))
    assert now["status"] == "approved" and len(now["votes"]) == 2
    # The replay is the first answer, not the request as it is now.
    again = await ask(client, body, "order-42")
    replayed(again, first)
    assert again.json()["status"] == "pending" and again.json()["votes"] == []
    assert await requests_in_redis(redis_client, keys) == {"hashes": 1, "all": 1, "pending": 0, "due": 0}


@pytest.mark.parametrize(
    "change",
    [
        {"contactEmail": "  Alice@Example.COM "},
        {"timeoutMinutes": None, "timeoutSeconds": 1800},
        {"tenantId": TENANT},
    ],
    ids=["contact-spelled-otherwise", "timeout-in-seconds", "tenantId-given"],
)
async def test_the_same_request_in_other_words_is_the_same_request(client, redis_client, keys, body, change):
    first = await ask(client, body, "same-meaning")
    created(first)
    other_words = {k: v for k, v in {**body, **change}.items() if v is not None}
    replayed(await ask(client, dict(reversed(other_words.items())), "same-meaning"), first)
    assert await requests_in_redis(redis_client, keys) == ONE_REQUEST


@pytest.mark.parametrize(
    "change",
    [
        {"action": "send-refund"},
        {"reason": "another reason"},
        {"reason": None},
        {"contactEmail": "bob@example.com"},
        {"contactEmail": None},
        {"timeoutMinutes": 31},
        {"requestingAgentId": "voter-1"},
    ],
    ids=["action", "reason", "no-reason", "contact", "no-contact", "timeout", "requester"],
)
async def test_the_same_key_with_another_request_is_422(client, redis_client, keys, agents, body, change):
    first = await ask(client, body, "order-43")
    created(first)
    if "requestingAgentId" in change:
        change = {"requestingAgentId": agents[change["requestingAgentId"]]}
    other = {k: v for k, v in {**body, **change}.items() if v is not None}
    reused = problem(await ask(client, other, "order-43"), 422, "idempotency_key_reused")
    assert set(reused) == {"type", "title", "status", "detail", "code"}
    assert await requests_in_redis(redis_client, keys) == ONE_REQUEST
    replayed(await ask(client, body, "order-43"), first)  # the key still means the first request


async def test_without_a_key_every_post_is_a_new_request(client, redis_client, keys, body):
    ids = {created(await ask(client, body))["id"] for _ in range(3)}
    assert len(ids) == 3
    assert (await requests_in_redis(redis_client, keys))["all"] == 3


async def test_keys_are_per_tenant(client, other_client, redis_client, keys, body):
    first = await ask(client, body, "shared-key")
    created(first)
    b_agent = (await register(other_client, "globex-requester"))["id"]
    b_body = {"requestingAgentId": b_agent, "action": "something else"}
    b_first = await ask(other_client, b_body, "shared-key")  # another request, yet no 422: its own key
    b_request = created(b_first)
    assert b_request["tenantId"] == OTHER_TENANT and b_request["id"] != first.json()["id"]
    replayed(await ask(other_client, b_body, "shared-key"), b_first)
    replayed(await ask(client, body, "shared-key"), first)
    digest = key_digest("shared-key")
    records = [await redis_client.hget(keys.idempotency(t, digest), "id") for t in (TENANT, OTHER_TENANT)]
    assert records == [first.json()["id"], b_request["id"]]
    assert await requests_in_redis(redis_client, keys, TENANT) == ONE_REQUEST
    assert await requests_in_redis(redis_client, keys, OTHER_TENANT) == ONE_REQUEST


# --- concurrency -------------------------------------------------------------------

RACERS = 20


async def test_concurrent_posts_with_one_key_create_one_request(client, redis_client, keys, body):
    answers = await asyncio.gather(*(ask(client, body, "racing-key") for _ in range(RACERS)))
    check_one_winner(answers)
    assert await requests_in_redis(redis_client, keys) == ONE_REQUEST


def check_one_winner(answers: list[httpx.Response]) -> None:
    """Every answer is 201 with the same body; exactly one of them made it."""
    assert {r.status_code for r in answers} == {201}, [r.text for r in answers if r.status_code != 201]
    assert len({r.content for r in answers}) == 1
    assert sorted(r.headers.get(REPLAYED, "") for r in answers) == [""] + ["true"] * (len(answers) - 1)


RACE_TENANT, RACE_KEY = "racers", "racers-key-0123456789abcdef"
WORKERS = 2


@pytest.fixture(scope="module")
def stack(real_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`concord serve --workers 2` on a private redis-server. (real_redis_url only
    decides whether a real Redis may be used: skip, or fail if required.)"""
    with running_stack(
        tmp_path_factory.mktemp("idempotency"), {"CONCORD_API_KEYS": f"{RACE_TENANT}:{RACE_KEY}"}, workers=WORKERS
    ) as deployment:
        wait_until(
            lambda: deployment.service.log_text().count("Application startup complete") >= WORKERS,
            timeout=30,
            what=f"{WORKERS} workers started",
        )
        yield deployment


@pytest.mark.real
async def test_concurrent_posts_across_workers_create_one_request(stack: Stack):
    """20 clients, each on its own connection (so spread over the worker processes),
    send one request with one key at the same moment."""
    redis_client = stack.redis.client()
    try:
        async with AsyncExitStack() as exits:
            clients = [
                await exits.enter_async_context(httpx.AsyncClient(base_url=stack.service.url, timeout=HANG_SECONDS))
                for _ in range(RACERS)
            ]
            async with httpx.AsyncClient(base_url=stack.service.url, auth=Fleet(RACE_KEY)) as admin:
                registered = await register(admin, "requester")
            race = {"requestingAgentId": registered["id"], "action": "send-discount"}
            # The requester's processes, each with its credential (as a restarted pod's would be).
            credential = registered["credential"]
            answers = await asyncio.gather(*(ask(c, race, "cross-process-key", credential) for c in clients))
        check_one_winner(answers)
        k = stack.keys
        hashes = [
            x
            for x in redis_client.scan_iter(match=f"{k.tenant(RACE_TENANT)}:consensus:cons_*")
            if not x.endswith(":votes")
        ]
        assert hashes == [k.consensus(RACE_TENANT, answers[0].json()["id"])]
        assert redis_client.zrange(k.consensus_list(RACE_TENANT, "all"), 0, -1) == [answers[0].json()["id"]]
        assert redis_client.zcard(k.consensus_due(RACE_TENANT)) == 1
    finally:
        redis_client.close()


# --- the record --------------------------------------------------------------------


async def test_the_record_lives_24_hours_and_holds_only_a_digest(client, redis_client, keys, body):
    secret_key = "idempotency-key-with-a-recognisable-value"
    first = await ask(client, body, secret_key)
    created(first)
    record = keys.idempotency(TENANT, key_digest(secret_key))
    assert DAY_MS - 60_000 < await redis_client.pttl(record) <= DAY_MS
    expires_at = await redis_client.pexpiretime(record)
    assert secret_key not in repr(await tenant_snapshot(redis_client, keys, TENANT))

    replayed(await ask(client, body, secret_key), first)
    assert await redis_client.pexpiretime(record) == expires_at  # a replay does not extend it

    # Once the record is gone (as it will be after 24 hours), the key is a new key.
    await redis_client.pexpire(record, 1)

    async def gone() -> bool:
        return not await redis_client.exists(record)

    await eventually(gone, what="the idempotency record to expire")
    other = {**body, "action": "another action"}
    assert created(await ask(client, other, secret_key))["action"] == "another action"


async def test_a_replay_writes_nothing(client, redis_client, keys, body):
    first = await ask(client, body, "read-only-replay")
    created(first)
    before = await tenant_snapshot(redis_client, keys, TENANT)
    for _ in range(3):
        replayed(await ask(client, body, "read-only-replay"), first)
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


@pytest.mark.parametrize(
    "bad",
    ["", "x" * 256, "clé".encode(), "two words", "tab\there", b"del\x7f", b"nul\x00", b"bell\x07"],
    ids=["empty", "256-chars", "non-ascii", "space", "tab", "DEL", "NUL", "control"],
)
async def test_malformed_keys_are_422_and_create_nothing(client, redis_client, keys, body, bad):
    refused = problem(await ask(client, body, bad), 422, "validation_error", field="header Idempotency-Key")
    assert "Idempotency-Key" in refused["detail"]
    assert await requests_in_redis(redis_client, keys) == NO_REQUEST


@pytest.mark.parametrize("good", ["!", "~" * 255, "550e8400-e29b-41d4-a716-446655440000", "a:b/c?d=e&f#g"])
async def test_keys_of_1_to_255_printable_characters_are_accepted(client, body, good):
    first = await ask(client, body, good)
    created(first)
    replayed(await ask(client, body, good), first)


# --- errors are not remembered -----------------------------------------------------


async def test_an_error_answer_is_not_remembered(client, redis_client, keys, agents, body):
    await make_inactive(redis_client, keys, TENANT, agents["requester"])
    problem(await ask(client, body, "retry-me"), 409, "agent_inactive")
    assert not await redis_client.exists(keys.idempotency(TENANT, key_digest("retry-me")))
    ok(await client.post(f"{C}/heartbeat", json={"agentId": agents["requester"]}))
    first = await ask(client, body, "retry-me")  # evaluated afresh: created, not a replay of the 409
    created(first)
    replayed(await ask(client, body, "retry-me"), first)


async def test_after_an_error_the_key_may_carry_another_request(client, redis_client, keys, agents, body):
    """Each refusal below, sent with the requester's own credential, is forgotten."""
    own = credential_of(client, agents["requester"])
    another = {**body, "requestingAgentId": "agent_00000000-0000-0000-0000-000000000000"}
    problem(await ask(client, another, "fresh-after-errors", own), 403, "agent_mismatch")
    malformed = {**body, "requestingAgentId": "agent_abc123"}
    problem(await ask(client, malformed, "fresh-after-errors", own), 404, "agent_not_found")
    problem(await ask(client, {**body, "timeoutMinutes": 0}, "fresh-after-errors"), 422, "validation_error")
    forged = f"{own.rsplit('.', 1)[0]}.{'F' * 43}"  # the requester's name, another secret
    problem(await ask(client, body, "fresh-after-errors", forged), 401, "unauthorized")
    created(await ask(client, body, "fresh-after-errors"))  # no error was remembered, so no 422 reused
    assert await requests_in_redis(redis_client, keys) == ONE_REQUEST


# --- the requester's own -------------------------------------------------------------


async def test_leaving_the_requester_out_with_its_credential_is_the_same_request(client, redis_client, keys, body):
    first = await ask(client, body, "filled-in")
    created(first)
    own = credential_of(client, body["requestingAgentId"])
    without = {k: v for k, v in body.items() if k != "requestingAgentId"}
    replayed(await ask(client, without, "filled-in", own), first)
    assert await requests_in_redis(redis_client, keys) == ONE_REQUEST


async def test_a_replay_needs_the_requesters_current_credential(client, redis_client, keys, agents, body):
    """The Idempotency-Key does not stand in for the credential: once the requester's
    credential is rotated, the old one replays nothing (401); the new one replays."""
    first = await ask(client, body, "rotated")
    created(first)
    old = credential_of(client, agents["requester"])
    ok(await client.post(f"{V1}/agents/{agents['requester']}/credentials"))
    problem(await ask(client, body, "rotated", old), 401, "unauthorized")
    replayed(await ask(client, body, "rotated"), first)  # the client learned the new credential
    assert credential_of(client, agents["requester"]) != old
    # Another agent's credential, naming the requester, replays nothing either.
    other = credential_of(client, agents["voter-1"])
    problem(await ask(client, body, "rotated", other), 403, "agent_mismatch")
    assert await requests_in_redis(redis_client, keys) == ONE_REQUEST


# --- idempotent by nature ------------------------------------------------------------


async def test_registering_again_is_the_same_agent(client):
    """The same agent, not the same credential: each registration answers a new one
    and the earlier one is refused, so a retry whose first answer was lost still
    ends with one working credential, the last answered."""
    first = ok(await client.post(f"{V1}/register", json={"agentName": "sdr", "agentRole": "sdr"}), 201)
    credentials = [first["credential"]]
    for _ in range(2):
        again = ok(await client.post(f"{V1}/register", json={"agentName": "sdr", "agentRole": "sdr"}))
        assert again["id"] == first["id"] and again["registeredAt"] == first["registeredAt"]
        assert again["agentRole"] == "sdr"
        credentials.append(again["credential"])
    assert [a["id"] for a in ok(await client.get(f"{V1}/agents"))["agents"]] == [first["id"]]
    assert len(set(credentials)) == 3
    for earlier in credentials[:-1]:
        problem(await client.post(f"{C}/heartbeat", json={}, headers=bearer(earlier)), 401, "unauthorized")
    ok(await client.post(f"{C}/heartbeat", json={}, headers=bearer(credentials[-1])))


async def test_leases_heartbeats_renewals_checks_and_votes_repeat_to_the_same_result(client, agents):
    holder, voter = agents["voter-1"], agents["voter-2"]
    lease_body = {"agentId": holder, "contactEmail": "alice@example.com"}
    lease = ok(await client.post(f"{C}/lease", json=lease_body), 201)
    for _ in range(2):
        again = ok(await client.post(f"{C}/lease", json=lease_body))  # 200: the holder's own lease back
        assert (again["id"], again["fencingToken"]) == (lease["id"], lease["fencingToken"])

    for _ in range(2):
        assert ok(await client.post(f"{C}/heartbeat", json={"agentId": holder}))["agentId"] == holder
        renewed = ok(await client.post(f"{C}/lease/{lease['id']}/renew", json={"agentId": holder}))
        assert (renewed["id"], renewed["fencingToken"]) == (lease["id"], lease["fencingToken"])
        check = {"agentId": holder, "contactEmail": "alice@example.com", "fencingToken": lease["fencingToken"]}
        assert verdict(ok(await client.post(f"{C}/send-check", json=check)), "alice@example.com") == {"allowed": True}

    request = created(await ask(client, {"requestingAgentId": agents["requester"], "action": "x"}))
    vote = {"agentId": voter, "vote": "reject", "reason": "not now"}
    first = ok(await client.post(f"{CONSENSUS}/{request['id']}/vote", json=vote))
    again = ok(await client.post(f"{CONSENSUS}/{request['id']}/vote", json=vote))
    assert again["votes"] == first["votes"] and again["tally"] == first["tally"]


async def test_other_endpoints_ignore_the_header(client, redis_client, keys, agents):
    """The header means something on POST /consensus only: elsewhere the same key
    neither replays nor refuses, and no record is written."""
    same = key("one-key-everywhere")
    assert (await client.post(f"{V1}/register", json={"agentName": "new"}, headers=same)).status_code == 201
    again = await client.post(f"{V1}/register", json={"agentName": "new"}, headers=same)
    assert again.status_code == 200 and REPLAYED not in again.headers
    other = await client.post(f"{V1}/register", json={"agentName": "other"}, headers=same)
    assert other.status_code == 201  # another body, same key: no idempotency_key_reused
    for contact in ("a@example.com", "b@example.com"):
        leased = await client.post(
            f"{C}/lease", json={"agentId": agents["requester"], "contactEmail": contact}, headers=same
        )
        assert leased.status_code == 201 and REPLAYED not in leased.headers
    ok(await client.post(f"{C}/heartbeat", json={"agentId": agents["requester"]}, headers=key("")))  # not even checked
    assert not [k async for k in redis_client.scan_iter(match=f"{keys.tenant(TENANT)}:idempotency:*")]
