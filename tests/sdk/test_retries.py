"""The retry policy (client/base.py), with scripted answers: a call is repeated
only where repeating is safe, or where nothing can have happened yet."""

from __future__ import annotations

import uuid

import httpx
import pytest

from concord import (
    AgentMismatch,
    AsyncConcord,
    CredentialRefused,
    InsufficientScope,
    LeaseNotFound,
    RateLimited,
    StoreUnavailable,
    Unauthorized,
    Unreachable,
)
from tests.sdk.live import API_KEY
from tests.sdk.scripted import (
    AGENT_ID,
    CONS_ID,
    CREDENTIAL,
    HEARTBEAT,
    LEASE,
    LEASE_ID,
    RELEASED,
    UNAVAILABLE,
    URL,
    Script,
    bearers,
    consensus,
    problem,
    scripted,
)


def test_a_safe_call_is_retried_after_503():
    concord, script = scripted(UNAVAILABLE, httpx.Response(200, json=HEARTBEAT))
    assert concord.heartbeat(AGENT_ID).agent_id == AGENT_ID
    assert bearers(script) == [CREDENTIAL, CREDENTIAL]  # every attempt with the agent's own credential


def test_refusals_of_the_credential_are_final_and_say_whose_it_was():
    """A 401 or 403 is never repeated: no attempt can succeed with the same credential.
    A 401 to an agent's credential is CredentialRefused (still an Unauthorized), one to
    a key plain Unauthorized."""
    concord, script = scripted(problem("unauthorized"), httpx.Response(200, json=HEARTBEAT))
    with pytest.raises(CredentialRefused) as refused:
        concord.heartbeat(AGENT_ID)
    assert isinstance(refused.value, Unauthorized) and refused.value.agent_id == AGENT_ID
    assert (refused.value.code, refused.value.status, len(script.requests)) == ("unauthorized", 401, 1)
    assert CREDENTIAL not in str(refused.value) and CREDENTIAL not in repr(refused.value.problem)

    concord, script = scripted(problem("unauthorized"))
    with pytest.raises(Unauthorized) as unknown_key:
        concord.get_lease(LEASE_ID)  # a read goes with the key
    assert type(unknown_key.value) is Unauthorized and bearers(script) == [API_KEY]

    other = f"agent_{uuid.uuid4()}"
    concord, script = scripted(problem("agent_mismatch", agentId=AGENT_ID))
    with pytest.raises(AgentMismatch) as mismatch:
        concord.heartbeat(other)  # no credential of `other`: its own, which the service refuses
    assert (mismatch.value.status, mismatch.value.agent_id, len(script.requests)) == (403, AGENT_ID, 1)
    assert script.bodies() == [{"agentId": other}] and bearers(script) == [CREDENTIAL]

    concord, script = scripted(problem("insufficient_scope", keyRole="agent"))
    with pytest.raises(InsufficientScope) as scope:
        concord.events()
    assert scope.value.key_role == "agent" and len(script.requests) == 1


def test_release_and_remove_are_not_retried_after_503():
    concord, script = scripted(UNAVAILABLE, httpx.Response(200, json=RELEASED))
    with pytest.raises(StoreUnavailable) as caught:
        concord.release_lease(LEASE_ID, AGENT_ID)
    assert len(script.requests) == 1 and caught.value.retry_after == 0
    concord, script = scripted(UNAVAILABLE)
    with pytest.raises(StoreUnavailable):
        concord.remove_agent(AGENT_ID)
    assert len(script.requests) == 1


def test_release_is_retried_only_when_nothing_can_have_happened():
    # A connection that could not be opened never carried the request; a 429 refused it before any work.
    concord, script = scripted(
        httpx.ConnectError("refused"), problem("rate_limited", retryAfterMs=0), httpx.Response(200, json=RELEASED)
    )
    assert concord.release_lease(LEASE_ID).released
    assert len(script.requests) == 3
    concord, script = scripted(httpx.ReadError("dropped"), httpx.Response(200, json=RELEASED))
    with pytest.raises(Unreachable) as caught:
        concord.release_lease(LEASE_ID)
    assert caught.value.sent and len(script.requests) == 1


def test_retries_stop_after_max_retries_and_on_final_answers():
    concord, script = scripted(UNAVAILABLE, max_retries=2)
    with pytest.raises(StoreUnavailable):
        concord.get_lease(LEASE_ID)
    assert len(script.requests) == 3
    concord, script = scripted(problem("lease_not_found"))
    with pytest.raises(LeaseNotFound):
        concord.get_lease(LEASE_ID)
    assert len(script.requests) == 1
    concord, script = scripted(problem("rate_limited", {"Retry-After": "120"}))
    with pytest.raises(RateLimited) as caught:  # a wait that long is the caller's to decide
        concord.heartbeat(AGENT_ID)
    assert caught.value.retry_after == 120 and len(script.requests) == 1
    concord, script = scripted(
        httpx.ReadTimeout("slow"), httpx.Response(502, text="<html>bad gateway</html>"), httpx.Response(200, json=LEASE)
    )
    assert concord.get_lease(LEASE_ID).fencing_token == 7
    assert len(script.requests) == 3


def test_request_consensus_retries_with_one_idempotency_key():
    concord, script = scripted(UNAVAILABLE, httpx.ReadError("dropped"), httpx.Response(201, json=consensus()))
    handle = concord.request_consensus(AGENT_ID, "refund", timeout=90.5)
    assert handle.id == CONS_ID and handle.status == "pending"
    keys = {request.headers["Idempotency-Key"] for request in script.requests}
    assert len(script.requests) == 3 and len(keys) == 1
    uuid.UUID(keys.pop())
    assert script.bodies()[0] == {"requestingAgentId": AGENT_ID, "action": "refund", "timeoutSeconds": 91}

    concord, script = scripted(httpx.Response(201, json=consensus()))
    concord.request_consensus(AGENT_ID, "refund", idempotency_key="order-17")
    concord.request_consensus(AGENT_ID, "refund")
    concord.request_consensus(AGENT_ID, "refund")
    sent = [request.headers["Idempotency-Key"] for request in script.requests]
    assert sent[0] == "order-17" and len(set(sent)) == 3  # a new key for each call


async def test_async_client_retries_as_the_sync_one():
    script = Script(UNAVAILABLE, httpx.Response(200, json=HEARTBEAT))
    async with AsyncConcord(URL, API_KEY, agent_credential=CREDENTIAL, http=script.transport, backoff=0) as concord:
        assert (await concord.heartbeat(AGENT_ID)).status == "active"
        assert len(script.requests) == 2
        script.answers, script.requests = (UNAVAILABLE,), []
        with pytest.raises(StoreUnavailable):
            await concord.release_lease(LEASE_ID)
        assert len(script.requests) == 1
