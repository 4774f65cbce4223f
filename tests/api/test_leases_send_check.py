"""Leases over HTTP: send-check, the gate before a send. Who may send to a contact,
with and without a fencing token, and that asking writes nothing.

Every test runs on fakeredis and on a real Redis (the redis_client fixture).
Liveness is changed by ageing a heartbeat in Redis, never by waiting.
"""

from __future__ import annotations

import pytest

from tests.api.credential_support import forged
from tests.api.lease_support import CONTACT, send_check, stored, tenant_keys
from tests.api.lease_support import retention as retention  # fixtures: pytest finds them here
from tests.api.lease_support import sdr as sdr
from tests.conftest import API_KEY
from tests.support.api import (
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
    verdict,
)

# --- send-check ---------------------------------------------------------------


async def test_send_check_free_contact_is_allowed(client, sdr):
    response = await client.post(f"{C}/send-check", json={"agentId": sdr["id"], "contactEmail": " Alice@Example.com"})
    assert verdict(ok(response), " Alice@Example.com") == {"allowed": True}


async def test_send_check_holder_is_allowed_with_and_without_its_token(client, sdr):
    lease = await acquire(client, sdr["id"], CONTACT)
    assert await send_check(client, sdr["id"]) == {"allowed": True}
    assert await send_check(client, sdr["id"], fencingToken=lease["fencingToken"]) == {"allowed": True}
    assert await send_check(client, sdr["id"], contact="ALICE@example.com", fencingToken=lease["fencingToken"]) == {
        "allowed": True
    }


async def test_send_check_lease_conflict_names_the_holder(client, sdr, retention):
    lease = await acquire(client, sdr["id"], CONTACT, intent="outreach")
    assert await send_check(client, retention["id"]) == {
        "allowed": False,
        "reason": "lease_conflict",
        "leaseHolder": {
            "agentId": sdr["id"],
            "agentName": "sdr-1",
            "intent": "outreach",
            "expiresAt": lease["expiresAt"],
        },
    }


async def test_send_check_inactive_agent(client, redis_client, keys, sdr, retention):
    await acquire(client, sdr["id"], CONTACT)
    await make_inactive(redis_client, keys, TENANT, sdr["id"])
    # Even the holder may not send while it is inactive.
    assert await send_check(client, sdr["id"]) == {"allowed": False, "reason": "agent_inactive"}
    # And its lease protects nothing: another agent may send.
    assert await send_check(client, retention["id"]) == {"allowed": True}


async def test_send_check_unknown_agent(client, sdr):
    await acquire(client, sdr["id"], CONTACT)
    assert await send_check(client, unknown_id("agent")) == {"allowed": False, "reason": "agent_not_found"}
    assert await send_check(client, unknown_id("agent"), contact="free@example.com") == {
        "allowed": False,
        "reason": "agent_not_found",
    }


async def test_send_check_stale_fencing_token(client, redis_client, keys, sdr, retention):
    old = await acquire(client, sdr["id"], CONTACT, intent="outreach")
    # A wrong token from the holder itself.
    assert await send_check(client, sdr["id"], fencingToken=old["fencingToken"] + 1) == {
        "allowed": False,
        "reason": "stale_fencing_token",
    }
    # A token on a contact nobody holds.
    assert await send_check(client, sdr["id"], contact="free@example.com", fencingToken=old["fencingToken"]) == {
        "allowed": False,
        "reason": "stale_fencing_token",
    }

    # Takeover: sdr lapses, retention takes the contact, sdr comes back with its old token.
    await make_inactive(redis_client, keys, TENANT, sdr["id"])
    new = await acquire(client, retention["id"], CONTACT, intent="winback")
    ok(await client.post(f"{C}/heartbeat", json={"agentId": sdr["id"]}))
    holder = {
        "agentId": retention["id"],
        "agentName": "retention-1",
        "intent": "winback",
        "expiresAt": new["expiresAt"],
    }
    assert await send_check(client, sdr["id"], fencingToken=old["fencingToken"]) == {
        "allowed": False,
        "reason": "stale_fencing_token",
        "leaseHolder": holder,
    }
    # Without a token the old holder simply meets the conflict.
    assert await send_check(client, sdr["id"]) == {"allowed": False, "reason": "lease_conflict", "leaseHolder": holder}
    # The new holder: its token passes, the old one does not.
    assert await send_check(client, retention["id"], fencingToken=new["fencingToken"]) == {"allowed": True}
    assert await send_check(client, retention["id"], fencingToken=old["fencingToken"]) == {
        "allowed": False,
        "reason": "stale_fencing_token",
    }


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"agentId": "SELF"}, "$.contactEmail"),
        ({"agentId": "SELF", "contactEmail": CONTACT, "fencingToken": 0}, "$.fencingToken"),
        ({"agentId": "SELF", "contactEmail": CONTACT, "fencingToken": -1}, "$.fencingToken"),
        ({"agentId": "SELF", "contactEmail": CONTACT, "fencingToken": "1"}, "$.fencingToken"),
        ({"agentId": "SELF", "contactEmail": CONTACT, "fencingToken": 1.5}, "$.fencingToken"),
        ({"agentId": "SELF", "contactEmail": CONTACT, "fencingToken": True}, "$.fencingToken"),
        ({"agentId": "SELF", "contactEmail": CONTACT, "fencingToken": 2**63}, "$.fencingToken"),
        ({"agentId": "SELF", "contactEmail": CONTACT, "intent": "x"}, "$.intent"),
    ],
    ids=repr,
)
async def test_send_check_refuses_bad_bodies(client, sdr, payload, field):
    body = {k: (sdr["id"] if v == "SELF" else v) for k, v in payload.items()}
    invalid(await client.post(f"{C}/send-check", json=body), field)
    invalid(await client.post(f"{C}/send-check", json=body, headers=bearer(API_KEY)), field)


async def test_send_check_with_a_key_must_name_the_agent(client, redis_client, keys, sdr):
    """An admin (or gate) key asks for some agent: it must say which (422, naming
    the field in words); the agent's own credential asks as itself.

    Before its fix this failed: routes.py send_check raises invalid("$.agentId", ...), so the detail
    starts "$.agentId: " where every other 422 names the field in words ("agentId: ")."""
    before = await tenant_snapshot(redis_client, keys, TENANT)
    body = invalid(
        await client.post(f"{C}/send-check", json={"contactEmail": CONTACT}, headers=bearer(API_KEY)), "$.agentId"
    )
    assert "API key" in body["detail"], body
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


async def test_send_check_with_a_credential_may_leave_the_agent_id_out(client, sdr, retention):
    lease = await acquire(client, sdr["id"], CONTACT)
    as_sdr, as_retention = (bearer(credential_of(client, a["id"])) for a in (sdr, retention))
    check = {"contactEmail": CONTACT, "fencingToken": lease["fencingToken"]}
    assert verdict(ok(await client.post(f"{C}/send-check", json=check, headers=as_sdr)), CONTACT) == {"allowed": True}
    refused = ok(await client.post(f"{C}/send-check", json={"contactEmail": CONTACT}, headers=as_retention))
    assert refused["allowed"] is False and refused["reason"] == "lease_conflict", refused
    # The admin key asks about any agent it names.
    named = {"agentId": retention["id"], "contactEmail": CONTACT}
    assert ok(await client.post(f"{C}/send-check", json=named, headers=bearer(API_KEY))) == refused


async def test_send_check_with_a_forged_credential_is_401(client, sdr):
    await acquire(client, sdr["id"], CONTACT)
    for agent_id in (sdr["id"], unknown_id("agent")):
        response = await client.post(
            f"{C}/send-check",
            json={"agentId": agent_id, "contactEmail": CONTACT},
            headers=bearer(forged(TENANT, agent_id)),
        )
        problem(response, 401, "unauthorized")


async def test_send_check_writes_nothing(client, redis_client, keys, sdr, retention):
    lease = await acquire(client, sdr["id"], CONTACT)
    before = await tenant_keys(redis_client, keys)
    assert before[keys.lease(TENANT, CONTACT)] == ("string", stored(lease), ms(lease["expiresAt"]))
    fence = await redis_client.get(keys.fence(TENANT))
    for agent in (sdr, retention):
        await send_check(client, agent["id"])
        await send_check(client, agent["id"], fencingToken=lease["fencingToken"])
    assert await tenant_keys(redis_client, keys) == before
    assert await redis_client.get(keys.fence(TENANT)) == fence
