"""What the agent-credential tests share: the credential's documented shape, a
forged credential, and a client that sends one credential on every request."""

from __future__ import annotations

import hashlib
import re
import secrets

import httpx

from tests.support.api import AGENT_ID

# concord-agent.<tenant>.<agentId>.<secret> (docs/api.md, Agent credentials)
CREDENTIAL = re.compile(
    rf"concord-agent\.(?P<tenant>[A-Za-z0-9_-]{{1,64}})\.(?P<agent>{AGENT_ID.pattern})\.[A-Za-z0-9_-]{{32,128}}"
)


def forged(tenant: str, agent_id: str) -> str:
    """A credential of the right shape for ``agent_id`` whose secret Concord never made."""
    return f"concord-agent.{tenant}.{agent_id}.{secrets.token_urlsafe(32)}"


def digest(credential: str) -> str:
    """What Redis keeps of a credential: its SHA-256, hex."""
    return hashlib.sha256(credential.encode()).hexdigest()


def as_credential(app, token: str) -> httpx.AsyncClient:
    """A client of ``app`` that sends ``token`` as its bearer credential on every request."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://concord.test",
        headers={"Authorization": f"Bearer {token}"},
    )
