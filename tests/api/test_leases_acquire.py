"""Leases over HTTP: acquire. A free contact is granted, the holder asking again
extends its lease, another active agent meets a 409 lease_conflict, an inactive
holder is taken over with a larger fencing token; contact, duration and body
validation.

Every test runs on fakeredis and on a real Redis (the redis_client fixture).
Liveness is changed by ageing a heartbeat in Redis, never by waiting.
"""

from __future__ import annotations

import pytest

from concord.server.store.keys import lease_id as lease_id_of
from tests.api.credential_support import forged
from tests.api.lease_support import CONTACT, lease_post, registry, stored, tenant_keys
from tests.api.lease_support import retention as retention  # fixtures: pytest finds them here
from tests.api.lease_support import sdr as sdr
from tests.conftest import API_KEY
from tests.support.api import (
    LEASE_ID,
    TENANT,
    C,
    acquire,
    bearer,
    credential_of,
    invalid,
    make_inactive,
    ms,
    ok,
    problem,
    tenant_snapshot,
    unknown_id,
)

LEASE_FIELDS = {
    "id",
    "tenantId",
    "agentId",
    "agentName",
    "contactEmail",
    "contact",
    "intent",
    "acquiredAt",
    "expiresAt",
    "fencingToken",
    "conflict",
}
MINUTE_MS = 60_000


# --- acquire ------------------------------------------------------------------


async def test_acquire_free_contact_is_201_with_the_full_lease(client, redis_client, keys, sdr):
    lease = ok(await lease_post(client, agentId=sdr["id"], contactEmail=CONTACT, intent="outreach"), 201)

    assert set(lease) == LEASE_FIELDS
    assert LEASE_ID.fullmatch(lease["id"])
    assert lease == {
        "id": lease["id"],
        "tenantId": TENANT,
        "agentId": sdr["id"],
        "agentName": "sdr-1",
        "contactEmail": CONTACT,
        "contact": CONTACT,
        "intent": "outreach",
        "acquiredAt": lease["acquiredAt"],
        "expiresAt": lease["expiresAt"],
        "fencingToken": lease["fencingToken"],
        "conflict": False,
    }
    # Default duration: 30 minutes, counted from the grant.
    assert ms(lease["expiresAt"]) - ms(lease["acquiredAt"]) == 30 * MINUTE_MS
    assert isinstance(lease["fencingToken"], int) and lease["fencingToken"] > 0
    # Never below Redis's time in microseconds.
    assert lease["fencingToken"] >= ms(lease["acquiredAt"]) * 1000

    # The id is the holder's tag and the token.
    assert lease["id"] == lease_id_of(sdr["id"], lease["fencingToken"])

    # Redis: the lease string under the normalized contact, expiring at expiresAt.
    key = keys.lease(TENANT, CONTACT)
    uuid = sdr["id"].removeprefix("agent_")
    expected = f"{uuid}|{lease['fencingToken']}|{ms(lease['acquiredAt'])}|sdr-1|outreach"
    assert await redis_client.get(key) == expected == stored(lease)
    assert await redis_client.pexpiretime(key) == ms(lease["expiresAt"])
    assert 0 < await redis_client.pttl(key) <= 30 * MINUTE_MS
    # The holder's registry finds the lease by its token, and expires with it.
    assert await redis_client.hgetall(registry(keys, sdr["id"])) == {
        str(lease["fencingToken"]): f"{ms(lease['expiresAt'])}:{CONTACT}"
    }
    assert await redis_client.pexpiretime(registry(keys, sdr["id"])) == ms(lease["expiresAt"])
    assert int(await redis_client.get(keys.fence(TENANT))) == lease["fencingToken"]
    # Nothing else was written for the lease (no id pointer, no per-agent index) but its event.
    assert set(await tenant_keys(redis_client, keys)) == {
        keys.agent(TENANT, sdr["id"]),
        keys.agents(TENANT),
        keys.heartbeats(TENANT),
        keys.active_since(TENANT),  # written by registering, not by the grant
        keys.agent_roles(TENANT),  # likewise
        key,
        registry(keys, sdr["id"]),
        keys.fence(TENANT),
        keys.events(TENANT),
    }


async def test_acquire_without_intent_gives_null_intent(client, sdr):
    lease = await acquire(client, sdr["id"], CONTACT)
    assert lease["intent"] is None


async def test_acquire_with_matching_tenant_id(client, sdr):
    lease = ok(await lease_post(client, tenantId=TENANT, agentId=sdr["id"], contactEmail=CONTACT), 201)
    assert lease["tenantId"] == TENANT


@pytest.mark.parametrize(
    "raw", [" Alice@Example.COM ", "ALICE@EXAMPLE.COM", "\talice@example.com\n", "alice@EXAMPLE.com"]
)
async def test_contact_email_is_normalized(client, redis_client, keys, sdr, retention, raw):
    lease = await acquire(client, sdr["id"], raw)
    assert lease["contactEmail"] == CONTACT
    assert await redis_client.exists(keys.lease(TENANT, CONTACT))
    assert await redis_client.exists(keys.lease(TENANT, raw)) == 0 or raw == CONTACT
    # Every spelling is the same contact.
    conflict = problem(await lease_post(client, agentId=retention["id"], contactEmail=CONTACT), 409, "lease_conflict")
    assert conflict["contactEmail"] == CONTACT
    assert ok(await client.get(f"{C}/leases", params={"contactEmail": raw}))["leases"] == [
        ok(await client.get(f"{C}/lease/{lease['id']}"))
    ]


@pytest.mark.parametrize(
    "email",
    [
        "",
        "   ",
        "alice",
        "alice@",
        "@example.com",
        "alice@example",
        "alice@@example.com",
        "al ice@example.com",
        "alice@exa mple.com",
        "alice@-example.com",
        "alice@example..com",
        ".alice@example.com",
        "alice.@example.com",
        "ålice@example.com",
        "alice@exämple.com",
        "alice@example.com\x00",
        "a" * 65 + "@example.com",  # local part over 64
        "a@" + ("b" * 60 + ".") * 4 + "c" * 9,  # 255 characters
        "a@" + "b" * 321,  # over the raw bound
        "<alice@example.com>",
        "Alice <alice@example.com>",
    ],
    ids=lambda e: repr(e)[:24],
)
async def test_invalid_contact_email_is_422(client, redis_client, keys, sdr, email):
    invalid(await lease_post(client, agentId=sdr["id"], contactEmail=email), "$.contactEmail")
    invalid(await client.post(f"{C}/send-check", json={"agentId": sdr["id"], "contactEmail": email}), "$.contactEmail")
    assert await redis_client.get(keys.fence(TENANT)) is None  # nothing was granted


async def test_longest_valid_contact_email(client, sdr):
    email = "a" * 64 + "@" + ("b" * 61 + ".") * 3 + "c" * 3  # 254 characters
    assert len(email) == 254
    assert (await acquire(client, sdr["id"], email.upper()))["contactEmail"] == email


async def test_same_agent_again_is_200_same_lease_later_expiry(client, redis_client, keys, sdr):
    first = await acquire(client, sdr["id"], CONTACT, intent="outreach", durationSeconds=60)

    # A retry of the same request is harmless: same lease, same token.
    retry = await acquire(client, sdr["id"], CONTACT, status=200, intent="outreach", durationSeconds=60)
    assert {k: v for k, v in retry.items() if k != "expiresAt"} == {k: v for k, v in first.items() if k != "expiresAt"}
    assert ms(retry["expiresAt"]) >= ms(first["expiresAt"])

    # Asking for longer extends it, keeps id, token and acquiredAt; a new intent replaces the old one.
    longer = await acquire(client, sdr["id"], " ALICE@example.com", status=200, durationMinutes=30, intent="follow-up")
    assert longer["id"] == first["id"] and longer["fencingToken"] == first["fencingToken"]
    assert longer["acquiredAt"] == first["acquiredAt"]
    assert ms(longer["expiresAt"]) > ms(first["expiresAt"])
    assert longer["intent"] == "follow-up" and longer["conflict"] is False

    # Without an intent the current one stays.
    kept = await acquire(client, sdr["id"], CONTACT, status=200, durationMinutes=30)
    assert kept["intent"] == "follow-up"

    key = keys.lease(TENANT, CONTACT)
    assert await redis_client.get(key) == stored(kept)
    assert await redis_client.pexpiretime(key) == ms(kept["expiresAt"])
    assert kept["fencingToken"] == first["fencingToken"] and kept["id"] == first["id"]
    # One registry entry, for the one token, at the latest expiry.
    assert await redis_client.hgetall(registry(keys, sdr["id"])) == {
        str(first["fencingToken"]): f"{ms(kept['expiresAt'])}:{CONTACT}"
    }
    assert await redis_client.pexpiretime(registry(keys, sdr["id"])) == ms(kept["expiresAt"])
    assert int(await redis_client.get(keys.fence(TENANT))) == first["fencingToken"]  # no token was spent


async def test_another_active_agent_gets_409_lease_conflict(client, redis_client, keys, sdr, retention):
    held = await acquire(client, sdr["id"], CONTACT, intent="outreach")
    before = await tenant_keys(redis_client, keys)
    assert before[keys.lease(TENANT, CONTACT)] == ("string", stored(held), ms(held["expiresAt"]))

    body = problem(
        await lease_post(client, agentId=retention["id"], contactEmail="Alice@Example.com", intent="winback"),
        409,
        "lease_conflict",
    )
    assert body == {
        "type": "urn:concord:problem:lease_conflict",
        "title": body["title"],
        "status": 409,
        "detail": body["detail"],
        "code": "lease_conflict",
        "conflict": True,
        "contactEmail": CONTACT,
        "contact": CONTACT,
        "leaseHolder": {
            "agentId": sdr["id"],
            "agentName": "sdr-1",
            "intent": "outreach",
            "expiresAt": held["expiresAt"],
        },
    }
    assert "sdr-1" in body["detail"] and CONTACT in body["detail"]
    # The refused request changed nothing: the lease, its expiry, the fence, and the
    # loser has no registry entry.
    assert await tenant_keys(redis_client, keys) == before
    assert not await redis_client.exists(registry(keys, retention["id"]))
    assert ok(await client.get(f"{C}/leases", params={"agentId": retention["id"]}))["leases"] == []


async def test_conflict_holder_without_intent(client, sdr, retention):
    held = await acquire(client, sdr["id"], CONTACT)
    body = problem(await lease_post(client, agentId=retention["id"], contactEmail=CONTACT), 409, "lease_conflict")
    assert body["leaseHolder"] == {
        "agentId": sdr["id"],
        "agentName": "sdr-1",
        "intent": None,
        "expiresAt": held["expiresAt"],
    }


async def test_inactive_holder_is_taken_over_with_a_larger_token(client, redis_client, keys, sdr, retention):
    old = await acquire(client, sdr["id"], CONTACT, intent="outreach")
    await make_inactive(redis_client, keys, TENANT, sdr["id"])

    new = ok(await lease_post(client, agentId=retention["id"], contactEmail=CONTACT, intent="winback"), 201)
    assert new["id"] != old["id"] and LEASE_ID.fullmatch(new["id"])
    assert new["fencingToken"] > old["fencingToken"]
    assert new["agentId"] == retention["id"] and new["agentName"] == "retention-1"
    assert new["intent"] == "winback" and new["conflict"] is False
    assert await redis_client.get(keys.lease(TENANT, CONTACT)) == stored(new)
    assert lease_id_of(retention["id"], new["fencingToken"]) == new["id"]
    assert await redis_client.pexpiretime(keys.lease(TENANT, CONTACT)) == ms(new["expiresAt"])
    assert await redis_client.hgetall(registry(keys, retention["id"])) == {
        str(new["fencingToken"]): f"{ms(new['expiresAt'])}:{CONTACT}"
    }
    # The old holder's registry entry stays, stale: every read below must check it against the lease.
    assert await redis_client.hget(registry(keys, sdr["id"]), str(old["fencingToken"])) == (
        f"{ms(old['expiresAt'])}:{CONTACT}"
    )

    # The old lease is gone for every purpose.
    problem(await client.get(f"{C}/lease/{old['id']}"), 404, "lease_not_found")
    problem(await client.delete(f"{C}/lease/{old['id']}"), 404, "lease_not_found")
    # The old holder comes back: the contact is not its any more.
    await client.post(f"{C}/heartbeat", json={"agentId": sdr["id"]})
    problem(await client.post(f"{C}/lease/{old['id']}/renew", json={"agentId": sdr["id"]}), 404, "lease_not_found")
    conflict = problem(await lease_post(client, agentId=sdr["id"], contactEmail=CONTACT), 409, "lease_conflict")
    assert conflict["leaseHolder"]["agentId"] == retention["id"]
    assert ok(await client.get(f"{C}/leases", params={"agentId": sdr["id"]}))["leases"] == []


async def test_fencing_tokens_grow_across_grants(client, redis_client, keys, sdr, retention):
    tokens = []
    for i in range(3):
        tokens.append((await acquire(client, sdr["id"], f"c{i}@example.com"))["fencingToken"])
    released = await acquire(client, retention["id"], "r@example.com")
    tokens.append(released["fencingToken"])
    ok(await client.delete(f"{C}/lease/{released['id']}"))
    tokens.append((await acquire(client, sdr["id"], "r@example.com"))["fencingToken"])
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    assert int(await redis_client.get(keys.fence(TENANT))) == tokens[-1]


async def test_no_one_but_an_agent_leases_and_an_unknown_agent_never_does(client, redis_client, keys):
    """An admin key may not lease for an agent (403, only the agent's own credential
    acts as it), and a credential claiming an agent that does not exist is no
    agent's current one (401): neither writes anything."""
    missing = unknown_id("agent")
    before = await tenant_snapshot(redis_client, keys, TENANT)
    body = {"agentId": missing, "contactEmail": CONTACT}
    problem(
        await client.post(f"{C}/lease", json=body, headers=bearer(API_KEY)), 403, "insufficient_scope", keyRole="admin"
    )
    refused = problem(
        await client.post(f"{C}/lease", json=body, headers=bearer(forged(TENANT, missing))), 401, "unauthorized"
    )
    assert missing in refused["detail"]
    assert not await redis_client.exists(keys.lease(TENANT, CONTACT))
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


@pytest.mark.parametrize("body", [{"contactEmail": CONTACT}, {"agentId": None, "contactEmail": CONTACT}], ids=repr)
async def test_acquire_with_a_credential_may_leave_the_agent_id_out(client, sdr, body):
    lease = ok(await client.post(f"{C}/lease", json=body, headers=bearer(credential_of(client, sdr["id"]))), 201)
    assert lease["agentId"] == sdr["id"] and lease["contactEmail"] == CONTACT


async def test_acquire_by_inactive_agent_is_409(client, redis_client, keys, sdr):
    await make_inactive(redis_client, keys, TENANT, sdr["id"])
    body = problem(await lease_post(client, agentId=sdr["id"], contactEmail=CONTACT), 409, "agent_inactive")
    assert sdr["id"] in body["detail"]
    assert not await redis_client.exists(keys.lease(TENANT, CONTACT))
    # A heartbeat brings it back.
    ok(await client.post(f"{C}/heartbeat", json={"agentId": sdr["id"]}))
    await acquire(client, sdr["id"], CONTACT)


async def test_inactive_holder_renewing_its_own_contact_is_409(client, redis_client, keys, sdr):
    await acquire(client, sdr["id"], CONTACT)
    await make_inactive(redis_client, keys, TENANT, sdr["id"])
    problem(await lease_post(client, agentId=sdr["id"], contactEmail=CONTACT), 409, "agent_inactive")


@pytest.mark.parametrize(
    "duration, field",
    [
        ({"durationSeconds": 0}, "$.durationSeconds"),
        ({"durationSeconds": -1}, "$.durationSeconds"),
        ({"durationSeconds": "5"}, "$.durationSeconds"),
        ({"durationSeconds": 5.5}, "$.durationSeconds"),
        ({"durationSeconds": 5.0}, "$.durationSeconds"),
        ({"durationSeconds": True}, "$.durationSeconds"),
        ({"durationSeconds": None}, None),  # null is "not given": the default applies
        ({"durationSeconds": 86_401}, "$.durationSeconds"),
        ({"durationSeconds": 10**30}, "$.durationSeconds"),
        ({"durationSeconds": [5]}, "$.durationSeconds"),
        ({"durationMinutes": 0}, "$.durationMinutes"),
        ({"durationMinutes": -5}, "$.durationMinutes"),
        ({"durationMinutes": "30"}, "$.durationMinutes"),
        ({"durationMinutes": 1.5}, "$.durationMinutes"),
        ({"durationMinutes": False}, "$.durationMinutes"),
        ({"durationMinutes": 1441}, "$.durationMinutes"),
        ({"durationMinutes": 5, "durationSeconds": 300}, "$.durationSeconds"),
    ],
    ids=repr,
)
async def test_lease_duration_bounds(client, redis_client, keys, sdr, duration, field):
    response = await lease_post(client, agentId=sdr["id"], contactEmail=CONTACT, **duration)
    if field is None:
        lease = ok(response, 201)
        assert ms(lease["expiresAt"]) - ms(lease["acquiredAt"]) == 30 * MINUTE_MS
        return
    invalid(response, field)
    assert not await redis_client.exists(keys.lease(TENANT, CONTACT))


@pytest.mark.parametrize(
    "duration, length_ms",
    [
        ({"durationSeconds": 1}, 1000),
        ({"durationSeconds": 86_400}, 86_400_000),
        ({"durationMinutes": 1}, MINUTE_MS),
        ({"durationMinutes": 1440}, 1440 * MINUTE_MS),
    ],
    ids=repr,
)
async def test_lease_duration_limits_are_inclusive(client, redis_client, keys, sdr, duration, length_ms):
    lease = ok(await lease_post(client, agentId=sdr["id"], contactEmail=CONTACT, **duration), 201)
    assert ms(lease["expiresAt"]) - ms(lease["acquiredAt"]) == length_ms
    if length_ms > 1000:
        assert await redis_client.pexpiretime(keys.lease(TENANT, CONTACT)) == ms(lease["expiresAt"])


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"agentId": 5, "contactEmail": CONTACT}, "$.agentId"),
        ({"agentId": None}, "$.contactEmail"),
        ({"agentId": "SELF"}, "$.contactEmail"),
        ({"agentId": "SELF", "contactEmail": 5}, "$.contactEmail"),
        ({"agentId": "SELF", "contactEmail": [CONTACT]}, "$.contactEmail"),
        ({"agentId": "SELF", "contactEmail": CONTACT, "intent": ""}, "$.intent"),
        ({"agentId": "SELF", "contactEmail": CONTACT, "intent": "i" * 65}, "$.intent"),
        ({"agentId": "SELF", "contactEmail": CONTACT, "intent": "nul\x00"}, "$.intent"),
        ({"agentId": "SELF", "contactEmail": CONTACT, "intent": 3}, "$.intent"),
        ({"agentId": "SELF", "contactEmail": CONTACT, "durationHours": 1}, "$.durationHours"),
        ({"agentId": "SELF", "contactEmail": CONTACT, "fencingToken": 1}, "$.fencingToken"),
    ],
    ids=repr,
)
async def test_acquire_refuses_bad_bodies(client, redis_client, keys, sdr, payload, field):
    body = {k: (sdr["id"] if v == "SELF" else v) for k, v in payload.items()}
    before = await tenant_snapshot(redis_client, keys, TENANT)
    invalid(await client.post(f"{C}/lease", json=body, headers=bearer(credential_of(client, sdr["id"]))), field)
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


async def test_intent_of_64_characters_is_accepted(client, sdr):
    assert (await acquire(client, sdr["id"], CONTACT, intent="i" * 64))["intent"] == "i" * 64
