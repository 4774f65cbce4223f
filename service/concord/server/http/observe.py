"""The ASGI middleware that counts every HTTP request and writes its access line.

It sits inside Starlette's ServerErrorMiddleware and outside the exception
handlers (app.py), so it sees every answer the handlers make; an exception that
passes through it is answered 500 by ServerErrorMiddleware, and is counted and
logged here as 500.

Per request: one ``Metrics.request`` (dict and list increments), and with the
access log on, one msgspec encode and one write(2) of one line on stdout.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from concord.server.metrics import METRICS, Metrics

# Other methods are counted as "other": the method label stays bounded.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# A text-mode value made only of these is written bare; any other is JSON-quoted,
# so a value can never split a line or pose as another field.
_BARE = re.compile(r"[\x21-\x7e]+")


class AccessLine(msgspec.Struct):
    """One JSON access line (docs/observability.md): every field always present."""

    ts: str  # when the answer was done, UTC, ISO 8601 with milliseconds
    method: str
    route: str  # the route template, or "unmatched"
    path: str  # as sent, still percent-encoded, without the query
    status: int
    ms: float  # from receiving the request to its last byte sent
    tenant: str | None
    principal: str | None  # who authenticated: an API key's id (never the key), or an agent's id
    role: str | None  # the key's role, or "agent" for an agent credential
    agent: str | None  # the agentId or requestingAgentId the request acted for
    client: str | None  # the peer's address


_encode = msgspec.json.Encoder().encode


class Observe:
    """Counts each HTTP request in ``metrics`` by route template, method and status,
    and writes one access line per request (``access_log``: json, text or off)
    through ``write`` (default: stdout, one write(2) per line)."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics = METRICS,
        access_log: str = "json",
        write: Callable[[bytes], object] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.line_of = {"json": self._json, "text": self._text, "off": None}[access_log]
        self.write = write or stdout_writer()
        self._second = -1
        self._second_text = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        # Until the response starts: an exception now is answered 500 by ServerErrorMiddleware.
        status = 500

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            seconds = time.perf_counter() - start
            # The router sets scope["route"] on the route it matched (also on a
            # method mismatch, answered 405); a template keeps the label bounded.
            route = getattr(scope.get("route"), "path", UNMATCHED)
            method = scope["method"]
            self.metrics.request(route, method if method in METHODS else "other", status, seconds)
            if self.line_of is not None:
                try:
                    self.write(self.line_of(scope, route, status, seconds))
                except OSError:  # stdout is gone; the request itself was answered
                    pass

    def _json(self, scope: Scope, route: str, status: int, seconds: float) -> bytes:
        client, grant = scope.get("client"), scope.get("concord.principal")
        line = AccessLine(
            self._now(),
            scope["method"],
            route,
            _path(scope),
            status,
            round(seconds * 1000, 3),
            scope.get("concord.tenant"),
            grant.id if grant is not None else None,
            grant.role if grant is not None else None,
            scope.get("concord.agent"),
            client[0] if client else None,
        )
        return _encode(line) + b"\n"

    def _text(self, scope: Scope, route: str, status: int, seconds: float) -> bytes:
        client, grant = scope.get("client"), scope.get("concord.principal")
        key, role = (grant.id, grant.role) if grant is not None else (None, None)
        return (
            f"{self._now()} {_bare(scope['method'])} {_bare(_path(scope))} {status} {seconds * 1000:.3f}ms"
            f" route={_bare(route)} tenant={_bare(scope.get('concord.tenant'))}"
            f" principal={_bare(key)} role={_bare(role)}"
            f" agent={_bare(scope.get('concord.agent'))} client={_bare(client[0] if client else None)}\n"
        ).encode()

    def _now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:  # formatting the date once a second, not per line
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1000):03d}Z"


def _path(scope: Scope) -> str:
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if raw else scope["path"]


def _bare(value: str | None) -> str:
    if value is None:
        return "-"
    return value if _BARE.fullmatch(value) else _encode(value).decode()


def stdout_writer() -> Callable[[bytes], None]:
    """Writes each line with write(2) on stdout's descriptor, unbuffered: a line is
    on its way when the request ends, and lines of workers sharing stdout do not
    interleave (a pipe takes a write of up to PIPE_BUF bytes whole, an O_APPEND file
    any write). Without a descriptor (a captured stdout), through sys.stdout."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):

        def write_text(line: bytes) -> None:
            sys.stdout.write(line.decode())
            sys.stdout.flush()

        return write_text

    def write(line: bytes) -> None:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]

    return write
