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
    Concord,
    ConcordError,
    ConsensusNotFound,
    EndpointNotFound,
    LeaseNotFound,
    Unauthorized,
    Unreachable,
    ValidationError,
)
from concord.protocol import ERRORS
from tests.sdk.live import API_KEY, contact, make_inactive, unique
from tests.sdk.scripted import AGENT_ID, problem, scripted
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
