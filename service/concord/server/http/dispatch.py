"""The calls agents make on every beat and every send, dispatched without
Starlette's router.

Starlette finds a route by matching each in turn, and wraps every request in its
exception middleware (a Request object and a wrapped ``send``, whether or not
anything fails): several microseconds a request, paid thousands of times a
second by the hot routes (routes.py HOT). ``HotRoutes`` sits inside Observe and
answers those itself: a dict lookup of (method, path), or, for a path with one
id, its prefix and suffix. The endpoint then runs as it would under the router
(the same Route in ``scope["route"]``, the same ``path_params``), and an
exception is answered by the handler Starlette would have chosen (problems.py),
with the same Request. Everything else (another method, a HEAD, a mounted root
path, any other route) goes on to Starlette unchanged, so 404s and 405s stay
Starlette's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

# Set by the endpoint as it starts answering (endpoint.py): an exception after it
# cannot be answered again, and is raised on as Starlette would.
ANSWERING = "concord.answering"


class HotRoutes:
    def __init__(self, app: ASGIApp, routes: Iterable[Route], hot: Iterable[str], handlers: Mapping[Any, Any]) -> None:
        self.app = app
        self._handlers = dict(handlers)
        self._exact: dict[tuple[str, str], Route] = {}
        # method -> [(prefix, suffix, id name, route)]
        self._with_id: dict[str, list[tuple[str, str, str, Route]]] = {}
        names = set(hot)
        for route in routes:
            if route.name not in names or not route.methods:
                continue
            (method,) = route.methods - {"HEAD"}
            ids = re.findall(r"{(\w+)}", route.path)
            if not ids:
                self._exact[(method, route.path)] = route
            elif len(ids) == 1:
                prefix, suffix = route.path.split(f"{{{ids[0]}}}")
                self._with_id.setdefault(method, []).append((prefix, suffix, ids[0], route))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope) if scope["type"] == "http" and not scope.get("root_path") else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        try:
            await route.app(scope, receive, send)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None or scope.get(ANSWERING):
                raise
            response = await handler(Request(scope, receive, send), exc)
            await response(scope, receive, send)
            exc.__traceback__ = None

    def _route(self, scope: Scope) -> Route | None:
        method, path = scope["method"], scope["path"]
        route = self._exact.get((method, path))
        if route is not None:
            scope["path_params"] = {}
            return route
        for prefix, suffix, name, candidate in self._with_id.get(method, ()):
            if path.startswith(prefix) and path.endswith(suffix):
                value = path[len(prefix) : len(path) - len(suffix)]
                if value and "/" not in value:
                    scope["path_params"] = {name: value}
                    return candidate
        return None

    def _handler(self, exc: Exception) -> Any:
        for kind in type(exc).__mro__:
            handler = self._handlers.get(kind)
            if handler is not None:
                return handler
        return None
