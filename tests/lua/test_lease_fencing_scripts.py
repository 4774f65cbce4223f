"""Fencing: the tokens lease_acquire hands out (strictly increasing, never below
Redis's time), the lease ids made of the holder's tag and the token, and
lease_send_check, which lets an active agent send only to a contact that is free or
its own, and with a token only if it is the contact's current one. send_check here
asks as a gate key does (no credential); with an agent's credential, in
test_credential_scripts.py. How the tests work: scripts_support.py.
"""

from __future__ import annotations

import re
import uuid

from concord.protocol import UUID
from concord.server.store.keys import agent_id_for, agent_tag, parse_lease_id
from concord.server.store.keys import lease_id as lease_id_of
from concord.server.store.replies import Reply
from tests.lua.scripts_support import CONTACT, TENANT, clock, dump, granted, lapse, new_agent, send_check

# --- fencing tokens (lease_acquire) ------------------------------------------


async def test_fencing_tokens_strictly_increase_and_are_never_below_redis_time(store, redis_client):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    tokens = []
    for i in range(5):
        _, before_us = await clock(redis_client)
        lease = await granted(store, a, f"c{i}@example.com")
        assert int(lease["fencingToken"]) >= before_us
        tokens.append(int(lease["fencingToken"]))
    # Takeovers take tokens from the same sequence.
    await lapse(store, a)
    for i in range(2):
        tokens.append(int((await granted(store, b, f"c{i}@example.com"))["fencingToken"]))

    assert all(x < y for x, y in zip(tokens, tokens[1:])), tokens
    # Each token is in its lease's id, after the holder's tag.
    assert [parse_lease_id(lease_id_of(a, t))[1] for t in tokens] == tokens


async def test_fencing_tokens_keep_growing_after_redis_loses_the_fence(store, redis_client):
    agent_id = await new_agent(store, "sdr")
    tokens = [int((await granted(store, agent_id, f"c{i}@example.com"))["fencingToken"]) for i in range(3)]

    # Redis restarted empty: the last token granted is forgotten.
    await redis_client.delete(store.keys.fence(TENANT))
    _, before_us = await clock(redis_client)
    token = int((await granted(store, agent_id, "after@example.com"))["fencingToken"])

    assert token > max(tokens)
    assert token >= before_us


# --- lease ids -----------------------------------------------------------------

LEASE_ID_SHAPE = re.compile(f"lease_{UUID}")
SOME_AGENTS = [agent_id_for(TENANT, name) for name in ("sdr", "support", "x")] + [
    "agent_01234567-89ab-cdef-0123-456789abcdef",
    "agent_ffffffff-ffff-ffff-ffff-ffffffffffff",
    "agent_00000000-0000-0000-0000-000000000000",
]
SOME_TOKENS = [0, 1, 255, 1_700_000_000_000_000, 1_799_999_999_999_999, 2**63, 2**64 - 1]


def test_agent_tag_is_the_first_16_hex_digits_of_the_agents_uuid():
    assert agent_tag("agent_01234567-89ab-cdef-0123-456789abcdef") == "0123456789abcdef"
    for agent_id in SOME_AGENTS:
        tag = agent_tag(agent_id)
        assert re.fullmatch("[0-9a-f]{16}", tag)
        assert tag == uuid.UUID(agent_id.removeprefix("agent_")).hex[:16]


def test_a_lease_id_is_uuid_shaped_hex_of_the_holders_tag_and_the_token():
    assert lease_id_of("agent_01234567-89ab-cdef-0123-456789abcdef", 1) == "lease_01234567-89ab-cdef-0000-000000000001"
    # 1_700_000_000_000_000 (a token of Redis's microseconds, in 2023) is 0x00060a24181e4000.
    assert lease_id_of("agent_01234567-89ab-cdef-0123-456789abcdef", 1_700_000_000_000_000) == (
        "lease_01234567-89ab-cdef-0006-0a24181e4000"
    )
    for agent_id in SOME_AGENTS:
        for token in SOME_TOKENS:
            lease_id = lease_id_of(agent_id, token)
            assert LEASE_ID_SHAPE.fullmatch(lease_id), lease_id
            digits = uuid.UUID(lease_id.removeprefix("lease_")).hex
            assert digits[:16] == agent_tag(agent_id)
            assert int(digits[16:], 16) == token


def test_parse_lease_id_undoes_lease_id():
    for agent_id in SOME_AGENTS:
        for token in SOME_TOKENS:
            assert parse_lease_id(lease_id_of(agent_id, token)) == (agent_tag(agent_id), token)
    assert parse_lease_id("lease_01234567-89ab-cdef-0000-000000000001") == ("0123456789abcdef", 1)


def test_lease_ids_differ_by_holder_and_by_token():
    ids = {lease_id_of(agent_id, token) for agent_id in SOME_AGENTS for token in SOME_TOKENS}
    assert len(ids) == len(SOME_AGENTS) * len(SOME_TOKENS)


async def test_a_granted_lease_is_found_by_its_id(store, redis_client):
    """The id a reply gives (keys.lease_id) leads to the lease: its tag to the registry, its token to the entry."""
    agent_id = await new_agent(store, "sdr")
    lease = await granted(store, agent_id, intent="outreach")

    tag, token = parse_lease_id(lease["id"])

    assert (tag, token) == (agent_tag(agent_id), int(lease["fencingToken"]))
    entry = await redis_client.hget(store.keys.lease_registry(TENANT, tag), str(token))
    assert entry == f"{lease['expiresAt']}:{CONTACT}"
    found = await store.leases.get(TENANT, lease["id"])
    assert (found.id, found.agent_id, found.fencing_token, found.intent) == (lease["id"], agent_id, token, "outreach")


# --- lease_send_check (reads only: every test checks nothing was written) ----


async def test_send_check_allows_a_free_contact_and_the_callers_own_lease(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    assert await send_check(store, agent_id) == [Reply.OK]

    lease = await granted(store, agent_id)
    before = await dump(redis_client, prefix)
    assert await send_check(store, agent_id) == [Reply.OK]
    assert await send_check(store, agent_id, token=lease["fencingToken"]) == [Reply.OK]
    assert await dump(redis_client, prefix) == before


async def test_send_check_by_an_unregistered_agent_is_agent_not_found(store, redis_client, prefix):
    await granted(store, await new_agent(store, "sdr"))
    before = await dump(redis_client, prefix)

    assert await send_check(store, agent_id_for(TENANT, "nobody")) == [Reply.AGENT_NOT_FOUND]

    assert await dump(redis_client, prefix) == before


async def test_send_check_by_an_inactive_agent_is_agent_inactive(store, redis_client, prefix):
    agent_id = await new_agent(store, "sdr")
    lease = await granted(store, agent_id)
    await lapse(store, agent_id)
    before = await dump(redis_client, prefix)

    # Even its own lease, with its current token: an inactive agent may not send.
    assert await send_check(store, agent_id) == [Reply.AGENT_INACTIVE]
    assert await send_check(store, agent_id, token=lease["fencingToken"]) == [Reply.AGENT_INACTIVE]

    assert await dump(redis_client, prefix) == before


async def test_send_check_of_a_contact_held_by_another_active_agent_is_lease_conflict(store, redis_client, prefix):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    lease = await granted(store, a, intent="outreach")
    before = await dump(redis_client, prefix)

    assert await send_check(store, b) == [Reply.LEASE_CONFLICT, a, "sdr", "outreach", int(lease["expiresAt"])]

    assert await dump(redis_client, prefix) == before


async def test_send_check_with_a_token_that_is_not_the_current_one_is_stale(store, redis_client, prefix):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    lease = await granted(store, a, intent="outreach")
    stale = str(int(lease["fencingToken"]) - 1)
    before = await dump(redis_client, prefix)

    # The holder with an old token: no holder to name.
    assert await send_check(store, a, token=stale) == [Reply.STALE_FENCING_TOKEN]
    # Another agent with the holder's very token: stale, and the active holder is named.
    assert await send_check(store, b, token=lease["fencingToken"]) == [
        Reply.STALE_FENCING_TOKEN,
        a,
        "sdr",
        "outreach",
        int(lease["expiresAt"]),
    ]
    # A token for a contact nobody holds.
    assert await send_check(store, a, "free@example.com", token=lease["fencingToken"]) == [Reply.STALE_FENCING_TOKEN]

    assert await dump(redis_client, prefix) == before


async def test_send_check_treats_a_lease_of_an_inactive_agent_as_free(store, redis_client, prefix):
    a, b = await new_agent(store, "sdr"), await new_agent(store, "support")
    lease = await granted(store, a)
    await lapse(store, a)
    before = await dump(redis_client, prefix)

    assert await send_check(store, b) == [Reply.OK]
    # A token still proves nothing unless it is the caller's current one; no holder is named.
    assert await send_check(store, b, token=lease["fencingToken"]) == [Reply.STALE_FENCING_TOKEN]

    assert await dump(redis_client, prefix) == before
