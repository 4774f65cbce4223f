"""GET /openapi.json: an OpenAPI 3.1 document generated from the endpoint
declarations (concord.server.http.endpoint.ENDPOINTS) and the msgspec structs that decode requests
and encode answers, checked against the code from both sides.

* It is valid: the OpenAPI 3.1 schema (the OAI's, as shipped by schemathesis)
  accepts it, every component schema is valid JSON Schema 2020-12 (meta-schema),
  every ``$ref`` resolves and every schema compiles.
* It is complete: every route of concord.server.http.routes.routes with its method, every path
  and query parameter and request body of every declaration, every success
  answer, and every error code under its status.
* It cannot drift: its component schemas are exactly msgspec's schemas of the
  structs.
* It is true: real answers of every documented success kind, made through the
  API, fit the documented schema of their status (also with unknown members
  forbidden), and the problem+json of every error code fits Problem.

Every API test runs on fakeredis and on a real Redis (the redis_client fixture).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import fakeredis
import fakeredis.aioredis
import httpx
import jsonschema_rs
import msgspec
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31

from concord import protocol as s
from concord.protocol import ERRORS, ID_PATTERNS
from concord.server.app import create_app
from concord.server.http.decoding import PATH_IDS, PATH_NAMES
from concord.server.http.endpoint import ENDPOINTS, Endpoint
from concord.server.http.openapi import document
from concord.server.http.routes import routes
from concord.server.settings import Settings, parse_api_keys, parse_rate_limits
from concord.server.store.agents import Agents
from concord.server.store.keys import Keys
from tests.conftest import API_KEY, OTHER_API_KEY, running
from tests.support.api import OTHER_TENANT, TENANT, V1, C, Fleet, bearer, make_inactive, unknown_id, verdict

REF = "#/components/schemas/{name}"
PROBLEM_JSON = "application/problem+json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
JSON = {"Content-Type": "application/json"}
# Headers every answer may carry without the document naming them.
STANDARD_HEADERS = {"content-type", "content-length"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    """The document as the service builds it (the HTTP tests check it is what it serves)."""
    return json.loads(document(tuple(ENDPOINTS)))


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def declared(doc: dict[str, Any], e: Endpoint) -> dict[str, Any]:
    return doc["paths"][e.path][e.method.lower()]


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """A 2020-12 validator for a schema of the document; its ``$ref``s resolve in the document."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": doc["components"]})


def closed(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with every object schema that lists its properties closed to
    others: an answer with a member the document does not name fails against it."""
    strict = copy.deepcopy(doc)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(strict["components"])
    return strict


def concrete(template: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], template)


# --- served, and valid ----------------------------------------------------------------


async def test_openapi_json_is_served_without_a_key(anonymous_client, client):
    response = await anonymous_client.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    served = response.json()
    assert served["openapi"].startswith("3.1."), served["openapi"]
    assert served["info"]["title"] == "Concord" and served["info"]["version"]
    assert served == json.loads(document(tuple(ENDPOINTS)))
    # A key changes nothing, and the document is the same each time.
    assert (await client.get("/openapi.json")).content == response.content


def test_document_is_valid_openapi_3_1(doc):
    """The OAI's OpenAPI 3.1 schema (2022-10-07, bundled with schemathesis) accepts it."""
    errors = [
        f"{error.instance_path}: {error.message}"
        for error in jsonschema_rs.Draft202012Validator(OPENAPI_31).iter_errors(doc)
    ]
    assert not errors, errors
    # ... and it is a real check: a broken document is refused.
    broken = copy.deepcopy(doc)
    broken["paths"]["/healthz"]["get"]["responses"]["200"].pop("description")
    assert not jsonschema_rs.Draft202012Validator(OPENAPI_31).is_valid(broken)


def test_component_schemas_are_valid_json_schema_2020_12(doc):
    for schema in doc["components"]["schemas"].values():
        jsonschema_rs.meta.validate({"$schema": DIALECT, **schema})
        validator(doc, schema)  # compiles: every pattern is a valid regex, every $ref resolves
    with pytest.raises(jsonschema_rs.ValidationError):
        jsonschema_rs.meta.validate({"$schema": DIALECT, "type": "strin"})


def test_every_ref_resolves_and_every_schema_compiles(doc):
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert isinstance(resolve(doc, ref), dict), ref
    for _, _, operation in operations(doc):
        for parameter in operation["parameters"]:
            validator(doc, parameter["schema"])
        for answer in operation["responses"].values():
            for media in answer.get("content", {}).values():
                validator(doc, media["schema"])


def test_operation_ids_are_unique_and_path_templates_have_their_parameters(doc):
    ids = [operation["operationId"] for _, _, operation in operations(doc)]
    assert len(ids) == len(set(ids)), ids
    for method, path, operation in operations(doc):
        in_path = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
        assert in_path == set(re.findall(r"\{(\w+)\}", path)), (method, path)
        names = [(p["name"], p["in"]) for p in operation["parameters"]]
        assert len(names) == len(set(names)), (method, path, names)


# --- complete -----------------------------------------------------------------------------


def test_every_route_is_documented_with_its_method(doc):
    """Both ways: each route and method of concord.server.http.routes.routes is an operation, and
    each operation is served. (Starlette also answers HEAD for every GET route; as
    the GET without a body, it is left out of the document.)"""
    served = {(method, route.path) for route in routes for method in route.methods - {"HEAD"}}
    documented = {(method, path) for method, path, _ in operations(doc)}
    assert served == documented
    assert len(served) == len(ENDPOINTS)


def test_every_parameter_and_body_of_each_declaration_is_documented(doc):
    for e in ENDPOINTS:
        operation = declared(doc, e)
        assert operation["operationId"] == e.name and operation["summary"] == e.summary
        assert operation["security"] == ([{"apiKey": []}] if e.authenticated else [])
        parameters = {(p["name"], p["in"]): p for p in operation["parameters"]}
        expected = {(name, "path") for name in e.ids}
        for name in e.ids:
            parameter = parameters[(name, "path")]
            assert parameter["required"] is True
            if name in PATH_NAMES:
                assert parameter["schema"] == msgspec.json.schema(PATH_NAMES[name])
            else:
                assert parameter["schema"] == {"type": "string", "pattern": f"^{ID_PATTERNS[PATH_IDS[name]].pattern}$"}
        if e.query is not None:
            for f in msgspec.structs.fields(e.query):
                expected.add((f.encode_name, "query"))
                parameter = parameters[(f.encode_name, "query")]
                assert parameter["required"] is f.required, (e.name, f.encode_name)
                query_schema = resolve(doc, REF.format(name=e.query.__name__))
                assert parameter["schema"] == query_schema["properties"][f.encode_name]
        expected |= {(name, "header") for name in e.request_headers}
        assert set(parameters) == expected, (e.method, e.path)
        if e.body is None:
            assert "requestBody" not in operation, (e.method, e.path)
        else:
            assert operation["requestBody"] == {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": REF.format(name=e.body.__name__)}}},
            }, (e.method, e.path)


def test_every_success_answer_is_documented_with_its_struct(doc):
    for e in ENDPOINTS:
        responses = declared(doc, e)["responses"]
        for status, kind in e.answers.items():
            content = responses[str(status)]["content"]
            assert set(content) == {"application/json"} | ({"text/event-stream"} if e.event_stream else set()), (
                e.name,
                status,
            )
            want = {"type": "object"} if kind == dict[str, Any] else {"$ref": REF.format(name=kind.__name__)}
            assert content["application/json"]["schema"] == want, (e.name, status)


def test_every_declared_error_code_is_under_its_status(doc):
    """Each code of Endpoint.errors is named in the description of the answer of its
    HTTP status, a problem+json of schema Problem; and no other status is documented."""
    for e in ENDPOINTS:
        responses = declared(doc, e)["responses"]
        statuses = {str(status) for status in e.answers}
        for code in e.errors:
            status = str(ERRORS[code][0])
            statuses.add(status)
            answer = responses.get(status)
            assert answer is not None, f"{e.method} {e.path}: {code} has no {status} answer"
            assert f"`{code}`" in answer["description"], (e.method, e.path, code, answer["description"])
            assert answer["content"] == {PROBLEM_JSON: {"schema": {"$ref": REF.format(name="Problem")}}}
        assert set(responses) == statuses, (e.method, e.path)
        for status, header in (("401", "WWW-Authenticate"), ("429", "Retry-After"), ("503", "Retry-After")):
            if status in responses:
                assert header in responses[status]["headers"], (e.method, e.path, status)


def test_problem_lists_every_code_and_forbids_unknown_members(doc):
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["properties"]["code"]["enum"]) == set(ERRORS)
    assert problem["additionalProperties"] is False
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}


# --- cannot drift -------------------------------------------------------------------------


def test_component_schemas_are_exactly_msgspecs_schemas_of_the_structs(doc):
    """Each struct a declaration names, alone through msgspec.json.schema_components,
    gives the very schemas the document holds, and the document holds no others."""
    kinds = {s.Problem}
    for e in ENDPOINTS:
        kinds.update(k for k in (e.body, e.query, *e.answers.values()) if k is not None and k != dict[str, Any])
    expected: dict[str, Any] = {}
    for kind in kinds:
        (top,), components = msgspec.json.schema_components([kind], ref_template=REF)
        assert top == {"$ref": REF.format(name=kind.__name__)}
        for name, schema in components.items():
            assert expected.setdefault(name, schema) == schema, f"two structs named {name}"
    assert doc["components"]["schemas"] == json.loads(json.dumps(expected))
    # The request structs are what the endpoints decode with.
    for e in ENDPOINTS:
        if e.body is not None:
            assert e.decoder is not None and e.decoder.type is e.body


# --- true: real answers fit the document ----------------------------------------------------


class Conformance:
    """Sends requests, finds the documented answer of each, checks the body against
    its schema (as documented, and closed to undocumented members) and records what
    was seen."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.strict = closed(doc)
        self.seen: set[tuple[str, str, int]] = set()
        self.codes: set[str] = set()
        self.undocumented_headers: list[tuple[str, str, int, str]] = []

    def check(self, method: str, template: str | None, response: httpx.Response) -> Any:
        status = response.status_code
        assert status < 500 or response.headers["content-type"] == PROBLEM_JSON, response.text
        assert "Traceback" not in response.text, response.text
        body = response.json()
        if status >= 400:
            assert response.headers["content-type"] == PROBLEM_JSON, (method, template, response.headers)
            problem = msgspec.json.decode(response.content, type=s.Problem)  # forbids unknown members
            assert problem.type == f"urn:concord:problem:{problem.code}" and problem.status == status
            assert ERRORS[problem.code][0] == status
            self.codes.add(problem.code)
            schema: dict[str, Any] = {"$ref": REF.format(name="Problem")}
            if template is not None:
                answer = self._answer(method, template, status)
                assert f"`{problem.code}`" in answer["description"], (method, template, problem.code)
                assert set(answer["content"]) == {PROBLEM_JSON}
                schema = answer["content"][PROBLEM_JSON]["schema"]
        else:
            answer = self._answer(method, template, status)
            media = response.headers["content-type"]
            assert media in answer["content"], (method, template, status, media)
            schema = answer["content"][media]["schema"]
        for version in (self.doc, self.strict):
            errors = [f"{e.instance_path}: {e.message}" for e in validator(version, schema).iter_errors(body)]
            assert not errors, (method, template, status, errors, body)
        if template is not None:
            self.seen.add((method, template, status))
            documented = {name.lower() for name in self._answer(method, template, status).get("headers", {})}
            for name in response.headers:
                if name.lower() not in STANDARD_HEADERS | documented:
                    self.undocumented_headers.append((method, template, status, name))
        return body

    def _answer(self, method: str, template: str | None, status: int) -> dict[str, Any]:
        assert template is not None
        responses = self.doc["paths"][template][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {template} answered {status}, which it does not document"
        return responses[str(status)]

    async def call(
        self,
        http: httpx.AsyncClient,
        method: str,
        template: str | None,
        ids: dict[str, str] | None = None,
        status: int | None = None,
        **kwargs: Any,
    ) -> Any:
        path = concrete(template, ids or {}) if template is not None else kwargs.pop("path")
        response = await http.request(method, path + kwargs.pop("query", ""), **kwargs)
        if status is not None:
            assert response.status_code == status, (method, path, response.status_code, response.text)
        return self.check(method, template, response)


async def exercise_every_success_answer(client: httpx.AsyncClient, conformance: Conformance) -> dict[str, Any]:
    """Create real data through the API, in every documented success answer."""
    call = conformance.call
    await call(client, "GET", "/healthz", status=200)
    await call(client, "GET", "/readyz", status=200)
    await call(client, "GET", "/openapi.json", status=200)

    register = f"{V1}/register"
    sdr = await call(client, "POST", register, status=201, json={"agentName": "sdr-1", "metadata": {"team": ["a", 1]}})
    await call(client, "POST", register, status=200, json={"agentName": "sdr-1", "agentRole": "sdr"})
    peer = await call(client, "POST", register, status=201, json={"name": "support-1", "role": "support"})
    third = await call(client, "POST", register, status=201, json={"agentName": "billing-1"})
    a, b = {"agentId": sdr["id"]}, {"agentId": peer["id"]}
    await call(client, "GET", f"{V1}/agents", status=200, query="?limit=1")
    await call(client, "GET", f"{V1}/agents/{{agentId}}", a, status=200)
    await call(client, "POST", f"{C}/heartbeat", status=200, json=a)
    rotated = await call(client, "POST", f"{V1}/agents/{{agentId}}/credentials", a, status=200)
    assert rotated["agentId"] == sdr["id"] and rotated["credential"] != sdr["credential"]

    lease_path = f"{C}/lease"
    lease = await call(
        client,
        "POST",
        lease_path,
        status=201,
        json={**a, "contactEmail": " Alice@Example.com", "intent": "outbound", "durationMinutes": 10},
    )
    again = await call(client, "POST", lease_path, status=200, json={**a, "contactEmail": "alice@example.com"})
    assert again["id"] == lease["id"]
    ids = {**a, "leaseId": lease["id"]}
    await call(client, "POST", f"{lease_path}/{{leaseId}}/renew", ids, status=200, json={**a, "durationSeconds": 600})
    await call(client, "GET", f"{lease_path}/{{leaseId}}", ids, status=200)
    await call(client, "GET", f"{C}/leases", status=200, query=f"?agentId={sdr['id']}&contactEmail=alice@example.com")

    send_check = f"{C}/send-check"
    allowed = await call(
        client,
        "POST",
        send_check,
        status=200,
        json={**a, "contactEmail": "alice@example.com", "fencingToken": lease["fencingToken"]},
    )
    assert verdict(allowed, "alice@example.com") == {"allowed": True}
    conflict = await call(client, "POST", send_check, status=200, json={**b, "contactEmail": "alice@example.com"})
    assert conflict["reason"] == "lease_conflict" and conflict["leaseHolder"]["agentId"] == sdr["id"]
    stale = await call(
        client, "POST", send_check, status=200, json={**b, "contactEmail": "alice@example.com", "fencingToken": 1}
    )
    assert stale["reason"] == "stale_fencing_token"

    consensus_path = f"{C}/consensus"
    request = {
        "requestingAgentId": sdr["id"],
        "action": "send-discount",
        "contactEmail": "alice@example.com",
        "reason": "asked twice",
        "timeoutMinutes": 30,
    }
    cons = await call(client, "POST", consensus_path, status=201, json=request, headers={"Idempotency-Key": "k-1"})
    replay = await call(client, "POST", consensus_path, status=201, json=request, headers={"Idempotency-Key": "k-1"})
    assert replay["id"] == cons["id"]
    c = {"consensusId": cons["id"]}
    voted = await call(
        client,
        "POST",
        f"{consensus_path}/{{consensusId}}/vote",
        c,
        status=200,
        json={**b, "vote": "approve", "reason": "fine"},
    )
    assert voted["votes"][0]["agentId"] == peer["id"]
    await call(client, "GET", f"{consensus_path}/{{consensusId}}", c, status=200)
    await call(client, "GET", consensus_path, status=200, query="?status=pending")

    await call(client, "DELETE", f"{lease_path}/{{leaseId}}", ids, status=200, query=f"?agentId={sdr['id']}")
    forced = await call(client, "POST", lease_path, status=201, json={**b, "contactEmail": "bob@example.com"})
    await call(client, "DELETE", f"{lease_path}/{{leaseId}}", {"leaseId": forced["id"]}, status=200)  # an admin's
    await call(client, "DELETE", f"{V1}/agents/{{agentId}}", {"agentId": third["id"]}, status=200)
    for method in ("GET", "PUT", "DELETE"):
        await call(client, method, f"{V1}/quotas", status=200, json={"streams": 20} if method == "PUT" else None)
    policy = f"{C}/consensus-policies/{{action}}"
    await call(
        client, "PUT", policy, {"action": "refund"}, status=200, json={"rule": "two_thirds", "humanApprovals": 1}
    )
    await call(client, "GET", policy, {"action": "refund"}, status=200)
    await call(client, "GET", f"{C}/consensus-policies", status=200)
    await call(client, "DELETE", policy, {"action": "refund"}, status=200)
    entry = f"{C}/suppressions/{{entry}}"
    suppressed = {"entry": "carol@example.com"}
    await call(client, "PUT", entry, suppressed, status=201, json={"reason": "unsubscribed", "note": "by email"})
    await call(client, "PUT", entry, suppressed, status=200, json={"reason": "manual"})
    imported = {"suppressions": [{"entry": "@example.org", "reason": "bounced"}]}
    await call(client, "POST", f"{C}/suppressions", status=200, json=imported)
    await call(client, "GET", entry, suppressed, status=200)
    await call(client, "GET", f"{C}/suppressions", status=200, query="?limit=1")
    await call(client, "DELETE", entry, suppressed, status=200)
    page = await call(client, "GET", f"{C}/events", status=200, query="?after=0&limit=1000")
    assert {e["type"] for e in page["events"]} >= {"agent.registered", "lease.acquired", "consensus.voted"}
    return {"sdr": sdr, "peer": peer, "cons": cons}


async def test_real_answers_of_every_documented_kind_fit_the_document(client, doc):
    conformance = Conformance(doc)
    await exercise_every_success_answer(client, conformance)
    documented = {
        (method, path, int(status))
        for method, path, operation in operations(doc)
        for status in operation["responses"]
        if int(status) < 400
    }
    assert conformance.seen == documented, f"not exercised: {sorted(documented - conformance.seen)}"


@asynccontextmanager
async def app_client(settings: Settings, redis: Any, api_key: str | None = API_KEY) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app of its own (own settings or Redis), handing back 500
    answers; it authenticates as a fleet does (tests/support/api.py Fleet): each
    agent it registered with that agent's credential, the rest with ``api_key``."""
    async with running(create_app(settings, redis)) as app:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://concord.test", auth=Fleet(api_key)) as c:
            yield c


async def provoke_every_error_code(
    settings: Settings, redis_client: Any, conformance: Conformance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Make the service answer with every error code of errors.ERRORS, in an app
    of ``settings`` (and, for some codes, apps of their own)."""
    keys = Keys(settings.key_prefix)
    async with app_client(settings, redis_client) as client:
        await _provoke(client, settings, redis_client, keys, conformance, monkeypatch)


async def _provoke(
    client: httpx.AsyncClient,
    settings: Settings,
    redis_client: Any,
    keys: Keys,
    conformance: Conformance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = conformance.call
    agents, one_agent = f"{V1}/agents", f"{V1}/agents/{{agentId}}"
    register, lease_path, consensus_path = f"{V1}/register", f"{C}/lease", f"{C}/consensus"
    vote_path = f"{consensus_path}/{{consensusId}}/vote"

    requester = (await client.post(register, json={"agentName": "requester"})).json()
    voter = (await client.post(register, json={"agentName": "voter"})).json()
    alice = {"agentId": requester["id"], "contactEmail": "alice@example.com"}
    lease = (await client.post(lease_path, json=alice)).json()
    cons = (await client.post(consensus_path, json={"requestingAgentId": requester["id"], "action": "x"})).json()
    still_open = (await client.post(consensus_path, json={"requestingAgentId": requester["id"], "action": "y"})).json()
    r, v = {"agentId": requester["id"]}, {"agentId": voter["id"]}
    c = {"consensusId": cons["id"]}

    await call(client, "POST", register, status=400, content=b'{"agentName": "x"', headers=JSON)
    await call(client, "GET", agents, status=401, headers={"Authorization": "Bearer wrong"})
    await call(client, "GET", agents, status=403, query=f"?tenantId={OTHER_TENANT}")
    await call(client, "POST", f"{lease_path}/{{leaseId}}/renew", {"leaseId": lease["id"]}, status=403, json=v)
    await call(client, "POST", vote_path, c, status=403, json={**r, "vote": "approve"})
    as_requester = bearer(requester["credential"])
    await call(client, "POST", f"{C}/heartbeat", status=403, json=v, headers=as_requester)  # agent_mismatch
    await call(client, "POST", f"{C}/heartbeat", status=403, json=r, headers=bearer(API_KEY))  # insufficient_scope
    await call(client, "GET", None, status=404, path="/v1/agent/nowhere")
    await call(client, "GET", one_agent, {"agentId": unknown_id("agent")}, status=404)
    await call(client, "GET", f"{lease_path}/{{leaseId}}", {"leaseId": unknown_id("lease")}, status=404)
    await call(client, "GET", f"{consensus_path}/{{consensusId}}", {"consensusId": unknown_id("cons")}, status=404)
    await call(client, "PUT", None, status=405, path=register)
    await call(client, "POST", lease_path, status=409, json={**v, "contactEmail": "alice@example.com"})
    # One eligible voter, so its approval decides; then it cannot change its mind,
    # and a newcomer cannot vote on the decided request.
    await call(client, "POST", vote_path, c, status=200, json={**v, "vote": "approve"})
    await call(client, "POST", vote_path, c, status=409, json={**v, "vote": "reject"})
    late = (await client.post(register, json={"agentName": "late"})).json()
    await call(client, "POST", vote_path, c, status=409, json={"agentId": late["id"], "vote": "approve"})
    # Nor vote on a request still open: it was made before the newcomer registered.
    open_c = {"consensusId": still_open["id"]}
    await call(client, "POST", vote_path, open_c, status=403, json={"agentId": late["id"], "vote": "approve"})
    await make_inactive(redis_client, keys, TENANT, late["id"])
    await call(client, "POST", lease_path, status=409, json={"agentId": late["id"], "contactEmail": "bob@example.com"})
    await call(client, "POST", register, status=413, content=b'{"agentName": "x"}' + b" " * 65536, headers=JSON)
    await call(
        client, "POST", register, status=415, content=b'{"agentName": "x"}', headers={"Content-Type": "text/plain"}
    )
    await call(client, "POST", register, status=422, json={"agentName": "x", "bogus": 1})
    await call(
        client,
        "POST",
        consensus_path,
        status=201,
        headers={"Idempotency-Key": "once"},
        json={"requestingAgentId": requester["id"], "action": "a"},
    )
    await call(
        client,
        "POST",
        consensus_path,
        status=422,
        headers={"Idempotency-Key": "once"},
        json={"requestingAgentId": requester["id"], "action": "b"},
    )
    # A suppressed contact: its lease is refused; lifting it twice finds none the second time.
    suppression = f"{C}/suppressions/{{entry}}"
    carol = {"entry": "carol@example.com"}
    await call(client, "PUT", suppression, carol, status=201, json={"reason": "unsubscribed"})
    await call(client, "POST", lease_path, status=403, json={**r, "contactEmail": "carol@example.com"})
    await call(client, "DELETE", suppression, carol, status=200)
    await call(client, "DELETE", suppression, carol, status=404)
    # One agent allowed: a new one is past the tenant's quota. Then the defaults again.
    quotas = f"{V1}/quotas"
    await call(client, "GET", quotas, status=200)
    await call(client, "PUT", quotas, status=200, json={"agents": 1})
    await call(client, "POST", register, status=403, json={"agentName": "one-too-many"})
    await call(client, "DELETE", quotas, status=200)
    # A member's kind is fixed: the agent of that name is no human.
    await call(client, "POST", register, status=409, json={"agentName": requester["agentName"], "kind": "human"})
    # A key of the wrong type where the register script writes: Redis refuses.
    await redis_client.set(keys.agents(OTHER_TENANT), "not a zset")
    async with app_client(settings, redis_client, OTHER_API_KEY) as other:
        await call(other, "POST", register, status=500, json={"agentName": "x"})
    # A tenant limit of one request an hour.
    limited = dataclasses.replace(settings, rate_limits=parse_rate_limits("tenant=1/h"))
    async with app_client(limited, redis_client) as slow:
        await call(slow, "GET", agents, status=200)
        await call(slow, "GET", agents, status=429)
    # A gate key may only send-check.
    gated = dataclasses.replace(settings, api_keys={**settings.api_keys, **parse_api_keys("acme/gate:gate-key-0123")})
    async with app_client(gated, redis_client, "gate-key-0123") as gate:
        await call(gate, "GET", agents, status=403)
    # Redis does not answer.
    down = fakeredis.FakeServer()
    down.connected = False
    async with app_client(settings, fakeredis.aioredis.FakeRedis(server=down, decode_responses=True)) as offline:
        await call(offline, "GET", agents, status=503)

    # A bug.
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Agents, "get", broken)
    await call(client, "GET", one_agent, r, status=500)


async def test_problem_bodies_of_every_error_code_fit_problem(settings, redis_client, doc, monkeypatch):
    conformance = Conformance(doc)
    await provoke_every_error_code(settings, redis_client, conformance, monkeypatch)
    assert conformance.codes == set(ERRORS), f"not provoked: {sorted(set(ERRORS) - conformance.codes)}"


async def test_every_header_the_service_sends_is_documented(client, settings, redis_client, doc, monkeypatch):
    """A header an answer carries beyond Content-Type and Content-Length is part of
    the API (docs/api.md: a replayed consensus request answers `Idempotent-Replayed: true`),
    so the document names it under that answer."""
    conformance = Conformance(doc)
    await exercise_every_success_answer(client, conformance)
    errors_only = dataclasses.replace(settings, key_prefix=f"{settings.key_prefix}-errors")  # a tenant state of its own
    await provoke_every_error_code(errors_only, redis_client, conformance, monkeypatch)
    assert not conformance.undocumented_headers, conformance.undocumented_headers
