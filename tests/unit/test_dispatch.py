"""The hot routes' own dispatch (concord.server.http.dispatch.HotRoutes): it finds
exactly the route Starlette's router would, leaves everything else to Starlette,
and answers a failure as Starlette's exception middleware would."""

from __future__ import annotations

import pytest
from starlette.routing import Match

from concord.server.errors import ConcordError
from concord.server.http.dispatch import ANSWERING, HotRoutes
from concord.server.http.problems import exception_handlers
from concord.server.http.routes import HOT, routes

ID = "cons_0b7d5c1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e"


def _paths() -> list[str]:
    """Every route's path with an id filled in, and the near misses of each: a
    trailing slash, one segment more, an empty id, an id with a slash."""
    found: list[str] = []
    for route in routes:
        path = route.path
        for filled in (ID, "", f"{ID}/x"):
            concrete = path
            for name in route.param_convertors:
                concrete = concrete.replace(f"{{{name}}}", filled)
            found += [concrete, concrete + "/", concrete + "/vote", concrete[:-1]]
    return sorted(set(found))


def _router(scope: dict) -> tuple[object, dict] | None:
    """What Starlette's router runs for ``scope``: the first route that matches it fully."""
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return route, child["path_params"]
    return None


def _scope(method: str, path: str, **extra: object) -> dict:
    return {"type": "http", "method": method, "path": path, "root_path": "", **extra}


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "HEAD"])
def test_a_hot_route_is_the_route_the_router_would_run_and_nothing_else_is_taken(method):
    hot = HotRoutes(None, routes, HOT, exception_handlers)
    taken = 0
    for path in _paths():
        scope = _scope(method, path)
        route = hot._route(scope)
        if route is None:
            continue
        taken += 1
        assert route.name in HOT and method != "HEAD", path
        assert (route, scope["path_params"]) == _router(_scope(method, path)), path
    if method in ("GET", "POST"):
        assert taken > 0, "no hot route of this method was found"


def test_every_hot_route_is_taken():
    hot = HotRoutes(None, routes, HOT, exception_handlers)
    for route in routes:
        if route.name in HOT:
            path = route.path.replace("{consensusId}", ID).replace("{leaseId}", ID)
            (method,) = route.methods - {"HEAD"}
            assert hot._route(_scope(method, path)) is route, route.path


async def test_a_request_under_a_root_path_or_not_http_goes_on_to_starlette():
    reached: list[dict] = []

    async def starlette(scope, receive, send):
        reached.append(scope)

    hot = HotRoutes(starlette, routes, HOT, exception_handlers)
    heartbeat = next(route for route in routes if route.name == "heartbeat")
    for scope in (_scope("POST", heartbeat.path, root_path="/concord"), {"type": "lifespan"}):
        await hot(scope, None, None)
    assert len(reached) == 2 and "route" not in reached[0]


def _failing(error: Exception, answering: bool):
    async def endpoint(scope, receive, send):
        if answering:
            scope[ANSWERING] = True
        raise error

    return endpoint


async def test_a_failure_is_answered_by_its_handler_as_a_problem():
    hot = HotRoutes(None, routes, HOT, exception_handlers)
    route = next(route for route in routes if route.name == "heartbeat")
    route_app, route.app = route.app, _failing(ConcordError("agent_not_found", "No agent x"), answering=False)
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    try:
        await hot(_scope("POST", route.path, headers=[], query_string=b""), None, send)
    finally:
        route.app = route_app
    assert sent[0]["status"] == 404
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]
    assert b'"code":"agent_not_found"' in sent[1]["body"]


async def test_a_failure_after_the_answer_began_is_raised_not_answered_twice():
    hot = HotRoutes(None, routes, HOT, exception_handlers)
    route = next(route for route in routes if route.name == "heartbeat")
    route_app, route.app = route.app, _failing(OSError("the client went away"), answering=True)

    async def send(message):
        raise AssertionError(f"answered again: {message}")

    try:
        with pytest.raises(OSError, match="the client went away"):
            await hot(_scope("POST", route.path, headers=[], query_string=b""), None, send)
    finally:
        route.app = route_app
