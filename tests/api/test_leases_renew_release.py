"""Leases over HTTP: renew, release, and expiry: how a granted lease is extended,
given back, or ends by itself.

Every test runs on fakeredis and on a real Redis (the redis_client fixture).
Liveness is changed by ageing a heartbeat in Redis, never by waiting.
"""

from __future__ import annotations

import pytest

from tests.api.credential_support import forged
from tests.api.lease_support import CONTACT, registry, send_check, stored
from tests.api.lease_support import retention as retention  # fixtures: pytest finds them here
from tests.api.lease_support import sdr as sdr
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
)
from tests.support.helpers import eventually

# --- expiry -------------------------------------------------------------------


async def test_a_one_second_lease_really_expires(client, redis_client, keys, sdr, retention):
    lease = await acquire(client, sdr["id"], CONTACT, durationSeconds=1)
    assert ms(lease["expiresAt"]) - ms(lease["acquiredAt"]) == 1000

    async def gone() -> bool:
        response = await client.get(f"{C}/lease/{lease['id']}")
        if response.status_code == 200:
            return False
        problem(response, 404, "lease_not_found")
        return True

    await eventually(gone, timeout=15, what="the one-second lease to expire")
    # No sweeper: the keys themselves are gone (the registry expires with its only
    # lease), and the contact is free.
    assert not await redis_client.exists(keys.lease(TENANT, CONTACT))
    assert not await redis_client.exists(registry(keys, sdr["id"]))
    assert await send_check(client, retention["id"]) == {"allowed": True}
    assert ok(await client.get(f"{C}/leases", params={"agentId": sdr["id"]})) == {"leases": [], "nextCursor": None}
    problem(await client.post(f"{C}/lease/{lease['id']}/renew", json={"agentId": sdr["id"]}), 404, "lease_not_found")
    taken = await acquire(client, retention["id"], CONTACT)
    assert taken["fencingToken"] > lease["fencingToken"]


# --- renew --------------------------------------------------------------------


async def test_renew_extends_keeps_id_and_token(client, redis_client, keys, sdr):
    lease = await acquire(client, sdr["id"], CONTACT, intent="outreach", durationSeconds=60)
    renewed = ok(
        await client.post(f"{C}/lease/{lease['id']}/renew", json={"agentId": sdr["id"], "durationMinutes": 10})
    )
    assert {k: v for k, v in renewed.items() if k != "expiresAt"} == {
        k: v for k, v in lease.items() if k != "expiresAt"
    }
    assert ms(renewed["expiresAt"]) > ms(lease["expiresAt"])
    assert await redis_client.get(keys.lease(TENANT, CONTACT)) == stored(lease)
    assert await redis_client.pexpiretime(keys.lease(TENANT, CONTACT)) == ms(renewed["expiresAt"])
    assert await redis_client.hgetall(registry(keys, sdr["id"])) == {
        str(lease["fencingToken"]): f"{ms(renewed['expiresAt'])}:{CONTACT}"
    }
    assert await redis_client.pexpiretime(registry(keys, sdr["id"])) == ms(renewed["expiresAt"])
    assert ok(await client.get(f"{C}/lease/{lease['id']}")) == renewed

    # Seconds work too, and the expiry may move earlier; no duration means 30 minutes.
    short = ok(await client.post(f"{C}/lease/{lease['id']}/renew", json={"agentId": sdr["id"], "durationSeconds": 30}))
    assert ms(short["expiresAt"]) < ms(renewed["expiresAt"])
    assert await redis_client.pexpiretime(keys.lease(TENANT, CONTACT)) == ms(short["expiresAt"])
    assert await redis_client.hget(registry(keys, sdr["id"]), str(lease["fencingToken"])) == (
        f"{ms(short['expiresAt'])}:{CONTACT}"
    )
    assert ok(await client.get(f"{C}/lease/{lease['id']}")) == short
    default = ok(await client.post(f"{C}/lease/{lease['id']}/renew", json={"agentId": sdr["id"]}))
    assert ms(default["expiresAt"]) > ms(short["expiresAt"])
    assert default["fencingToken"] == lease["fencingToken"]


async def test_renew_by_another_agent_is_403(client, redis_client, keys, sdr, retention):
    lease = await acquire(client, sdr["id"], CONTACT)
    body = problem(
        await client.post(f"{C}/lease/{lease['id']}/renew", json={"agentId": retention["id"]}), 403, "not_lease_holder"
    )
    assert lease["id"] in body["detail"]
    # An agent that does not exist has no credential: one claiming it is refused.
    missing = unknown_id("agent")
    problem(
        await client.post(
            f"{C}/lease/{lease['id']}/renew", json={"agentId": missing}, headers=bearer(forged(TENANT, missing))
        ),
        401,
        "unauthorized",
    )
    assert ok(await client.get(f"{C}/lease/{lease['id']}")) == lease


async def test_renew_gone_lease_is_404(client, sdr):
    lease = await acquire(client, sdr["id"], CONTACT)
    ok(await client.delete(f"{C}/lease/{lease['id']}"))
    problem(await client.post(f"{C}/lease/{lease['id']}/renew", json={"agentId": sdr["id"]}), 404, "lease_not_found")
    problem(
        await client.post(f"{C}/lease/{unknown_id('lease')}/renew", json={"agentId": sdr["id"]}), 404, "lease_not_found"
    )
    problem(await client.post(f"{C}/lease/garbage/renew", json={"agentId": sdr["id"]}), 404, "lease_not_found")


async def test_renew_by_inactive_holder_is_409(client, redis_client, keys, sdr):
    lease = await acquire(client, sdr["id"], CONTACT)
    await make_inactive(redis_client, keys, TENANT, sdr["id"])
    problem(await client.post(f"{C}/lease/{lease['id']}/renew", json={"agentId": sdr["id"]}), 409, "agent_inactive")
    assert await redis_client.pexpiretime(keys.lease(TENANT, CONTACT)) == ms(lease["expiresAt"])


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"agentId": 7}, "$.agentId"),
        ({"durationMinutes": 0}, "$.durationMinutes"),
        ({"durationSeconds": 86_401}, "$.durationSeconds"),
        ({"durationSeconds": "60"}, "$.durationSeconds"),
        ({"durationMinutes": 1, "durationSeconds": 1}, "$.durationSeconds"),
        ({"contactEmail": CONTACT}, "$.contactEmail"),
    ],
    ids=repr,
)
async def test_renew_refuses_bad_bodies(client, redis_client, keys, sdr, payload, field):
    lease = await acquire(client, sdr["id"], CONTACT)
    body = {"agentId": sdr["id"], **payload}
    before = await tenant_snapshot(redis_client, keys, TENANT)
    mine = bearer(credential_of(client, sdr["id"]))
    invalid(await client.post(f"{C}/lease/{lease['id']}/renew", json=body, headers=mine), field)
    assert await tenant_snapshot(redis_client, keys, TENANT) == before


async def test_renew_with_a_credential_may_leave_the_agent_id_out(client, sdr):
    lease = await acquire(client, sdr["id"], CONTACT)
    mine = bearer(credential_of(client, sdr["id"]))
    renewed = ok(await client.post(f"{C}/lease/{lease['id']}/renew", json={"durationSeconds": 90}, headers=mine))
    assert renewed["agentId"] == sdr["id"] and renewed["fencingToken"] == lease["fencingToken"]
    assert ms(renewed["expiresAt"]) - ms(renewed["acquiredAt"]) >= 90_000


# --- release ------------------------------------------------------------------


async def test_release_then_404(client, redis_client, keys, sdr, retention):
    lease = await acquire(client, sdr["id"], CONTACT)
    released = ok(await client.delete(f"{C}/lease/{lease['id']}"))
    assert released == {"id": lease["id"], "released": True, "releasedAt": released["releasedAt"]}
    assert ms(lease["acquiredAt"]) <= ms(released["releasedAt"]) < ms(lease["expiresAt"])
    assert not await redis_client.exists(keys.lease(TENANT, CONTACT))
    # Its registry entry went with it (and with it the registry, which held only this one).
    assert await redis_client.hget(registry(keys, sdr["id"]), str(lease["fencingToken"])) is None
    assert not await redis_client.exists(registry(keys, sdr["id"]))

    body = problem(await client.delete(f"{C}/lease/{lease['id']}"), 404, "lease_not_found")
    assert lease["id"] in body["detail"]
    problem(await client.get(f"{C}/lease/{lease['id']}"), 404, "lease_not_found")
    assert await send_check(client, retention["id"]) == {"allowed": True}
    await acquire(client, retention["id"], CONTACT)


async def test_release_only_by_the_holder_when_agent_id_given(client, redis_client, keys, sdr, retention):
    lease = await acquire(client, sdr["id"], CONTACT)
    body = problem(
        await client.delete(f"{C}/lease/{lease['id']}", params={"agentId": retention["id"]}), 403, "not_lease_holder"
    )
    assert sdr["id"] in body["detail"]
    problem(
        await client.delete(f"{C}/lease/{lease['id']}", params={"agentId": unknown_id("agent")}),
        403,
        "not_lease_holder",
    )
    assert ok(await client.get(f"{C}/lease/{lease['id']}")) == lease

    released = ok(await client.delete(f"{C}/lease/{lease['id']}", params={"agentId": sdr["id"]}))
    assert released == {"id": lease["id"], "released": True, "releasedAt": released["releasedAt"]}
    problem(await client.delete(f"{C}/lease/{lease['id']}", params={"agentId": sdr["id"]}), 404, "lease_not_found")


@pytest.mark.parametrize("lease_id", ["nope", unknown_id("lease"), unknown_id("agent"), unknown_id("lease").upper()])
async def test_release_unknown_lease_is_404(client, lease_id):
    problem(await client.delete(f"{C}/lease/{lease_id}"), 404, "lease_not_found")


@pytest.mark.parametrize("params, field", [({"force": "1"}, "$.force")])
async def test_release_refuses_bad_query(client, sdr, params, field):
    lease = await acquire(client, sdr["id"], CONTACT)
    invalid(await client.delete(f"{C}/lease/{lease['id']}", params=params), field)
    assert ok(await client.get(f"{C}/lease/{lease['id']}")) == lease
