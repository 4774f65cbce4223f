"""The Redis client of the service: the configured server or cluster, or the
embedded in-memory store."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from concord.server.redis.cluster import ConcordCluster
from concord.server.settings import Settings


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
            # connections under running commands fails them (cluster.py; http/problems.py, _inside_redis_py).
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
