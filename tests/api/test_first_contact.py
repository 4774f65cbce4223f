"""The first errors a newcomer meets say what to do next, in words.

An id that is not of the form ``<kind>_<uuid>`` is the 404 of an id that names
nothing, in the path, the body and the query, with the same code and the same
kind of detail as a well-formed unknown id. A refused value is answered with the
field's rule in words, never a regex or msgspec's own message; a body that is not
JSON is always 400, whatever field comes first; a trailing slash is a problem
naming the right path, never an empty redirect. The refusals of credentials say
what to do next: a credential no longer current (register or rotate again), one
that names another agent than the body (leave the id out), an API key on an
agent's own route (use the agent's credential, which registering answers).
"""

from __future__ import annotations

import pytest

from tests.conftest import API_KEY
from tests.support.api import (
    TENANT,
    V1,
    C,
    acquire,
    bearer,
    credential_of,
    invalid,
    problem,
    register,
    request_consensus,
    unknown,
    unknown_id,
    verdict,
)

# The product page's own example, and other shapes an agent might invent.
MALFORMED = ["agent_abc123", "sdr-agent", "AGENT_" + unknown_id("x")[2:], unknown_id("agent").upper()]


def agent_calls(agent_id: str, consensus_id: str) -> list[tuple[str, dict]]:
    """The bodies of an agent's own calls, naming ``agent_id``."""
    return [
        (f"{C}/heartbeat", {"agentId": agent_id}),
        (f"{C}/lease", {"agentId": agent_id, "contactEmail": "alice@example.com"}),
        (f"{C}/consensus", {"requestingAgentId": agent_id, "action": "send_discount"}),
        (f"{C}/consensus/{consensus_id}/vote", {"agentId": agent_id, "vote": "approve"}),
    ]


@pytest.mark.parametrize("agent_id", MALFORMED)
async def test_an_agent_id_of_any_shape_that_names_nothing_is_404_in_a_body(client, agent_id):
    """heartbeat, lease, consensus and vote, sent with a real agent's credential:
    an id of another shape names no agent, whatever the credential is."""
    peer = await register(client, "peer")
    consensus = await request_consensus(client, peer["id"])
    as_peer = bearer(credential_of(client, peer["id"]))
    for path, body in agent_calls(agent_id, consensus["id"]):
        got = unknown(await client.post(path, json=body, headers=as_peer), "agent", agent_id)
        assert "register it first with POST /v1/agent/register" in got["detail"], (path, got)


@pytest.mark.parametrize("agent_id", MALFORMED + [unknown_id("agent")])
async def test_the_send_gate_answers_an_agent_that_names_nothing_as_a_refusal(client, agent_id):
    """send-check with a key (an email pipeline's): an id that names nothing, of any
    shape, is a refusal answered as a value."""
    body = {"agentId": agent_id, "contactEmail": "alice@example.com"}
    response = await client.post(f"{C}/send-check", json=body)
    assert response.status_code == 200
    assert verdict(response.json(), "alice@example.com") == {"allowed": False, "reason": "agent_not_found"}


async def test_a_well_formed_unknown_agent_id_is_another_agent_than_the_credentials(client):
    """Well-formed, it could be an agent: with a real agent's credential it is not
    that agent's (403 agent_mismatch); with the admin key, an agent's own call is
    not the key's to make (403 insufficient_scope). Neither says whether it exists."""
    peer = await register(client, "peer")
    consensus = await request_consensus(client, peer["id"])
    agent_id = unknown_id("agent")
    for path, body in agent_calls(agent_id, consensus["id"]):
        got = problem(
            await client.post(path, json=body, headers=bearer(credential_of(client, peer["id"]))),
            403,
            "agent_mismatch",
            agentId=peer["id"],
        )
        assert agent_id in got["detail"] and "leave the agent id out" in got["detail"], (path, got)
        got = problem(await client.post(path, json=body), 403, "insufficient_scope", keyRole="admin")
        assert "POST /v1/agent/register answers it" in got["detail"], (path, got)


async def test_the_product_pages_example_id_gets_the_register_hint(client):
    sdr = await register(client, "sdr")
    response = await client.post(
        f"{C}/heartbeat", json={"agentId": "agent_abc123"}, headers=bearer(credential_of(client, sdr["id"]))
    )
    got = unknown(response, "agent", "agent_abc123")
    assert got["detail"] == (
        f"No agent agent_abc123 in tenant {TENANT}: register it first with POST /v1/agent/register"
    )


async def test_a_malformed_renewer_is_404_too(client):
    sdr = await register(client, "sdr")
    lease = await acquire(client, sdr["id"], "alice@example.com")
    response = await client.post(
        f"{C}/lease/{lease['id']}/renew",
        json={"agentId": "agent_abc123"},
        headers=bearer(credential_of(client, sdr["id"])),
    )
    unknown(response, "agent", "agent_abc123")


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
        "colour: unknown field; the fields of this request are agentName, name, agentRole, role, metadata, kind, "
        "tenantId"
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
    sdr = await register(client, "sdr")
    as_sdr = bearer(credential_of(client, sdr["id"]))  # the agent's own calls, as the agent
    for path, auth in ((f"{C}/lease", as_sdr), (f"{V1}/register", {}), (f"{C}/heartbeat", as_sdr)):
        response = await client.post(path, content=raw, headers={"Content-Type": "application/json", **auth})
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


# --- credentials -------------------------------------------------------------------------


async def test_a_rotated_credential_says_how_to_get_a_new_one(client):
    sdr = await register(client, "sdr")
    old = credential_of(client, sdr["id"])
    rotated = await client.post(f"{V1}/agents/{sdr['id']}/credentials")
    assert rotated.status_code == 200, rotated.text
    got = problem(await client.post(f"{C}/heartbeat", json={}, headers=bearer(old)), 401, "unauthorized")
    assert got["detail"] == (
        f"This credential is not the current one of agent {sdr['id']} in tenant {TENANT}: it was rotated, "
        "or the agent was deregistered. Get a new one by registering the agent again (POST /v1/agent/register) "
        "or by rotating its credential, with an admin or enroll key"
    )
    # A read says the same.
    again = problem(await client.get(f"{V1}/agents", headers=bearer(old)), 401, "unauthorized")
    assert again["detail"] == got["detail"]


async def test_another_agents_id_in_the_body_says_to_leave_it_out(client):
    sdr, peer = await register(client, "sdr"), await register(client, "peer")
    response = await client.post(
        f"{C}/heartbeat", json={"agentId": peer["id"]}, headers=bearer(credential_of(client, sdr["id"]))
    )
    got = problem(response, 403, "agent_mismatch", agentId=sdr["id"])
    assert got["detail"] == (
        f"This credential is agent {sdr['id']}'s and acts only as {sdr['id']}, not as {peer['id']}: "
        "leave the agent id out, or use that agent's own credential"
    )


async def test_an_admin_key_on_heartbeat_says_to_use_the_agents_credential(client):
    sdr = await register(client, "sdr")
    response = await client.post(f"{C}/heartbeat", json={"agentId": sdr["id"]}, headers=bearer(API_KEY))
    got = problem(response, 403, "insufficient_scope", keyRole="admin")
    assert got["detail"] == (
        "API key cfg-1 (role admin) may not call POST /v1/agent/coordination/heartbeat: an admin key manages "
        "agents and keys, reads everything, deregisters agents and force-releases leases, but never acts as an "
        "agent: the agent's own credential does (POST /v1/agent/register answers it). Use a credential of a role "
        "that may (docs/api.md, Roles)"
    )
