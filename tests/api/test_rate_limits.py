"""Rate limits (CONCORD_RATE_LIMITS): token buckets per principal and per API key in
each instance's memory (on by default), and per tenant and per agent in Redis.

Through the API, on fakeredis and on a real Redis (the app in process, built with
the Settings `concord serve` would read). In process, on a clock the test moves:

* by default an agent credential gets its burst (200), then 429 rate_limited
  with Retry-After and retryAfterMs; an API key gets its own (key scope);
* a credential's bucket is its digest's: a forged credential claiming the
  victim's id drains only its own bucket, and the victim is still served; two
  agents have two buckets; a key's bucket is its own, and registering draws from
  the enrolling key's;
* a request the in-process limit refuses costs no Redis work: it is 429 with Redis
  down, it issues no Redis command, and takes no token from a Redis bucket;
* `off` means no limit at all; unauthenticated endpoints are never limited.

In Redis:

* a bucket lets its burst through, then answers 429 rate_limited with
  Retry-After (whole seconds, at least 1) and retryAfterMs;
* the agent bucket is the agent of the credential a request carries, on every call
  it makes (reads too): another agent of the tenant is not held back by it, nor is
  a request made with an API key, even one naming the agent;
* a forged credential claiming an agent is refused (401) before any token is
  taken: it never drains the agent's bucket, nor its tenant's;
* one tenant's buckets never limit another tenant, whatever agent id the other
  tenant names;
* registration takes from the tenant's bucket only;
* a request takes from both of its buckets or from neither;
* tokens come back at the configured rate (polled, with a deadline);
* N concurrent requests against a bucket of B tokens get exactly B answers;
  across `concord serve` worker processes too;
* unset means the in-process defaults only, and then no rate key is ever written;
* a malformed CONCORD_RATE_LIMITS stops `concord` with a message naming it.

And lua/rate_limit.lua itself, called directly on both backends: every reply
(OK, RATE_LIMITED with the wait), the bucket it writes (tokens, at, expiry),
refill and its cap, and nothing written when it refuses.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import fakeredis
import fakeredis.aioredis
import httpx
import pytest
import redis.asyncio
from redis.exceptions import ResponseError

import concord.server.http.auth as auth_module
from concord.server import app as app_module
from concord.server.app import create_app
from concord.server.errors import ConcordError
from concord.server.http.auth import FAILURE_BURST
from concord.server.http.throttle import Throttle
from concord.server.principals import AgentPrincipal, KeyGrant
from concord.server.settings import (
    DEFAULT_RATE_LIMITS,
    ConfigError,
    Settings,
    key_digest,
    parse_api_keys,
    parse_rate_limits,
)
from concord.server.store import Store
from concord.server.store.keys import Keys, agent_id_for
from concord.server.store.replies import Reply
from tests.api.credential_support import forged
from tests.cli.test_serve_and_keys import concord
from tests.conftest import API_KEY, OTHER_API_KEY, running
from tests.lua.scripts_support import dump
from tests.support.api import (
    OTHER_TENANT,
    PROBLEM_MEMBERS,
    TENANT,
    V1,
    C,
    Fleet,
    bearer,
    credential_of,
    problem,
    redis_ms,
)
from tests.support.helpers import Stack, eventually, free_port, running_stack, wait_until
from tests.system.security_support import security_report
from tests.unit.test_throttle import Clock

AGENTS = f"{V1}/agents"
HOUR_RATE_MS = 1 / 3_600_000  # one token an hour, in tokens per millisecond
# A rate such as 1/h is 2.777...e-07 tokens/ms in floating point, whose inverse is a hair over
# 3 600 000: ceil() then makes the wait 1 ms longer. Harmless, and allowed for.
ROUNDING_MS = 1


def http(app, api_key: str) -> httpx.AsyncClient:
    """A client that authenticates as a fleet does (support/api.py Fleet): each agent it
    registered with that agent's credential, everything else with ``api_key``."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://concord.test", auth=Fleet(api_key)
    )


@asynccontextmanager
async def deployment(
    redis_client: redis.asyncio.Redis, prefix: str, limits: str, more_keys: str = ""
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Clients of tenants acme and globex on an app whose CONCORD_RATE_LIMITS is
    ``limits`` (and ``more_keys`` in CONCORD_API_KEYS). Apps on one Redis and prefix
    share their Redis buckets, as instances do; each has its in-process ones."""
    settings = Settings(
        redis_url="redis://injected-by-tests",
        api_keys=parse_api_keys(f"{TENANT}:{API_KEY},{OTHER_TENANT}:{OTHER_API_KEY},{more_keys}"),
        key_prefix=prefix,
        rate_limits=parse_rate_limits(limits),
    )
    async with (
        running(create_app(settings, redis_client)) as app,
        http(app, API_KEY) as a,
        http(app, OTHER_API_KEY) as b,
    ):
        yield a, b


async def enrol(client: httpx.AsyncClient, name: str) -> tuple[str, str]:
    """Register an agent: its id and its (new) credential."""
    response = await client.post(f"{V1}/register", json={"agentName": name})
    assert response.status_code in (200, 201), response.text
    return response.json()["id"], response.json()["credential"]


async def register(client: httpx.AsyncClient, name: str) -> str:
    return (await enrol(client, name))[0]


async def heartbeat(client: httpx.AsyncClient, agent_id: str, token: str | None = None) -> httpx.Response:
    """A heartbeat of ``agent_id``: with its credential (the fleet's, or ``token``)."""
    return await client.post(f"{C}/heartbeat", json={"agentId": agent_id}, headers=bearer(token) if token else None)


def limited(response: httpx.Response) -> int:
    """Assert ``response`` is a 429 rate_limited as documented; returns its retryAfterMs."""
    body = problem(response, 429, "rate_limited")
    assert set(body) == PROBLEM_MEMBERS | {"retryAfterMs"}, body
    wait_ms = body["retryAfterMs"]
    assert isinstance(wait_ms, int) and wait_ms >= 1, body
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
    assert int(retry_after) == max(1, math.ceil(wait_ms / 1000)), (retry_after, wait_ms)
    assert f"{wait_ms} ms" in body["detail"], body
    return wait_ms


async def rate_keys(redis_client: redis.asyncio.Redis, keys: Keys) -> list[str]:
    return sorted([key async for key in redis_client.scan_iter(match=f"{keys.prefix}:*:rate*")])


# --- in process: a bucket per principal and per key ---------------------------

ENROLL_KEY, GATE_KEY = "acme-enroll-key-0123456789", "acme-gate-key-0123456789"
MORE_KEYS = f"{TENANT}/enroll:{ENROLL_KEY},{TENANT}/gate:{GATE_KEY}"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock of the in-process buckets of every app this test starts, stopped: a
    bucket refills only when the test moves it, so counts are exact."""
    stopped = Clock()
    monkeypatch.setattr(app_module, "Throttle", functools.partial(Throttle, clock=stopped))
    return stopped


async def served(requests: int, send: Callable[[], Awaitable[httpx.Response]]) -> tuple[int, httpx.Response]:
    """Send ``requests`` one after the other: how many were served (2xx) before the
    first refusal, which must be 429 rate_limited, and the last answer."""
    count = 0
    for _ in range(requests):
        response = await send()
        if response.status_code == 429:
            limited(response)
            break
        assert response.status_code in (200, 201), response.text
        count += 1
    return count, response


async def test_by_default_an_agent_gets_its_burst_then_429(redis_client, prefix, keys, clock):
    """CONCORD_RATE_LIMITS unset: an agent's credential is served its burst of 200,
    then answered 429 with Retry-After; a token is due 10 ms later (100 a second)."""
    burst = DEFAULT_RATE_LIMITS["principal"].burst
    async with deployment(redis_client, prefix, "") as (a, _):
        x = await register(a, "x")
        count, refused = await served(burst + 1, lambda: heartbeat(a, x))
        assert count == burst
        assert limited(refused) == 10 and refused.headers["retry-after"] == "1"  # 10 ms, in whole seconds
        assert "CONCORD_RATE_LIMITS principal" in refused.json()["detail"]
        # Reads with the credential draw from the same bucket; the key, from its own.
        limited(await a.get(AGENTS, headers=bearer(credential_of(a, x))))
        assert (await a.get(AGENTS)).status_code == 200
        clock.now += 0.015  # a token and a half
        assert (await heartbeat(a, x)).status_code == 200
        limited(await heartbeat(a, x))
    assert await rate_keys(redis_client, keys) == []  # in process: nothing in Redis


async def test_a_forged_credential_drains_only_its_own_bucket(redis_client, prefix, clock):
    """Credentials forged for the victim's id are each a bucket of their own (their
    digests differ): they are refused, 401 and then 429, and the victim is served its
    whole burst."""
    async with deployment(redis_client, prefix, "principal=1/h:3") as (a, _):
        victim = await register(a, "victim")
        for forgery in (forged(TENANT, victim), forged(TENANT, victim)):
            for _ in range(3):
                problem(await heartbeat(a, victim, forgery), 401, "unauthorized")
            for _ in range(10):
                limited(await heartbeat(a, victim, forgery))
                limited(await a.get(AGENTS, headers=bearer(forgery)))
        count, _ = await served(4, lambda: heartbeat(a, victim))
        assert count == 3, "a forged credential drew from the victim's bucket"


async def test_two_agents_have_two_buckets(redis_client, prefix, clock):
    async with deployment(redis_client, prefix, "principal=1/h:2") as (a, b):
        x, y = await register(a, "x"), await register(a, "y")
        g = await register(b, "g")  # another tenant's agent
        assert (await served(3, lambda: heartbeat(a, x)))[0] == 2
        assert (await served(3, lambda: heartbeat(a, y)))[0] == 2
        assert (await served(3, lambda: heartbeat(b, g)))[0] == 2
        # x's refusals took nothing from y's bucket, nor the other way round.
        clock.now += 3600
        assert (await served(3, lambda: heartbeat(a, x)))[0] == 1
        assert (await served(3, lambda: heartbeat(a, y)))[0] == 1


async def test_a_keys_bucket_is_its_own(redis_client, prefix, clock):
    """Each API key its bucket: acme's admin key spending its own holds back neither
    acme's gate key, nor globex's key, nor the agents acme registered (whose
    credentials are the principal scope's). Unauthenticated endpoints are not limited."""
    async with deployment(redis_client, prefix, "key=1/h:3", MORE_KEYS) as (a, b):
        x = await register(a, "x")  # one of the admin key's three
        assert (await served(3, lambda: a.get(AGENTS)))[0] == 2
        assert limited(await a.post(f"{V1}/register", json={"agentName": "y"})) > 3_500_000  # a token an hour
        assert (await served(4, lambda: b.get(AGENTS)))[0] == 3
        send_check = {"agentId": x, "contactEmail": "alice@example.com"}
        assert (await served(4, lambda: a.post(f"{C}/send-check", json=send_check, headers=bearer(GATE_KEY))))[0] == 3
        assert (await served(10, lambda: heartbeat(a, x)))[0] == 10
        for path in ("/healthz", "/readyz", "/openapi.json"):
            for _ in range(5):
                assert (await a.get(path)).status_code == 200, path


async def test_registering_draws_from_the_enrolling_keys_bucket(redis_client, prefix, keys, clock):
    """An enroll key registers three agents, then is refused (nothing written), while
    the admin key still registers, and the new agents act on their own buckets."""
    async with deployment(redis_client, prefix, "key=1/h:3", MORE_KEYS) as (a, _):

        async def enrol_with_key(name: str) -> httpx.Response:
            return await a.post(f"{V1}/register", json={"agentName": name}, headers=bearer(ENROLL_KEY))

        names = iter(f"sdr-{n}" for n in range(10))
        count, _ = await served(4, lambda: enrol_with_key(next(names)))
        assert count == 3
        # The refused registration wrote nothing: three agents, and sdr-3 is none of them.
        listed = {agent["agentName"] for agent in (await a.get(AGENTS)).json()["agents"]}
        assert listed == {"sdr-0", "sdr-1", "sdr-2"}, listed
        assert (await register(a, "by-the-admin-key")).startswith("agent_")
        beats = [await heartbeat(a, agent_id_for(TENANT, f"sdr-{n}")) for n in range(3)]
        assert [r.status_code for r in beats] == [200, 200, 200]
        clock.now += 3600
        assert (await enrol_with_key("sdr-3")).status_code in (200, 201)


async def test_off_means_no_limit_at_all(redis_client, prefix, keys, clock):
    """`off`: with the clock stopped, an agent goes far past the default burst, and
    so does a key; no rate key is written either. `principal=off` lifts that scope
    only: the key is still limited."""
    burst = DEFAULT_RATE_LIMITS["principal"].burst
    async with deployment(redis_client, prefix, "off") as (a, _):
        x, token = await enrol(a, "x")
        assert (await served(burst + 50, lambda: heartbeat(a, x)))[0] == burst + 50
        assert (await served(burst + 50, lambda: a.get(f"{AGENTS}/{x}")))[0] == burst + 50
    async with deployment(redis_client, prefix, "key=1/h:1,principal=off") as (a, _):
        assert (await served(burst + 50, lambda: heartbeat(a, x, token)))[0] == burst + 50
        assert (await served(2, lambda: a.get(AGENTS)))[0] == 1
    assert await rate_keys(redis_client, keys) == []


async def test_the_in_process_limit_comes_first_and_takes_no_redis_token(redis_client, prefix, keys, clock):
    """principal and tenant limits together: once the principal's bucket is empty, its
    refused requests take no token from the tenant's bucket in Redis."""
    async with deployment(redis_client, prefix, "") as (setup, _):
        x, x_credential = await enrol(setup, "x")
    async with deployment(redis_client, prefix, "principal=1/h:2,tenant=100/h") as (a, _):
        assert (await served(3, lambda: heartbeat(a, x, x_credential)))[0] == 2
        tenant_bucket = await redis_client.hgetall(keys.rate_bucket(TENANT))
        for _ in range(10):
            limited(await heartbeat(a, x, x_credential))
        assert await redis_client.hgetall(keys.rate_bucket(TENANT)) == tenant_bucket


async def test_a_refused_request_costs_redis_nothing_it_is_429_with_redis_down(prefix, clock):
    """Redis stops answering once the agent's and the key's buckets are empty: their
    next requests are still 429, never 503, as they ask Redis nothing. A principal
    with tokens left is 503 then: Redis is really down."""
    server = fakeredis.FakeServer()
    client = fakeredis.aioredis.FakeRedis(server=server, decode_responses=True)
    async with deployment(client, prefix, "principal=1/h:1,key=1/h:2") as (a, b):
        x = await register(a, "x")
        assert (await heartbeat(a, x)).status_code == 200
        assert (await a.get(AGENTS)).status_code == 200
        server.connected = False
        for _ in range(5):
            limited(await heartbeat(a, x))
            limited(await a.post(f"{C}/lease", json={"agentId": x, "contactEmail": "alice@example.com"}))
            limited(await a.get(AGENTS))
        problem(await b.get(AGENTS), 503, "store_unavailable")
    await client.aclose()


def redis_calls(stats: dict[str, dict[str, int]]) -> dict[str, int]:
    """INFO commandstats as {command: calls}, without INFO itself (the test's own)."""
    return {name: stat["calls"] for name, stat in stats.items() if name != "cmdstat_info"}


async def test_a_refused_request_issues_no_redis_command(real_client, prefix, clock):
    """On a real Redis: no command is counted (INFO commandstats) while an agent and a
    key whose buckets are empty send twenty requests of every kind."""
    async with deployment(real_client, prefix, "principal=1/h:1,key=1/h:2") as (a, _):
        x = await register(a, "x")
        assert (await heartbeat(a, x)).status_code == 200
        assert (await a.get(AGENTS)).status_code == 200
        before = redis_calls(await real_client.info("commandstats"))
        for _ in range(5):
            limited(await heartbeat(a, x))
            limited(await a.get(AGENTS, headers=bearer(credential_of(a, x))))
            limited(await a.get(f"{AGENTS}/{x}"))
            limited(await a.post(f"{V1}/register", json={"agentName": "y"}))
        assert redis_calls(await real_client.info("commandstats")) == before


# --- in Redis, through the API --------------------------------------------------


async def test_a_burst_then_429_with_retry_after(redis_client, prefix, keys):
    async with deployment(redis_client, prefix, "tenant=3/h") as (a, _):
        for _ in range(3):
            assert (await a.get(AGENTS)).status_code == 200
        wait_ms = limited(await a.get(AGENTS))
        # The bucket is empty and one token takes an hour (1 200 000 ms at 3 per hour).
        assert 1_100_000 < wait_ms <= 1_200_000 + ROUNDING_MS, wait_ms
        # Every /v1 endpoint takes from the tenant's bucket, whatever its method.
        limited(await a.post(f"{V1}/register", json={"agentName": "sdr"}))
        limited(await a.delete(f"{C}/lease/lease_00000000-0000-0000-0000-000000000000"))
        limited(await a.get(f"{C}/consensus"))
        # The operations endpoints are not /v1 and never limited.
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert (await a.get(path)).status_code == 200, path
        assert await rate_keys(redis_client, keys) == [keys.rate_bucket(TENANT)]


async def test_the_agent_bucket_is_the_credentials_agent(redis_client, prefix, keys):
    async with deployment(redis_client, prefix, "agent=2/h") as (a, _):
        x, y, z = [await register(a, name) for name in ("x", "y", "z")]
        for _ in range(2):
            assert (await heartbeat(a, x)).status_code == 200
        limited(await heartbeat(a, x))
        # Every call made with x's credential takes from x's bucket, reads too.
        limited(await a.post(f"{C}/lease", json={"agentId": x, "contactEmail": "alice@example.com"}))
        limited(await a.post(f"{C}/send-check", json={"agentId": x, "contactEmail": "alice@example.com"}))
        limited(await a.post(f"{C}/consensus", json={"requestingAgentId": x, "action": "a"}))
        limited(await a.get(AGENTS, headers=bearer(credential_of(a, x))))
        limited(
            await a.post(
                f"{C}/send-check", json={"contactEmail": "alice@example.com"}, headers=bearer(credential_of(a, x))
            )
        )
        # Another agent of the tenant is not held back by x's bucket...
        assert (await heartbeat(a, y)).status_code == 200
        # ... and a consensus request takes from its requester's, by its credential.
        consensus = await a.post(f"{C}/consensus", json={"requestingAgentId": y, "action": "a"})
        assert consensus.status_code == 201, consensus.text
        limited(await heartbeat(a, y))
        vote = await a.post(f"{C}/consensus/{consensus.json()['id']}/vote", json={"agentId": z, "vote": "approve"})
        assert vote.status_code == 200, vote.text
        # A key draws from the tenant's bucket only (none configured here), even naming x.
        for _ in range(5):
            assert (await a.get(AGENTS)).status_code == 200
            assert (await a.get(f"{AGENTS}/{x}")).status_code == 200
            assert (
                await a.post(
                    f"{C}/send-check", json={"agentId": x, "contactEmail": "alice@example.com"}, headers=bearer(API_KEY)
                )
            ).status_code == 200
        # z's credential naming x is refused as it (403) and takes from neither bucket.
        z_bucket = await redis_client.hgetall(keys.rate_bucket(TENANT, z))
        problem(await heartbeat(a, x, credential_of(a, z)), 403, "agent_mismatch")
        assert await redis_client.hgetall(keys.rate_bucket(TENANT, z)) == z_bucket
        assert await rate_keys(redis_client, keys) == sorted(keys.rate_bucket(TENANT, i) for i in (x, y, z))


async def test_a_forged_credential_never_drains_the_agents_bucket(redis_client, prefix, keys):
    """Heartbeats sent with a forged credential claiming the victim are refused (401)
    before any token is taken: the victim's bucket and its tenant's keep every token,
    and the victim's own requests still pass."""
    async with deployment(redis_client, prefix, "tenant=4/h,agent=2/h") as (a, _):
        victim = await register(a, "victim")  # the tenant's first token
        before = await rate_keys(redis_client, keys), await redis_client.hgetall(keys.rate_bucket(TENANT))
        for _ in range(20):
            problem(await heartbeat(a, victim, forged(TENANT, victim)), 401, "unauthorized")
            problem(await a.get(AGENTS, headers=bearer(forged(TENANT, victim))), 401, "unauthorized")
        assert (await rate_keys(redis_client, keys), await redis_client.hgetall(keys.rate_bucket(TENANT))) == before
        assert not await redis_client.exists(keys.rate_bucket(TENANT, victim))
        for _ in range(2):
            assert (await heartbeat(a, victim)).status_code == 200, "the victim's own heartbeat was held back"
        limited(await heartbeat(a, victim))  # its own bucket of two, and only its own calls drew from it
        # The tenant's bucket paid for the victim's three calls only: one token is left of four.
        tenant_bucket = await redis_client.hgetall(keys.rate_bucket(TENANT))
        assert 0.99 < float(tenant_bucket["tokens"]) < 1.01, tenant_bucket
        assert (await a.get(AGENTS)).status_code == 200
        limited(await a.get(AGENTS))


async def test_an_address_guessing_credentials_is_limited_before_they_cost_a_lookup(
    redis_client, prefix, keys, monkeypatch
):
    """Rate limits off: still, an address that presents FAILURE_BURST refused
    credentials gets 429 for the next credential that would cost Redis work (an
    unknown key, a forged agent credential), while a configured key goes on
    (docs/security.md, Guessing credentials). The budget refills about never here,
    so however slowly a loaded machine sends the guesses, none is given back."""
    monkeypatch.setattr(auth_module, "FAILURE_RATE", 1e-6)
    async with deployment(redis_client, prefix, "off") as (a, _):
        agent = await register(a, "victim")
        for i in range(FAILURE_BURST):
            problem(await a.get(AGENTS, headers=bearer(f"guess-{i:04d}-0123456789")), 401, "unauthorized")
            if i == 0:  # an honest agent acting from the same address meanwhile
                assert (await heartbeat(a, agent)).status_code == 200

        body = problem(await a.get(AGENTS, headers=bearer("guess-next-0123456789")), 429, "rate_limited")
        assert "does not know" in body["detail"] and body["retryAfterMs"] >= 1
        limited(await heartbeat(a, agent, forged(TENANT, agent)))
        assert (await a.get(AGENTS)).status_code == 200  # the configured key
        assert (await heartbeat(a, agent)).status_code == 200  # the agent has acted from here


async def test_one_tenants_buckets_never_limit_another(redis_client, prefix, keys):
    async with deployment(redis_client, prefix, "") as (setup, _):  # no Redis limits: registering takes nothing
        x, x_credential = await enrol(setup, "x")
    async with deployment(redis_client, prefix, "tenant=3/h,agent=2/h") as (a, b):
        for _ in range(3):
            assert (await a.get(AGENTS)).status_code == 200
        limited(await a.get(AGENTS))
        # acme's empty bucket is acme's: globex has three tokens of its own. And globex
        # may name acme's agent as often as it likes, with its key, with its own agent's
        # credential, or with a credential it forged for x: none of it takes a token
        # from anyone, least of all from acme's x.
        g = await register(b, "gx")  # globex's first token
        for _ in range(3):
            problem(await heartbeat(b, x), 403, "insufficient_scope")
            problem(await heartbeat(b, x, credential_of(b, g)), 403, "agent_mismatch")
            problem(await heartbeat(b, x, forged(TENANT, x)), 401, "unauthorized")
        assert (await b.get(AGENTS)).status_code == 200
        assert (await b.get(AGENTS)).status_code == 200
        limited(await b.get(AGENTS))
        assert await rate_keys(redis_client, keys) == sorted([keys.rate_bucket(TENANT), keys.rate_bucket(OTHER_TENANT)])
    async with deployment(redis_client, prefix, "agent=2/h") as (a, _):
        for _ in range(2):
            assert (await heartbeat(a, x, x_credential)).status_code == 200  # acme's x still has both its tokens
        limited(await heartbeat(a, x, x_credential))


async def test_registration_takes_from_the_tenant_only(redis_client, prefix, keys):
    async with deployment(redis_client, prefix, "tenant=4/h,agent=1/h") as (a, _):
        sdr = agent_id_for(TENANT, "sdr")
        for _ in range(3):
            assert await register(a, "sdr") == sdr  # an agent bucket of 1 would refuse the second
        assert not await redis_client.exists(keys.rate_bucket(TENANT, sdr))
        assert (await heartbeat(a, sdr)).status_code == 200  # the tenant's 4th token, sdr's only one
        limited(await a.post(f"{V1}/register", json={"agentName": "sdr"}))
        tenant_bucket = await redis_client.hgetall(keys.rate_bucket(TENANT))
        agent_bucket = await redis_client.hgetall(keys.rate_bucket(TENANT, sdr))
        assert float(tenant_bucket["tokens"]) < 1 and float(agent_bucket["tokens"]) < 1


async def test_a_request_takes_from_both_buckets_or_from_neither(redis_client, prefix, keys):
    async with deployment(redis_client, prefix, "") as (setup, _):  # no Redis limits: registering takes nothing
        (x, x_credential), (y, y_credential) = await enrol(setup, "x"), await enrol(setup, "y")
    async with deployment(redis_client, prefix, "tenant=5/h,agent=2/h") as (a, _):
        for _ in range(2):
            assert (await heartbeat(a, x, x_credential)).status_code == 200
        tenant_before = await redis_client.hgetall(keys.rate_bucket(TENANT))
        limited(await heartbeat(a, x, x_credential))  # x's bucket is empty: the tenant's must not pay for it
        assert await redis_client.hgetall(keys.rate_bucket(TENANT)) == tenant_before
        # The tenant's three remaining tokens are all there.
        assert (await heartbeat(a, y, y_credential)).status_code == 200
        assert (await heartbeat(a, y, y_credential)).status_code == 200
        assert (await a.get(AGENTS)).status_code == 200
        limited(await a.get(AGENTS))


async def test_tokens_come_back_over_time(redis_client, prefix):
    """At 4 a second with a burst of 1, back-to-back requests soon meet an empty
    bucket; a token is then due within 250 ms, and one comes (polled, with a deadline)."""
    async with deployment(redis_client, prefix, "tenant=4/s:1") as (a, _):

        async def refused() -> httpx.Response | None:
            response = await a.get(AGENTS)
            return response if response.status_code == 429 else None

        async def served() -> bool:
            return (await a.get(AGENTS)).status_code == 200

        response = await eventually(refused, timeout=10, what="the bucket to run dry", every=0)
        wait_ms = limited(response)
        assert wait_ms <= 250 + ROUNDING_MS, wait_ms  # a token every 250 ms
        assert response.headers["retry-after"] == "1"  # whole seconds, never 0
        await eventually(served, timeout=10, what="a token to come back at 4/s")


async def test_concurrent_requests_get_exactly_the_burst(redis_client, prefix):
    """The bucket is one script: 40 requests at once against 10 tokens (refilling one
    an hour) get exactly 10 answers and 30 refusals."""
    async with deployment(redis_client, prefix, "tenant=10/h") as (a, _):
        answers = await asyncio.gather(*(a.get(AGENTS) for _ in range(40)))
    statuses = Counter(r.status_code for r in answers)
    assert statuses == {200: 10, 429: 30}, statuses
    for response in answers:
        if response.status_code == 429:
            limited(response)


async def test_unset_means_no_redis_limit_and_no_rate_keys(redis_client, prefix, keys):
    """Unset, only the in-process defaults apply: 160 heartbeats of one agent and 80
    reads of a key, within their bursts, are all served, and no rate key is written."""
    assert Settings.from_env({}).rate_limits.keys() == {"principal", "key"}
    async with deployment(redis_client, prefix, "") as (a, b):
        x = await register(a, "x")
        # (At most 80 at once: the test's Redis client, like the service's, holds at most 100 connections.)
        answers = await asyncio.gather(*(heartbeat(a, x) for _ in range(40)), *(b.get(AGENTS) for _ in range(40)))
        answers += await asyncio.gather(*(heartbeat(a, x) for _ in range(40)), *(b.get(AGENTS) for _ in range(40)))
        assert {r.status_code for r in answers} == {200}
    assert await rate_keys(redis_client, keys) == []


@pytest.mark.parametrize("limits", ["tenant=1/h:100000000000", "agent=1/s:100000000000000"])
async def test_every_accepted_limit_can_be_kept(redis_client, prefix, keys, limits):
    """A CONCORD_RATE_LIMITS that `concord` accepts must work: either it is refused at
    start naming the variable (as docs/configuration.md promises for a malformed value), or
    requests are served under it.

    Before its fix this failed: parse_rate_limits (server/settings.py) puts no upper bound on BURST,
    and lua/rate_limit.lua sets the bucket's expiry to ceil(burst / rate) ms. When
    that is 1e17 ms or more (here 1e11 tokens at 1/h, or 1e14 at 1/s), Lua passes it
    to PEXPIRE in exponent form ("3.6e+20"), Redis answers "value is not an integer
    or out of range", and every request taking from that bucket is 500 store_error. The
    script has already run HSET by then, so it also leaves the bucket written
    without an expiry (its header promises nothing is written on an error)."""
    try:
        settings = Settings.from_env({"CONCORD_RATE_LIMITS": limits})
    except ConfigError as refused:
        assert "CONCORD_RATE_LIMITS" in str(refused)
        return
    assert settings.rate_limits
    async with deployment(redis_client, prefix, limits) as (a, _):
        x = await register(a, "x")
        response = await heartbeat(a, x)
        assert response.status_code == 200, response.text
        for key in await rate_keys(redis_client, keys):
            assert await redis_client.pttl(key) > 0, f"{key} has no expiry"


BAD_LIMITS = [
    "garbage",
    "tenant",
    "tenant=10",
    "tenant=10/d",
    "tenant=10/second",
    "user=10/s",
    "tenant=0/s",
    "tenant=10/s:0",
    "tenant=-1/s",
    "tenant=1.5/s",
    "tenant=10/s:",
    "tenant = 10/s",
    "tenant=10/s,tenant=5/s",
    "tenant=10/s;agent=5/s",
    "tenant=10/s:20:30",
    "off,tenant=10/s",
    "principal=none",
    "key=off,key=10/s",
]


@pytest.mark.parametrize("value", BAD_LIMITS)
def test_malformed_rate_limits_stop_concord_naming_the_variable(value: str):
    with pytest.raises(ConfigError, match="CONCORD_RATE_LIMITS"):
        Settings.from_env({"CONCORD_RATE_LIMITS": value})
    run = concord("serve", "--port", str(free_port()), settings={"CONCORD_RATE_LIMITS": value})
    assert run.returncode != 0, run
    assert "CONCORD_RATE_LIMITS" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


# --- across processes ------------------------------------------------------------

WORKERS = 2
PROC_TENANT, PROC_KEY = "burst", "burst-key-0123456789abcdef"
PROC_LIMITS = "tenant=25/h,agent=5/h"


@pytest.fixture(scope="module")
def limited_stack(real_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`concord serve --workers 2` with CONCORD_RATE_LIMITS on a private redis-server.
    (real_redis_url only decides whether a real Redis may be used.)"""
    settings = {"CONCORD_API_KEYS": f"{PROC_TENANT}:{PROC_KEY}", "CONCORD_RATE_LIMITS": PROC_LIMITS}
    with running_stack(tmp_path_factory.mktemp("rate-limits"), settings, workers=WORKERS) as stack:
        wait_until(
            lambda: stack.service.log_text().count("Application startup complete") >= WORKERS,
            timeout=30,
            what=f"{WORKERS} workers started",
        )
        yield stack


@pytest.mark.real
async def test_concurrent_requests_across_workers_get_exactly_the_burst(limited_stack: Stack):
    """100 requests at once, each on its own connection (so spread over the worker
    processes), against a tenant bucket of 25: exactly 25 answers. Then 40 at once
    for one agent, against its bucket of 5: exactly 5."""
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(limited_stack.service.client(PROC_KEY)) for _ in range(100)]
        agent, token = await enrol(clients[0], "racer")  # one tenant token: 24 left
        beats = Counter(
            r.status_code for r in await asyncio.gather(*(heartbeat(c, agent, token) for c in clients[:40]))
        )
        assert beats == {200: 5, 429: 35}, beats  # 5 more tenant tokens: 19 left
        reads = Counter(r.status_code for r in await asyncio.gather(*(c.get(AGENTS) for c in clients)))
        assert reads == {200: 19, 429: 81}, reads
    security_report(
        f"rate limits: 40 concurrent heartbeats of one agent (bucket 5) -> {beats[200]} served; 100 concurrent reads "
        f"of the tenant (19 tokens left of 25) -> {reads[200]} served, across {WORKERS} worker processes",
        {
            "check": "rate-limit-concurrency",
            "workers": WORKERS,
            "agentBucket": {"requests": 40, "tokens": 5, "served": beats[200], "refused": beats[429]},
            "tenantBucket": {"requests": 100, "tokens": 19, "served": reads[200], "refused": reads[429]},
        },
    )


BURST = 300


@pytest.mark.real
async def test_a_burst_of_concurrent_requests_is_served_not_refused(real_redis_url: str, tmp_path: Path):
    """Without rate limits, 300 requests at once to one `concord serve` process on a
    healthy Redis are all served: 503 store_unavailable is documented for a Redis
    that is down or slower than CONCORD_REDIS_TIMEOUT_SECONDS, and neither is the
    case here. (A burst is what rate limits are for; they cannot help if the
    process refuses the burst before the bucket is even asked.)

    Before its fix this failed: server/redis/connect.py connect() builds its client with Redis.from_url and
    no pool size, and redis-py 8's asyncio ConnectionPool defaults to
    max_connections=100 and raises MaxConnectionsError (a ConnectionError) at once
    when all are in use, which the app answers as 503. A BlockingConnectionPool
    (waiting up to the request deadline) or a larger max_connections would queue
    the burst instead."""
    settings = {"CONCORD_API_KEYS": f"{PROC_TENANT}:{PROC_KEY}"}
    with running_stack(tmp_path, settings) as stack:
        async with AsyncExitStack() as exits:
            clients = [await exits.enter_async_context(stack.service.client(PROC_KEY)) for _ in range(BURST)]
            answers = await asyncio.gather(*(c.get(AGENTS) for c in clients))
        statuses = Counter(r.status_code for r in answers)
        refusals = [line for line in stack.service.log_text().splitlines() if "Redis unavailable" in line]
    assert statuses == {200: BURST}, f"{dict(statuses)}; the log says: {refusals[:1]}"


# --- lua/rate_limit.lua, called directly ------------------------------------------


async def take(store: Store, *buckets: tuple[str, float, int], agent: tuple[str, str] | None = None) -> list:
    """Run the script on ``buckets``: (key, tokens per ms, burst) each; as an API key
    (no credential), or as ``agent``: (its agent key, the digest of its credential)."""
    agent_key, credential = agent or (store.ctx.keys.agent(TENANT, ""), "")
    return await store.scripts.rate_limit(
        [agent_key, *(key for key, _, _ in buckets)],
        [credential, *(value for _, rate, burst in buckets for value in (rate, burst))],
    )


async def test_script_takes_from_an_agent_only_with_its_current_credential(store, redis_client, keys, prefix):
    x = agent_id_for(TENANT, "x")
    agent_key, bucket = keys.agent(TENANT, x), keys.rate_bucket(TENANT, x)
    await redis_client.hset(agent_key, "credential", key_digest("the-current-one"))
    state = await dump(redis_client, prefix)
    for wrong in (key_digest("a-forged-one"), key_digest("")):
        assert await take(store, (bucket, 0.001, 5), agent=(agent_key, wrong)) == [Reply.BAD_CREDENTIAL]
    # An agent that does not exist has no credential: nothing matches it.
    other = keys.agent(TENANT, agent_id_for(TENANT, "nobody"))
    assert await take(store, (bucket, 0.001, 5), agent=(other, key_digest("the-current-one"))) == [Reply.BAD_CREDENTIAL]
    assert await dump(redis_client, prefix) == state  # nothing taken, nothing written
    assert await take(store, (bucket, 0.001, 5), agent=(agent_key, key_digest("the-current-one"))) == [Reply.OK]
    assert (await redis_client.hgetall(bucket))["tokens"] == "4"


async def test_script_takes_a_token_and_writes_the_bucket(store, redis_client, keys):
    bucket = keys.rate_bucket(TENANT)
    before = await redis_ms(redis_client)
    assert await take(store, (bucket, 0.001, 5)) == [Reply.OK]
    state = await redis_client.hgetall(bucket)
    assert state["tokens"] == "4"  # a missing bucket is full: 5, less the one taken
    assert before <= int(state["at"]) <= await redis_ms(redis_client)
    # It expires when it would be full again: 5 tokens at one per second.
    assert 4_000 < await redis_client.pttl(bucket) <= 5_000
    for left in ("3", "2", "1", "0"):
        assert await take(store, (bucket, 0.001, 5)) == [Reply.OK]
        assert (await redis_client.hgetall(bucket))["tokens"][:1] == left


async def test_script_refuses_with_the_wait_and_writes_nothing(store, redis_client, keys, prefix):
    bucket = keys.rate_bucket(TENANT)
    rate = 1e-6  # a token every 1000 s, so the time the test takes moves nothing
    await redis_client.hset(bucket, mapping={"tokens": "0.5", "at": await redis_ms(redis_client)})
    await redis_client.pexpire(bucket, 60_000)
    state = await dump(redis_client, prefix)
    code, wait_ms = await take(store, (bucket, rate, 3))
    assert code == Reply.RATE_LIMITED
    assert 499_000 < wait_ms <= 500_000 + ROUNDING_MS, wait_ms  # the half token missing, at 1e-6 per ms
    assert await dump(redis_client, prefix) == state


async def test_script_takes_from_every_bucket_or_from_none(store, redis_client, keys, prefix):
    tenant, agent = keys.rate_bucket(TENANT), keys.rate_bucket(TENANT, agent_id_for(TENANT, "x"))
    await redis_client.hset(agent, mapping={"tokens": "0", "at": await redis_ms(redis_client)})
    state = await dump(redis_client, prefix)
    code, wait_ms = await take(store, (tenant, 0.001, 5), (agent, HOUR_RATE_MS, 1))
    assert code == Reply.RATE_LIMITED and 3_500_000 < wait_ms <= 3_600_000 + ROUNDING_MS
    assert await dump(redis_client, prefix) == state  # the full tenant bucket was not even created
    # With tokens in both, it takes one from each.
    await redis_client.hset(agent, "tokens", "1")
    assert await take(store, (tenant, 0.001, 5), (agent, HOUR_RATE_MS, 1)) == [Reply.OK]
    assert (await redis_client.hgetall(tenant))["tokens"] == "4"
    assert float((await redis_client.hgetall(agent))["tokens"]) < 0.01


async def test_script_refills_at_the_rate_up_to_the_burst(store, redis_client, keys):
    bucket = keys.rate_bucket(TENANT)
    now = await redis_ms(redis_client)
    # Two seconds ago, empty, at one token a second: two tokens came back; one is taken.
    await redis_client.hset(bucket, mapping={"tokens": "0", "at": now - 2_000})
    assert await take(store, (bucket, 0.001, 5)) == [Reply.OK]
    assert 1.0 <= float((await redis_client.hgetall(bucket))["tokens"]) < 1.9
    # Ten seconds ago: ten came back, but a bucket holds its burst at most.
    await redis_client.hset(bucket, mapping={"tokens": "0", "at": now - 10_000})
    assert await take(store, (bucket, 0.001, 5)) == [Reply.OK]
    assert (await redis_client.hgetall(bucket))["tokens"] == "4"


async def test_script_refuses_a_bucket_of_the_wrong_type_writing_nothing(store, redis_client, keys, prefix):
    tenant, agent = keys.rate_bucket(TENANT), keys.rate_bucket(TENANT, agent_id_for(TENANT, "x"))
    await redis_client.set(agent, "planted")
    state = await dump(redis_client, prefix)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await take(store, (tenant, 0.001, 5), (agent, 0.001, 5))
    assert await dump(redis_client, prefix) == state


async def test_store_take_token_raises_rate_limited(store, redis_client, keys):
    limits = parse_rate_limits("tenant=1/h,agent=1/h")
    x = agent_id_for(TENANT, "x")
    await redis_client.hset(keys.agent(TENANT, x), "credential", key_digest("x's credential"))
    as_x, admin = AgentPrincipal(TENANT, x, key_digest("x's credential")), KeyGrant(id="cfg-1", tenant=TENANT)
    await store.limits.take_token(as_x, limits)
    with pytest.raises(ConcordError) as refused:
        await store.limits.take_token(admin, limits)
    assert refused.value.code == "rate_limited"
    assert 3_500_000 < refused.value.extra["retryAfterMs"] <= 3_600_000 + ROUNDING_MS
    # A credential that is not x's is refused before any bucket is read: 401, not 429.
    with pytest.raises(ConcordError) as forged_one:
        await store.limits.take_token(AgentPrincipal(TENANT, x, key_digest("forged")), limits)
    assert forged_one.value.code == "unauthorized"
    assert await store.limits.take_token(admin, {}) is None  # no limits: no script, no key
    assert sorted([k async for k in redis_client.scan_iter(match=f"{keys.prefix}:*")]) == sorted(
        [keys.agent(TENANT, x), keys.rate_bucket(TENANT), keys.rate_bucket(TENANT, x)]
    )
