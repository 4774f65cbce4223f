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
from tests.sdk.scripted import AGENT_ID, HEARTBEAT, URL, Script, problem, scripted
from tests.support.helpers import Stack, free_port


def test_typed_errors_for_answers_of_the_service(client: Concord, stack: Stack, r: redis.Redis):
    with Concord(stack.service.url, "not-a-key-0123456789") as stranger, pytest.raises(Unauthorized) as caught:
        stranger.list_agents()
    assert caught.value.status == 401

    agent = client.register(unique("errors"))
    with pytest.raises(ValidationError) as invalid:
        client.acquire_lease(agent.id, "not-an-email")
    assert (invalid.value.status, invalid.value.field) == (422, "$.contactEmail")
    with pytest.raises(ValidationError) as too_long:
        client.acquire_lease(agent.id, contact(), duration=timedelta(days=2))
    assert too_long.value.field == "$.durationSeconds"

    with pytest.raises(AgentNotFound):
        client.heartbeat(f"agent_{uuid.uuid4()}")
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


# --- no API key ----------------------------------------------------------------


def test_without_an_api_key_a_call_says_how_to_set_one_and_sends_nothing(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CONCORD_API_KEY", raising=False)
    script = Script(httpx.Response(200, json=HEARTBEAT))
    with Concord(URL, http=script.transport) as concord:
        assert concord.api_key is None
        with pytest.raises(NotConfigured) as caught:
            concord.heartbeat(AGENT_ID)
        handle = concord.agent(AGENT_ID)  # a handle sends nothing: it needs no key
        with pytest.raises(NotConfigured):
            handle.lease("a@example.com").acquire()
        with pytest.raises(NotConfigured):
            next(concord.stream_events())
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
        concord.heartbeat(AGENT_ID)  # an empty key is no key
    assert script.requests == []


async def test_async_client_without_an_api_key_says_how_to_set_one(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONCORD_API_KEY", "")
    script = Script(httpx.Response(200, json=HEARTBEAT))
    async with AsyncConcord(URL, http=script.transport) as concord:
        with pytest.raises(NotConfigured, match=r"pass api_key=\.\.\. to AsyncConcord\(\) or set CONCORD_API_KEY"):
            await concord.register("sdr")
        with pytest.raises(NotConfigured):
            await anext(concord.stream_events())
    assert script.requests == []
