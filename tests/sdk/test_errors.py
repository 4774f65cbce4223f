"""The errors (client/errors.py): each answer of the service as its typed error,
no answer as Unreachable, unknown codes and foreign bodies as the base class."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
import redis

import concord.client as sdk
from concord import (
    AgentInactive,
    AgentNotFound,
    AsyncConcord,
    Concord,
    ConcordError,
    ConsensusNotFound,
    EndpointNotFound,
    LeaseNotFound,
    NotConfigured,
    Unauthorized,
    Unreachable,
    ValidationError,
)
from concord.protocol import ERRORS
from tests.sdk.live import API_KEY, contact, make_inactive, unique
from tests.sdk.scripted import AGENT_ID, CONS_ID, CREDENTIAL, HEARTBEAT, LEASE_ID, URL, Script, problem, scripted
from tests.support.helpers import Stack, free_port


def test_typed_errors_for_answers_of_the_service(client: Concord, stack: Stack, r: redis.Redis):
    with Concord(stack.service.url, "not-a-key-0123456789") as stranger, pytest.raises(Unauthorized) as caught:
        stranger.list_agents()
    assert caught.value.status == 401
    assert type(caught.value) is Unauthorized  # an unknown key: not an agent's refused credential

    agent = client.register(unique("errors"))
    with pytest.raises(ValidationError) as invalid:
        client.acquire_lease(agent.id, "not-an-email")
    assert (invalid.value.status, invalid.value.field) == (422, "$.contactEmail")
    with pytest.raises(ValidationError) as too_long:
        client.acquire_lease(agent.id, contact(), duration=timedelta(days=2))
    assert too_long.value.field == "$.durationSeconds"

    with pytest.raises(AgentNotFound):
        client.get_agent(f"agent_{uuid.uuid4()}")
    with pytest.raises(AgentNotFound):
        client.rotate_credential(f"agent_{uuid.uuid4()}")
    with pytest.raises(LeaseNotFound):
        client.get_lease(f"lease_{uuid.uuid4()}")
    with pytest.raises(ConsensusNotFound):
        client.get_consensus(f"cons_{uuid.uuid4()}")
    with pytest.raises(LeaseNotFound):
        client.get_lease("lease_x?agentId=y")  # a malformed id stays one path segment

    make_inactive(r, stack, agent.id)
    with pytest.raises(AgentInactive):
        client.acquire_lease(agent.id, contact())

    with Concord(f"{stack.service.url}/not-concord", API_KEY) as elsewhere, pytest.raises(EndpointNotFound):
        elsewhere.list_agents()


def test_no_service_is_unreachable_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with Concord(url, API_KEY, backoff=0) as concord, pytest.raises(Unreachable) as caught:
        concord.list_agents()
    error = caught.value
    assert (error.code, error.status, error.sent) == ("unreachable", None, False)
    assert url in str(error) and error.problem["code"] == "unreachable" and error.problem["url"].startswith(url)
    assert isinstance(error.__cause__, httpx.ConnectError)
    assert isinstance(error, ConcordError)


def test_every_code_of_the_error_table_has_its_class():
    assert set(sdk.ERROR_CLASSES) == set(ERRORS)
    for code, cls in sdk.ERROR_CLASSES.items():
        assert issubclass(cls, ConcordError) and cls.code == code


def test_unknown_codes_and_other_bodies_give_the_base_class():
    concord, _ = scripted(problem("brand_new_code"))
    with pytest.raises(ConcordError) as caught:
        concord.get_agent(AGENT_ID)
    assert type(caught.value) is ConcordError and caught.value.code == "brand_new_code"
    concord, _ = scripted(httpx.Response(404, text="<html>nothing here</html>"))
    with pytest.raises(ConcordError) as caught:
        concord.get_agent(AGENT_ID)
    assert (type(caught.value), caught.value.code, caught.value.status) == (ConcordError, "unexpected_response", 404)


# --- no credential for the call -------------------------------------------------


def test_without_an_api_key_a_key_call_says_how_to_set_one_and_sends_nothing(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CONCORD_API_KEY", raising=False)
    script = Script(httpx.Response(200, json=HEARTBEAT))
    # An agent's own process: its credential acts and reads, but registers, rotates and deregisters nothing.
    with Concord(URL, agent_credential=CREDENTIAL, http=script.transport) as concord:
        assert concord.api_key is None
        with pytest.raises(NotConfigured) as caught:
            concord.register("sdr")
        for call in (
            lambda: concord.rotate_credential(AGENT_ID),
            lambda: concord.me().rotate_credential(),
            lambda: concord.remove_agent(AGENT_ID),
            lambda: concord.release_lease(LEASE_ID, force=True),
        ):
            with pytest.raises(NotConfigured, match="No API key"):
                call()
    assert script.requests == []
    error = caught.value
    assert isinstance(error, ConcordError) and (error.code, error.status) == ("not_configured", None)
    assert "api_key=... to Concord()" in str(error) and "set CONCORD_API_KEY" in str(error)
    assert "`concord serve` prints a demo key" in error.detail
    assert "NotConfigured" in sdk.__all__ and "not_configured" not in sdk.ERROR_CLASSES  # the SDK's own, not an answer
    assert error.problem == {
        "type": "urn:concord:problem:not_configured",
        "title": "No API key",
        "detail": error.detail,
        "code": "not_configured",
    }
    with Concord(URL, "", http=script.transport) as concord, pytest.raises(NotConfigured):
        concord.register("sdr")  # an empty key is no key
    assert script.requests == []


def test_without_the_agents_credential_an_acting_call_says_where_one_comes_from(monkeypatch: pytest.MonkeyPatch):
    """An API key never acts as an agent: the SDK does not send it on an agent's
    calls, it says how to get the agent's credential, and sends nothing."""
    monkeypatch.delenv("CONCORD_AGENT_CREDENTIAL", raising=False)
    script = Script(httpx.Response(200, json=HEARTBEAT))
    with Concord(URL, API_KEY, http=script.transport) as concord:
        assert concord.agent_credential is None
        with pytest.raises(NotConfigured) as caught:
            concord.heartbeat(AGENT_ID)
        handle = concord.agent(AGENT_ID)  # a handle sends nothing: it needs no credential
        assert handle.credential is None
        for call in (
            handle.heartbeat,
            lambda: handle.lease("a@example.com").acquire(),
            lambda: handle.keep_alive(interval=0.05),  # refused at once, not in a background thread
            lambda: handle.request_consensus("refund"),
            lambda: handle.vote(CONS_ID, "approve"),
            lambda: concord.renew_lease(LEASE_ID, AGENT_ID),
            lambda: concord.release_lease(LEASE_ID, AGENT_ID),
            lambda: concord.release_lease(LEASE_ID),
            concord.me,
        ):
            with pytest.raises(NotConfigured, match="CONCORD_AGENT_CREDENTIAL"):
                call()
        assert concord._background == set()  # no keep-alive was started
    assert script.requests == []
    error = caught.value
    assert error.problem["title"] == "No agent credential"
    assert f"No agent credential for agent {AGENT_ID}" in error.detail
    assert "never with an API key" in error.detail and "Register the agent with this client" in error.detail
    assert "agent_credential=... to Concord()" in error.detail


def test_without_any_credential_a_read_says_how_to_set_one(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CONCORD_API_KEY", raising=False)
    monkeypatch.delenv("CONCORD_AGENT_CREDENTIAL", raising=False)
    script = Script(httpx.Response(200, json=HEARTBEAT))
    with Concord(URL, http=script.transport) as concord:
        with pytest.raises(NotConfigured) as caught:
            concord.get_agent(AGENT_ID)
        with pytest.raises(NotConfigured):
            next(concord.stream_events())
    assert script.requests == []
    assert caught.value.problem["title"] == "No credential"
    assert "CONCORD_API_KEY" in caught.value.detail and "CONCORD_AGENT_CREDENTIAL" in caught.value.detail


@pytest.mark.parametrize(
    "credential",
    ["ck_an-api-key", "concord-agent.acme.not-an-agent.secret", f"concord-agent.acme.{AGENT_ID}", "concord-agent...."],
)
def test_a_malformed_agent_credential_is_refused_when_the_client_is_made(credential: str):
    with pytest.raises(NotConfigured) as caught:
        Concord(URL, API_KEY, agent_credential=credential)
    assert caught.value.problem["title"] == "Malformed agent credential"
    assert "exactly as registering the agent answered it" in caught.value.detail
    assert credential not in caught.value.detail  # a secret (or a mistyped one) is never echoed
    concord = Concord(URL, API_KEY)
    with pytest.raises(NotConfigured, match="of agent .* not of"):
        concord.agent(f"agent_{uuid.uuid4()}", credential=CREDENTIAL)  # another agent's credential


async def test_async_client_without_a_credential_says_how_to_set_one(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONCORD_API_KEY", "")
    monkeypatch.delenv("CONCORD_AGENT_CREDENTIAL", raising=False)
    script = Script(httpx.Response(200, json=HEARTBEAT))
    async with AsyncConcord(URL, http=script.transport) as concord:
        with pytest.raises(NotConfigured, match=r"pass api_key=\.\.\. to AsyncConcord\(\) or set CONCORD_API_KEY"):
            await concord.register("sdr")
        with pytest.raises(NotConfigured, match=r"agent_credential=\.\.\. to AsyncConcord\(\)"):
            await concord.heartbeat(AGENT_ID)
        with pytest.raises(NotConfigured):
            concord.agent(AGENT_ID).keep_alive()
        with pytest.raises(NotConfigured):
            await anext(concord.stream_events())
    assert script.requests == []
