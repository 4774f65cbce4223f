"""The first errors a newcomer meets say what to do next, in words.

An id that is not of the form ``<kind>_<uuid>`` is the 404 of an id that names
nothing, in the path, the body and the query, with the same code and the same
kind of detail as a well-formed unknown id. A refused value is answered with the
field's rule in words, never a regex or msgspec's own message; a body that is not
JSON is always 400, whatever field comes first; a trailing slash is a problem
naming the right path, never an empty redirect.
"""

from __future__ import annotations

import pytest

from tests.support.api import TENANT, V1, C, acquire, invalid, problem, register, request_consensus, unknown, unknown_id

# The product page's own example, and other shapes an agent might invent.
MALFORMED = ["agent_abc123", "sdr-agent", "AGENT_" + unknown_id("x")[2:], unknown_id("agent").upper()]


@pytest.mark.parametrize("agent_id", MALFORMED + [unknown_id("agent")])
async def test_an_agent_id_of_any_shape_that_names_nothing_is_404_in_a_body(client, agent_id):
    """heartbeat, lease, send-check, consensus and vote: malformed and unknown alike."""
    peer = await register(client, "peer")
    consensus = await request_consensus(client, peer["id"])
    calls = [
        (f"{C}/heartbeat", {"agentId": agent_id}),
        (f"{C}/lease", {"agentId": agent_id, "contactEmail": "alice@example.com"}),
        (f"{C}/consensus", {"requestingAgentId": agent_id, "action": "send_discount"}),
        (f"{C}/consensus/{consensus['id']}/vote", {"agentId": agent_id, "vote": "approve"}),
    ]
    for path, body in calls:
        got = unknown(await client.post(path, json=body), "agent", agent_id)
        assert "register it first with POST /v1/agent/register" in got["detail"], (path, got)
    # The send gate answers refusals as values: an id that names nothing, of any shape, is one.
    body = {"agentId": agent_id, "contactEmail": "alice@example.com"}
    response = await client.post(f"{C}/send-check", json=body)
    assert response.status_code == 200 and response.json() == {"allowed": False, "reason": "agent_not_found"}


async def test_the_product_pages_example_id_gets_the_register_hint(client):
    got = unknown(await client.post(f"{C}/heartbeat", json={"agentId": "agent_abc123"}), "agent", "agent_abc123")
    assert got["detail"] == (
        f"No agent agent_abc123 in tenant {TENANT}: register it first with POST /v1/agent/register"
    )


async def test_a_malformed_renewer_is_404_too(client):
    sdr = await register(client, "sdr")
    lease = await acquire(client, sdr["id"], "alice@example.com")
    unknown(
        await client.post(f"{C}/lease/{lease['id']}/renew", json={"agentId": "agent_abc123"}), "agent", "agent_abc123"
    )


@pytest.mark.parametrize(
    "path, kind, value",
    [
        (f"{V1}/agents/agent_abc123", "agent", "agent_abc123"),
        (f"{V1}/agents/{unknown_id('agent')}", "agent", None),
        (f"{C}/lease/lease_abc123", "lease", "lease_abc123"),
        (f"{C}/lease/{unknown_id('lease')}", "lease", None),
        (f"{C}/consensus/cons_abc123", "consensus", "cons_abc123"),
        (f"{C}/consensus/{unknown_id('cons')}", "consensus", None),
    ],
)
async def test_an_id_of_any_shape_that_names_nothing_is_404_in_the_path(client, path, kind, value):
    unknown(await client.get(path), kind, value or path.rsplit("/", 1)[1])


@pytest.mark.parametrize(
    "method, path, params",
    [
        ("GET", f"{C}/leases", {"agentId": "agent_abc123"}),
        ("GET", f"{C}/events", {"agentId": "agent_abc123", "after": "0"}),
    ],
)
async def test_a_malformed_agent_id_in_a_query_is_404(client, method, path, params):
    unknown(await client.request(method, path, params=params), "agent", "agent_abc123")


async def test_a_malformed_agent_id_releasing_a_lease_is_404(client):
    sdr = await register(client, "sdr")
    lease = await acquire(client, sdr["id"], "alice@example.com")
    unknown(await client.delete(f"{C}/lease/{lease['id']}", params={"agentId": "sdr"}), "agent", "sdr")


# --- rules in words ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"agentName": "bad name!"}, "$.agentName", "agentName: 1–128 of letters, digits, '.', '_' and '-'"),
        ({"agentName": "a" * 129}, "$.agentName", "agentName: 1–128 of letters, digits, '.', '_' and '-'"),
        ({"agentName": "ok", "agentRole": "tab\there"}, "$.agentRole", "agentRole: 1–64 characters, none of them a"),
        ({"agentName": "ok", "tenantId": "a/b"}, "$.tenantId", "tenantId: 1–64 of letters, digits, '_' and '-'"),
        ({"agentName": 7}, "$.agentName", "agentName: 1–128 of letters, digits, '.', '_' and '-', got a number"),
    ],
)
async def test_a_pattern_error_says_what_is_allowed_in_words(client, body, field, words):
    got = invalid(await client.post(f"{V1}/register", json=body), field)
    assert got["detail"].startswith(words), got


async def test_an_enum_error_lists_the_allowed_values(client):
    peer, voter = await register(client, "peer"), await register(client, "voter")
    consensus = await request_consensus(client, peer["id"])
    body = {"agentId": voter["id"], "vote": "maybe"}
    got = invalid(await client.post(f"{C}/consensus/{consensus['id']}/vote", json=body), "$.vote")
    assert got["detail"] == "vote: one of approve, reject"
    got = invalid(await client.get(f"{V1}/agents", params={"status": "asleep"}), "$.status")
    assert got["detail"] == "query parameter status: one of active, inactive"


async def test_a_number_out_of_bounds_says_the_bounds(client):
    sdr = await register(client, "sdr")
    body = {"agentId": sdr["id"], "contactEmail": "alice@example.com", "durationMinutes": 0}
    got = invalid(await client.post(f"{C}/lease", json=body), "$.durationMinutes")
    assert got["detail"] == "durationMinutes: a whole number from 1 to 1440"
    got = invalid(await client.get(f"{V1}/agents", params={"limit": "lots"}), "$.limit")
    assert got["detail"] == "query parameter limit: a whole number from 1 to 1000, got a string"


async def test_an_unknown_query_parameter_is_named_as_one(client):
    got = invalid(await client.get(f"{V1}/agents", params={"verbose": "1"}), "$.verbose")
    assert (
        got["detail"]
        == "query parameter verbose: unknown parameter; this endpoint takes status, limit, cursor, tenantId"
    )


async def test_an_unknown_body_field_lists_the_fields(client):
    got = invalid(await client.post(f"{V1}/register", json={"agentName": "a", "colour": "red"}), "$.colour")
    assert got["detail"] == (
        "colour: unknown field; the fields of this request are agentName, name, agentRole, role, metadata, tenantId"
    )


async def test_a_bad_address_says_what_an_address_is(client):
    sdr = await register(client, "sdr")
    got = invalid(
        await client.post(f"{C}/lease", json={"agentId": sdr["id"], "contactEmail": "alice"}), "$.contactEmail"
    )
    assert got["detail"] == "contactEmail: an email address, local@domain.tld in ASCII, at most 254 characters"


# --- bodies that are not JSON ------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"agentId": "x", "contactEmail": ',  # the example: a field that fails comes first
        b'{"agentId": "agent_abc123", "contactEmail": "alice@example.com"',  # cut before its brace
        b'{"agentName": "bad name!", ',
        b'{"agentName": 7',
        b'{"agentId": "agent_abc123"} trailing',
        b'{"vote": "maybe", "agentId": ',
    ],
)
async def test_a_truncated_or_unparseable_body_is_always_malformed_json(client, raw):
    for path in (f"{C}/lease", f"{V1}/register", f"{C}/heartbeat"):
        response = await client.post(path, content=raw, headers={"Content-Type": "application/json"})
        got = problem(response, 400, "malformed_json")
        assert got["detail"].startswith("The body is not valid JSON (") and "send one JSON object" in got["detail"]


# --- tenants and paths ----------------------------------------------------------------


async def test_tenant_mismatch_names_the_keys_own_tenant(client):
    got = problem(
        await client.post(f"{V1}/register", json={"agentName": "a", "tenantId": "globex"}), 403, "tenant_mismatch"
    )
    assert "'globex'" in got["detail"] and f"which is '{TENANT}'" in got["detail"], got


@pytest.mark.parametrize(
    "method, path",
    [("POST", f"{V1}/register/"), ("GET", f"{V1}/agents/"), ("GET", f"{C}/consensus/"), ("GET", "/healthz/")],
)
async def test_a_trailing_slash_is_a_problem_naming_the_path_never_a_redirect(client, method, path):
    response = await client.request(method, path, json={"agentName": "a"} if method == "POST" else None)
    got = problem(response, 404, "not_found")
    assert "location" not in response.headers
    assert got["detail"] == f"No endpoint {path}; the endpoint is {path.rstrip('/')}, without the trailing slash"


async def test_an_unknown_path_points_at_the_api_reference(client):
    got = problem(await client.get("/v1/agent/nope"), 404, "not_found")
    assert got["detail"] == "No endpoint /v1/agent/nope; the API reference is at GET /openapi.json"


async def test_a_wrong_method_says_which_it_takes(client):
    got = problem(await client.get(f"{V1}/register"), 405, "method_not_allowed")
    assert got["detail"] == "GET is not allowed on /v1/agent/register; it takes POST"
