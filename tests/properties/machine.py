"""The frame of the model-based test (test_model.py): the agent names, contacts and
request fields its rules draw from, and MachineBase, one example's app, Redis client
and reference model (model.py) with the plumbing that the rules (machine_rules.py)
and the invariant (machine_invariants.py) share.

Requests authenticate as a fleet's would: the admin key registers, rotates and
removes members and sets consensus policies; the enroll key may register agents;
each agent, and each human member, acts with the credential it was last answered;
reads go with the admin key or a member's current credential; send-check also with
the gate key. A member the model has no current credential for acts with the last
one it had (it was removed) or with a forged one of the right shape (never
registered). The read key exists to be refused (a policy change).
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
from tests.properties.model import AGENT_PREFIX, HUMAN_PREFIX, WINDOW_MS, Lease, Model, Outcome
from tests.properties.model_consensus import Consensus
from tests.support.api import ISO_Z, bearer, ms, ok, problem, tenant_snapshot

GATE_KEY = "model-gate-key-0123456789abcdef"  # a gate key of the tenant: send-check for any agent
ENROLL_KEY = "model-enroll-key-0123456789abcdef"  # registers agents, never humans
READ_KEY = "model-read-key-0123456789abcdef"  # reads only

NAMES = ["sdr", "retention", "support", "billing"]
HUMANS = ["dana", "lee", "kim"]  # the human members' names, none of them an agent's
ROLES = ["general", "sdr", "support"]  # the agents' roles: the default, and those the register rule sets
# The actions requests name and policies are set for; one needs its space percent-encoded in a path.
DECISIONS = ["send_pricing_override", "refund", "wire funds"]
# Few contacts, so that agents meet on them; canonical, as lease keys name them.
CONTACTS = ["alice@example.com", "bobsmith@gmail.com"]
# What clients send: the canonical form, and spellings of the same contact: case,
# spaces, a +tag, and (at Gmail) dots and googlemail.com.
CONTACT_INPUTS = [
    *(spelling for c in CONTACTS for spelling in (c, c.upper(), f"  {c.capitalize()} ")),
    "alice+promo@example.com",
    "Bob.Smith+news@googlemail.com",
    "b.o.b.smith@GMAIL.com",
]

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
decisions = st.sampled_from(DECISIONS)
agent_roles = st.sampled_from([None, "sdr", "support"])  # None: the default, or the role kept
# Policies over the fleet's roles (and one no agent has: no agent electorate), with
# quorums and human approvals small enough for four agents and two humans to meet;
# most ask for human approvals, which only a few steps can then give. A member left
# out (None) takes its default.
policy_bodies = st.builds(
    lambda rule, roles, min_votes, humans: {
        name: value
        for name, value in (("rule", rule), ("voterRoles", roles), ("minVotes", min_votes), ("humanApprovals", humans))
        if value is not None
    },
    st.sampled_from([None, "majority", "two_thirds", "unanimous"]),
    st.one_of(st.none(), st.lists(st.sampled_from([*ROLES, "finance"]), unique=True, min_size=1, max_size=2)),
    st.sampled_from([None, 0, 1, 2, 3]),
    st.sampled_from([None, 0, 1, 1, 2, 2]),
)

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
            api_keys=parse_api_keys(
                f"{TENANT}:{API_KEY},{TENANT}/gate:{GATE_KEY},{TENANT}/enroll:{ENROLL_KEY},{TENANT}/read:{READ_KEY}"
            ),
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
        self.keys_by_role = {
            "admin": self.admin,
            "gate": self.gate,
            "enroll": bearer(ENROLL_KEY),
            "read": bearer(READ_KEY),
        }
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
        """What the member acts with: its current credential; for a member removed, the
        last one it had; for one never registered, a forged agent's of the right shape."""
        agent = self.model.member(agent_id)
        if agent is not None and agent.credential is not None:
            return agent.credential
        earlier = [credential for credential, owner in self.model.retired.items() if owner == agent_id]
        return earlier[-1] if earlier else f"{AGENT_PREFIX}{TENANT}.{agent_id}.{'F' * 43}"

    def human_credentials(self) -> list[str]:
        """Every human credential answered, current or retired: the prefix alone says a
        human's, so each is refused off a human's calls before it is checked."""
        current = [h.credential for h in self.model.humans.values() if h.credential]
        return current + [credential for credential in self.model.retired if credential.startswith(HUMAN_PREFIX)]

    def _peers(self, kind: str) -> list[tuple[str, str]]:
        """(request, voter) pairs of registered agents other than the requester: on every
        request ("any"), with an earlier vote ("voted"), or on pending requests only, the
        agents that have not voted yet and are of the electorate ("counting": their vote
        will count), lapsed ("lapsed"), or active but of no electorate of the request
        ("outsider": registered after it, lapsed and back since, or of none of its
        policy's voter roles; "role": the last only)."""
        return [
            (c.id, agent.id)
            for c in self.model.consensus.values()
            if kind in ("any", "voted") or c.status == "pending"
            for agent in self.model.agents.values()
            if agent.id != c.requester
            and {
                "any": True,
                "voted": agent.id in c.ballots,
                "counting": agent.id not in c.ballots and agent.id in c.members,
                "outsider": agent.id not in c.ballots and agent.active and agent.id not in c.members,
                "role": agent.id not in c.ballots and agent.active and agent.id in c.continuing - c.members,
                "lapsed": agent.id not in c.ballots and not agent.active,
            }[kind]
        ]

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

    def seen_decision(self, c: Consensus, before: str) -> None:
        """Count a decision just made under a policy of the request's own, by what it asked."""
        if before == "pending" and c.status in ("approved", "rejected") and c.policy.updated_at is not None:
            p = c.policy
            asked = [p.rule, *(["voter roles"] if p.voter_roles else []), *(["quorum"] if p.min_votes else [])]
            asked += ["humans"] if p.human_approvals else []
            self.seen("decided under a policy")
            self.seen(f"decided under a policy: {c.status} ({', '.join(asked)})")

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
        same(body, c.body(self.model.tenant), f"consensus {c.id}")
        self.status_seen[c.id].append(body["status"])
        self.last_tally[c.id] = body["tally"]
