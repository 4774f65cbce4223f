"""Tenant isolation: cells GENERATED from the route table itself
(concord.server.http.routes.routes, each route running an Endpoint of concord.server.http.endpoint.ENDPOINTS), so
an endpoint added later is covered without anyone remembering to: for every
authenticated endpoint, a request built from its declaration (path ids, body and
query structs) with A's ids in every id-shaped field must answer exactly as the
same request with ids that never existed, showing nothing of A's; tenantId of A in
its query (and in its body, if it has one) is 403 tenant_mismatch. An endpoint that
acts as an agent (Endpoint.acts_as) is called by B's own agent with its credential,
naming itself there, with A's ids everywhere else; and twice more as A's agent: with
B's agent's credential (403 agent_mismatch) and with a forged credential claiming
A's agent (401), each answering exactly as for ids that never existed (before its fix this failed for
renew and release: the lease is looked up before the credential is checked, so a
forged credential tells A's lease, 401, from an unknown one, 404; see
test_isolation_leases.py). Declared request
headers are sent too (the Idempotency-Key A made its request with, so B's request
must not find A's record). The endpoints without a key (/healthz, /readyz,
/openapi.json) carry no tenant data: their cell checks that B, or anyone, is
shown nothing of A's.

Self-tests show the generator covers every route and catches an endpoint that
ignores the tenant; test_every_route_has_cells checks the hand-written tables of the
domain modules cover every /v1 route. The world and the checks of a cell:
isolation_support.py.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
from starlette.routing import Route

from concord import protocol as schemas
from concord.server.app import create_app
from concord.server.http.decoding import PATH_IDS
from concord.server.http.endpoint import ENDPOINTS, Endpoint, respond
from concord.server.http.routes import routes
from tests.api import (
    test_isolation_agents,
    test_isolation_consensus,
    test_isolation_events,
    test_isolation_leases,
    test_isolation_suppressions,
)
from tests.api.credential_support import forged
from tests.api.isolation_support import A_SUPPRESSED, CONTACT, IDEMPOTENCY_KEY, World, build_world, no_leak, run_cell
from tests.api.isolation_support import isolation_report as isolation_report  # fixtures: pytest finds them here
from tests.api.isolation_support import world as world
from tests.conftest import API_KEY, OTHER_API_KEY, running
from tests.support.api import TENANT, V1, C, Fleet, bearer, credential_of, problem, unknown_id

# --- cells generated from the route table --------------------------------------
#
# Nothing below names an endpoint: the cells come from each route's Endpoint
# declaration, so a new endpoint gets them the moment it is routed.

# Values for fields that are not ids (ids are recognised by their pattern, below).
NAMED_VALUES: dict[str, Callable[[World], Any]] = {
    "contactEmail": lambda w: CONTACT,
    "fencingToken": lambda w: w.a["lease"]["fencingToken"],
    "agentName": lambda w: "acme-sdr",  # A's agent name: registering it in B makes B's own agent
    "vote": lambda w: "approve",
    "limit": lambda w: 100,  # events: a JSON page (without after or limit it is a live stream)
    "suppressions": lambda w: [{"entry": A_SUPPRESSED, "reason": "manual"}],  # a bulk import: A's entry
}
# Values for the request headers an endpoint declares (others get a plain value).
NAMED_HEADERS: dict[str, Callable[[World], str]] = {
    "Idempotency-Key": lambda w: IDEMPOTENCY_KEY,  # A's key: B's request must not find A's record
    "Last-Event-ID": lambda w: "0",
}
_ID_PATTERN = re.compile(r"\^(agent|lease|cons)_")
# The id prefix of each path parameter, as the API checks it.
PATH_KINDS = {name: schemas.ID_PREFIXES[kind] for name, kind in PATH_IDS.items()}
# Path parameters that are names: one A has a policy for, the domain A suppressed.
PATH_NAMES = {"action": "acme-action", "entry": A_SUPPRESSED}


def endpoint_of(route: Route) -> Endpoint:
    """The Endpoint a route runs: the router runs each one as an ASGI app of its own."""
    endpoint = route.endpoint
    assert isinstance(endpoint, Endpoint), route
    return endpoint


@dataclass(frozen=True)
class Generated:
    endpoint: Endpoint
    kind: str  # "A-ids" | "tenantId-A-query" | "tenantId-A-body" | "no-tenant-data"
    # | "A-agent-B-credential" | "A-agent-forged" (an endpoint that acts as an agent)

    @property
    def id(self) -> str:
        return f"{self.endpoint.method} {self.endpoint.path.removeprefix(V1)} {self.kind}"


def generated_cells(route_table: list[Route]) -> list[Generated]:
    """The cells of every route of ``route_table``, from its Endpoint declaration alone."""
    cells = []
    for route in route_table:
        endpoint = endpoint_of(route)
        if not endpoint.authenticated:
            cells.append(Generated(endpoint, "no-tenant-data"))
            continue
        cells += [Generated(endpoint, "A-ids"), Generated(endpoint, "tenantId-A-query")]
        if endpoint.body is not None:
            cells.append(Generated(endpoint, "tenantId-A-body"))
        if endpoint.acts_as is not None:
            cells += [Generated(endpoint, "A-agent-B-credential"), Generated(endpoint, "A-agent-forged")]
    return cells


GENERATED = generated_cells(routes)


def _id_kind(t: msgspec.inspect.Type) -> str | None:
    """``agent``, ``lease`` or ``cons`` when ``t`` (or its non-None member) is an id of that kind."""
    if isinstance(t, msgspec.inspect.UnionType):
        members = [m for m in t.types if not isinstance(m, msgspec.inspect.NoneType)]
        return _id_kind(members[0]) if len(members) == 1 else None
    if isinstance(t, msgspec.inspect.Metadata):
        kind = (t.extra or {}).get("id_kind")  # protocol.types: an id checked for its shape once decoded
        return schemas.ID_PREFIXES[kind] if kind else _id_kind(t.type)
    if isinstance(t, msgspec.inspect.StrType) and t.pattern:
        found = _ID_PATTERN.match(t.pattern)
        return found[1] if found else None
    return None


def _plain_value(t: msgspec.inspect.Type, where: str) -> Any:
    """A valid value of a required field that has no entry in NAMED_VALUES."""
    if isinstance(t, msgspec.inspect.Metadata):
        return _plain_value(t.type, where)
    if isinstance(t, msgspec.inspect.StrType):
        return "x" * max(1, t.min_length or 1)
    if isinstance(t, msgspec.inspect.IntType):
        return t.ge if t.ge is not None else 1
    if isinstance(t, msgspec.inspect.LiteralType):
        return t.values[0]
    if isinstance(t, msgspec.inspect.BoolType):
        return True
    raise LookupError(f"no value for the required field {where}: add one to NAMED_VALUES")


def _fields(struct: type | None, world: World, ids: dict[str, str], where: str) -> dict[str, Any]:
    """Values for a body or query struct: every id-shaped field gets ``ids`` of its
    kind, named fields their NAMED_VALUES, other required fields a plain value."""
    values: dict[str, Any] = {}
    if struct is None:
        return values
    for f in msgspec.inspect.type_info(struct).fields:
        kind = _id_kind(f.type)
        if f.encode_name == "tenantId":
            continue
        if kind is not None:
            values[f.encode_name] = ids[kind]
        elif f.encode_name in NAMED_VALUES:
            values[f.encode_name] = NAMED_VALUES[f.encode_name](world)
        elif f.required:
            values[f.encode_name] = _plain_value(f.type, f"{where} $.{f.encode_name}")
    return values


@dataclass
class Built:
    method: str
    path: str
    params: dict[str, Any]
    body: dict[str, Any] | None
    headers: dict[str, str]
    ids_used: set[str]  # the ids the request carries

    @property
    def sent(self) -> set[str]:
        values = [
            self.path,
            *self.path.split("/"),  # a name in the path (an action) is sent as itself
            *map(str, self.params.values()),
            *map(str, (self.body or {}).values()),
            *self.headers.values(),
        ]
        return {v for v in values if v} | self.ids_used

    async def send(self, client: httpx.AsyncClient, token: str | None = None) -> httpx.Response:
        """Sent as ``client`` authenticates (support/api.py Fleet), or with ``token``."""
        kwargs = {"json": self.body} if self.body is not None else {}
        headers = self.headers | (bearer(token) if token else {})
        return await client.request(self.method, self.path, params=self.params, headers=headers, **kwargs)


def acting_field(endpoint: Endpoint) -> tuple[str, str] | None:
    """("body" or "query", the field's JSON name) of the agent an endpoint acts as."""
    if endpoint.acts_as is None:
        return None
    where, struct = ("body", endpoint.body) if endpoint.body is not None else ("query", endpoint.query)
    names = {f.name: f.encode_name for f in msgspec.structs.fields(struct)}
    assert endpoint.acts_as in names, (endpoint.path, endpoint.acts_as, struct)
    return where, names[endpoint.acts_as]


def build(
    endpoint: Endpoint, world: World, ids: dict[str, str], tenant_in: str | None = None, acting: str | None = None
) -> Built:
    """The request ``endpoint`` declares, with ``ids`` (kind -> id) wherever an id goes,
    and ``acting`` (an agent id) in the field of the agent it acts as, if it has one."""
    path = re.sub(
        r"{(\w+)}", lambda m: ids[PATH_KINDS[m[1]]] if m[1] in PATH_KINDS else PATH_NAMES[m[1]], endpoint.path
    )
    params = _fields(endpoint.query, world, ids, f"{endpoint.name} query")
    body = _fields(endpoint.body, world, ids, f"{endpoint.name} body") if endpoint.body is not None else None
    field = acting_field(endpoint)
    if field is not None and acting is not None:
        (body if field[0] == "body" else params)[field[1]] = acting
    headers = {name: NAMED_HEADERS[name](world) if name in NAMED_HEADERS else "x" for name in endpoint.request_headers}
    if tenant_in == "query":
        params["tenantId"] = TENANT
    elif tenant_in == "body":
        body["tenantId"] = TENANT
    carried = {path, *map(str, params.values()), *map(str, (body or {}).values())}
    ids_used = {i for i in ids.values() if any(i in value for value in carried)}
    return Built(endpoint.method, path, params, body, headers, ids_used)


def a_ids(world: World) -> dict[str, str]:
    return {"agent": world.a["agent"]["id"], "lease": world.a["lease"]["id"], "cons": world.a["pending"]["id"]}


def _masked(text: str, ids: dict[str, str]) -> str:
    for kind, value in ids.items():
        text = text.replace(value, f"<{kind}>")
    return text


async def run_generated(cell: Generated, b: httpx.AsyncClient, anyone: httpx.AsyncClient, world: World) -> None:
    endpoint = cell.endpoint
    # An endpoint that acts as an agent is called by B's own agent, naming itself
    # (B's client sends that agent's credential), unless the cell acts as A's.
    b_agent = world.b["agent"]["id"] if endpoint.acts_as is not None else None
    if cell.kind in ("A-agent-B-credential", "A-agent-forged"):

        def token(ids: dict[str, str]) -> str:
            if cell.kind == "A-agent-forged":
                return forged(TENANT, ids["agent"])
            return credential_of(b, world.b["agent"]["id"])

        fake_ids = {kind: unknown_id(kind) for kind in a_ids(world)}
        real_ids = a_ids(world)
        real = build(endpoint, world, real_ids, acting=real_ids["agent"])
        response = await real.send(b, token(real_ids))
        code = ("agent_mismatch", 403) if cell.kind == "A-agent-B-credential" else ("unauthorized", 401)
        problem(response, code[1], code[0])
        no_leak(world, response, real.sent)
        fake = await build(endpoint, world, fake_ids, acting=fake_ids["agent"]).send(b, token(fake_ids))
        assert response.status_code == fake.status_code, (response.text, fake.text)
        assert _masked(response.text, real_ids) == _masked(fake.text, fake_ids)
    elif cell.kind == "no-tenant-data":
        for caller in (b, anyone):
            response = await caller.request(endpoint.method, endpoint.path)
            assert response.status_code == 200, response.text
            no_leak(world, response)
    elif cell.kind == "A-ids":
        real = build(endpoint, world, a_ids(world), acting=b_agent)
        response = await real.send(b)
        no_leak(world, response, real.sent)
        # The generator made a request the endpoint accepts as such; otherwise the cell would test nothing.
        assert response.status_code not in (400, 415, 422) and response.status_code < 500, response.text
        if real.ids_used:  # A's ids answer exactly as ids that never existed
            fake_ids = {kind: unknown_id(kind) for kind in a_ids(world)}
            fake = await build(endpoint, world, fake_ids, acting=b_agent).send(b)
            assert response.status_code == fake.status_code, (response.text, fake.text)
            assert _masked(response.text, a_ids(world)) == _masked(fake.text, fake_ids)
    else:
        where = cell.kind.removeprefix("tenantId-A-")
        response = await build(endpoint, world, a_ids(world), tenant_in=where, acting=b_agent).send(b)
        problem(response, 403, "tenant_mismatch")
        no_leak(world, response)
    world.cells += 1


@pytest.mark.parametrize("cell", [pytest.param(c, id=c.id) for c in GENERATED])
async def test_generated_cell(request, client, other_client, anonymous_client, redis_client, keys, world, cell):
    await run_cell(
        request,
        client,
        redis_client,
        keys,
        world,
        lambda: run_generated(cell, other_client, anonymous_client, world),
        generated=True,
    )


def test_generated_cells_cover_every_route_and_endpoint():
    """The generated cells are made from the route table: every route (and so every
    declared Endpoint) has them, the routes are exactly the declared endpoints, and
    a request can be built for each without anything written by hand."""
    assert sorted((endpoint_of(r) for r in routes), key=ENDPOINTS.index) == ENDPOINTS
    assert {c.endpoint for c in GENERATED} == set(ENDPOINTS)
    for endpoint in ENDPOINTS:
        kinds = {c.kind for c in GENERATED if c.endpoint is endpoint}
        if not endpoint.authenticated:
            assert kinds == {"no-tenant-data"}, endpoint.path
        else:
            acting = {"A-agent-B-credential", "A-agent-forged"} if endpoint.acts_as else set()
            assert kinds == {"A-ids", "tenantId-A-query"} | ({"tenantId-A-body"} if endpoint.body else set()) | acting
    assert {e.path for e in ENDPOINTS if not e.authenticated} == {"/healthz", "/readyz", "/openapi.json"}


def test_a_new_endpoint_gets_cells_without_anyone_writing_them():
    async def handler(c):  # never called
        raise AssertionError

    new = Endpoint(
        "POST",
        f"{C}/lease/{{leaseId}}/transfer",
        "Hand a lease over",
        handler,
        {200: schemas.Lease},
        body=schemas.VoteBody,
    )
    route = Route(new.path, new, methods=[new.method])
    assert [c.kind for c in generated_cells([route])] == ["A-ids", "tenantId-A-query", "tenantId-A-body"]
    world = World(
        a={
            "agent": {"id": unknown_id("agent")},
            "lease": {"id": unknown_id("lease"), "fencingToken": 7},
            "pending": {"id": unknown_id("cons")},
        },
        b={},
    )
    built = build(new, world, a_ids(world))
    assert built.path == f"{C}/lease/{world.a['lease']['id']}/transfer"
    assert built.body == {"agentId": world.a["agent"]["id"], "vote": "approve"}
    assert built.ids_used == {world.a["lease"]["id"], world.a["agent"]["id"]}

    # Declared as acting as an agent, it gets the cells of a credential too, and B's agent names itself.
    acting = dataclasses.replace(new, acts_as="agent_id", roles=frozenset({"agent"}))
    route = Route(acting.path, acting, methods=[acting.method])
    assert [c.kind for c in generated_cells([route])] == [
        "A-ids",
        "tenantId-A-query",
        "tenantId-A-body",
        "A-agent-B-credential",
        "A-agent-forged",
    ]
    b_agent = unknown_id("agent")
    assert build(acting, world, a_ids(world), acting=b_agent).body == {"agentId": b_agent, "vote": "approve"}


async def test_the_generated_cells_catch_an_endpoint_that_ignores_the_tenant(settings, redis_client):
    """Self-test of the matrix: an endpoint that reads tenant A whatever the key
    says is caught by its generated cell, with nothing written for it."""

    async def leaky(c):
        return respond(await c.store.agents.page(TENANT, None, 100, None))

    endpoint = Endpoint("GET", f"{V1}/agents/{{agentId}}/peers", "Peers of an agent", leaky, {200: schemas.AgentList})
    route = Route(endpoint.path, endpoint, methods=[endpoint.method])
    app = create_app(settings, redis_client)
    app.router.routes.append(route)  # this app's own copy of the route table
    async with running(app) as served:

        def http(key):
            return httpx.AsyncClient(
                transport=httpx.ASGITransport(app=served), base_url="http://concord.test", auth=Fleet(key)
            )

        async with http(API_KEY) as a, http(OTHER_API_KEY) as b, http(None) as anyone:
            world = await build_world(a, b)
            a_ids_cell, tenant_cell = generated_cells([route])
            with pytest.raises(AssertionError, match="tenant B was shown"):
                await run_generated(a_ids_cell, b, anyone, world)
            assert world.leaks > 0
            # Endpoint.run checks tenantId before any handler runs, so that cell holds even here.
            await run_generated(tenant_cell, b, anyone, world)


# --- the hand-written cells cover every route too -------------------------------

# Every domain's table, in one: what test_every_route_has_cells holds to the route table.
CELLS = {
    **test_isolation_events.CELLS,
    **test_isolation_agents.CELLS,
    **test_isolation_leases.CELLS,
    **test_isolation_consensus.CELLS,
    **test_isolation_suppressions.CELLS,
}
CELL_PARAMS = [
    *test_isolation_events.CELL_PARAMS,
    *test_isolation_agents.CELL_PARAMS,
    *test_isolation_leases.CELL_PARAMS,
    *test_isolation_consensus.CELL_PARAMS,
    *test_isolation_suppressions.CELL_PARAMS,
]


def test_every_route_has_cells():
    """Every /v1 route and method of concord.server.http.routes.routes has isolation cells, a
    tenantId-of-A cell among them."""
    declared = {(m, r.path) for r in routes if r.path.startswith("/v1/") for m in r.methods - {"HEAD"}}
    assert set(CELLS) == declared
    assert all("tenantId-A" in cells for cells in CELLS.values())
    assert len(CELL_PARAMS) == 82
