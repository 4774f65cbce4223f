"""Bearer credentials -> the principal they name (principals.py).

API keys come from CONCORD_API_KEYS and from Redis (``concord keys create``). Both
are held only as SHA-256 digests, and a key is found by looking its digest up, so
no secret is ever compared byte by byte. Answers from Redis are cached for at
most one second, which bounds how long a revoked key keeps working on an instance.

An agent credential names its tenant and agent, so it needs no lookup to say whom
it claims to be. A call that acts as the agent passes its digest to the script
that acts, which refuses a digest that is not the agent's current one (nothing
is written): the hot path gains no round trip. A call that only reads proves the
credential here (``prove``): one read of the agent's hash, remembered for at most
one second, so a rotated or revoked credential is refused everywhere within one
second. Only proven credentials are remembered: random ones cannot fill that memory.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from concord.server.errors import ConcordError, credential_refused
from concord.server.principals import CREDENTIAL_PREFIX, AgentPrincipal, KeyGrant, Principal, agent_principal
from concord.server.settings import key_digest

CACHE_SECONDS = 1.0
CACHE_MAX = 10_000


class Authenticator:
    def __init__(
        self,
        static_keys: Mapping[str, KeyGrant],
        lookup: Callable[[str], Awaitable[KeyGrant | None]],
        agent_credential: Callable[[str, str], Awaitable[str | None]] | None = None,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self._static = dict(static_keys)
        self._lookup = lookup
        self._agent_credential = agent_credential
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[KeyGrant | None, float]] = {}
        self._proven: dict[str, float] = {}  # credential digest -> until when it counts as proven

    def known(self, authorization: str | None) -> Principal | None:
        """The principal of the request's ``Authorization: Bearer <credential>`` when no
        Redis lookup is needed (an agent credential, as claimed; a configured key; a
        key's answer cached), else None; 401 for a missing or malformed header, or a
        key known to be unknown."""
        token = _token(authorization)
        digest = key_digest(token)
        if token.startswith(CREDENTIAL_PREFIX):
            principal = agent_principal(token, digest)
            if principal is None:
                raise ConcordError(
                    "unauthorized",
                    "This agent credential is not one Concord made: send it exactly as registering answered it",
                )
            return principal
        grant = self._static.get(digest)
        if grant is not None:
            return grant
        cached = self._cache.get(digest)
        if cached is None or cached[1] <= time.monotonic():
            return None
        if cached[0] is None:
            raise _unknown()
        return cached[0]

    async def grant(self, authorization: str | None) -> Principal:
        """The principal of the request's ``Authorization: Bearer <credential>``, or 401."""
        principal = self.known(authorization)
        if principal is not None:
            return principal
        digest = key_digest(_token(authorization))
        grant = await self._lookup(digest)
        if len(self._cache) >= CACHE_MAX:  # random keys must not grow the cache without bound
            self._cache.clear()
        self._cache[digest] = (grant, time.monotonic() + self._cache_seconds)
        if grant is None:
            raise _unknown()
        return grant

    async def prove(self, principal: AgentPrincipal) -> None:
        """Check an agent credential against the agent's current one (for a call whose
        script does not), or raise 401: remembered for at most a second."""
        now = time.monotonic()
        if self._proven.get(principal.credential, 0.0) > now:
            return
        assert self._agent_credential is not None, "an Authenticator for agents needs agent_credential"
        if await self._agent_credential(principal.tenant, principal.id) != principal.credential:
            raise credential_refused(principal.id, principal.tenant)
        if len(self._proven) >= CACHE_MAX:
            self._proven = {d: until for d, until in self._proven.items() if until > now}
            if len(self._proven) >= CACHE_MAX:
                self._proven.clear()
        self._proven[principal.credential] = now + self._cache_seconds


def _token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ConcordError(
            "unauthorized", "Send the API key or agent credential as `Authorization: Bearer <credential>`"
        )
    return token


def _unknown() -> ConcordError:
    return ConcordError("unauthorized", "Unknown or revoked API key")
