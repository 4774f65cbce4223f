"""What both clients share (client/base.py, client/calls.py): configuration, the
httpx client they send with, durations; and that the sync and async classes have
the same methods."""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Any

import httpx
import pytest

import concord.client as sdk
from concord import Concord
from concord.client.base import DEFAULT_URL
from tests.sdk.live import API_KEY
from tests.sdk.scripted import AGENT, AGENT_ID, CREDENTIAL, HEARTBEAT, LEASE, URL, Script, bearers, scripted


def test_durations_are_whole_seconds():
    concord, script = scripted(httpx.Response(201, json=LEASE))
    concord.acquire_lease(AGENT_ID, "a@example.com", duration=timedelta(minutes=2))
    concord.acquire_lease(AGENT_ID, "a@example.com", duration=0.2)
    concord.acquire_lease(AGENT_ID, "a@example.com", intent="x")
    assert [body.get("durationSeconds") for body in script.bodies()] == [120, 1, None]
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="duration"):
            concord.acquire_lease(AGENT_ID, "a@example.com", duration=bad)
    with pytest.raises(TypeError, match="duration"):
        concord.acquire_lease(AGENT_ID, "a@example.com", duration="5")  # type: ignore[arg-type]


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONCORD_URL", "http://from-env.test:9000/")
    monkeypatch.setenv("CONCORD_API_KEY", "env-key")
    monkeypatch.setenv("CONCORD_AGENT_CREDENTIAL", CREDENTIAL)
    script = Script(httpx.Response(200, json=HEARTBEAT), httpx.Response(200, json=AGENT))
    with Concord(http=script.transport) as concord:
        assert concord.agent_credential == CREDENTIAL and concord.me().id == AGENT_ID
        concord.me().heartbeat()
        concord.get_agent(AGENT_ID)
    heartbeat, read = script.requests
    assert str(heartbeat.url) == "http://from-env.test:9000/v1/agent/coordination/heartbeat"
    assert bearers(script) == [CREDENTIAL, "env-key"]  # the agent acts with its credential, reads with the key
    monkeypatch.delenv("CONCORD_URL")
    assert Concord(http=script.transport).url == DEFAULT_URL
    monkeypatch.setenv("CONCORD_AGENT_CREDENTIAL", "")
    assert Concord(http=script.transport).agent_credential is None  # an empty credential is none


def test_an_injected_http_client_is_used_and_left_open():
    script = Script(httpx.Response(200, json=HEARTBEAT))
    with httpx.Client(transport=script.transport) as http:
        with Concord(URL, API_KEY, agent_credential=CREDENTIAL, http=http) as concord:
            concord.heartbeat(AGENT_ID)
        assert not http.is_closed and len(script.requests) == 1
    with pytest.raises(TypeError, match="httpx.Client"):
        Concord(URL, http=httpx.AsyncClient())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sync", "async_"),
    [
        (sdk.Concord, sdk.AsyncConcord),
        (sdk.AgentHandle, sdk.AsyncAgentHandle),
        (sdk.LeaseHandle, sdk.AsyncLeaseHandle),
        (sdk.ConsensusHandle, sdk.AsyncConsensusHandle),
        (sdk.KeepAlive, sdk.AsyncKeepAlive),
    ],
)
def test_sync_and_async_classes_have_the_same_methods(sync: type, async_: type):
    def methods(cls: type) -> dict[str, list[tuple[str, Any]]]:
        return {
            name: [(p.name, p.default) for p in inspect.signature(member).parameters.values()]
            for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_") and name not in ("close", "aclose")
        }

    assert methods(sync) == methods(async_)
