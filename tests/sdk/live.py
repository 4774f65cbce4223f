"""The real service of the SDK tests: its tenants and keys, and helpers that give
each test agents, contacts (and for consensus, a tenant) of its own, so that
tests sharing one service never see each other's data."""

from __future__ import annotations

import uuid

import redis

from tests.support.helpers import Stack

TENANT, API_KEY = "acme", "acme-sdk-key-0123456789"
# The tenant's other keys: an email pipeline's (send-check only) and an enroller's (registers only).
GATE_KEY, ENROLL_KEY = "acme-sdk-gate-key-0123456789", "acme-sdk-enroll-key-0123456789"
# Tenants of their own for the consensus tests: a majority counts every active agent of a tenant.
ISOLATED = {f"solo{i}": f"solo{i}-sdk-key-0123456789" for i in range(8)}
WINDOW_MS = 300_000


def keys_setting() -> str:
    """CONCORD_API_KEYS of the SDK tests' service."""
    admin = [f"{tenant}:{key}" for tenant, key in {TENANT: API_KEY, **ISOLATED}.items()]
    return ",".join([*admin, f"{TENANT}/gate:{GATE_KEY}", f"{TENANT}/enroll:{ENROLL_KEY}"])


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:10]}"


def contact() -> str:
    return f"{unique('c')}@example.com"


def solo(stack: Stack, n: int) -> tuple[str, str]:
    tenant = f"solo{n}"
    return tenant, ISOLATED[tenant]


def make_inactive(r: redis.Redis, stack: Stack, agent_id: str) -> None:
    """Age the agent's last heartbeat past the window, as if it stopped long ago (no
    waiting); the lapse mark goes too (tests/support/api.py make_inactive says why)."""
    seconds, micros = r.time()
    r.zadd(stack.keys.heartbeats(TENANT), {agent_id: seconds * 1000 + micros // 1000 - WINDOW_MS - 60_000})
    r.delete(stack.keys.lapse_mark(TENANT))
