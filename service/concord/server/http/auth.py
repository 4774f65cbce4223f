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

Each member's credential or configured key is parsed once, then remembered by its
digest (as claimed, not as proven): that saves much of what authenticating a
request costs.

Abuse. Known keys, unknown keys and proven credentials are remembered apart, so
random keys can flush only the memory of unknown ones, never a real key's. Each
client address has a budget of refused credentials (FAILURE_BURST, refilled at
FAILURE_RATE a second): an address that has spent it gets 429 for any credential
that would cost Redis work (a key not remembered, an agent credential not accepted
from it in the last ACCEPTED_SECONDS) until it refills, so guessing costs Redis nothing. An
address that never presented a bad credential costs one dict lookup per request.
Behind a proxy every client shares its address: let uvicorn read the forwarded
address (docs/security.md).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from concord.server.errors import ConcordError, credential_refused
from concord.server.principals import (
    CREDENTIAL_PREFIX,
    HUMAN_PREFIX,
    AgentPrincipal,
    KeyGrant,
    Principal,
    agent_principal,
)
from concord.server.settings import key_digest

T = TypeVar("T")

CACHE_SECONDS = 1.0
CACHE_MAX = 10_000
FAILURE_BURST = 100  # refused credentials an address may present at once ...
FAILURE_RATE = 10.0  # ... and a second after that
# How long an agent credential presented successfully from an address that has
# failed goes on being admitted there: it only passes the budget, and is still
# checked by the script that acts, so it may be long.
ACCEPTED_SECONDS = 600.0


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
        self._good: dict[str, tuple[KeyGrant, float]] = {}  # key digest -> its grant, until when
        self._unknown: dict[str, float] = {}  # key digest found in no store -> until when
        self._proven: dict[str, float] = {}  # credential digest -> until when it counts as proven
        self._accepted: dict[str, float] = {}  # credential digest -> until when, from an address with failures
        self._failures: dict[str, tuple[float, float]] = {}  # address -> (tokens, at), once it has failed
        # credential digest -> the principal it names, for a member's credential (as
        # claimed) or a configured key: parsing it once per credential, not per request,
        # is much of what authenticating costs (only digests are kept, never a secret).
        self._parsed: dict[str, Principal] = {}

    @property
    def failing(self) -> bool:
        """Whether any address has presented a refused credential (within the memory
        of the failure budget): until one has, admit and accepted have nothing to do."""
        return bool(self._failures)

    def known(self, authorization: str | None) -> Principal | None:
        """The principal of the request's ``Authorization: Bearer <credential>`` when no
        Redis lookup is needed (an agent credential, as claimed; a configured key; a
        key's answer cached), else None; 401 for a missing or malformed header, or a
        key known to be unknown."""
        token = _token(authorization)
        digest = key_digest(token)
        parsed = self._parsed.get(digest)
        if parsed is not None:
            return parsed
        principal: Principal | None
        if token.startswith((CREDENTIAL_PREFIX, HUMAN_PREFIX)):
            principal = agent_principal(token, digest)
            if principal is None:
                raise ConcordError(
                    "unauthorized",
                    f"This {'human' if token.startswith(HUMAN_PREFIX) else 'agent'} credential is not one Concord "
                    "made: send it exactly as registering answered it",
                )
        else:
            principal = self._static.get(digest)
        if principal is not None:
            # What the header names, never proven here: a member's credential is
            # checked by the script that acts (or prove), as if parsed anew.
            if len(self._parsed) >= CACHE_MAX:
                self._parsed.clear()
            self._parsed[digest] = principal
            return principal
        good = self._good.get(digest)
        if good is not None and good[1] > time.monotonic():
            return good[0]
        if self._unknown.get(digest, 0.0) > time.monotonic():
            raise _unknown()
        return None

    async def grant(self, authorization: str | None) -> Principal:
        """The principal of the request's ``Authorization: Bearer <credential>``, or 401."""
        principal = self.known(authorization)
        if principal is not None:
            return principal
        digest = key_digest(_token(authorization))
        grant = await self._lookup(digest)
        until = time.monotonic() + self._cache_seconds
        if grant is None:
            self._good.pop(digest, None)  # revoked: no longer a key found before (admit)
            if len(self._unknown) >= CACHE_MAX:  # random keys flush this memory only
                self._unknown.clear()
            self._unknown[digest] = until
            raise _unknown()
        self._good = _bounded(self._good)
        self._good[digest] = (grant, until)
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
        self._proven = _bounded(self._proven)
        self._proven[principal.credential] = now + self._cache_seconds

    # --- the failure budget of each client address -------------------------------

    def admit(self, address: str, principal: Principal | None, authorization: str | None = None) -> None:
        """Before a credential costs Redis work (``principal``: an agent credential as
        claimed; None: the key of ``authorization`` to look up): 429 when the address
        has spent its budget of refused credentials, unless it presented this
        credential successfully in the last ACCEPTED_SECONDS (a key: unless this
        instance has found it, which only a real key can have been)."""
        bucket = self._failures.get(address)
        if bucket is None:
            return
        now = time.monotonic()
        if isinstance(principal, AgentPrincipal) and self._accepted.get(principal.credential, 0.0) > now:
            return
        if principal is None and authorization is not None and key_digest(_token(authorization)) in self._good:
            return  # a key found before (its entry may have expired): looking it up again is honest work
        tokens = min(FAILURE_BURST, bucket[0] + (now - bucket[1]) * FAILURE_RATE)
        if tokens < 1:
            wait_ms = max(1, int((1 - tokens) / FAILURE_RATE * 1000))
            raise ConcordError(
                "rate_limited",
                f"Too many requests from this address carried a credential Concord does not know; retry in "
                f"{wait_ms} ms with a valid API key or agent credential",
                retryAfterMs=wait_ms,
            )

    def refused(self, address: str) -> None:
        """A credential presented from ``address`` was refused (401): one of its budget spent."""
        now = time.monotonic()
        bucket = self._failures.get(address)
        tokens = FAILURE_BURST if bucket is None else min(FAILURE_BURST, bucket[0] + (now - bucket[1]) * FAILURE_RATE)
        if bucket is None and len(self._failures) >= CACHE_MAX:
            # Forget the addresses whose budget is whole again, or, failing that, all.
            whole = {a: b for a, b in self._failures.items() if b[0] + (now - b[1]) * FAILURE_RATE < FAILURE_BURST}
            self._failures = whole if len(whole) < CACHE_MAX else {}
        self._failures[address] = (max(0.0, tokens - 1), now)

    def accepted(self, address: str, principal: Principal) -> None:
        """A request from ``address`` with this agent credential succeeded: from an
        address that has failed, the credential goes on being admitted (ACCEPTED_SECONDS)."""
        if address in self._failures and isinstance(principal, AgentPrincipal):
            self._accepted = _bounded(self._accepted)
            self._accepted[principal.credential] = time.monotonic() + ACCEPTED_SECONDS


def _bounded(memory: dict[str, T]) -> dict[str, T]:
    """``memory`` (values: an expiry, or a tuple ending with one), with room for one more:
    the expired entries dropped when it is full, all of them if none had expired."""
    if len(memory) < CACHE_MAX:
        return memory
    now = time.monotonic()
    memory = {k: v for k, v in memory.items() if (v[-1] if isinstance(v, tuple) else v) > now}
    return memory if len(memory) < CACHE_MAX else {}


def _token(authorization: str | None) -> str:
    if authorization is not None and authorization.startswith("Bearer "):
        token = authorization[7:].strip()
        if token:
            return token
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ConcordError(
            "unauthorized", "Send the API key or agent credential as `Authorization: Bearer <credential>`"
        )
    return token


def _unknown() -> ConcordError:
    return ConcordError("unauthorized", "Unknown or revoked API key")
