"""Fault 2: Redis SIGKILLed without persistence and restarted empty; a live lease
is lost, but its holder's token stays refused.

The overview of the fault-injection suite, with what each fault records:
tests/system/faults_support.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.api import V1, C, problem, verdict
from tests.support.helpers import RedisServer, eventually, running_stack
from tests.support.reports import fault_record
from tests.system.faults_support import NO_PERSISTENCE, REDIS_TIMEOUT, register, service_ready

pytestmark = pytest.mark.real


# --- 2. Redis restarted empty -----------------------------------------------------------

EMPTY_TENANT, EMPTY_KEY = "amnesia", "amnesia-key-0123456789"
EMPTY_TRIALS = 3


async def test_after_an_empty_restart_a_live_lease_is_lost_but_its_holder_is_fenced_out(
    real_redis_url: str, tmp_path: Path
):
    """What an empty restart means for a live lease (not promised to survive; the
    docs/api.md says so): the lease and its agents are gone and another agent may take
    the contact at once, but the old holder's token stays refused, before and after
    that new grant. That tokens keep growing across the restart is
    test_liveness.py::test_fencing_tokens_keep_growing_across_a_redis_restart_that_lost_the_data."""
    settings = {"CONCORD_API_KEYS": f"{EMPTY_TENANT}:{EMPTY_KEY}", "CONCORD_REDIS_TIMEOUT_SECONDS": str(REDIS_TIMEOUT)}
    with (
        fault_record("redis-empty-restart", "SIGKILL redis-server without persistence, restart it empty") as record,
        running_stack(tmp_path, settings, *NO_PERSISTENCE) as stack,
    ):
        servers = [stack.redis]
        refused = regressions = 0
        try:
            async with stack.service.client(EMPTY_KEY) as client:
                tokens: list[int] = []
                for trial in range(EMPTY_TRIALS):
                    holder, other = await register(client, "holder"), await register(client, "other")
                    contact = f"live-{trial}@example.com"
                    granted = await client.post(
                        f"{C}/lease", json={"agentId": holder["id"], "contactEmail": contact, "durationMinutes": 60}
                    )
                    assert granted.status_code == 201, granted.text
                    lease = granted.json()
                    tokens.append(lease["fencingToken"])

                    servers[-1].kill()
                    fresh = RedisServer(
                        stack.redis.directory / f"empty-{trial}", *NO_PERSISTENCE, port=stack.redis.port
                    )
                    servers.append(fresh.start())
                    await eventually(lambda: service_ready(client), timeout=15, what="the service to reach Redis")

                    # Everything is gone: the lease (an hour from expiry) and both agents.
                    problem(await client.get(f"{C}/lease/{lease['id']}"), 404, "lease_not_found")
                    problem(await client.get(f"{V1}/agents/{holder['id']}"), 404, "agent_not_found")
                    back = await client.post(f"{V1}/register", json={"agentName": "holder"})
                    assert back.status_code == 201 and back.json()["id"] == holder["id"], back.text
                    record.losses += 1

                    # The contact looks free, but the old holder may not send with its old token...
                    check = await client.post(
                        f"{C}/send-check",
                        json={"agentId": holder["id"], "contactEmail": contact, "fencingToken": lease["fencingToken"]},
                    )
                    assert verdict(check.json(), contact) == {"allowed": False, "reason": "stale_fencing_token"}, (
                        check.text
                    )
                    refused += 1
                    # ...and another agent takes the contact while the lost lease would still run.
                    await register(client, "other")
                    taken = await client.post(f"{C}/lease", json={"agentId": other["id"], "contactEmail": contact})
                    assert taken.status_code == 201, taken.text
                    record.double_grants += 1
                    regressions += taken.json()["fencingToken"] <= max(tokens)
                    tokens.append(taken.json()["fencingToken"])
                    check = await client.post(
                        f"{C}/send-check",
                        json={"agentId": holder["id"], "contactEmail": contact, "fencingToken": lease["fencingToken"]},
                    )
                    body = check.json()
                    assert body["allowed"] is False and body["reason"] == "stale_fencing_token", body
                    assert body["leaseHolder"]["agentId"] == other["id"], body
                    refused += 1
                    record.trials, record.acknowledged = trial + 1, trial + 1
                    record.extra = {
                        "zero_promised": False,
                        "live_leases_lost": record.losses,
                        "contacts_regranted_while_lost_lease_ran": record.double_grants,
                        "stale_tokens_refused": refused,
                        "token_regressions": regressions,
                    }
        finally:
            for server in servers:
                server.kill()
        assert regressions == 0, tokens
        assert tokens == sorted(tokens), tokens
