"""Shared fixtures: one store/API fixture over fakeredis and a real Redis.

The real Redis is a private redis-server this session starts on a free port (or
CONCORD_TEST_REDIS_URL, if set, whose database must hold none of our keys; each
test then works under a key prefix of its own). Without either, real-Redis tests
are skipped and the summary says so plainly; CONCORD_TEST_REQUIRE_REDIS=1 makes
that a failure instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fakeredis.aioredis
import httpx
import pytest
import redis.asyncio

from concord.server.app import create_app
from concord.server.settings import Settings, parse_api_keys
from concord.server.store import Store
from concord.server.store.keys import Keys
from tests.support.api import Fleet
from tests.support.cluster import cluster  # noqa: F401 (the session's cluster, a fixture for every module)
from tests.support.helpers import REDIS_SERVER, RedisServer, unavailable

EXTERNAL_URL = os.environ.get("CONCORD_TEST_REDIS_URL")

# Two tenants and their API keys, configured as CONCORD_API_KEYS would be.
TENANT, OTHER_TENANT = "acme", "globex"
API_KEY, OTHER_API_KEY = "acme-test-key-0123456789", "globex-test-key-0123456789"

_real: dict[str, str | None] = {"url": None, "what": None, "why_not": None}


# The folders of real-process groups, each marked with its name so that a quick run can
# leave them out: `pytest -m "not system and not cluster and not properties and not bench"`.
SLOW_GROUPS = {
    "system": "starts `concord serve` and redis-server processes: the README, concurrency, faults, attacks",
    "properties": "long randomized runs: the model-based test, the history checker, the fuzzer",
    "cluster": "starts a private 3-master, 3-replica Redis Cluster and services on it",
    "bench": "runs the benchmark's smoke run",
}
TESTS = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real: needs a real Redis (a private redis-server, or CONCORD_TEST_REDIS_URL)")
    config.addinivalue_line("markers", "single_server: tests one server's connection; no Redis Cluster variant")
    for group, what in SLOW_GROUPS.items():
        config.addinivalue_line("markers", f"{group}: tests/{group}/, {what}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test of a slow group's folder with the group's name, and drop the
    cluster variant of tests marked single_server (not a skip: they have none)."""
    for item in items:
        group = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else None
        if group in SLOW_GROUPS:
            item.add_marker(group)
    single = [
        item
        for item in items
        if item.get_closest_marker("single_server")
        and getattr(item, "callspec", None) is not None
        and item.callspec.params.get("redis_client") == "cluster"
    ]
    if single:
        config.hook.pytest_deselected(items=single)
        items[:] = [item for item in items if item not in single]


@pytest.fixture(scope="session")
def real_redis_url(tmp_path_factory: pytest.TempPathFactory):
    """URL of this session's real Redis; skips (or fails, if required) without one."""
    if _real["url"] is None and _real["why_not"] is None:
        if EXTERNAL_URL:
            _real.update(url=EXTERNAL_URL, what=f"CONCORD_TEST_REDIS_URL={EXTERNAL_URL}")
        elif REDIS_SERVER:
            server = RedisServer(tmp_path_factory.mktemp("redis")).start()
            _real.update(url=server.url, what=f"a private redis-server {server.version()} on port {server.port}")
            _real["server"] = server  # type: ignore[assignment]
        else:
            _real["why_not"] = "no redis-server binary on PATH and CONCORD_TEST_REDIS_URL is unset"
    if _real["url"] is None:
        unavailable(f"real Redis unavailable: {_real['why_not']}")
    yield _real["url"]


def pytest_sessionfinish(session: pytest.Session) -> None:
    server = _real.pop("server", None)
    if server is not None:
        server.stop()  # type: ignore[union-attr]


def pytest_terminal_summary(terminalreporter) -> None:
    if _real["url"]:
        terminalreporter.write_line(f"real-Redis tests ran against {_real['what']}", green=True)
    elif _real["why_not"]:
        terminalreporter.write_line(
            f"real-Redis tests were SKIPPED ({_real['why_not']}); only fakeredis ran", yellow=True, bold=True
        )


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own: tests share a server, never keys."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(
    params=["fakeredis", pytest.param("redis", marks=pytest.mark.real), pytest.param("cluster", marks=pytest.mark.real)]
)
async def redis_client(request: pytest.FixtureRequest) -> AsyncIterator[redis.asyncio.Redis]:
    """An async client on a fresh fakeredis, on the session's real Redis, or on the
    session's 3-master, 3-replica Redis Cluster (tests/support/cluster.py)."""
    if request.param == "fakeredis":
        client = fakeredis.aioredis.FakeRedis(decode_responses=True)
    elif request.param == "redis":
        client = redis.asyncio.Redis.from_url(request.getfixturevalue("real_redis_url"), decode_responses=True)
    else:
        client = request.getfixturevalue("cluster").async_client()
        await client.initialize()  # as the service does at start-up (app._check_redis)
    yield client
    await client.aclose()


@pytest.fixture
async def real_client(real_redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An async client on the session's real Redis only."""
    client = redis.asyncio.Redis.from_url(real_redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
def window_seconds() -> int:
    """The heartbeat window of the store and app fixtures; override it in a module to change it."""
    return 300


@pytest.fixture
async def store(redis_client: redis.asyncio.Redis, keys: Keys, window_seconds: int) -> AsyncIterator[Store]:
    store = Store(redis_client, keys, window_seconds)
    yield store
    await store.aclose()


@pytest.fixture
def settings(prefix: str, window_seconds: int) -> Settings:
    return Settings(
        redis_url="redis://injected-by-tests",
        api_keys=parse_api_keys(f"{TENANT}:{API_KEY},{OTHER_TENANT}:{OTHER_API_KEY}"),
        key_prefix=prefix,
        heartbeat_window_seconds=window_seconds,
    )


@asynccontextmanager
async def running(app) -> AsyncIterator[object]:
    """Run the app's lifespan and give each request its state, as a server would."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope, receive, send):
            scope["state"] = dict(state)
            await app(scope, receive, send)

        yield with_state


@pytest.fixture
async def asgi_app(settings: Settings, redis_client: redis.asyncio.Redis):
    """The app in process, on fakeredis or the real Redis (the redis_client parameter)."""
    async with running(create_app(settings, redis_client)) as app:
        yield app


def _client(app, api_key: str | None) -> httpx.AsyncClient:
    """A client of the app that authenticates as a fleet does (support/api.py Fleet):
    each agent it registered with that agent's credential, the rest with ``api_key``."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://concord.test", auth=Fleet(api_key)
    )


@pytest.fixture
async def client(asgi_app) -> AsyncIterator[httpx.AsyncClient]:
    """HTTP client of tenant ``acme``."""
    async with _client(asgi_app, API_KEY) as c:
        yield c


@pytest.fixture
async def other_client(asgi_app) -> AsyncIterator[httpx.AsyncClient]:
    """HTTP client of tenant ``globex``, on the same app and store."""
    async with _client(asgi_app, OTHER_API_KEY) as c:
        yield c


@pytest.fixture
async def anonymous_client(asgi_app) -> AsyncIterator[httpx.AsyncClient]:
    """HTTP client sending no Authorization header."""
    async with _client(asgi_app, None) as c:
        yield c
