"""Fault 5: a lease holder that stalls past its lease's expiry; another agent takes
the contact and the stalled holder's token is stale at send-check.

The overview of the fault-injection suite, with what each fault records:
tests/system/faults_support.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.api import V1, C, problem, verdict
from tests.support.helpers import eventually, running_stack
from tests.support.reports import fault_record
from tests.system.faults_support import REDIS_TIMEOUT, register

pytestmark = pytest.mark.real


# --- 5. A lease holder stalls past its lease -----------------------------------------------------

STALE, STALE_KEY = "stale", "stale-key-0123456789"
STALE_TRIALS = 3


async def test_a_holder_that_stalls_past_its_lease_is_fenced_out(real_redis_url: str, tmp_path: Path):
    """The realistic pause: the holder's process freezes (a GC pause, a stuck call)
    for longer than its one-second lease but shorter than the heartbeat window, so
    it is still an active agent when it wakes. Meanwhile the lease expired and
    another agent took the contact; the woken holder's token is stale. (A holder
    whose heartbeats lapse: test_liveness.py::test_a_lapsed_agent_loses_its_vote_and_its_lease.)"""
    settings = {"CONCORD_API_KEYS": f"{STALE}:{STALE_KEY}", "CONCORD_REDIS_TIMEOUT_SECONDS": str(REDIS_TIMEOUT)}
    with (
        fault_record(
            "holder-stalls-past-lease",
            "the holder does nothing while its 1 s lease expires; another agent takes the contact",
        ) as record,
        running_stack(tmp_path, settings) as stack,
    ):
        async with stack.service.client(STALE_KEY) as client:

            async def trial(n: int) -> None:
                contact = f"paused-{n}@example.com"
                sleeper, taker = await register(client, f"sleeper-{n}"), await register(client, f"taker-{n}")
                granted = await client.post(
                    f"{C}/lease", json={"agentId": sleeper["id"], "contactEmail": contact, "durationSeconds": 1}
                )
                assert granted.status_code == 201, granted.text
                old = granted.json()
                record.acknowledged += 1

                async def expired() -> bool:  # the sleeper does nothing; the taker watches
                    r = await client.get(f"{C}/lease/{old['id']}")
                    assert r.status_code in (200, 404), r.text
                    return r.status_code == 404

                await eventually(expired, timeout=15, what="the one-second lease to expire")
                taken = await client.post(f"{C}/lease", json={"agentId": taker["id"], "contactEmail": contact})
                assert taken.status_code == 201, taken.text
                new = taken.json()
                assert new["fencingToken"] > old["fencingToken"] and new["id"] != old["id"], (old, new)

                # The sleeper wakes: still an active agent, but its token is stale.
                woke = (await client.get(f"{V1}/agents/{sleeper['id']}")).json()
                assert woke["status"] == "active", woke
                check = await client.post(
                    f"{C}/send-check",
                    json={"agentId": sleeper["id"], "contactEmail": contact, "fencingToken": old["fencingToken"]},
                )
                assert check.status_code == 200, check.text
                body = check.json()
                assert body["allowed"] is False and body["reason"] == "stale_fencing_token", body
                assert body["leaseHolder"] == {
                    "agentId": taker["id"],
                    "agentName": taker["agentName"],
                    "intent": None,
                    "expiresAt": new["expiresAt"],
                }, body
                if body["allowed"]:
                    record.double_grants += 1
                # Without a token it meets the conflict; its old lease cannot be renewed or released.
                plain = await client.post(f"{C}/send-check", json={"agentId": sleeper["id"], "contactEmail": contact})
                assert plain.json()["reason"] == "lease_conflict", plain.text
                problem(
                    await client.post(f"{C}/lease/{old['id']}/renew", json={"agentId": sleeper["id"]}),
                    404,
                    "lease_not_found",
                )
                problem(
                    await client.delete(f"{C}/lease/{old['id']}", params={"agentId": sleeper["id"]}),
                    404,
                    "lease_not_found",
                )
                again = problem(
                    await client.post(f"{C}/lease", json={"agentId": sleeper["id"], "contactEmail": contact}),
                    409,
                    "lease_conflict",
                )
                assert again["leaseHolder"]["agentId"] == taker["id"], again
                mine = await client.post(
                    f"{C}/send-check",
                    json={"agentId": taker["id"], "contactEmail": contact, "fencingToken": new["fencingToken"]},
                )
                assert verdict(mine.json(), contact) == {"allowed": True}, mine.text
                record.extra["stale_tokens_refused"] = record.extra.get("stale_tokens_refused", 0) + 1

            await asyncio.gather(*(trial(n) for n in range(STALE_TRIALS)))
            record.trials = STALE_TRIALS
