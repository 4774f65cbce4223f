"""Security: the attacks of issue 13, replayed end to end against a running `concord
serve`, on one real Redis and on the session's 3+3 Redis Cluster.

The attacker is one of the agents, a prompt-injected support agent: it holds its
own credential and knows its peers' ids. Each attack once succeeded; each is now
refused, with the code docs/errors.md names, and the victim is unharmed:

  * impersonation: heartbeat, lease, renew, release, send-check, consensus request
    and vote, each naming the victim, with the attacker's credential;
  * squatting: registering the victim's name again, deregistering the victim;
  * stacking by registration: sock-puppets registered after a request vote on it;
  * stacking by deregistration: the attacker deregisters the peers first;
  * a claimed id draining a victim's rate-limit bucket;
  * bypassing a policy that asks for a human approval (voting as the human,
    registering one, changing the policy, a human's secret passed off as an agent's).

Figures (attempts, refusals, breaches) are printed with `pytest -s` and appended to
CONCORD_SECURITY_REPORT, if set (tests/system/security_support.py).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import V1, C, acquire, bearer, credential_of, ok, problem, register, request_consensus
from tests.support.cluster import Cluster
from tests.support.helpers import ServiceProcess, running_stack, service
from tests.system.security_support import security_report

KEY = "acme-attack-key-0123456789abcdef"
AGENT_RATE = 6  # an agent's requests a minute in these services


@pytest.fixture(params=["redis", "cluster"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path, real_redis_url: str) -> Iterator[ServiceProcess]:
    """`concord serve` with agent rate limits on, on a private redis-server or on the
    session's cluster (under a prefix of its own)."""
    settings = {"CONCORD_API_KEYS": f"acme:{KEY}", "CONCORD_RATE_LIMITS": f"agent={AGENT_RATE}/m"}
    if request.param == "redis":
        with running_stack(tmp_path, settings) as stack:
            yield stack.service
        return
    cluster: Cluster = request.getfixturevalue("cluster")
    settings |= {
        "CONCORD_REDIS_URL": cluster.url,
        "CONCORD_REDIS_CLUSTER": "true",
        "CONCORD_KEY_PREFIX": f"attack-{uuid.uuid4().hex[:8]}",
    }
    with service(settings, tmp_path / "concord.log") as proc:
        yield proc


class Tally:
    def __init__(self) -> None:
        self.figures: Counter[str] = Counter()

    def refused(self, response: httpx.Response, status: int, code: str) -> dict:
        """An attack's answer: refused as documented (else a breach, and the test fails)."""
        self.figures["attempts"] += 1
        self.figures["breaches"] += response.status_code < 400
        body = problem(response, status, code)
        self.figures["refused"] += 1
        return body


@pytest.mark.real
async def test_every_attack_of_an_agent_is_refused_end_to_end(deployment: ServiceProcess, request):
    tally = Tally()
    async with deployment.client(KEY) as client:
        victim = await register(client, "retention-1", agentRole="retention")
        attacker = await register(client, "support-1", agentRole="support")
        peer = await register(client, "billing-1", agentRole="billing")
        as_attacker = bearer(credential_of(client, attacker["id"]))
        lease = await acquire(client, victim["id"], "cto@bigcorp.com")
        victim_cons = await request_consensus(client, victim["id"])

        # Impersonation: every acting route, naming the victim, with the attacker's credential.
        attempts = [
            ("POST", f"{C}/heartbeat", {"agentId": victim["id"]}, None),
            ("POST", f"{C}/lease", {"agentId": victim["id"], "contactEmail": "ceo@bigcorp.com"}, None),
            ("POST", f"{C}/lease/{lease['id']}/renew", {"agentId": victim["id"]}, None),
            ("POST", f"{C}/send-check", {"agentId": victim["id"], "contactEmail": "cto@bigcorp.com"}, None),
            ("POST", f"{C}/consensus", {"requestingAgentId": victim["id"], "action": "refund_everything"}, None),
            ("POST", f"{C}/consensus/{victim_cons['id']}/vote", {"agentId": peer["id"], "vote": "approve"}, None),
            ("DELETE", f"{C}/lease/{lease['id']}", None, {"agentId": victim["id"]}),
        ]
        for method, path, body, query in attempts:
            r = await client.request(method, path, json=body, params=query, headers=as_attacker)
            tally.refused(r, 403, "agent_mismatch")
        # Its own id, but the victim's lease: the holder's alone.
        r = await client.post(f"{C}/lease/{lease['id']}/renew", json={}, headers=as_attacker)
        tally.refused(r, 403, "not_lease_holder")
        r = await client.delete(f"{C}/lease/{lease['id']}", headers=as_attacker)
        tally.refused(r, 403, "not_lease_holder")

        # Squatting: the victim's name again, or the victim deregistered.
        r = await client.post(
            f"{V1}/register", json={"agentName": "retention-1", "agentRole": "admin"}, headers=as_attacker
        )
        tally.refused(r, 403, "insufficient_scope")
        r = await client.delete(f"{V1}/agents/{victim['id']}", headers=as_attacker)
        tally.refused(r, 403, "insufficient_scope")
        still = ok(await client.get(f"{C}/lease/{lease['id']}"))
        assert still["agentId"] == victim["id"] and still["fencingToken"] == lease["fencingToken"]
        assert ok(await client.get(f"{V1}/agents/{victim['id']}"))["agentRole"] == "retention"

        # Stacking by registration: a request of the attacker's, then puppets vote on it.
        cons = await request_consensus(client, attacker["id"], action="refund_everything")
        assert cons["tally"] == {"approve": 0, "reject": 0, "eligible": 2, "needed": 2}
        for i in range(3):
            puppet = await register(client, f"puppet-{i}")  # registered by whoever holds the admin key
            r = await client.post(f"{C}/consensus/{cons['id']}/vote", json={"agentId": puppet["id"], "vote": "approve"})
            tally.refused(r, 403, "not_eligible")
        assert ok(await client.get(f"{C}/consensus/{cons['id']}"))["tally"]["approve"] == 0
        decided = ok(
            await client.post(f"{C}/consensus/{cons['id']}/vote", json={"agentId": peer["id"], "vote": "reject"})
        )
        assert decided["status"] == "pending"
        decided = ok(
            await client.post(f"{C}/consensus/{cons['id']}/vote", json={"agentId": victim["id"], "vote": "reject"})
        )
        assert decided["status"] == "rejected"

        # Stacking by deregistration: an agent cannot deregister its peers.
        for other in (victim, peer):
            tally.refused(
                await client.delete(f"{V1}/agents/{other['id']}", headers=as_attacker), 403, "insufficient_scope"
            )

        # A claimed id draining the victim's bucket: refused before any token is taken,
        # so the victim still has all of its own.
        fresh = await register(client, "victim-2")
        for _ in range(AGENT_RATE * 2):
            r = await client.post(f"{C}/heartbeat", json={"agentId": fresh["id"]}, headers=as_attacker)
            tally.refused(r, 403, "agent_mismatch")
        for _ in range(AGENT_RATE):
            ok(await client.post(f"{C}/heartbeat", json={"agentId": fresh["id"]}))
        # Its bucket is real: its own next call is the one limited.
        problem(await client.post(f"{C}/heartbeat", json={"agentId": fresh["id"]}), 429, "rate_limited")

        # The audit names the attacker for everything it tried that wrote nothing,
        # and no event is the victim's doing that the victim did not do.
        events = ok(await client.get(f"{C}/events", params={"limit": 500}))["events"]
        assert not [e for e in events if e.get("actor") == attacker["id"] and e.get("agentId") != attacker["id"]]

    figures = tally.figures
    security_report(
        f"{request.node.callspec.id}: {figures['attempts']} attacks, {figures['refused']} refused, "
        f"{figures['breaches']} breaches",
        {"suite": "attacks-end-to-end", "deployment": request.node.callspec.id, **figures},
    )
    assert figures["breaches"] == 0 and figures["refused"] == figures["attempts"] == 28


@pytest.mark.real
async def test_a_policy_that_asks_for_a_human_cannot_be_bypassed(deployment: ServiceProcess, request):
    """An action whose policy asks for a human approval: the agents' majority alone does
    not approve it, the attacker cannot vote as the human, register one, change the
    policy, or pass a human's secret off as an agent's; an admin's change of the policy
    while the request is in flight does not move it; and the human's rejection rejects."""
    tally = Tally()
    async with deployment.client(KEY) as client:
        attacker = await register(client, "support-9", agentRole="support")
        peers = [await register(client, f"peer-{i}") for i in range(2)]
        dana = ok(await client.post(f"{V1}/register", json={"agentName": "dana", "kind": "human"}), 201)
        as_attacker = bearer(credential_of(client, attacker["id"]))
        ok(await client.put(f"{C}/consensus-policies/wire_funds", json={"humanApprovals": 1}))
        cons = await request_consensus(client, attacker["id"], action="wire_funds")
        for peer in peers:
            ok(await client.post(f"{C}/consensus/{cons['id']}/vote", json={"agentId": peer["id"], "vote": "approve"}))
        assert ok(await client.get(f"{C}/consensus/{cons['id']}"))["status"] == "pending"

        vote_as_dana = {"agentId": dana["id"], "vote": "approve"}
        r = await client.post(f"{C}/consensus/{cons['id']}/vote", json=vote_as_dana, headers=as_attacker)
        tally.refused(r, 403, "agent_mismatch")
        forged = dana["credential"].rsplit(".", 1)[0] + "." + "A" * 43
        r = await client.post(f"{C}/consensus/{cons['id']}/vote", json=vote_as_dana, headers=bearer(forged))
        tally.refused(r, 401, "unauthorized")
        posing = dana["credential"].replace("concord-human.", "concord-agent.", 1)
        r = await client.post(f"{C}/heartbeat", json={}, headers=bearer(posing))
        tally.refused(r, 401, "unauthorized")
        r = await client.post(f"{V1}/register", json={"agentName": "eve", "kind": "human"}, headers=as_attacker)
        tally.refused(r, 403, "insufficient_scope")
        r = await client.put(f"{C}/consensus-policies/wire_funds", json={}, headers=as_attacker)
        tally.refused(r, 403, "insufficient_scope")
        r = await client.delete(f"{C}/consensus-policies/wire_funds", headers=as_attacker)
        tally.refused(r, 403, "insufficient_scope")
        r = await client.post(f"{C}/heartbeat", json={}, headers=bearer(dana["credential"]))
        tally.refused(r, 403, "insufficient_scope")  # a human never joins an agents' electorate

        ok(await client.delete(f"{C}/consensus-policies/wire_funds"))  # an admin's change, mid-flight
        assert ok(await client.get(f"{C}/consensus/{cons['id']}"))["status"] == "pending"
        decided = ok(
            await client.post(
                f"{C}/consensus/{cons['id']}/vote",
                json={"vote": "reject", "reason": "no invoice"},
                headers=bearer(dana["credential"]),
            )
        )
        assert decided["status"] == "rejected" and decided["policy"]["humanApprovals"] == 1

    figures = tally.figures
    security_report(
        f"{request.node.callspec.id}: {figures['attempts']} attacks on a human-approval policy, "
        f"{figures['refused']} refused, {figures['breaches']} breaches",
        {"suite": "policy-attacks-end-to-end", "deployment": request.node.callspec.id, **figures},
    )
    assert figures["breaches"] == 0 and figures["refused"] == figures["attempts"] == 7
