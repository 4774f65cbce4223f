"""Bearer API keys -> what they grant (principals.KeyGrant: tenant, id, role).

Keys come from CONCORD_API_KEYS and from Redis (``concord keys create``). Both are
held only as SHA-256 digests, and a key is found by looking its digest up, so no
secret is ever compared byte by byte. Answers from Redis are cached for at most
one second, which bounds how long a revoked key keeps working on an instance.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from concord.server.errors import ConcordError
from concord.server.principals import KeyGrant
from concord.server.settings import key_digest

CACHE_SECONDS = 1.0
CACHE_MAX = 10_000


class Authenticator:
    def __init__(
        self,
        static_keys: Mapping[str, KeyGrant],
        lookup: Callable[[str], Awaitable[KeyGrant | None]],
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self._static = dict(static_keys)
        self._lookup = lookup
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[KeyGrant | None, float]] = {}

    def known(self, authorization: str | None) -> KeyGrant | None:
        """The grant of the request's ``Authorization: Bearer <key>`` when no Redis
        lookup is needed (a configured key, or an answer cached), else None; 401 for
        a missing or malformed header, or a key known to be unknown."""
        digest = _digest(authorization)
        grant = self._static.get(digest)
        if grant is not None:
            return grant
        cached = self._cache.get(digest)
        if cached is None or cached[1] <= time.monotonic():
            return None
        if cached[0] is None:
            raise _unknown()
        return cached[0]

    async def grant(self, authorization: str | None) -> KeyGrant:
        """The grant of the request's ``Authorization: Bearer <key>``, or 401."""
        grant = self.known(authorization)
        if grant is not None:
            return grant
        digest = _digest(authorization)
        grant = await self._lookup(digest)
        if len(self._cache) >= CACHE_MAX:  # random keys must not grow the cache without bound
            self._cache.clear()
        self._cache[digest] = (grant, time.monotonic() + self._cache_seconds)
        if grant is None:
            raise _unknown()
        return grant


def _digest(authorization: str | None) -> str:
    scheme, _, api_key = (authorization or "").partition(" ")
    api_key = api_key.strip()
    if scheme.lower() != "bearer" or not api_key:
        raise ConcordError("unauthorized", "Send the API key as `Authorization: Bearer <key>`")
    return key_digest(api_key)


def _unknown() -> ConcordError:
    return ConcordError("unauthorized", "Unknown or revoked API key")
