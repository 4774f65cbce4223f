"""The frame of the model-based test (test_model.py): the agent names, contacts and
request fields its rules draw from, and MachineBase, one example's app, Redis client
and reference model (model.py) with the plumbing that the rules (machine_rules.py)
and the invariant (machine_invariants.py) share.

Requests authenticate as a fleet's would: the admin key registers, rotates and
removes agents; each agent acts with the credential it was last answered; reads go
with the admin key or an agent's current credential; send-check also with the gate
key. An agent the model has no current credential for acts with the last one it had
(it was removed) or with a forged one of the right shape (never registered).
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from typing import Any

import fakeredis
import fakeredis.aioredis
import httpx
import redis.asyncio
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine

from concord.server.app import create_app
from concord.server.settings import Settings, parse_api_keys
from concord.server.store.keys import Keys
from tests.conftest import API_KEY, TENANT, running
from tests.properties.model import WINDOW_MS, Consensus, Lease, Model, Outcome
from tests.support.api import ISO_Z, bearer, ms, ok, problem, tenant_snapshot

GATE_KEY = "model-gate-key-0123456789abcdef"  # a gate key of the tenant: send-check for any agent

NAMES = ["sdr", "retention", "support", "billing"]
CONTACTS = ["alice@example.com", "bob@example.org"]  # few, so that agents meet on them
# What clients send: the stored form, and spellings that normalize to it.
CONTACT_INPUTS = [spelling for c in CONTACTS for spelling in (c, c.upper(), f"  {c.capitalize()} ")]

names = st.sampled_from(NAMES)
contact_inputs = st.sampled_from(CONTACT_INPUTS)
intents = st.sampled_from([None, "outbound_sales", "renewal"])
# Durations and timeouts are long enough never to run out during a run: only the time
# rules end leases and requests.
lease_durations = st.one_of(
    st.just({}),
    st.builds(lambda m: {"durationMinutes": m}, st.integers(10, 1440)),
    st.builds(lambda s: {"durationSeconds": s}, st.integers(600, 86_400)),
)
consensus_timeouts = st.one_of(
    st.just({}),
    st.builds(lambda m: {"timeoutMinutes": m}, st.integers(10, 7 * 24 * 60)),
    st.builds(lambda s: {"timeoutSeconds": s}, st.integers(600, 7 * 24 * 3600)),
)
vote_reasons = st.sampled_from([None, "", "qualified lead", "pipes | in | the reason"])

# Outcomes seen per backend over a whole run: printed, and the common ones must occur.
SEEN: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


def duration_ms(fields: dict[str, int], default_ms: int) -> int:
    if "durationMinutes" in fields or "timeoutMinutes" in fields:
        return 60_000 * (fields.get("durationMinutes") or fields["timeoutMinutes"])
    if "durationSeconds" in fields or "timeoutSeconds" in fields:
        return 1000 * (fields.get("durationSeconds") or fields["timeoutSeconds"])
    return default_ms


def registry_entry(lease: Lease) -> str:
    """A lease's entry in its holder's registry, under its fencing token."""
    return f"{ms(lease.expires_at)}:{lease.contact}"


def same(answer: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    """Assert the service's answer is the model's, naming only the members that differ."""
    if answer != expected:
        differ = {
            name: {"service": answer.get(name, "<absent>"), "model": expected.get(name, "<absent>")}
            for name in sorted(answer.keys() | expected.keys())
            if answer.get(name, same) != expected.get(name, same)
        }
        raise AssertionError(f"{what}: the answer differs from the model in {differ}")


class MachineBase(RuleBasedStateMachine):
    """One example: a fresh app on a fresh key prefix, one tenant, and the model to
    hold its answers to; teardown removes what the example made and nothing else."""

    def __init__(self, backend: str, redis_url: str | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.runner = asyncio.Runner()
        self.keys = Keys(f"m{uuid.uuid4().hex[:12]}")
        if backend == "fakeredis":
            self.redis = fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
        elif backend == "cluster":
            self.redis = redis.asyncio.RedisCluster.from_url(redis_url, decode_responses=True)
            self.run(self.redis.initialize())  # as the service does at start-up
        else:
            self.redis = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        config = Settings(
            redis_url="redis://injected-by-tests",
            api_keys=parse_api_keys(f"{TENANT}:{API_KEY},{TENANT}/gate:{GATE_KEY}"),
            key_prefix=self.keys.prefix,
            heartbeat_window_seconds=WINDOW_MS // 1000,
        )
        self.lifespan = running(create_app(config, self.redis))
        try:
            app = self.run(self.lifespan.__aenter__())
        except BaseException:
            self.runner.close()  # teardown() only runs for a machine that was built
            raise
        # Every request says with which credential it goes (headers=): none is sent by default.
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://concord.test")
        self.admin, self.gate = bearer(API_KEY), bearer(GATE_KEY)
        self.model = Model(TENANT)
        self.tokens: list[int] = []  # every fencing token granted, in grant order
        # Leases that ended by a takeover or by expiring, whose registry entries may stay
        # behind, stale: token -> (holder, the entry as last written). A release or the
        # holder's removal deletes an entry; nothing else may be in a registry.
        self.lingering: dict[int, tuple[str, str]] = {}
        self.status_seen: dict[str, list[str]] = collections.defaultdict(list)
        self.last_tally: dict[str, dict[str, int]] = {}

    def teardown(self) -> None:
        try:
            self.run(self.http.aclose())
            self.run(self.lifespan.__aexit__(None, None, None))
            if self.backend != "fakeredis":  # a shared server: remove this example's keys, nothing else
                self.run(self._delete_own_keys())
            self.run(self.redis.aclose())
        finally:
            self.runner.close()

    async def _delete_own_keys(self) -> None:
        async for key in self.redis.scan_iter(match=f"{self.keys.prefix}:*", count=1000):
            await self.redis.delete(key)

    # --- plumbing ---------------------------------------------------------------

    def run(self, awaitable: Any) -> Any:
        return self.runner.run(awaitable)

    def request(self, method: str, path: str, *, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
        return self.run(self.http.request(method, path, headers=headers, **kwargs))

    def credential_of(self, agent_id: str) -> str:
        """What the agent acts with: its current credential; for an agent removed, the
        last one it had; for one never registered, a forged one of the right shape."""
        agent = self.model.agents.get(agent_id)
        if agent is not None and agent.credential is not None:
            return agent.credential
        earlier = [credential for credential, owner in self.model.retired.items() if owner == agent_id]
        return earlier[-1] if earlier else f"concord-agent.{TENANT}.{agent_id}.{'F' * 43}"

    def unchanged(self, send: Any) -> httpx.Response:
        """``send()``'s answer, asserting that the tenant's keys in Redis, every one and
        all of its contents, are the same after it as before: a refusal writes nothing."""
        before = self.run(tenant_snapshot(self.redis, self.keys, TENANT))
        response = send()
        after = self.run(tenant_snapshot(self.redis, self.keys, TENANT))
        if after != before:
            changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            raise AssertionError(f"a refused request ({response.status_code} {response.text}) changed {changed}")
        return response

    def seen(self, what: str) -> None:
        SEEN[self.backend][what] += 1

    def expect(self, response: httpx.Response, outcome: Outcome) -> dict[str, Any]:
        """Check an answer's status, and for an error its problem document and members."""
        if response.status_code != outcome.status:
            raise AssertionError(
                f"the model expects {outcome.status} {outcome.code or ''}, the service answered "
                f"{response.status_code} {response.text}"
            )
        if outcome.code is None:
            return ok(response, outcome.status)
        return problem(response, outcome.status, outcome.code, **(outcome.members or {}))

    def grant_token(self, token: Any) -> int:
        assert isinstance(token, int) and not isinstance(token, bool), token
        assert not self.tokens or token > self.tokens[-1], f"token {token} after {self.tokens[-1]}"
        self.tokens.append(token)
        return token

    def check_consensus(self, c: Consensus, body: dict[str, Any]) -> None:
        """Learn what only the service can know (when each vote was cast, when a vote
        decided the request), then hold the whole answer to the model."""
        votes = {v["agentId"]: v for v in body["votes"]}
        for voter, ballot in c.ballots.items():
            if ballot.voted_at is None and voter in votes:
                assert ISO_Z.fullmatch(votes[voter]["votedAt"]), votes[voter]
                ballot.voted_at = votes[voter]["votedAt"]
        if c.status in ("approved", "rejected") and c.resolved_at is None:
            assert body["resolvedAt"] is not None and ISO_Z.fullmatch(body["resolvedAt"]), body
            c.resolved_at = body["resolvedAt"]
        same(body, self.model.consensus_body(c), f"consensus {c.id}")
        self.status_seen[c.id].append(body["status"])
        self.last_tally[c.id] = body["tally"]
