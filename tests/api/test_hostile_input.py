"""Hostile input, by hand, against every endpoint that takes a body.

The endpoints come from concord.server.http.endpoint.ENDPOINTS (those with ``body``), and the fields
to attack from their msgspec structs, so a new endpoint or field is attacked
without anyone adding it here. Each test starts from a valid request of the
endpoint (test_each_valid_request_succeeds proves it is one) and breaks one thing:

* truncated JSON, non-UTF-8 bytes, lone surrogates, byte order marks: 400;
* NUL in every string field, free text (reason) included: 422 naming the field;
* a 1 MB string: 413 (the body limit is 64 KiB, checked before reading);
  a string just under the body limit but over the field's bounds: 422 naming it;
* emails: ``{ } * ?`` are legal in a local part (RFC 5322) and are accepted and
  normalized, and a contact with braces keeps every key of the tenant in the
  tenant's Redis Cluster slot; ``[ ] :`` (domain literals, quoted parts) are 422;
* homoglyphs (Cyrillic letters, fullwidth forms, zero-width characters): 422 —
  the service takes ASCII only; an internationalized domain goes in its xn-- form;
* numbers as strings, floats, booleans, huge, negative and zero integers: 422;
* arrays or objects where an object or a string belongs: 422; deep nesting: 422
  where a struct or a string is expected (msgspec stops at the first bracket),
  400 inside metadata, the one field of free JSON;
* a body of exactly 64 KiB is served; 64 KiB + 1 without a Content-Length is 413;
* real form and multipart encodings of the body: 415;
* duplicate keys: the last occurrence wins (documented below);
* an API key on a route only an agent may call is 403 before its body is read.

Each request goes as a fleet sends it (``caller``): an agent's own routes with the
credential of the agent the valid request names, so that the body is what is
refused; the others with the tenant's admin key.

Every refusal is a problem+json of the expected code (never a 500, never a
traceback), and Redis holds exactly what it held before: a refused request
writes nothing. test_errors.py covers the rest (415 by header, 413 with a
Content-Length on every route, malformed JSON variants on register).

Every test runs on fakeredis and on a real Redis (the redis_client fixture).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
from redis.crc import key_slot

from concord import protocol as s
from concord.server.http.decoding import MAX_BODY_BYTES
from concord.server.http.endpoint import AGENT_FIELDS, ENDPOINTS, Endpoint
from tests.conftest import API_KEY
from tests.support.api import (
    OTHER_TENANT,
    PROBLEM_MEMBERS,
    TENANT,
    acquire,
    bearer,
    credential_of,
    problem,
    register,
    request_consensus,
)
from tests.support.api import invalid as validation_error
from tests.support.helpers import snapshot

BODY_ENDPOINTS = [e for e in ENDPOINTS if e.body is not None]
JSON = {"Content-Type": "application/json"}
MEGABYTE = 1_000_000


def endpoint_id(e: Endpoint) -> str:
    return e.name


body_endpoints = pytest.mark.parametrize("e", BODY_ENDPOINTS, ids=endpoint_id)


# --- the fields of a body, from its struct ------------------------------------------------


def _unwrap(t: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """The type behind Annotated metadata and ``| None``."""
    while True:
        if isinstance(t, msgspec.inspect.Metadata):
            t = t.type
        elif isinstance(t, msgspec.inspect.UnionType):
            (t,) = [member for member in t.types if not isinstance(member, msgspec.inspect.NoneType)]
        else:
            return t


def fields_of(e: Endpoint, *kinds: type) -> list[tuple[str, msgspec.inspect.Type]]:
    """(wire name, type) of each field of the endpoint's body whose type is one of ``kinds``."""
    info = msgspec.inspect.type_info(e.body)
    assert isinstance(info, msgspec.inspect.StructType)
    found = [(f.encode_name, _unwrap(f.type)) for f in info.fields]
    return [(name, t) for name, t in found if isinstance(t, kinds)]


STRING_KINDS = (msgspec.inspect.StrType, msgspec.inspect.LiteralType)


def names_no_agent(response: httpx.Response, e: Endpoint, value: str) -> None:
    """The answer to an agent id that names nothing: its 404 (send-check answers it
    as a refusal), quoting the id safely."""
    if e.body is s.SendCheckBody:
        assert response.status_code == 200 and response.json()["reason"] == "agent_not_found", response.text
        return
    body = problem(response, 404, "agent_not_found")
    assert repr(value) in body["detail"] or value in body["detail"], body


def string_fields(e: Endpoint) -> list[str]:
    return [name for name, _ in fields_of(e, *STRING_KINDS)]


def integer_fields(e: Endpoint) -> list[tuple[str, msgspec.inspect.IntType]]:
    return fields_of(e, msgspec.inspect.IntType)  # type: ignore[return-value]


def email_endpoints() -> list[Endpoint]:
    return [e for e in BODY_ENDPOINTS if "contactEmail" in string_fields(e)]


# --- a world, and a valid request of each endpoint --------------------------------------------


@dataclass
class World:
    agent: str  # holds the lease on HELD and made the consensus request
    peer: str
    lease: str
    cons: str


HELD, FREE = "held@example.com", "free@example.com"


@pytest.fixture
async def world(client) -> World:
    agent = await register(client, "hostile-sdr")
    peer = await register(client, "hostile-peer")
    lease = await acquire(client, agent["id"], HELD)
    cons = await request_consensus(client, agent["id"])
    return World(agent["id"], peer["id"], lease["id"], cons["id"])


def valid_request(e: Endpoint, w: World) -> tuple[str, dict[str, Any]]:
    """A request the endpoint serves with a 2xx, as (concrete path, body)."""
    ids = {"leaseId": w.lease, "consensusId": w.cons, "agentId": w.agent, "action": "refund", "entry": FREE}
    path = re.sub(r"\{(\w+)\}", lambda m: ids[m[1]], e.path)
    bodies: dict[type, dict[str, Any]] = {
        s.RegisterBody: {"agentName": "hostile-new", "agentRole": "sdr", "metadata": {"k": "v"}},
        s.HeartbeatBody: {"agentId": w.agent},
        s.LeaseBody: {"agentId": w.agent, "contactEmail": FREE, "intent": "outbound", "durationMinutes": 5},
        s.RenewBody: {"agentId": w.agent, "durationSeconds": 300},
        s.SendCheckBody: {"agentId": w.agent, "contactEmail": HELD, "fencingToken": None},
        s.ConsensusBody: {
            "requestingAgentId": w.agent,
            "action": "send-discount",
            "contactEmail": FREE,
            "reason": "asked twice",
            "timeoutMinutes": 60,
        },
        s.VoteBody: {"agentId": w.peer, "vote": "approve", "reason": "ok"},
        s.QuotasBody: {
            "tenantId": TENANT,
            "agents": 20_000,
            "leasesPerAgent": 2_000,
            "pendingConsensus": 500,
            "streams": 50,
        },
        s.ConsensusPolicyBody: {
            "tenantId": TENANT,
            "rule": "two_thirds",
            "voterRoles": ["support", "finance"],
            "minVotes": 2,
            "humanApprovals": 1,
        },
        s.SuppressionBody: {"tenantId": TENANT, "reason": "unsubscribed", "note": "asked by email"},
        s.SuppressionImportBody: {
            "tenantId": TENANT,
            "suppressions": [{"entry": FREE, "reason": "bounced"}, {"entry": "@example.org", "reason": "manual"}],
        },
    }
    assert e.body in bodies, f"no valid body for {e.body.__name__} ({e.method} {e.path}): add one here"
    return path, dict(bodies[e.body])


def caller(client: httpx.AsyncClient, e: Endpoint, w: World) -> dict[str, str]:
    """Who sends the endpoint's requests, as a fleet would: on the routes only an
    agent may call, the agent the valid request names, with its own credential (an
    API key would be refused 403 before its body is read, and the body is what is
    attacked here); elsewhere the tenant's admin key (register, and send-check as an
    email pipeline's key calls it, naming the agent in the body)."""
    if "admin" in e.roles:
        return bearer(API_KEY)
    return bearer(credential_of(client, w.peer if e.body is s.VoteBody else w.agent))


class Callers(httpx.Auth):
    """Each endpoint's request with its caller's Authorization (``caller``), by method and path."""

    def __init__(self, client: httpx.AsyncClient, w: World) -> None:
        self.by_request = {}
        for e in BODY_ENDPOINTS:
            path, _ = valid_request(e, w)
            self.by_request[(e.method, path)] = caller(client, e, w)["Authorization"]

    def auth_flow(self, request: httpx.Request):
        if "authorization" not in request.headers:  # a test that sets its own goes as it is
            key = (request.method, request.url.path)
            request.headers["Authorization"] = self.by_request.get(key, f"Bearer {API_KEY}")
        yield request


# --- Redis, before and after ------------------------------------------------------------------


@pytest.fixture
async def hostile(asgi_app, redis_client, keys, client, world) -> AsyncIterator[httpx.AsyncClient]:
    """Tenant acme's client, each request sent by its endpoint's caller (``caller``),
    handing back 500 answers rather than raising; on the way out it checks that
    Redis holds exactly what it held before the test."""
    before = await snapshot(redis_client, f"{keys.prefix}:*")
    transport = httpx.ASGITransport(app=asgi_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://concord.test", auth=Callers(client, world)) as c:
        yield c
    assert await snapshot(redis_client, f"{keys.prefix}:*") == before, "a refused request wrote to Redis"


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A problem+json of ``code`` with the standard members only, and no traceback."""
    assert "Traceback" not in response.text, response.text
    body = problem(response, status, code)
    assert set(body) == PROBLEM_MEMBERS, body
    return body


def invalid(response: httpx.Response, field: str) -> dict[str, Any]:
    """A 422 validation_error naming ``field`` (in ``field`` and in the detail), and no traceback."""
    assert "Traceback" not in response.text, response.text
    return validation_error(response, field)


def encoded(body: Any) -> bytes:
    return json.dumps(body).encode()


# --- the valid requests are valid ---------------------------------------------------------------


def test_every_body_endpoint_is_attacked():
    """Every POST but rotating a credential, and every PUT, takes a body (so every one is attacked
    here), and every body has string fields to attack; a body struct without a
    valid_request fails below. Rotating takes nothing but its path's agent id,
    whose hostile shapes test_errors.py and test_first_contact.py send."""
    assert BODY_ENDPOINTS
    posts = {e.name for e in ENDPOINTS if e.method in ("POST", "PUT")}
    assert {e.name for e in BODY_ENDPOINTS} == posts - {"rotate_credential"}
    (rotate,) = [e for e in ENDPOINTS if e.name == "rotate_credential"]
    assert rotate.body is None and rotate.ids == ("agentId",)
    for e in BODY_ENDPOINTS:
        assert string_fields(e), e.name


@body_endpoints
async def test_each_valid_request_succeeds(client, world, e):
    path, body = valid_request(e, world)
    response = await client.request(e.method, path, json=body)
    assert response.status_code in e.answers, (e.name, response.status_code, response.text)


# --- not JSON -------------------------------------------------------------------------------------


@body_endpoints
async def test_truncated_json_is_400(hostile, world, e):
    path, body = valid_request(e, world)
    content = encoded(body)
    for end in sorted({1, 2, len(content) // 3, len(content) // 2, len(content) - 2, len(content) - 1}):
        refused(await hostile.request(e.method, path, content=content[:end], headers=JSON), 400, "malformed_json")
    # Cut inside a string, and inside an escape.
    refused(
        await hostile.request(e.method, path, content=content[: content.index(b'"', 2)], headers=JSON),
        400,
        "malformed_json",
    )
    in_escape = b'{"' + string_fields(e)[0].encode() + b'": "\\u00'
    refused(await hostile.request(e.method, path, content=in_escape, headers=JSON), 400, "malformed_json")


@body_endpoints
async def test_non_utf8_json_is_400(hostile, world, e):
    path, body = valid_request(e, world)
    name = string_fields(e)[0]
    text = json.dumps({**body, name: "PLACEHOLDER"})
    for bad in (b"caf\xe9", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xff"):
        content = text.encode().replace(b"PLACEHOLDER", bad)
        refused(await hostile.request(e.method, path, content=content, headers=JSON), 400, "malformed_json")
    for escape in (b"\\ud800", b"\\udfff", b"a\\ud800b"):  # lone surrogates, as JSON escapes
        content = text.encode().replace(b"PLACEHOLDER", escape)
        refused(await hostile.request(e.method, path, content=content, headers=JSON), 400, "malformed_json")
    for content in (
        json.dumps(body).encode("utf-16"),
        json.dumps(body).encode("utf-32"),
        b"\xef\xbb\xbf" + encoded(body),
    ):  # other encodings, and a UTF-8 byte order mark
        refused(await hostile.request(e.method, path, content=content, headers=JSON), 400, "malformed_json")


# --- strings ----------------------------------------------------------------------------------------


@body_endpoints
async def test_nul_in_every_string_field_is_422_naming_it(hostile, world, e):
    """Constrained fields and free text (reason) alike: a NUL is refused."""
    path, body = valid_request(e, world)
    for name in string_fields(e):
        start = body.get(name) if isinstance(body.get(name), str) else "x"
        for value in ("\x00", f"{start}\x00", f"\x00{start}", f"{start[:1]}\x00{start[1:]}"):
            response = await hostile.request(e.method, path, json={**body, name: value})
            if name in AGENT_FIELDS:  # an id of another shape names no agent
                names_no_agent(response, e, value)
            else:
                invalid(response, f"$.{name}")


async def test_nul_inside_metadata_is_kept_as_json_data(client, redis_client, keys):
    """metadata is free JSON, not a string field: a NUL in it is data, kept in
    its JSON escape (Redis never holds a raw NUL) and given back as sent."""
    metadata = {"k\x00": "v\x00w"}
    agent = await register(client, "with-nul", metadata=metadata)
    assert agent["metadata"] == metadata
    stored = await redis_client.hget(keys.agent(TENANT, agent["id"]), "metadata")
    assert "\x00" not in stored and json.loads(stored) == metadata


@body_endpoints
async def test_a_megabyte_string_is_413(hostile, world, e):
    path, body = valid_request(e, world)
    for name in string_fields(e):
        content = encoded({**body, name: "a" * MEGABYTE})
        got = refused(await hostile.request(e.method, path, content=content, headers=JSON), 413, "payload_too_large")
        assert str(MAX_BODY_BYTES) in got["detail"]


@body_endpoints
async def test_a_string_under_the_body_limit_but_over_its_bounds_is_422_naming_it(hostile, world, e):
    path, body = valid_request(e, world)
    for name, t in fields_of(e, *STRING_KINDS):
        room = MAX_BODY_BYTES - len(encoded({**body, name: ""}))
        content = encoded({**body, name: "a" * room})
        assert len(content) == MAX_BODY_BYTES
        if isinstance(t, msgspec.inspect.StrType) and t.max_length is not None:
            assert room > t.max_length
        invalid(await hostile.request(e.method, path, content=content, headers=JSON), f"$.{name}")


@body_endpoints
async def test_a_refusal_does_not_echo_a_huge_value(hostile, world, e):
    """A 422 names the field and what was expected; it does not send tens of KB of
    the caller's input back (path ids, likewise, are cut at 80 characters in a 404).
    Neither a huge value of a field nor a huge unknown field name is echoed."""
    path, body = valid_request(e, world)
    echoed: dict[str, int] = {}
    for name in string_fields(e):
        room = MAX_BODY_BYTES - len(encoded({**body, name: ""}))
        response = await hostile.request(e.method, path, json={**body, name: "a" * room})
        invalid(response, f"$.{name}")
        if len(response.content) > 1000:
            echoed[f"$.{name}"] = len(response.content)
    unknown = "x" * (MAX_BODY_BYTES - len(encoded(body)) - 10)
    response = await hostile.request(e.method, path, json={**body, unknown: 1})
    # The name is named, cut to its first 80 characters.
    cut = f"$.{unknown[:80]}…"
    assert problem(response, 422, "validation_error", field=cut)["detail"].startswith(f"{cut[2:]}: unknown field")
    if len(response.content) > 1000:
        echoed["an unknown field"] = len(response.content)
    assert not echoed, f"bytes of the answer, by what was too long: {echoed}"


# --- emails -----------------------------------------------------------------------------------------

# RFC 5322 atext allows these in a local part; they arrive, are normalized, and are served.
LEGAL = [
    "a{b}@example.com",
    "{acme}@example.com",
    "}{x@example.com",
    "{globex}@Example.com",
    "*?@example.com",
    " Jo{HN}*?@Example.COM ",
]
# Domain literals, quoted local parts, brackets and colons: not the local@domain.tld shape.
ILLEGAL = [
    "a[b]@example.com",
    "[a]@example.com",
    "a]@example.com",
    "a:b@example.com",
    "a@[127.0.0.1]",
    "a@[IPv6:::1]",
    '"a:b"@example.com',
    "a@exa:mple.com",
    "a@example.com:25",
    "mailto:a@example.com",
]
# Look-alikes of ASCII addresses: Cyrillic а о с е, fullwidth ＠ and ａ, zero-width
# and bidi characters, dotless ı, and an internationalized domain not in xn-- form.
HOMOGLYPHS = [
    "\u0430lice@example.com",
    "alice\uff20example.com",
    "\uff41lice@example.com",
    "alice@ex\u0430mple.com",
    "alice@example.\u0441\u043em",
    "alic\u0435@example.com",
    "al\u0131ce@example.com",
    "alice@example.com\u200b",
    "\u200balice@example.com",
    "ali\u200dce@example.com",
    "alice@\u202eexample.com",
    "alice@b\u00fccher.de",
]


def email_body(e: Endpoint, w: World, contact: str) -> tuple[str, dict[str, Any]]:
    path, body = valid_request(e, w)
    return path, {**body, "contactEmail": contact}


@pytest.mark.parametrize("e", email_endpoints(), ids=endpoint_id)
async def test_emails_with_braces_stars_and_question_marks_are_accepted_and_normalized(client, world, e):
    for contact in LEGAL:
        path, body = email_body(e, world, contact)
        response = await client.request(e.method, path, json=body)
        assert response.status_code in e.answers, (contact, response.text)
        answer = response.json()
        if "contactEmail" in answer:
            assert answer["contactEmail"] == contact.strip().lower(), answer


@pytest.mark.parametrize("e", email_endpoints(), ids=endpoint_id)
async def test_emails_with_brackets_or_colons_are_422(hostile, world, e):
    for contact in ILLEGAL:
        path, body = email_body(e, world, contact)
        invalid(await hostile.request(e.method, path, json=body), "$.contactEmail")


@pytest.mark.parametrize("e", email_endpoints(), ids=endpoint_id)
async def test_homoglyph_addresses_are_422(hostile, world, e):
    for contact in HOMOGLYPHS:
        path, body = email_body(e, world, contact)
        invalid(await hostile.request(e.method, path, json=body), "$.contactEmail")


async def test_an_internationalized_domain_in_xn_form_is_accepted(client, world):
    lease = await acquire(client, world.agent, "Alice@XN--bcher-kva.de")
    assert lease["contactEmail"] == "alice@xn--bcher-kva.de"


@pytest.mark.parametrize("e", email_endpoints(), ids=endpoint_id)
async def test_a_letter_that_lowercases_to_ascii_is_still_not_ascii(client, world, e):
    """KELVIN SIGN (U+212A) lower-cases to an ASCII 'k'. "\u212aate@example.com"
    is not ASCII and names another mailbox than kate@example.com, so it is refused
    like every other look-alike, not normalized onto kate's contact."""
    for contact in ("\u212aate@example.com", "\u212aATE@EXAMPLE.COM"):
        path, body = email_body(e, world, contact)
        invalid(await client.request(e.method, path, json=body), "$.contactEmail")


async def test_contacts_with_braces_keep_every_key_in_the_tenants_cluster_slot(client, world, redis_client, keys):
    """A contact is part of a key name (<p>:{acme}:lease:<contact>). Cluster hashes
    the first {…} of a name only, which is the tenant's tag, so braces in the
    contact cannot move a key to another slot."""
    for contact in LEGAL:
        lease = await acquire(client, world.agent, contact)
        await request_consensus(client, world.agent, contactEmail=contact)
        assert await redis_client.exists(keys.lease(TENANT, lease["contactEmail"]))
    slot = key_slot(keys.tenant(TENANT).encode())
    assert slot == key_slot(TENANT.encode())
    tenant_keys = [key async for key in redis_client.scan_iter(match=f"{keys.tenant(TENANT)}:*", count=1000)]
    assert any("{globex}" in key for key in tenant_keys) and any("}{" in key for key in tenant_keys)
    assert {key: key_slot(key.encode()) for key in tenant_keys} == {key: slot for key in tenant_keys}
    # Nothing landed outside the tenant's keys (the only other key is the API-key table).
    everything = [key async for key in redis_client.scan_iter(match=f"{keys.prefix}:*", count=1000)]
    outside = {key for key in everything if not key.startswith(keys.tenant(TENANT))}
    assert outside <= {keys.api_keys()}, outside


# --- numbers ----------------------------------------------------------------------------------------


@body_endpoints
async def test_integers_are_never_coerced_and_stay_in_bounds(hostile, world, e):
    """Numbers as strings, floats (even whole ones), booleans, huge, negative and
    zero integers: 422 naming the field."""
    path, body = valid_request(e, world)
    for name, t in integer_fields(e):
        good = t.ge if t.ge is not None else 1
        values: list[Any] = [
            str(good),
            " 1",
            "0x10",
            float(good),
            good + 0.5,
            True,
            False,
            -1,
            0,
            -(2**63),
            2**63,
            2**64,
            10**30,
            [good],
            {"value": good},
        ]
        if t.le is not None:
            values.append(t.le + 1)
        for value in values:
            if value == 0 and (t.ge or 0) <= 0:
                continue
            invalid(await hostile.request(e.method, path, json={**body, name: value}), f"$.{name}")
        for raw in (b"1" * 400, b"1e400", b"-1e400", b"1.0", b"1e2", b"NaN", b"Infinity", b"01"):
            content = encoded({**body, name: "RAW"}).replace(b'"RAW"', raw)
            response = await hostile.request(e.method, path, content=content, headers=JSON)
            if raw in (b"NaN", b"Infinity", b"01"):  # not JSON at all
                refused(response, 400, "malformed_json")
            else:
                invalid(response, f"$.{name}")


@body_endpoints
async def test_wrong_json_types_in_string_fields_are_422_naming_them(hostile, world, e):
    path, body = valid_request(e, world)
    for name in string_fields(e):
        for value in (1, 0, 1.5, True, False, ["x"], {"x": 1}, [], {}):
            invalid(await hostile.request(e.method, path, json={**body, name: value}), f"$.{name}")


# --- shapes -----------------------------------------------------------------------------------------


@body_endpoints
async def test_arrays_and_scalars_where_the_object_belongs_are_422(hostile, world, e):
    path, body = valid_request(e, world)
    for content in (encoded([body]), b"[]", encoded([[body]]), b"1", b'"x"', b"true", b"null"):
        invalid(await hostile.request(e.method, path, content=content, headers=JSON), "$")


@body_endpoints
async def test_deep_nesting_is_refused_without_recursing(hostile, world, e):
    """Where a struct or a string is expected, msgspec stops at the first bracket:
    422 naming the place, however deep the rest goes (within 64 KiB)."""
    path, body = valid_request(e, world)
    depth = 30_000
    arrays = b"[" * depth + b"]" * depth
    objects = b'{"a":' * (depth // 3) + b"1" + b"}" * (depth // 3)
    for nested, top in ((arrays, "$"), (objects, "$.a")):  # at the top: not an object / an unknown field
        assert len(nested) < MAX_BODY_BYTES
        invalid(await hostile.request(e.method, path, content=nested, headers=JSON), top)
        name = string_fields(e)[0]
        content = encoded({**body, name: "NESTED"}).replace(b'"NESTED"', nested)
        invalid(await hostile.request(e.method, path, content=content, headers=JSON), f"$.{name}")


async def test_deep_nesting_inside_metadata_is_400(hostile, world):
    path, body = valid_request(next(e for e in BODY_ENDPOINTS if e.body is s.RegisterBody), world)
    for depth in (1_000, 30_000):
        for nested in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
            content = encoded({**body, "metadata": {"n": "NESTED"}}).replace(b'"NESTED"', nested)
            if len(content) > MAX_BODY_BYTES:
                continue
            got = refused(await hostile.post(path, content=content, headers=JSON), 400, "malformed_json")
            assert "deep" in got["detail"], got


# --- sizes and encodings ------------------------------------------------------------------------------


@body_endpoints
async def test_a_body_of_exactly_64_kib_is_served(client, world, e):
    path, body = valid_request(e, world)
    content = encoded(body)
    content += b" " * (MAX_BODY_BYTES - len(content))
    assert len(content) == MAX_BODY_BYTES
    response = await client.request(e.method, path, content=content, headers=JSON)
    assert response.status_code in e.answers, (e.name, response.status_code, response.text)


@body_endpoints
async def test_64_kib_and_one_byte_without_a_content_length_is_413(hostile, world, e):
    path, body = valid_request(e, world)
    content = encoded(body)
    content += b" " * (MAX_BODY_BYTES + 1 - len(content))

    async def chunks():
        for start in range(0, len(content), 1000):
            yield content[start : start + 1000]

    response = await hostile.request(e.method, path, content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    refused(response, 413, "payload_too_large")
    # A string field that alone makes the body one byte too large, with a Content-Length.
    name = string_fields(e)[0]
    room = MAX_BODY_BYTES + 1 - len(encoded({**body, name: ""}))
    content = encoded({**body, name: "a" * room})
    assert len(content) == MAX_BODY_BYTES + 1
    refused(await hostile.request(e.method, path, content=content, headers=JSON), 413, "payload_too_large")


@body_endpoints
async def test_form_and_multipart_encodings_of_the_body_are_415(hostile, world, e):
    path, body = valid_request(e, world)
    form = {k: str(v) for k, v in body.items() if v is not None and not isinstance(v, dict)}
    got = refused(await hostile.request(e.method, path, data=form), 415, "unsupported_media_type")
    assert "application/x-www-form-urlencoded" in got["detail"]
    multipart = {"body": ("body.json", encoded(body), "application/json")}
    got = refused(await hostile.request(e.method, path, files=multipart), 415, "unsupported_media_type")
    assert "multipart/form-data" in got["detail"]


# --- duplicate keys ------------------------------------------------------------------------------------


@body_endpoints
async def test_duplicate_keys_each_is_validated_and_the_last_one_wins(client, world, redis_client, keys, e):
    """Documented behaviour (msgspec's): every occurrence of a key given twice is
    decoded and validated in turn, and the last one counts. So a bad value is 422
    wherever it stands, and of two valid tenantIds the last decides: another
    tenant's after the own one is 403, the own one after another tenant's is served."""
    path, body = valid_request(e, world)
    name = string_fields(e)[0]
    good = json.dumps(body[name])
    rest = encoded({k: v for k, v in body.items() if k != name})[1:]  # without its "{"
    before = await snapshot(redis_client, f"{keys.prefix}:*")
    headers = {**JSON, **caller(client, e, world)}  # the client could not tell which agentId counts
    for first, second in ((good, "12"), ("12", good)):
        content = f'{{"{name}": {first}, "{name}": {second}'.encode() + (b", " + rest if rest != b"}" else rest)
        invalid(await client.request(e.method, path, content=content, headers=headers), f"$.{name}")
    own_then_other = encoded({**body, "tenantId": TENANT})[:-1] + f', "tenantId": "{OTHER_TENANT}"}}'.encode()
    refused(await client.request(e.method, path, content=own_then_other, headers=headers), 403, "tenant_mismatch")
    assert await snapshot(redis_client, f"{keys.prefix}:*") == before

    other_then_own = encoded({**body, "tenantId": OTHER_TENANT})[:-1] + f', "tenantId": "{TENANT}"}}'.encode()
    response = await client.request(e.method, path, content=other_then_own, headers=headers)
    assert response.status_code in e.answers, response.text


async def test_duplicate_agent_name_registers_the_last(client):
    response = await client.post(
        "/v1/agent/register", content=b'{"agentName": "first", "agentName": "second"}', headers=JSON
    )
    assert response.status_code == 201 and response.json()["agentName"] == "second", response.text


# --- who may call, before what is sent ------------------------------------------------------------

AGENT_ONLY = [e for e in BODY_ENDPOINTS if "admin" not in e.roles]


@pytest.mark.parametrize("e", AGENT_ONLY, ids=endpoint_id)
async def test_a_key_that_may_not_call_an_agents_route_learns_nothing_of_its_body(hostile, world, e):
    """heartbeat, leases, renewals, consensus requests and votes are an agent's own
    calls: an API key (admin included) is refused 403 before its body is read, so
    a hostile body, even a megabyte of it, is answered the same as a valid one."""
    path, body = valid_request(e, world)
    admin = bearer(API_KEY)
    for content in (encoded(body), encoded(body)[:5], b"\xff", encoded([body]), b"a" * MEGABYTE):
        got = problem(
            await hostile.request(e.method, path, content=content, headers={**JSON, **admin}),
            403,
            "insufficient_scope",
            keyRole="admin",
        )
        assert set(got) == PROBLEM_MEMBERS | {"keyRole"}, got
