"""The application: the route table, the exception handlers, and the lifespan that
builds the Redis client and the Store and hands them to requests as typed state."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import redis.exceptions as rx
from redis.asyncio import Redis, RedisCluster
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from concord.protocol import routes as paths
from concord.server.http.auth import Authenticator
from concord.server.http.deadlines import Deadlines
from concord.server.http.dispatch import HotRoutes
from concord.server.http.observe import Observe
from concord.server.http.problems import exception_handlers
from concord.server.http.routes import HOT, routes
from concord.server.http.throttle import Throttle
from concord.server.metrics import METRICS, Exporter
from concord.server.redis.batcher import Replication
from concord.server.redis.connect import connect
from concord.server.settings import Settings
from concord.server.store import Store
from concord.server.store.keys import Keys

log = logging.getLogger("concord")


class State(TypedDict):
    settings: Settings
    store: Store
    auth: Authenticator
    throttle: Throttle
    deadlines: Deadlines


def create_app(settings: Settings | None = None, redis: Redis | None = None) -> Starlette:
    """The ASGI app. Tests pass ``settings`` and a ``redis`` client of their own;
    ``concord serve`` passes neither, so both come from the environment."""
    settings = settings or Settings.from_env()
    # Counts go to this process's METRICS; with several workers, the exporter's
    # snapshot files let /metrics answer for all of them (server/metrics.py).
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
            Replication.within(settings.min_replicas, settings.redis_timeout_seconds),
            settings.quotas,
        )
        if settings.redis_url is None and redis is None:
            await _start_embedded(settings, store)
        elif redis is None:
            await _check_redis(settings, store)
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
                    "auth": Authenticator(settings.api_keys, store.apikeys.grant_of, store.agents.credential),
                    "throttle": Throttle(settings.rate_limits),
                    "deadlines": Deadlines(settings.redis_timeout_seconds),
                }
        finally:
            await store.aclose()
            if redis is None:
                await client.aclose()

    app = Starlette(
        # /metrics is for the scraper, not an API operation: no key, not in ENDPOINTS or the OpenAPI document.
        routes=[*routes, Route(paths.METRICS, exporter.endpoint, methods=["GET"], name="metrics")],
        exception_handlers=exception_handlers,
        middleware=[
            Middleware(Observe, metrics=METRICS, access_log=settings.access_log),
            # The hot routes skip the router and the exception middleware (http/dispatch.py).
            Middleware(HotRoutes, routes=routes, hot=HOT, handlers=exception_handlers),
        ],
        lifespan=lifespan,
    )
    # A path with a trailing slash is not redirected (an empty 307 helps no client):
    # it is a not_found problem that names the path without the slash (http/problems.py).
    app.router.redirect_slashes = False
    return app


async def _start_embedded(settings: Settings, store: Store) -> None:
    log.info(
        "Concord is running on its embedded in-memory store (CONCORD_REDIS_URL is unset): "
        "state lives in this process only and is gone when it stops"
    )
    await store.scripts.load()
    if not settings.api_keys:
        api_key, _ = await store.apikeys.create("demo")
        log.warning("No API key is configured: created one for tenant 'demo': %s", api_key)


async def _check_redis(settings: Settings, store: Store) -> None:
    """Load the scripts, warn when Redis may evict leases or when no API key can
    authenticate anyone, and start even if Redis is not up yet: /readyz says 503
    until it answers, and requests work as soon as it does."""
    client = store.redis
    try:
        if isinstance(client, RedisCluster):
            # Learn the slot map before the first requests: redis-py's cluster client
            # lets concurrent first commands on a fresh client race on one connection
            # (AttributeError on `writelines`), and none come before this.
            await client.initialize()
        # Loaded now, the first calls find their scripts (a NOSCRIPT then would be
        # counted as a Redis error on /metrics, with nothing wrong).
        await store.scripts.load()
        if not settings.api_keys and not await store.apikeys.any():
            log.warning(
                "No API key is configured or stored in Redis, so every /v1 request answers 401. Create one with "
                "`concord keys create --tenant <tenant>` (with this CONCORD_REDIS_URL and CONCORD_KEY_PREFIX), or "
                "set CONCORD_API_KEYS=<tenant>:<key> and restart"
            )
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
