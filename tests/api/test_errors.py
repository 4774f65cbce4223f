"""Errors over HTTP: authentication, tenant checks, bodies that are not JSON, too
large or of the wrong type, unknown routes and methods, and the operations
endpoints. Every error is problem+json; none is a 500.

Every test runs on fakeredis and on a real Redis (the redis_client fixture).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from concord.server.http.endpoint import Endpoint
from concord.server.http.routes import routes
from concord.server.principals import AGENT
from concord.server.store import Store
from tests.conftest import API_KEY
from tests.support.api import (
    OTHER_TENANT,
    PROBLEM_MEMBERS,
    TENANT,
    V1,
    C,
    acquire,
    bearer,
    credential_of,
    invalid,
    ok,
    problem,
    register,
    request_consensus,
    unknown_id,
)
from tests.support.helpers import snapshot

MAX_BODY = 64 * 1024
JSON = {"Content-Type": "application/json"}
SUPPRESSED = "suppressed@example.com"  # the world's suppression: GET and DELETE of it succeed


@pytest.fixture
async def raw_client(asgi_app) -> AsyncIterator[httpx.AsyncClient]:
    """Tenant acme's client that hands back the service's 500 answer instead of
    raising the exception behind it, so "never a 500" fails as a status, not a crash."""
    transport = httpx.ASGITransport(app=asgi_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://concord.test", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as c:
        yield c


@pytest.fixture
async def world(client):
    """One of everything in tenant acme, for the routes that name an id."""
    agent = await register(client, "sdr-1")
    peer = await register(client, "support-1")
    lease = await acquire(client, agent["id"], "alice@example.com")
    cons = await request_consensus(client, agent["id"])
    ok(await client.put(f"{C}/suppressions/{SUPPRESSED}", json={"reason": "manual"}), 201)
    return {"agent": agent, "peer": peer, "lease": lease, "cons": cons}


def every_v1_call(world: dict | None = None) -> list[tuple[str, str, dict | None]]:
    """(method, concrete path, valid JSON body or None) for every /v1 route of
    concord.server.http.routes.routes, with real ids from ``world`` or well-formed unknown ones.

    Through the ``client`` fixture, the calls that act as an agent go with the
    credential of the agent they name, when the client registered it (``world``);
    an unknown agent's go with the admin key, which is 403 on most of them."""
    ids = {
        "agentId": world["agent"]["id"] if world else unknown_id("agent"),
        "leaseId": world["lease"]["id"] if world else unknown_id("lease"),
        "consensusId": world["cons"]["id"] if world else unknown_id("cons"),
        "action": "refund",
        "entry": SUPPRESSED if world else "nobody@example.com",
    }
    agent = ids["agentId"]
    peer = world["peer"]["id"] if world else unknown_id("agent")
    bodies = {
        "/v1/agent/register": {"agentName": "sdr-1"},
        "/v1/agent/coordination/heartbeat": {"agentId": agent},
        "/v1/agent/coordination/lease": {"agentId": agent, "contactEmail": "alice@example.com"},
        "/v1/agent/coordination/lease/{leaseId}/renew": {"agentId": agent},
        "/v1/agent/coordination/send-check": {"agentId": agent, "contactEmail": "alice@example.com"},
        "/v1/agent/coordination/consensus": {"requestingAgentId": agent, "action": "x"},
        "/v1/agent/coordination/consensus/{consensusId}/vote": {"agentId": peer, "vote": "approve"},
        "/v1/agent/quotas": {"agents": 20_000},
        "/v1/agent/coordination/consensus-policies/{action}": {"rule": "two_thirds"},
        "/v1/agent/coordination/suppressions/{entry}": {"reason": "manual"},
        "/v1/agent/coordination/suppressions": {"suppressions": [{"entry": "nobody@example.com", "reason": "manual"}]},
    }
    calls = []
    for route in routes:
        if not route.path.startswith("/v1/"):
            continue
        path = re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], route.path)
        for method in sorted(route.methods - {"HEAD"}):
            body = bodies.get(route.path) if method in ("POST", "PUT") else None
            takes_body = method in ("POST", "PUT") and route.endpoint.body is not None  # rotating takes none
            assert body is not None or not takes_body, f"no body for {method} {route.path}"
            if route.path == "/v1/agent/coordination/leases":
                path = f"{path}?agentId={agent}"
            if route.path == "/v1/agent/coordination/events":
                path = f"{path}?limit=10"  # a JSON page; without after or limit it is a stream that never ends
            calls.append((method, path, body))
    return calls


def test_every_v1_route_is_exercised():
    """The tables below follow concord.server.http.routes.routes: a new route joins them by itself."""
    calls = every_v1_call()
    assert len(calls) == len([r for r in routes if r.path.startswith("/v1/")])
    assert {m for m, _, _ in calls} == {"GET", "POST", "PUT", "DELETE"}


# --- 401 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong-key",
        "Bearer acme",
        f"Basic {API_KEY}",
        f"Token {API_KEY}",
        API_KEY,
        f"Bearer{API_KEY}",
        f"Bearer {API_KEY}x",
        f"Bearer {API_KEY[:-1]}",
        # Agent credentials that are not of the shape Concord makes.
        "Bearer concord-agent.",
        "Bearer concord-agent.acme.agent_abc123.0123456789abcdef0123456789abcdef",
        f"Bearer concord-agent.acme.{unknown_id('agent')}.short",
        f"Bearer concord-agent.acme.{unknown_id('agent')}",
        f"Bearer concord-agent.ac me.{unknown_id('agent')}.0123456789abcdef0123456789abcdef",
    ],
    ids=repr,
)
async def test_missing_unknown_or_malformed_key_is_401_everywhere(asgi_app, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi_app), base_url="http://concord.test", headers=headers
    ) as anyone:
        for method, path, body in every_v1_call():
            response = await anyone.request(method, path, json=body)
            got = problem(response, 401, "unauthorized")
            assert set(got) == PROBLEM_MEMBERS, (method, path, got)
            assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)


def forged(agent_id: str) -> dict[str, str]:
    """An agent credential of the right shape for ``agent_id`` that Concord never made."""
    return bearer(f"concord-agent.{TENANT}.{agent_id}.{'F' * 43}")


def endpoint_of(method: str, path: str) -> Endpoint:
    path = path.split("?")[0]
    for route in routes:
        if method in route.methods and route.path_regex.fullmatch(path):
            return route.endpoint
    raise AssertionError(f"no route for {method} {path}")


async def test_a_forged_agent_credential_is_401_on_every_route_an_agent_may_call(asgi_app, redis_client, keys, world):
    """A credential of the right shape that is not the agent's current one, for the
    agent the call names (a real one) or, where it names none, for an unknown agent:
    401 on every call an agent credential may make (reads included), and nothing is
    written. (On the other routes its role is refused first: 403 insufficient_scope.)"""
    before = await snapshot(redis_client, f"{keys.prefix}:*")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi_app), base_url="http://concord.test") as c:
        for method, path, body in every_v1_call(world):
            if AGENT not in endpoint_of(method, path).roles:
                continue
            named = (body or {}).get("agentId") or (body or {}).get("requestingAgentId")
            for agent_id in {named or world["agent"]["id"], named or unknown_id("agent")}:
                response = await c.request(method, path, json=body, headers=forged(agent_id))
                got = problem(response, 401, "unauthorized")
                assert set(got) == PROBLEM_MEMBERS, (method, path, got)
                assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)
                assert agent_id in got["detail"] and "POST /v1/agent/register" in got["detail"], (method, path, got)
    assert await snapshot(redis_client, f"{keys.prefix}:*") == before


async def test_no_key_is_401_before_any_other_check(anonymous_client):
    """Authentication comes first: a caller without a key learns nothing about
    its body or its ids."""
    cases = [
        ("POST", f"{V1}/register", b"{not json", JSON),
        ("POST", f"{V1}/register", b'{"agentName": "x"}', {"Content-Type": "text/plain"}),
        ("POST", f"{V1}/register", b'{"bogus": 1}', JSON),
        ("POST", f"{V1}/register", b" " * (MAX_BODY + 1), JSON),
        ("GET", f"{V1}/agents/not-an-id", None, {}),
        ("GET", f"{V1}/agents?limit=0", None, {}),
        ("GET", f"{C}/consensus?tenantId={OTHER_TENANT}", None, {}),
    ]
    for method, path, content, headers in cases:
        problem(await anonymous_client.request(method, path, content=content, headers=headers), 401, "unauthorized")


async def test_bearer_scheme_is_case_insensitive(asgi_app):
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi_app),
        base_url="http://concord.test",
        headers={"Authorization": f"bearer {API_KEY}"},
    ) as c:
        assert ok(await c.get(f"{V1}/agents")) == {"agents": [], "nextCursor": None}


async def test_a_key_stored_in_redis_authenticates(asgi_app, redis_client, keys, client):
    """Keys made by `concord keys create` live in Redis (as SHA-256) and work like configured ones."""
    stored_key, _ = await Store(redis_client, keys).apikeys.create(TENANT)
    agent = await register(client, "sdr-1")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi_app),
        base_url="http://concord.test",
        headers={"Authorization": f"Bearer {stored_key}"},
    ) as c:
        assert ok(await c.get(f"{V1}/agents/{agent['id']}")) == ok(await client.get(f"{V1}/agents/{agent['id']}"))
    assert stored_key not in json.dumps(await redis_client.hgetall(keys.api_keys()))


# --- 403 tenant_mismatch ------------------------------------------------------


async def test_tenant_id_of_another_tenant_is_403_everywhere(client, redis_client, keys, world):
    before = {k: await redis_client.type(k) for k in await redis_client.keys(f"{keys.prefix}:*")}
    for method, path, body in every_v1_call(world):
        if body is not None:
            response = await client.request(method, path, json={**body, "tenantId": OTHER_TENANT})
        else:
            sep = "&" if "?" in path else "?"
            response = await client.request(method, f"{path}{sep}tenantId={OTHER_TENANT}")
        got = problem(response, 403, "tenant_mismatch")
        assert OTHER_TENANT in got["detail"], (method, path, got)
    # Nothing was done: the lease, the agent and the request are as they were.
    assert ok(await client.get(f"{C}/lease/{world['lease']['id']}")) == world["lease"]
    assert ok(await client.get(f"{V1}/agents/{world['agent']['id']}"))["agentName"] == "sdr-1"
    assert ok(await client.get(f"{C}/consensus/{world['cons']['id']}")) == world["cons"]
    after = {k: await redis_client.type(k) for k in await redis_client.keys(f"{keys.prefix}:*")}
    assert after == before


async def test_tenant_id_of_another_tenant_in_the_query_of_a_post_is_403(client, redis_client, keys, world):
    """A tenantId "in the body or query" that differs from the key's tenant is 403,
    on POSTs too; nothing is written."""
    for method, path, body in every_v1_call(world):
        if method != "POST":
            continue
        response = await client.post(f"{path}?tenantId={OTHER_TENANT}", json=body)
        problem(response, 403, "tenant_mismatch")


async def test_tenant_id_of_the_own_tenant_is_accepted_everywhere(client, world):
    expected = {"GET": 200, "POST": (200, 201), "PUT": (200, 201), "DELETE": 200}
    calls = every_v1_call(world)
    # Deleting comes last, the agent (and with it its leases) very last.
    calls.sort(key=lambda call: (call[0] == "DELETE", "/agents/" in call[1]))
    for method, path, body in calls:
        if body is not None:
            response = await client.request(method, path, json={**body, "tenantId": TENANT})
        else:
            sep = "&" if "?" in path else "?"
            response = await client.request(method, f"{path}{sep}tenantId={TENANT}")
        want = expected[method]
        assert response.status_code in (want if isinstance(want, tuple) else (want,)), (method, path, response.text)


@pytest.mark.parametrize("tenant_id", ["", "a b", "x" * 65, "acme{", "acme:x", 5, None], ids=repr)
async def test_malformed_tenant_id_is_422(client, tenant_id):
    if tenant_id is None:  # null means "not given"
        assert ok(await client.post(f"{V1}/register", json={"agentName": "a", "tenantId": None}), 201)
        return
    invalid(await client.post(f"{V1}/register", json={"agentName": "a", "tenantId": tenant_id}), "$.tenantId")
    if isinstance(tenant_id, str):
        invalid(await client.get(f"{V1}/agents", params={"tenantId": tenant_id}), "$.tenantId")


# --- 400 malformed_json ---------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"   ",
        b'{"agentName": "sdr-1"',
        b'{"agentName": "sdr-1",}',
        b"{agentName: 'sdr-1'}",
        b'{"agentName": "sdr-1"} {"agentName": "x"}',
        b"\xff\xfe{}",
        b'{"agentName": "sdr-1"}\x00',
        b"nul",
    ],
    ids=repr,
)
async def test_malformed_json_is_400(raw_client, content):
    body = problem(await raw_client.post(f"{V1}/register", content=content, headers=JSON), 400, "malformed_json")
    assert set(body) == PROBLEM_MEMBERS
    assert ok(await raw_client.get(f"{V1}/agents"))["agents"] == []


@pytest.mark.parametrize(
    "content",
    [b'{"agentName": "\xff"}', b'{"agentName": "sdr-1", "metadata": {"note": "caf\xe9"}}', b'{"agentName":"a\xc3"}'],
    ids=repr,
)
async def test_non_utf8_bytes_in_a_string_are_400(raw_client, content):
    """Invalid UTF-8 inside a JSON string is malformed JSON, not a 500."""
    response = await raw_client.post(f"{V1}/register", content=content, headers=JSON)
    problem(response, 400, "malformed_json")


async def test_a_deeply_nested_body_is_refused_not_a_500(raw_client):
    """Metadata nested some thousands deep (well under 64 KiB) is refused as
    malformed JSON, not a 500."""
    depth = 20_000
    content = b'{"agentName": "deep", "metadata": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
    assert len(content) < MAX_BODY
    response = await raw_client.post(f"{V1}/register", content=content, headers=JSON)
    problem(response, 400, "malformed_json")


async def test_a_moderately_nested_metadata_is_fine(client):
    metadata = {"a": [[[[{"b": [1, {"c": None}]}]]]]}
    assert (await register(client, "nested", metadata=metadata))["metadata"] == metadata


@pytest.mark.parametrize(
    "content, field",
    [
        (b"null", "$"),
        (b"[]", "$"),
        (b'[{"agentName": "sdr-1"}]', "$"),
        (b'"sdr-1"', "$"),
        (b"42", "$"),
        (b'{"agentName": "sdr-1", "metadata": []}', "$.metadata"),
        (b'{"agentName": "sdr-1", "metadata": [{"a": 1}]}', "$.metadata"),
        (b'{"agentName": {"first": "sdr"}}', "$.agentName"),
        (b'{"agentName": "a\\u0000b"}', "$.agentName"),
        (b'{"agentName": "\\u0000"}', "$.agentName"),
    ],
    ids=repr,
)
async def test_valid_json_of_the_wrong_shape_is_422(client, content, field):
    invalid(await client.post(f"{V1}/register", content=content, headers=JSON), field)


# --- 415 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "json",
        "application/jsonp",
        "text/json",
    ],
    ids=repr,
)
async def test_body_that_is_not_declared_json_is_415(client, world, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    for method, path, body in every_v1_call(world):
        if body is None:
            continue
        response = await client.request(method, path, content=json.dumps(body).encode(), headers=headers)
        got = problem(response, 415, "unsupported_media_type")
        assert (content_type.split(";")[0] if content_type else "no Content-Type") in got["detail"]


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"],
)
async def test_json_media_types_are_accepted(client, content_type):
    response = await client.post(
        f"{V1}/register", content=b'{"agentName": "typed"}', headers={"Content-Type": content_type}
    )
    assert ok(response, 201)["agentName"] == "typed"


# --- 413 ----------------------------------------------------------------------


def padded(size: int) -> bytes:
    """A valid register body of exactly ``size`` bytes (JSON allows trailing whitespace)."""
    content = b'{"agentName": "padded"}'
    return content + b" " * (size - len(content))


async def test_a_body_of_64_kib_is_accepted_and_one_byte_more_is_413(client):
    assert len(padded(MAX_BODY)) == MAX_BODY
    assert ok(await client.post(f"{V1}/register", content=padded(MAX_BODY), headers=JSON), 201)["agentName"] == "padded"

    body = problem(
        await client.post(f"{V1}/register", content=padded(MAX_BODY + 1), headers=JSON), 413, "payload_too_large"
    )
    assert str(MAX_BODY) in body["detail"]
    assert set(body) == PROBLEM_MEMBERS


async def test_a_streamed_body_over_64_kib_is_413(client):
    """Without a Content-Length (chunked), the limit holds while reading."""

    async def chunks(total: int):
        content = padded(total)
        for start in range(0, total, 4096):
            yield content[start : start + 4096]

    response = await client.post(f"{V1}/register", content=chunks(MAX_BODY + 1), headers=JSON)
    assert "content-length" not in response.request.headers
    problem(response, 413, "payload_too_large")
    response = await client.post(f"{V1}/register", content=chunks(MAX_BODY), headers=JSON)
    assert ok(response, 201)["agentName"] == "padded"


async def test_413_on_every_route_with_a_body(client, world):
    for method, path, body in every_v1_call(world):
        if body is None:
            continue
        content = json.dumps(body).encode()
        content += b" " * (MAX_BODY + 1 - len(content))
        problem(await client.request(method, path, content=content, headers=JSON), 413, "payload_too_large")


async def test_a_huge_metadata_inside_64_kib_is_422_not_413(client):
    content = json.dumps({"agentName": "big", "metadata": {"p": "x" * 60_000}}).encode()
    assert len(content) <= MAX_BODY
    invalid(await client.post(f"{V1}/register", content=content, headers=JSON), "$.metadata")


# --- 422: unknown fields and wrong types ----------------------------------------


async def test_unknown_fields_are_422_naming_the_field_on_every_route(client, world):
    for method, path, body in every_v1_call(world):
        if body is not None:
            response = await client.request(method, path, json={**body, "agent_name": "x"})
            got = invalid(response, "$.agent_name")
        else:
            sep = "&" if "?" in path else "?"
            got = invalid(await client.request(method, f"{path}{sep}verbose=1"), "$.verbose")
        assert "unknown" in got["detail"] and "tenantId" in got["detail"], (method, path, got)  # and what is known


@pytest.mark.parametrize(
    "path, body, field",
    [
        (f"{V1}/register", {"agentName": "a", "metadata": {"ok": 1}, "Metadata": {}}, "$.Metadata"),
        (f"{V1}/register", {"agentName": "a", "agentname": "b"}, "$.agentname"),
        (f"{C}/heartbeat", {"agentId": "AGENT", "ttl": 5}, "$.ttl"),
        (f"{C}/lease", {"agentId": "AGENT", "contactEmail": "a@example.com", "duration": 5}, "$.duration"),
        (f"{C}/lease", {"agentId": "AGENT", "contactEmail": "a@example.com", "contact_email": "x"}, "$.contact_email"),
        (f"{C}/send-check", {"agentId": "AGENT", "contactEmail": "a@example.com", "token": 5}, "$.token"),
        (f"{C}/consensus", {"requestingAgentId": "AGENT", "action": "x", "timeout": 5}, "$.timeout"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_unknown_field_detail_names_it(client, path, body, field):
    agent = await register(client, "named")
    body = {k: (agent["id"] if v == "AGENT" else v) for k, v in body.items()}
    got = invalid(await client.post(path, json=body), field)
    assert field.removeprefix("$.") in got["detail"]


@pytest.mark.parametrize(
    "path, body, field",
    [
        (f"{V1}/register", {"agentName": 1}, "$.agentName"),
        (f"{V1}/register", {"agentName": True}, "$.agentName"),
        (f"{V1}/register", {"agentName": "a", "agentRole": ["sdr"]}, "$.agentRole"),
        (f"{V1}/register", {"agentName": "a", "metadata": "{}"}, "$.metadata"),
        (f"{C}/heartbeat", {"agentId": ["AGENT"]}, "$.agentId"),
        (f"{C}/heartbeat", {"agentId": {"id": "AGENT"}}, "$.agentId"),
        (f"{C}/lease", {"agentId": "AGENT", "contactEmail": {"email": "a@example.com"}}, "$.contactEmail"),
        (
            f"{C}/lease",
            {"agentId": "AGENT", "contactEmail": "a@example.com", "durationMinutes": "5"},
            "$.durationMinutes",
        ),
        (
            f"{C}/lease",
            {"agentId": "AGENT", "contactEmail": "a@example.com", "durationMinutes": 1e3},
            "$.durationMinutes",
        ),
        (
            f"{C}/lease",
            {"agentId": "AGENT", "contactEmail": "a@example.com", "durationMinutes": 2**64},
            "$.durationMinutes",
        ),
        (
            f"{C}/send-check",
            {"agentId": "AGENT", "contactEmail": "a@example.com", "fencingToken": "123"},
            "$.fencingToken",
        ),
        (f"{C}/consensus", {"requestingAgentId": "AGENT", "action": ["x"]}, "$.action"),
        (
            f"{C}/consensus",
            {"requestingAgentId": "AGENT", "action": "x", "timeoutSeconds": None, "reason": 5},
            "$.reason",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_wrong_types_are_422_not_coerced(client, path, body, field):
    agent = await register(client, "typed")
    body = {
        k: (
            [agent["id"]]
            if v == ["AGENT"]
            else {"id": agent["id"]}
            if v == {"id": "AGENT"}
            else agent["id"]
            if v == "AGENT"
            else v
        )
        for k, v in body.items()
    }
    # Sent as the agent: an agentId that is not a string names no credential to pick.
    headers = bearer(credential_of(client, agent["id"])) if path.startswith(C) else {}
    got = invalid(await client.post(path, json=body, headers=headers), field)
    assert "a whole number" in got["detail"] or "got " in got["detail"], got  # the rule, or what came instead


async def test_vote_and_renew_bodies_are_typed_too(client, world):
    invalid(
        await client.post(
            f"{C}/consensus/{world['cons']['id']}/vote", json={"agentId": world["peer"]["id"], "vote": 1}
        ),
        "$.vote",
    )
    invalid(
        await client.post(
            f"{C}/lease/{world['lease']['id']}/renew", json={"agentId": world["agent"]["id"], "durationSeconds": [60]}
        ),
        "$.durationSeconds",
    )
    holder = bearer(credential_of(client, world["agent"]["id"]))
    invalid(await client.post(f"{C}/lease/{world['lease']['id']}/renew", json=[], headers=holder), "$")


# --- 404 and 405 ----------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/"),
        ("GET", "/v1"),
        ("GET", "/v1/agent"),
        ("GET", "/v1/agent/nope"),
        ("POST", "/v1/agent/registers"),
        ("GET", f"{V1}/agents/{unknown_id('agent')}/leases"),
        ("POST", f"{C}/leases/renew"),
        ("GET", "/v2/agent/agents"),
        ("GET", "/V1/agent/agents"),
        ("GET", "/healthz/deep"),
    ],
)
async def test_unknown_routes_are_404_not_found(client, anonymous_client, method, path):
    for c in (client, anonymous_client):
        body = problem(await c.request(method, path), 404, "not_found")
        assert set(body) == PROBLEM_MEMBERS


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", f"{V1}/register"),
        ("PUT", f"{V1}/register"),
        ("POST", f"{V1}/agents"),
        ("PUT", f"{V1}/agents/{unknown_id('agent')}"),
        ("PATCH", f"{V1}/agents/{unknown_id('agent')}"),
        ("GET", f"{C}/heartbeat"),
        ("GET", f"{C}/lease"),
        ("PUT", f"{C}/lease/{unknown_id('lease')}"),
        ("GET", f"{C}/lease/{unknown_id('lease')}/renew"),
        ("DELETE", f"{C}/leases"),
        ("GET", f"{C}/send-check"),
        ("DELETE", f"{C}/consensus"),
        ("DELETE", f"{C}/consensus/{unknown_id('cons')}"),
        ("GET", f"{C}/consensus/{unknown_id('cons')}/vote"),
        ("POST", "/healthz"),
        ("DELETE", "/readyz"),
    ],
)
async def test_wrong_methods_are_405(client, method, path):
    response = await client.request(method, path)
    body = problem(response, 405, "method_not_allowed")
    assert method in body["detail"]
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed and method not in allowed, response.headers


@pytest.mark.parametrize(
    "bad_id",
    [
        "x",
        "123",
        "agent_",
        "lease_",
        "cons_",
        unknown_id("agent").upper(),
        unknown_id("lease") + "0",
        "%20",
        "..",
        "a" * 500,
        "%00",
        "lease_00000000-0000-0000-0000-00000000000g",
    ],
    ids=lambda v: v[:20],
)
async def test_malformed_path_ids_get_the_resources_404(client, world, bad_id):
    agent, peer = world["agent"]["id"], world["peer"]["id"]
    cases = [
        ("GET", f"{V1}/agents/{bad_id}", None, "agent_not_found"),
        ("DELETE", f"{V1}/agents/{bad_id}", None, "agent_not_found"),
        ("GET", f"{C}/lease/{bad_id}", None, "lease_not_found"),
        ("DELETE", f"{C}/lease/{bad_id}", None, "lease_not_found"),
        ("POST", f"{C}/lease/{bad_id}/renew", {"agentId": agent}, "lease_not_found"),
        ("GET", f"{C}/consensus/{bad_id}", None, "consensus_not_found"),
        ("POST", f"{C}/consensus/{bad_id}/vote", {"agentId": peer, "vote": "approve"}, "consensus_not_found"),
    ]
    for method, path, body, code in cases:
        response = await client.request(method, path, json=body)
        if bad_id == "..":  # normalized away by the URL: another route
            assert response.status_code in (404, 405), response.text
            continue
        problem(response, 404, code)
    # The real ones are untouched.
    assert ok(await client.get(f"{C}/lease/{world['lease']['id']}")) == world["lease"]


async def test_ids_of_another_kind_are_404(client, world):
    problem(await client.get(f"{V1}/agents/{world['lease']['id']}"), 404, "agent_not_found")
    problem(await client.get(f"{C}/lease/{world['agent']['id']}"), 404, "lease_not_found")
    problem(await client.get(f"{C}/consensus/{world['lease']['id']}"), 404, "consensus_not_found")


# --- operations -------------------------------------------------------------------


async def test_healthz_and_readyz_need_no_key(anonymous_client, client):
    for c in (anonymous_client, client):
        assert ok(await c.get("/healthz")) == {"status": "ok"}
        assert ok(await c.get("/readyz")) == {"status": "ready"}


# --- never a 500 ------------------------------------------------------------------


async def test_hostile_inputs_never_make_a_500(raw_client, client, world):
    """A sweep of hostile inputs over every route, sent with an agent's credential
    (which reaches the bodies of the agents' routes) and then with the admin key:
    each answer is a problem+json 4xx or a success, never a 5xx."""
    contents = [
        b"",
        b"{",
        b"[]",
        b"null",
        b"true",
        b'{"": 1}',
        b'{"agentId": null}',
        b'{"agentId": "' + b"a" * 10_000 + b'"}',
        b'{"agentName": "' + b"\\u0000" * 100 + b'"}',
        b'{"contactEmail": "' + b"x" * 60_000 + b'"}',
        b'{"metadata": {"a": 1e999}}',
        b'{"durationSeconds": 1e400}',
        b'{"fencingToken": 99999999999999999999999999999}',
        b'{"vote": "\\ud800"}',
        b'{"agentId": "agent_00000000-0000-0000-0000-000000000000", "contactEmail": "a@b.co", '
        b'"fencingToken": 9223372036854775807}',
    ]
    queries = [
        "",
        "?limit=",
        "?limit=99999999999999999999999",
        "?cursor=" + "A" * 600,
        "?cursor=%FF%FE",
        "?status=",
        "?agentId=",
        "?contactEmail=%00",
        "?tenantId=%00",
        "?cursor=MTox",
    ]
    seen = 0
    # The agent first: the admin key's sweep deregisters it.
    for auth in (bearer(credential_of(client, world["agent"]["id"])), bearer(API_KEY)):
        for method, path, _ in every_v1_call(world) + every_v1_call():
            if method == "POST":
                for content in contents:
                    response = await raw_client.post(path, content=content, headers={**JSON, **auth})
                    assert response.status_code < 500, (path, content[:60], response.text)
                    seen += 1
            else:
                base = path.split("?")[0]
                for query in queries:
                    if base.endswith("/events") and query == "":
                        query = "?limit=10"  # no after, no limit: a live stream, which has no end to wait for
                    response = await raw_client.request(method, base + query, headers=auth)
                    assert response.status_code < 500, (method, base + query, response.text)
                    if response.status_code >= 400:
                        assert response.headers["content-type"] == "application/problem+json"
                    seen += 1
    assert seen > 400
