"""Rate limits in process: a token bucket per principal, at no Redis round trip.

The scopes ``principal`` and ``key`` of CONCORD_RATE_LIMITS, on by default
(settings.DEFAULT_RATE_LIMITS). A bucket belongs to the principal the credential
names, never to an id the request claims: an agent credential's bucket is keyed by
the credential's digest, so a forged credential claiming another agent's id has
a digest of its own and drains only its own bucket; an API key's is keyed by the
key's id, so registering draws from the enrolling key's. Every AgentPrincipal
(agents, and any other role an agent-style credential carries) is limited alike.

The endpoint takes a token as soon as it knows the principal (http/endpoint.py),
before it reads the body and before any Redis work of the request, so a refused
request costs a dict lookup and some arithmetic. The buckets live in this process:
with N instances (or workers) a principal may get N times the rate, the price of
no round trip. The scopes ``tenant`` and ``agent`` are the exact, shared limits,
in Redis (store/limits.py).

Memory is bounded: at most BUCKETS_MAX buckets a scope. A bucket that has refilled
is the same as none, so those go first; if that frees too little, all go. Either
way an evicted bucket comes back full: eviction only ever refills, it never
refuses anyone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from concord.server.errors import ConcordError
from concord.server.principals import AgentPrincipal, Principal
from concord.server.settings import SHARED_SCOPES, RateLimit

BUCKETS_MAX = 50_000  # buckets a scope keeps, about 250 bytes each


class Buckets:
    """The token buckets of one scope, by name: each refills at the limit's rate up
    to its burst, and a name seen for the first time starts full."""

    def __init__(self, limit: RateLimit, size: int = BUCKETS_MAX) -> None:
        self.limit = limit
        self._rate, self._burst, self._size = limit.per_second, float(limit.burst), size
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at: monotonic seconds)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, name: str, now: float) -> float:
        """Take a token from ``name``'s bucket and answer 0.0, or take none and answer
        the seconds until one is due."""
        bucket = self._buckets.get(name)
        if bucket is None:
            tokens = self._burst
            if len(self._buckets) >= self._size:
                self._evict(now)
        else:
            tokens = bucket[0] + (now - bucket[1]) * self._rate
            if tokens > self._burst:
                tokens = self._burst
            elif tokens < 1:
                return (1 - tokens) / self._rate
        self._buckets[name] = (tokens - 1, now)
        return 0.0

    def _evict(self, now: float) -> None:
        """Make room: drop the buckets that have refilled (as good as absent), or all of
        them if more than half are still drawn from, so that a scan of n buckets is
        followed by at least n/2 new ones before the next: O(1) a request, amortised."""
        drawn = {
            name: bucket
            for name, bucket in self._buckets.items()
            if bucket[0] + (now - bucket[1]) * self._rate < self._burst
        }
        self._buckets = drawn if len(drawn) <= self._size // 2 else {}


class Throttle:
    """The in-process limits of one instance's CONCORD_RATE_LIMITS, and the shared
    (Redis) ones the store applies after them."""

    def __init__(self, limits: Mapping[str, RateLimit], clock: Callable[[], float] = time.monotonic) -> None:
        self._principal = Buckets(limits["principal"]) if "principal" in limits else None
        self._key = Buckets(limits["key"]) if "key" in limits else None
        self._clock = clock
        # What store.limits.take_token applies (one round trip); empty: no Redis call.
        self.shared = {scope: limits[scope] for scope in SHARED_SCOPES if scope in limits}

    def take(self, principal: Principal) -> None:
        """Take a token from the principal's bucket, or raise rate_limited (taking none)."""
        if isinstance(principal, AgentPrincipal):
            buckets, name = self._principal, principal.credential
        else:
            buckets, name = self._key, principal.id
        if buckets is not None:
            wait = buckets.take(name, self._clock())
            if wait:
                scope = "principal" if buckets is self._principal else "key"
                raise throttled(principal, scope, buckets.limit, wait)


def throttled(principal: Principal, scope: str, limit: RateLimit, wait_seconds: float) -> ConcordError:
    """429 for a principal whose in-process bucket is empty: when to retry, and what to do."""
    wait_ms = max(1, math.ceil(wait_seconds * 1000))
    who = principal.describe()
    return ConcordError(
        "rate_limited",
        f"{who[0].upper()}{who[1:]} has used its burst of {limit.burst:,} requests on this instance, and "
        f"{_rate(limit.per_second)} after that (CONCORD_RATE_LIMITS {scope}); retry in {wait_ms} ms, and spread "
        "its requests out. If honest work needs more, the operator can raise the limit",
        retryAfterMs=wait_ms,
    )


def _rate(per_second: float) -> str:
    for unit, seconds in (("second", 1), ("minute", 60), ("hour", 3600)):
        count = per_second * seconds
        if count >= 1 and math.isclose(count, round(count)):
            return f"{round(count):,} per {unit}"
    return f"{per_second:g} per second"
