"""Every error leaves as application/problem+json (RFC 9457) with a stable ``code``:
the rendering, and the exception handlers that map every failure to its problem."""

from __future__ import annotations

import logging
import os

import msgspec
import redis.exceptions as rx
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from concord.protocol import ERRORS
from concord.server.errors import ConcordError

log = logging.getLogger("concord")

PROBLEM_JSON = "application/problem+json"
_encode = msgspec.json.Encoder().encode
_STANDARD = frozenset({"type", "title", "status", "detail", "code"})


def problem(code: str, detail: str, headers: dict[str, str] | None = None, **extra: object) -> Response:
    status, title = ERRORS[code]
    if not _STANDARD.isdisjoint(extra):
        raise ValueError(f"problem members {sorted(_STANDARD & extra.keys())} are reserved")
    body = {"type": f"urn:concord:problem:{code}", "title": title, "status": status, "detail": detail, "code": code}
    body.update(extra)
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="concord"'
    elif status == 503:
        headers["Retry-After"] = "1"
    elif status == 429:
        headers["Retry-After"] = str(max(1, -(-int(extra.get("retryAfterMs", 1000)) // 1000)))  # type: ignore[call-overload]
    return Response(_encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def error_response(exc: ConcordError) -> Response:
    return problem(exc.code, exc.detail, **exc.extra)


async def _concord_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConcordError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return problem(
            "method_not_allowed",
            f"{request.method} is not allowed on {path}; it takes {allowed.replace(', ', ' or ')}",
            headers=exc.headers,
        )
    detail = f"No endpoint {path}"
    # Paths are served exactly as the API reference writes them: no redirect for a
    # trailing slash (an empty 307 helps no client), but a pointer to the right path.
    if path.endswith("/") and path != "/" and _routed(request, path.rstrip("/")):
        detail += f"; the endpoint is {path.rstrip('/')}, without the trailing slash"
    else:
        detail += "; the API reference is at GET /openapi.json"
    return problem("not_found", detail)


def _routed(request: Request, path: str) -> bool:
    return any(
        getattr(route, "path_regex", None) is not None and route.path_regex.match(path)
        for route in request.app.router.routes
    )


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("Redis unavailable on %s %s: %r", request.method, request.url.path, exc)
    return problem("store_unavailable", "Redis did not answer in time; nothing is known to have changed. Retry.")


async def _store_error(request: Request, exc: Exception) -> Response:
    log.error("Redis refused %s %s: %s", request.method, request.url.path, exc)
    return problem("store_error", "Redis refused the operation; see the service log")


async def _internal_error(request: Request, exc: Exception) -> Response:
    if _inside_redis_py(exc):
        return await _store_unavailable(request, exc)
    log.exception("Unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem("internal_error", "Unexpected error; see the service log")


REDIS_PY = os.path.dirname(rx.__file__) + os.sep
CONCORD = os.path.dirname(os.path.dirname(os.path.dirname(__file__))) + os.sep  # the concord package


def _inside_redis_py(exc: Exception) -> bool:
    """An AttributeError, TypeError or RuntimeError raised while redis-py ran: after
    the last frame of Concord's own code, a frame of redis-py's. Its asyncio cluster
    client closes connections under running commands when the cluster's topology
    changes (a failover, a resharding), and a command then fails on the closed
    connection: ``'NoneType' object has no attribute 'writelines'``, or uvloop's
    "the handler is closed" (redis/redis-py#3835 is another of the kind). Such a
    request met a failing Redis: a 503, safe to retry, like any other."""
    if not isinstance(exc, (AttributeError, TypeError, RuntimeError)):
        return False
    in_redis_py = False
    frame = exc.__traceback__
    while frame is not None:
        filename = frame.tb_frame.f_code.co_filename
        if filename.startswith(CONCORD):
            in_redis_py = False
        elif filename.startswith(REDIS_PY):
            in_redis_py = True
        frame = frame.tb_next
    return in_redis_py


exception_handlers = {
    ConcordError: _concord_error,
    HTTPException: _http_error,
    TimeoutError: _store_unavailable,  # the request deadline (http/deadlines.py)
    rx.ConnectionError: _store_unavailable,
    rx.TimeoutError: _store_unavailable,
    rx.ReadOnlyError: _store_unavailable,  # a replica during failover
    # A cluster between owners of a slot: failing over, resharding, or not yet learnt.
    rx.ClusterError: _store_unavailable,  # also CLUSTERDOWN, MASTERDOWN
    rx.TryAgainError: _store_unavailable,
    rx.AskError: _store_unavailable,  # also MOVED, once redirections ran out
    rx.RedisClusterException: _store_unavailable,  # also a slot no node serves
    rx.OutOfMemoryError: _store_unavailable,
    rx.ResponseError: _store_error,
    # Answered here rather than by Starlette's last-resort handler (Exception), which
    # re-raises after answering: a 503 of redis-py's is no crash to log as one.
    AttributeError: _internal_error,
    TypeError: _internal_error,
    RuntimeError: _internal_error,
    Exception: _internal_error,
}
