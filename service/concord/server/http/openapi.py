"""The OpenAPI 3.1 document, built from the endpoint declarations of routes.py and
the msgspec structs that decode requests and encode answers.

Nothing here is written by hand per endpoint: a new endpoint, field or error code
appears in the document because it appears in the code that serves it.
"""

from __future__ import annotations

from collections import defaultdict
from functools import cache
from importlib import metadata
from typing import Any

import msgspec

from concord import protocol as s
from concord.protocol import ERRORS, ID_PATTERNS
from concord.server.http.decoding import PATH_IDS, PATH_NAMES
from concord.server.http.endpoint import Endpoint

REF = "#/components/schemas/{name}"
PROBLEM_JSON = "application/problem+json"
# Headers some answers carry, by status.
ANSWER_HEADERS = {
    401: {"WWW-Authenticate": "Bearer"},
    429: {"Retry-After": "seconds until a token is due"},
    503: {"Retry-After": "seconds to wait before retrying"},
}


@cache
def document(endpoints: tuple[Endpoint, ...]) -> bytes:
    """The document of ``endpoints`` as JSON, built once."""
    return msgspec.json.encode(build(endpoints))


def build(endpoints: tuple[Endpoint, ...]) -> dict[str, Any]:
    types = {s.Problem, s.Event}
    for e in endpoints:
        types.update(t for t in (e.body, e.query, *e.answers.values()) if t is not None)
    (_, components) = msgspec.json.schema_components(sorted(types, key=str), ref_template=REF)
    paths: dict[str, dict[str, Any]] = defaultdict(dict)
    for e in endpoints:
        paths[e.path][e.method.lower()] = _operation(e, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Concord",
            "version": _version(),
            "description": "Coordination for fleets of AI agents sharing one email tenant: agents, heartbeats, "
            "contact leases with fencing tokens, consensus votes. Errors are application/problem+json with "
            "a stable `code`.",
        },
        "paths": dict(paths),
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "An API key"}},
        },
    }


def _operation(e: Endpoint, components: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": e.name,
        "summary": e.summary,
        "security": [{"apiKey": []}] if e.authenticated else [],
        "parameters": _path_parameters(e) + _query_parameters(e, components) + _header_parameters(e),
        "responses": _responses(e),
    }
    if e.body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(e.body)}}}
    return operation


def _path_parameters(e: Endpoint) -> list[dict[str, Any]]:
    return [_path_parameter(name) for name in e.ids]


def _path_parameter(name: str) -> dict[str, Any]:
    if name in PATH_NAMES:  # a name, such as an action: its type's own schema
        schema = msgspec.json.schema(PATH_NAMES[name])
        return {"name": name, "in": "path", "required": True, "description": schema["description"], "schema": schema}
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": "An id of another shape, or of another tenant, answers 404",
        "schema": {"type": "string", "pattern": f"^{ID_PATTERNS[PATH_IDS[name]].pattern}$"},
    }


def _query_parameters(e: Endpoint, components: dict[str, Any]) -> list[dict[str, Any]]:
    if e.query is None:
        return []
    schema = components[e.query.__name__]
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema["properties"].items()
    ]


def _header_parameters(e: Endpoint) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "header", "required": False, "description": text, "schema": {"type": "string"}}
        for name, text in e.request_headers.items()
    ]


def _headers(described: dict[str, str]) -> dict[str, Any]:
    return {name: {"description": text, "schema": {"type": "string"}} for name, text in described.items()}


def _responses(e: Endpoint) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, kind in e.answers.items():
        schema = {"type": "object"} if kind == dict[str, Any] else _ref(kind)
        responses[str(status)] = {"description": e.summary, "content": {"application/json": {"schema": schema}}}
        if e.event_stream:
            responses[str(status)]["content"]["text/event-stream"] = {
                "schema": {
                    "type": "string",
                    "description": "Server-Sent Events: `id:` the event id, `event:` its "
                    f"type, `data:` the event as JSON ({REF.format(name=s.Event.__name__)})",
                }
            }
        if e.answer_headers:
            responses[str(status)]["headers"] = _headers(e.answer_headers)
    by_status: dict[int, list[str]] = defaultdict(list)
    for code in e.errors:
        by_status[ERRORS[code][0]].append(code)
    for status, codes in sorted(by_status.items()):
        answer: dict[str, Any] = {
            "description": "Problem: " + ", ".join(f"`{code}`" for code in codes),
            "content": {PROBLEM_JSON: {"schema": _ref(s.Problem)}},
        }
        if status in ANSWER_HEADERS:
            answer["headers"] = _headers(ANSWER_HEADERS[status])
        responses[str(status)] = answer
    return responses


def _ref(kind: type) -> dict[str, str]:
    return {"$ref": REF.format(name=kind.__name__)}


def _version() -> str:
    try:
        return metadata.version("concord")
    except metadata.PackageNotFoundError:
        return "0"
