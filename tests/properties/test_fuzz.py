"""Fuzzing: schemathesis generates requests from the service's own /openapi.json and
checks every answer against that document.

The app runs in process (schemathesis's ASGI transport, the app's real lifespan)
on the embedded fakeredis and on the session's real Redis, under a key prefix of
its own. Every operation of the document is fuzzed twice: with data that fits
the document (positive) and with data that breaks it (negative: wrong types,
out-of-bounds values, missing and unknown fields). Every request carries a valid
credential of a role the operation admits (docs/api.md, Roles): the admin key of
the test settings, or the credential of a real agent (for the operations that act
as an agent, always; for reads and send-check, at random). Each answer must pass:

* not_a_server_error: no 5xx;
* status_code_conformance: the status is documented for the operation;
* content_type_conformance: the media type is the documented one;
* response_schema_conformance: the body fits the documented schema of its status;
* response_headers_conformance: documented headers fit their schemas;
* negative_data_rejection: data that breaks the document is refused with a 4xx.

Random data alone almost never names a real agent, lease or request, so before
each operation the test creates some, and each positive case swaps, at random
(Hypothesis decides, so it shrinks too), its generated ids, agent ids and
contact for real ones; a tenantId that fits the document is set to the key's
tenant (another tenant's is a 403 before anything else is looked at). A case sent
with an agent's credential mostly names that agent where it names one (another is
a 403 agent_mismatch before anything else is looked at). Both keep
a positive case positive and a negative case negative: only values that fit the
document are replaced, by values that fit it too.

The figures (operations, cases, failures) are printed (pytest -s) and, if
CONCORD_FUZZ_REPORT names a file, appended to it as one JSON line per backend.
Set CONCORD_FUZZ_SEED to replay a run. A failure is a bug in the service or in
its document: read the schemathesis report in the assertion message.
"""

from __future__ import annotations

import collections
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from concord.server.app import create_app
from concord.server.http.endpoint import ENDPOINTS
from concord.server.principals import AGENT
from concord.server.settings import Settings, parse_api_keys
from tests.conftest import API_KEY, OTHER_API_KEY, OTHER_TENANT, TENANT
from tests.support.api import V1, C, bearer
from tests.support.reports import append_report

# How much fuzzing each backend gets (quoted in the docs): cases per operation and
# generation mode, so each operation gets MAX_EXAMPLES_PER_MODE * len(MODES) cases.
MAX_EXAMPLES_PER_MODE = 25
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SEED = os.environ.get("CONCORD_FUZZ_SEED")
# schemathesis does not fuzz the operation that serves the document it loaded;
# test_openapi.py checks that one.
NOT_FUZZED = {"GET /openapi.json"}

SETTINGS = settings(
    max_examples=MAX_EXAMPLES_PER_MODE,
    deadline=None,  # a case is an HTTP request and Redis round trips; never a timing assertion
    database=None,  # no .hypothesis/ folder in the repo; a failure prints its reproduction instead
    # Generating a body from the document can be slow or filter a lot; neither is the API's fault.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    print_blob=True,
)

CONTACTS = ["alice@example.com", "Bob@Example.org ", "c{x}*?@example.net"]
TENANT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
AGENT_FIELDS = ("agentId", "requestingAgentId")
# Pairs of fields of which a request may give one, not both (alias or unit).
EXCLUSIVE = [
    ("agentName", "name"),
    ("agentRole", "role"),
    ("durationMinutes", "durationSeconds"),
    ("timeoutMinutes", "timeoutSeconds"),
]
AT_LEAST_ONE = {"/v1/agent/coordination/leases": ("agentId", "contactEmail")}
ID_KINDS = {"agentId": "agents", "leaseId": "leases", "consensusId": "consensus"}
# Who may call each operation: the roles its declaration admits.
ROLES = {f"{e.method} {e.path}": e.roles for e in ENDPOINTS}


@dataclass
class Run:
    """What one backend's fuzzing saw."""

    backend: str
    operations: list[str] = field(default_factory=list)
    cases: int = 0
    cases_by_operation: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (operation, mode, report)

    def summary(self) -> dict[str, Any]:
        return {
            "test": "fuzz",
            "backend": self.backend,
            "operations": len(self.operations),
            "modes": [m.value for m in MODES],
            "max_examples_per_mode": MAX_EXAMPLES_PER_MODE,
            "cases": self.cases,
            "failures": len(self.failures),
            "failed": sorted({f"{op} ({mode})" for op, mode, _ in self.failures}),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "seed": SEED,
        }


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.real)])
def fuzz_app(request: pytest.FixtureRequest, prefix: str) -> Iterator[tuple[str, Any]]:
    """The app as schemathesis runs it: on its own event loop thread, its lifespan
    building the Redis client (the embedded fakeredis, or the session's real Redis)."""
    redis_url = None if request.param == "fakeredis" else request.getfixturevalue("real_redis_url")
    settings_ = Settings(
        redis_url=redis_url,
        api_keys=parse_api_keys(f"{TENANT}:{API_KEY},{OTHER_TENANT}:{OTHER_API_KEY}"),
        key_prefix=prefix,
    )
    app = create_app(settings_)
    try:
        yield request.param, app
    finally:
        # Ends the lifespan schemathesis started (it would otherwise run until exit) and closes its client.
        asgi.shutdown_lifespans()


class World:
    """Real agents, leases and consensus requests of tenant acme, made through the API."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.ids: dict[str, list[str]] = {"agents": [], "leases": [], "consensus": []}
        self.credentials: dict[str, str] = {}  # agent id -> its current credential

    def refresh(self) -> None:
        """(Re-)create the things: a fuzzed DELETE may have removed some, a fuzzed PUT
        lowered a quota. Registering a
        name again gives the same agent id; leases and requests are made anew."""
        with asgi.get_client(self.app) as http:

            def post(path: str, body: dict[str, Any], auth: dict[str, str], *statuses: int) -> dict[str, Any]:
                response = http.post(path, json=body, headers=auth)
                assert response.status_code in statuses, (path, response.status_code, response.text)
                return response.json()

            # A fuzzed PUT may have set a quota of 1: the defaults again, before anything is made.
            assert http.delete(f"{V1}/quotas", headers=AUTH).status_code == 200
            made = [post(f"{V1}/register", {"agentName": name}, AUTH, 200, 201) for name in ("fz-1", "fz-2", "fz-3")]
            self.credentials = {agent["id"]: agent["credential"] for agent in made}
            agents = [agent["id"] for agent in made]
            as_first = bearer(self.credentials[agents[0]])
            lease = post(f"{C}/lease", {"agentId": agents[0], "contactEmail": CONTACTS[0]}, as_first, 200, 201)["id"]
            cons = post(f"{C}/consensus", {"requestingAgentId": agents[0], "action": "fuzz"}, as_first, 201)["id"]
        self.ids = {"agents": agents, "leases": [lease], "consensus": [cons]}

    def learn(self, response: Any) -> None:
        """A fuzzed registration or rotation makes a new credential: later cases use it."""
        if response.status_code in (200, 201) and "json" in response.headers.get("content-type", ""):
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("credential"), str):
                self.credentials[body.get("agentId") or body["id"]] = body["credential"]


def _realistic(case: schemathesis.Case, world: World, data: st.DataObject, mode: GenerationMode) -> None:
    """Point a case at real things (see the module docstring). Only values that fit
    the document are replaced or added, and only by values that fit it."""
    for container in (case.query, case.body if isinstance(case.body, dict) else None):
        if container and isinstance(container.get("tenantId"), str) and TENANT_ID.fullmatch(container["tenantId"]):
            if data.draw(st.integers(0, 9), label="own_tenant") != 9:  # 1 in 10 stays another tenant's
                container["tenantId"] = TENANT
    if case.operation.path == f"{C}/events":
        # Without after or limit the answer is a live stream that never ends: fuzz the JSON page.
        query = dict(case.query or {})
        if query.get("after") is None and query.get("limit") is None:
            query["limit"] = 10
            case.query = query
    # A long poll the service accepts would park the case for up to a minute (query strings
    # convert, so "15.0" is 15 too): make it 0, of the same type, which changes nothing else.
    wait = (case.query or {}).get("waitSeconds")
    try:
        seconds = float(wait) if not isinstance(wait, bool) else None
    except (TypeError, ValueError):
        seconds = None
    if seconds is not None and 0 < seconds <= 60 and seconds.is_integer():
        case.query["waitSeconds"] = type(wait)(0) if isinstance(wait, (int, float)) else "0"
    if not mode.is_positive:
        return
    for name in list(case.path_parameters or {}):
        if name in ID_KINDS and _mostly(data, f"real_{name}"):
            case.path_parameters[name] = data.draw(st.sampled_from(world.ids[ID_KINDS[name]]), label=name)
    needs_one = AT_LEAST_ONE.get(case.operation.path)
    if needs_one:
        # The document cannot say "at least one of the two": mostly add one when neither came.
        query = dict(case.query or {})
        if all(query.get(name) is None for name in needs_one) and _mostly(data, "add_agentId"):
            query["agentId"] = data.draw(st.sampled_from(world.ids["agents"]), label="agentId")
            case.query = query
    for container in (case.query, case.body if isinstance(case.body, dict) else None):
        if not container:
            continue
        for name in AGENT_FIELDS:
            if isinstance(container.get(name), str) and _mostly(data, f"real_{name}"):
                container[name] = data.draw(st.sampled_from(world.ids["agents"]), label=name)
        if isinstance(container.get("contactEmail"), str) and _mostly(data, "real_contact"):
            container["contactEmail"] = data.draw(st.sampled_from(CONTACTS), label="contactEmail")
        # Nor "one of the two, not both" (msgspec has no such constraint): it lets both
        # through and the service answers 422. Mostly send one.
        for first, second in EXCLUSIVE:
            if container.get(first) is not None and container.get(second) is not None and _mostly(data, second):
                del container[second]


def _credential(case: schemathesis.Case, world: World, data: st.DataObject) -> dict[str, str]:
    """The Authorization header of a case: the admin key where the operation admits it,
    an agent's credential where it admits only that, either at random where it admits
    both. The agent is the one the case names, when it names a real one (then the
    case acts as itself), else a real agent drawn at random."""
    roles = ROLES[f"{case.operation.method.upper()} {case.operation.path}"]
    if AGENT not in roles or ("admin" in roles and data.draw(st.booleans(), label="admin_key")):
        return AUTH
    named = [
        container.get(name)
        for container in (case.query, case.body if isinstance(case.body, dict) else None)
        if container
        for name in AGENT_FIELDS
    ]
    agent = next((a for a in named if isinstance(a, str) and a in world.credentials), None)
    if agent is None:
        agent = data.draw(st.sampled_from(sorted(world.credentials)), label="acting_agent")
    return bearer(world.credentials[agent])


def _mostly(data: st.DataObject, label: str) -> bool:
    """True about three times in four (and shrinks towards True)."""
    return data.draw(st.integers(0, 3), label=label) != 3


def _negative_applies(schema: Any, operation: Any) -> bool:
    """Negative data needs something to break: a parameter or a body."""
    declared = schema.raw_schema["paths"][operation.path][operation.method.lower()]
    return bool(declared.get("parameters")) or "requestBody" in declared


def _fuzz(run: Run, schema: Any, operation: Any, mode: GenerationMode, world: World) -> None:
    label = operation.label

    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    @SETTINGS
    def fuzz_one(case: schemathesis.Case, data: st.DataObject) -> None:
        _realistic(case, world, data, mode)
        run.cases += 1
        run.cases_by_operation[label] += 1
        auth = _credential(case, world, data)
        response = case.call(headers=auth)
        world.learn(response)
        run.statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=auth)
        # Beyond the document: an error never shows a traceback.
        assert "Traceback" not in response.text, response.text[:2000]

    if SEED is not None:
        fuzz_one = seed(int(SEED))(fuzz_one)
    try:
        fuzz_one()
    except Unsatisfiable:
        raise AssertionError(f"{label} ({mode.value}): Hypothesis could not generate a single case") from None
    except (FailureGroup, Exception) as exc:  # a check failed (after shrinking): record it, fuzz on, fail at the end
        notes = "\n".join(getattr(exc, "__notes__", []))
        run.failures.append((label, mode.value, f"{type(exc).__name__}: {exc}\n{notes}"))


def test_fuzz_every_operation_against_the_document(fuzz_app):
    backend, app = fuzz_app
    started = time.monotonic()
    # Explicit, so no schemathesis.toml is picked up. Security parameters are not generated (nor,
    # in negative mode, left out): every case carries a credential the operation admits, so
    # negative data reaches the validation.
    config = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    documented = {f"{method.upper()} {path}" for path, item in schema.raw_schema["paths"].items() for method in item}
    run = Run(backend, [op.label for op in operations])
    assert set(run.operations) == documented - NOT_FUZZED, "every operation of the document is fuzzed"

    world = World(app)
    for operation in operations:
        world.refresh()
        for mode in MODES:
            if mode.is_negative and not _negative_applies(schema, operation):
                continue
            _fuzz(run, schema, operation, mode, world)

    summary = {**run.summary(), "seconds": round(time.monotonic() - started, 1)}
    print(
        f"\nfuzz [{backend}]: {summary['operations']} operations, {MAX_EXAMPLES_PER_MODE} cases per operation "
        f"and mode ({', '.join(summary['modes'])}), {run.cases} cases, {len(run.failures)} failures, "
        f"statuses {summary['statuses']}, {summary['seconds']} s"
    )
    for label in run.operations:
        print(f"  {run.cases_by_operation[label]:4d}  {label}")
    append_report("CONCORD_FUZZ_REPORT", summary)

    assert run.cases >= len(operations) * MAX_EXAMPLES_PER_MODE // 2, "the fuzzer hardly ran"
    assert not run.failures, "\n\n".join(f"=== {op} ({mode})\n{text}" for op, mode, text in run.failures)
