"""The application: routes, exception handlers, and the lifespan that builds the
Redis client and the Store and hands them to requests as typed state."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import redis.exceptions as rx
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from concord.server.errors import ConcordError, error_response, problem
from concord.server.http import routes as api
from concord.server.http.auth import Authenticator
from concord.server.http.deadlines import Deadlines
from concord.server.http.observe import Observe
from concord.server.metrics import METRICS, Exporter
from concord.server.redis.cluster import ConcordCluster
from concord.server.settings import Settings
from concord.server.store import Store
from concord.server.store.keys import Keys

log = logging.getLogger("concord")

# Every endpoint is declared in api.py; the route table is made from those declarations.
# Starlette tries routes in order, so the calls agents make on every send and every
# beat come first (no two routes match the same request, so order changes nothing else).
HOT = ("heartbeat", "send_check", "acquire_lease", "vote", "get_consensus", "renew_lease", "register")
routes = [
    Route(e.path, e, methods=[e.method], name=e.name)
    for e in sorted(api.ENDPOINTS, key=lambda e: HOT.index(e.name) if e.name in HOT else len(HOT))
]


class State(TypedDict):
    settings: Settings
    store: Store
    auth: Authenticator
    deadlines: Deadlines


def connect(settings: Settings) -> Redis:
    """A Redis client for the settings: the configured server, or the embedded store."""
    if settings.redis_url is None:
        from fakeredis.aioredis import FakeRedis

        return FakeRedis(decode_responses=True)
    timeout = settings.redis_timeout_seconds
    if settings.redis_cluster:
        # redis-py's cluster client: it learns the slot map from the node named,
        # routes each command by its key's slot, and follows MOVED/ASK and
        # failovers itself. Every script's keys share their tenant's slot.
        return ConcordCluster.from_url(
            settings.redis_url,
            # On MOVED, note the slot's new owner, never close every connection to
            # learn the whole map again (by default every fifth MOVED does): closing
            # connections under running commands fails them (cluster.py, _inside_redis_py).
            reinitialize_steps=0,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=settings.redis_max_connections,
        )
    # A blocking pool: a request finding every connection busy waits for one (its
    # deadline still bounds the wait) instead of failing at once as the default
    # pool does when it is full.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=timeout,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One quick retry after a dropped connection; the request deadline bounds the rest.
        # Every script is safe to run twice, so a retry never applies a change twice.
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
        health_check_interval=30,
    )
    return Redis.from_pool(pool)


def create_app(settings: Settings | None = None, redis: Redis | None = None) -> Starlette:
    """The ASGI app. Tests pass ``settings`` and a ``redis`` client of their own;
    ``concord serve`` passes neither, so both come from the environment."""
    settings = settings or Settings.from_env()
    # Counts go to this process's METRICS; with several workers, the exporter's
    # snapshot files let /metrics answer for all of them (service/metrics.py).
    exporter = Exporter(METRICS, settings.metrics_dir)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        client = redis if redis is not None else connect(settings)
        store = Store(
            client,
            Keys(settings.key_prefix),
            settings.heartbeat_window_seconds,
            settings.redis_timeout_seconds,
            settings.events_max_length,
            settings.replication,
        )
        if settings.redis_url is None and redis is None:
            await _start_embedded(settings, store)
        elif redis is None:
            await _check_redis(client, settings.redis_url)
        if redis is None:  # serving (tests bring their own client, and their own garbage)
            # Everything built so far lives as long as the process: moved out of the
            # collector's sight, it is not scanned again by every full collection,
            # which under load cost a quarter of the throughput and most of the p99
            # latency (docs/performance.md).
            gc.freeze()
        try:
            async with exporter.running():
                yield {
                    "settings": settings,
                    "store": store,
                    "auth": Authenticator(settings.api_keys, store.tenant_of_key),
                    "deadlines": Deadlines(settings.redis_timeout_seconds),
                }
        finally:
            await store.aclose()
            if redis is None:
                await client.aclose()

    return Starlette(
        # /metrics is for the scraper, not an API operation: no key, not in ENDPOINTS or the OpenAPI document.
        routes=[*routes, Route("/metrics", exporter.endpoint, methods=["GET"], name="metrics")],
        exception_handlers=exception_handlers,
        middleware=[Middleware(Observe, metrics=METRICS, access_log=settings.access_log)],
        lifespan=lifespan,
    )


async def _start_embedded(settings: Settings, store: Store) -> None:
    log.info(
        "Concord is running on its embedded in-memory store (CONCORD_REDIS_URL is unset): "
        "state lives in this process only and is gone when it stops"
    )
    if not settings.api_keys:
        api_key = await store.create_api_key("demo")
        log.warning("No API key is configured: created one for tenant 'demo': %s", api_key)


async def _check_redis(client: Redis, url: str | None) -> None:
    """Warn when Redis may evict leases, and start even if Redis is not up yet:
    /readyz says 503 until it answers, and requests work as soon as it does."""
    try:
        if isinstance(client, RedisCluster):
            # Learn the slot map before the first requests: redis-py's cluster client
            # lets concurrent first commands on a fresh client race on one connection
            # (AttributeError on `writelines`), and none come before this.
            await client.initialize()
        config = await client.config_get("maxmemory-policy")
    except (rx.ConnectionError, rx.TimeoutError, rx.RedisClusterException) as exc:
        log.warning("Redis does not answer yet (%s); /readyz answers 503 until it does", exc)
        return
    except rx.ResponseError as exc:
        log.warning("Cannot read maxmemory-policy (%s); make sure it is noeviction, or leases may be evicted", exc)
        return
    policy = config.get("maxmemory-policy", "unknown")
    if policy != "noeviction":
        log.warning(
            "Redis maxmemory-policy is %r: at maxmemory Redis may evict leases (keys with a TTL), and an evicted "
            "lease looks like a free contact. Set maxmemory-policy noeviction.",
            policy,
        )


# --- exception handlers: every error leaves as problem+json --------------------


async def _concord_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConcordError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return problem(
            "method_not_allowed", f"{request.method} is not allowed on {request.url.path}", headers=exc.headers
        )
    return problem("not_found", f"No endpoint {request.url.path}")


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
CONCORD = os.path.dirname(os.path.dirname(__file__)) + os.sep  # the concord package


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
    TimeoutError: _store_unavailable,  # the request deadline (deadlines.py)
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
