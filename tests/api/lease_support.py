"""What the lease tests share: two agents (the sdr and retention fixtures), the
contact they meet on, and readers of what Redis holds for a lease.

Every lease test runs on fakeredis and on a real Redis (the redis_client fixture).
"""

from __future__ import annotations

import pytest

from concord.server.store.keys import agent_tag
from tests.support.api import TENANT, C, ms, ok, register, verdict
from tests.support.helpers import snapshot

CONTACT = "alice@example.com"


@pytest.fixture
async def sdr(client):
    return await register(client, "sdr-1", agentRole="sdr")


@pytest.fixture
async def retention(client):
    return await register(client, "retention-1", agentRole="retention")


async def lease_post(client, **body):
    return await client.post(f"{C}/lease", json=body)


async def send_check(client, agent_id, contact=CONTACT, **extra):
    answer = ok(await client.post(f"{C}/send-check", json={"agentId": agent_id, "contactEmail": contact, **extra}))
    return verdict(answer, contact)


def stored(lease) -> str:
    """A lease as Redis holds it under keys.lease: one string,
    "<agent uuid>|<fencingToken>|<acquiredAt ms>|<agentName>|<intent>" (its expiry is the key's)."""
    holder = lease["agentId"].removeprefix("agent_")
    return f"{holder}|{lease['fencingToken']}|{ms(lease['acquiredAt'])}|{lease['agentName']}|{lease['intent'] or ''}"


def registry(keys, agent_id) -> str:
    """The lease registry of an agent: fencingToken -> "<expiresAt>:<contact>"."""
    return keys.lease_registry(TENANT, agent_tag(agent_id))


async def tenant_keys(redis_client, keys) -> dict:
    """Every key of the tenant with its contents and absolute expiry."""
    return await snapshot(redis_client, f"{keys.tenant(TENANT)}:*", expiry=True)
