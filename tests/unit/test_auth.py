"""server/http/auth.py against an abuser: random keys cannot flush a real key's
memory, and an address that presents refused credentials is limited before they
cost Redis work, while other addresses, and what it presented successfully, go on.

The lookups are counted stand-ins for Redis: "costs Redis work" is a lookup made.
"""

from __future__ import annotations

import secrets

import pytest

from concord.server.errors import ConcordError
from concord.server.http import auth as auth_module
from concord.server.http.auth import CACHE_MAX, FAILURE_BURST, Authenticator
from concord.server.principals import AgentPrincipal, KeyGrant, new_credential
from concord.server.settings import key_digest

STORED = "a-stored-key-0123456789"
GRANT = KeyGrant(id="key_stored", tenant="acme")
AGENT = "agent_6e5b68cb-0c40-51b1-95d4-02c2784bded0"


class Backend:
    """The Redis lookups, counted."""

    def __init__(self, credential: str) -> None:
        self.key_lookups = 0
        self.credential_reads = 0
        self.credential_digest = key_digest(credential)

    async def grant_of(self, digest: str) -> KeyGrant | None:
        self.key_lookups += 1
        return GRANT if digest == key_digest(STORED) else None

    async def credential(self, tenant: str, agent_id: str) -> str | None:
        self.credential_reads += 1
        return self.credential_digest


@pytest.fixture
def credential() -> str:
    return new_credential("acme", AGENT)


@pytest.fixture
def backend(credential) -> Backend:
    return Backend(credential)


@pytest.fixture
def auth(backend) -> Authenticator:
    return Authenticator({}, backend.grant_of, backend.credential)


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def present(auth: Authenticator, address: str, token: str) -> KeyGrant | AgentPrincipal:
    """What the endpoint does with a credential (endpoint.py): admitted by the address's
    budget when it costs Redis work, looked up or proven, and a refusal spends the budget."""
    try:
        principal = auth.known(bearer(token))
        if principal is None:
            auth.admit(address, None)
            principal = await auth.grant(bearer(token))
        elif isinstance(principal, AgentPrincipal):
            auth.admit(address, principal)
            await auth.prove(principal)
            auth.accepted(address, principal)
        return principal
    except ConcordError as error:
        if error.code == "unauthorized":
            auth.refused(address)
        raise


async def test_random_keys_cannot_flush_a_real_keys_memory(auth, backend):
    assert await present(auth, "10.0.0.1", STORED) == GRANT
    for _ in range(CACHE_MAX + 10):  # more unknown keys than the memory holds, from many addresses
        with pytest.raises(ConcordError):
            await present(auth, f"10.1.{secrets.randbelow(250)}.{secrets.randbelow(250)}", secrets.token_hex(16))
    lookups = backend.key_lookups

    assert await present(auth, "10.0.0.1", STORED) == GRANT

    assert backend.key_lookups == lookups  # remembered: no lookup


async def test_an_address_that_spent_its_budget_is_limited_before_any_lookup(auth, backend):
    for _ in range(FAILURE_BURST):
        with pytest.raises(ConcordError) as refused:
            await present(auth, "10.6.6.6", secrets.token_hex(16))
        assert refused.value.code == "unauthorized"
    lookups = backend.key_lookups

    for token in (secrets.token_hex(16), STORED, new_credential("acme", AGENT)):
        with pytest.raises(ConcordError) as limited:
            await present(auth, "10.6.6.6", token)
        assert limited.value.code == "rate_limited" and limited.value.extra["retryAfterMs"] >= 1
        assert "does not know" in limited.value.detail

    assert backend.key_lookups == lookups and backend.credential_reads == 0
    # Another address is not limited, and the budget refills with time.
    assert await present(auth, "10.0.0.2", STORED) == GRANT


async def test_the_budget_refills(auth, backend, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(auth_module.time, "monotonic", lambda: now[0])
    for _ in range(FAILURE_BURST):
        with pytest.raises(ConcordError):
            await present(auth, "10.6.6.6", secrets.token_hex(16))
    with pytest.raises(ConcordError) as limited:
        await present(auth, "10.6.6.6", STORED)
    assert limited.value.code == "rate_limited"

    now[0] += 1 / auth_module.FAILURE_RATE

    assert await present(auth, "10.6.6.6", STORED) == GRANT


async def test_a_credential_accepted_from_an_address_goes_on_when_the_address_is_limited(auth, credential):
    """An honest agent behind the same NAT as an abuser: once the address has failed,
    each credential it presents successfully is remembered (ACCEPTED_SECONDS), and
    the exhausted budget does not refuse it. (The script still checks it each time.)"""
    with pytest.raises(ConcordError):
        await present(auth, "10.0.0.9", new_credential("acme", AGENT))  # forged, same address
    assert (await present(auth, "10.0.0.9", credential)).id == AGENT
    for _ in range(FAILURE_BURST - 1):
        with pytest.raises(ConcordError):
            await present(auth, "10.0.0.9", new_credential("acme", AGENT))
    assert (await present(auth, "10.0.0.9", credential)).id == AGENT

    with pytest.raises(ConcordError) as limited:
        await present(auth, "10.0.0.9", new_credential("acme", AGENT))
    assert limited.value.code == "rate_limited"


async def test_an_address_that_never_failed_is_never_limited(auth, credential):
    for _ in range(FAILURE_BURST * 3):
        assert await present(auth, "10.0.0.3", STORED) == GRANT
        assert (await present(auth, "10.0.0.3", credential)).id == AGENT
