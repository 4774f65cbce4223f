"""server/http/throttle.py: the in-process token buckets of CONCORD_RATE_LIMITS
principal and key, on a clock the test moves (no sleeps, no timing).

* a bucket lets its burst through, then refuses (taking nothing) with the wait
  until a token is due; tokens come back at the rate, never past the burst;
* an agent credential's bucket is its digest's, never the agent id it claims: a
  forged credential naming the victim drains only its own; every AgentPrincipal
  is limited alike, whatever its role; an API key's bucket is its id's;
* memory is bounded, and evicting only ever refills: a refilled bucket goes
  first, a drawn one survives while it can, and no name is ever refused for
  having been evicted;
* the refusal is 429 rate_limited with retryAfterMs and a detail that says what
  to do, naming the principal, never its secret.
"""

from __future__ import annotations

import pytest

from concord.server.errors import ConcordError
from concord.server.http.throttle import Buckets, Throttle
from concord.server.principals import AgentPrincipal, KeyGrant
from concord.server.settings import DEFAULT_RATE_LIMITS, RateLimit, key_digest, parse_rate_limits

AGENT = "agent_6e5b68cb-0c40-51b1-95d4-02c2784bded0"
OTHER = "agent_0d1a4c3e-8f7b-5a2d-9c6e-1b3f5d7a9e0c"


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def agent(credential: str, agent_id: str = AGENT, role: str = "agent") -> AgentPrincipal:
    return AgentPrincipal("acme", agent_id, key_digest(credential), role)


def served(throttle: Throttle, principal, times: int) -> int:
    """How many of ``times`` requests of ``principal`` the throttle lets through."""
    count = 0
    for _ in range(times):
        try:
            throttle.take(principal)
        except ConcordError as refused:
            assert refused.code == "rate_limited", refused
        else:
            count += 1
    return count


def test_a_bucket_lets_its_burst_through_then_answers_the_wait():
    buckets = Buckets(RateLimit(per_second=4.0, burst=3))
    assert [buckets.take("x", 10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("x", 10.0) == pytest.approx(0.25)  # a token every quarter second
    # A refusal takes nothing: the wait only shrinks as time passes.
    assert buckets.take("x", 10.0) == pytest.approx(0.25)
    assert buckets.take("x", 10.1) == pytest.approx(0.15)
    assert buckets.take("x", 10.25) == 0.0
    assert buckets.take("x", 10.25) == pytest.approx(0.25)


def test_tokens_come_back_at_the_rate_up_to_the_burst():
    buckets = Buckets(RateLimit(per_second=2.0, burst=5))
    for _ in range(5):
        assert buckets.take("x", 0.0) == 0.0
    # One second: two tokens back.
    assert [buckets.take("x", 1.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]
    # An hour idle: the burst, not 7200.
    assert sum(buckets.take("x", 3600.0) == 0.0 for _ in range(10)) == 5


def test_each_name_has_its_own_bucket():
    buckets = Buckets(RateLimit(per_second=1.0, burst=1))
    assert buckets.take("x", 0.0) == 0.0
    assert buckets.take("x", 0.0) > 0
    assert buckets.take("y", 0.0) == 0.0


def test_an_agent_credentials_bucket_is_its_digest_not_the_id_it_claims():
    clock = Clock()
    throttle = Throttle(parse_rate_limits("principal=1/h:3"), clock)
    victim, forged = agent("the victim's own credential"), agent("a credential someone forged")
    assert served(throttle, forged, 50) == 3  # it claims the victim's id, and drains its own bucket only
    assert served(throttle, victim, 5) == 3  # the victim's bucket is whole
    # Another agent's credential, and a human member's (an AgentPrincipal of another
    # role), each have their own bucket, limited alike.
    assert served(throttle, agent("another agent's", OTHER), 5) == 3
    assert served(throttle, agent("a member's", OTHER, role="human"), 5) == 3


def test_an_api_keys_bucket_is_its_id():
    throttle = Throttle(parse_rate_limits("key=1/h:2"), Clock())
    gate = KeyGrant(id="cfg-2", tenant="acme", role="gate")
    assert served(throttle, gate, 5) == 2
    # The same key's grant, read again (from Redis, say): the same bucket.
    assert served(throttle, KeyGrant(id="cfg-2", tenant="acme", role="gate"), 1) == 0
    assert served(throttle, KeyGrant(id="cfg-1", tenant="acme"), 5) == 2
    # Keys and agent credentials are limited apart: the principal scope is at its default.
    assert served(throttle, agent("an agent's"), 5) == 5


def test_the_defaults_and_off():
    clock = Clock()
    throttle = Throttle(parse_rate_limits(""), clock)
    principal, key = DEFAULT_RATE_LIMITS["principal"], DEFAULT_RATE_LIMITS["key"]
    assert served(throttle, agent("an agent's"), principal.burst + 10) == principal.burst
    assert served(throttle, KeyGrant(id="cfg-1", tenant="acme"), key.burst + 10) == key.burst
    clock.now += 1.0
    assert served(throttle, agent("an agent's"), principal.burst) == principal.per_second
    assert throttle.shared == {}  # no Redis limit: the store is not called
    unlimited = Throttle(parse_rate_limits("off"), clock)
    assert served(unlimited, agent("an agent's"), 10_000) == 10_000
    assert served(unlimited, KeyGrant(id="cfg-1", tenant="acme"), 10_000) == 10_000
    keys_only = Throttle(parse_rate_limits("principal=off,tenant=10/s"), clock)
    assert served(keys_only, agent("an agent's"), 1000) == 1000
    assert keys_only.shared == {"tenant": RateLimit(10.0, 10)}


def test_the_refusal_says_when_and_what_to_do():
    throttle = Throttle(parse_rate_limits("principal=100/s:2,key=60/m:1"), Clock())
    credential = "concord-agent.acme.agent_x.not-to-be-shown"
    principal = agent(credential)
    throttle.take(principal)
    throttle.take(principal)
    with pytest.raises(ConcordError) as refused:
        throttle.take(principal)
    error = refused.value
    assert error.code == "rate_limited" and error.status == 429
    assert error.extra == {"retryAfterMs": 10}
    assert error.detail.startswith(f"The credential of agent {AGENT} has used its burst of 2 requests")
    assert "100 per second" in error.detail and "CONCORD_RATE_LIMITS principal" in error.detail
    assert "retry in 10 ms" in error.detail
    assert credential not in error.detail and principal.credential not in error.detail
    key = KeyGrant(id="cfg-1", tenant="acme", role="gate")
    throttle.take(key)
    with pytest.raises(ConcordError) as refused:
        throttle.take(key)
    assert refused.value.extra == {"retryAfterMs": 1000}
    assert "API key cfg-1 (role gate) has used its burst of 1 requests" in refused.value.detail
    assert "1 per second" in refused.value.detail and "CONCORD_RATE_LIMITS key" in refused.value.detail


def test_memory_is_bounded_and_a_refilled_bucket_goes_first():
    buckets = Buckets(RateLimit(per_second=1.0, burst=2), size=4)
    buckets.take("drawn", 0.0)
    buckets.take("drawn", 0.0)  # empty: two seconds from full
    for name in ("a", "b", "c"):
        buckets.take(name, 0.0)  # one second from full
    assert len(buckets) == 4
    buckets.take("new", 1.5)  # a, b and c have refilled: as good as absent, they go
    assert len(buckets) == 2
    # "drawn" is still drawn from, so remembered: 1.5 tokens, not a full bucket's 2.
    assert buckets.take("drawn", 1.5) == 0.0
    assert buckets.take("drawn", 1.5) > 0
    assert len(buckets) <= 4


class Counted(Buckets):
    """Buckets that count their scans of memory."""

    scans = 0

    def _evict(self, now: float) -> None:
        self.scans += 1
        super()._evict(now)


def test_eviction_only_ever_refills():
    """Far more names at once than the bound: a name is refused only when its own
    requests emptied its bucket, never because others came and went; a name
    evicted comes back full (the limit gets laxer, never stricter); memory stays
    within the bound, and is scanned at most once for every size/2 new names."""
    size, burst = 8, 3
    buckets = Counted(RateLimit(per_second=0.001, burst=burst), size=size)
    assert [buckets.take("old", 0.0) for _ in range(burst)] == [0.0] * burst
    assert buckets.take("old", 0.0) > 0
    names = [f"name-{n}" for n in range(1000)]
    for name in names:
        assert [buckets.take(name, 0.0) for _ in range(burst)] == [0.0] * burst, name
        assert buckets.take(name, 0.0) > 0, name  # refused by its own requests only
        assert len(buckets) <= size
    assert buckets.take("old", 0.0) == 0.0  # evicted long ago: full again
    assert buckets.scans <= len(names) // (size // 2) + 1, buckets.scans
