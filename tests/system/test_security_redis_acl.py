"""Security: API keys and the Redis ACL user.

API keys
  * Only hashes at rest: after `concord keys create`, no key name or value in
    Redis contains the key, and a key of CONCORD_API_KEYS never reaches Redis at
    all (MONITOR sees neither it nor its digest).
  * A revoked key is refused (401) by EVERY instance within the documented one
    second of cache: two `concord serve` processes on one Redis, both holding the
    key in their cache, answer 401 once one second has passed since
    `concord keys revoke` returned.
  * No secret is ever compared. server/http/auth.py hashes the presented key with
    SHA-256 and looks the digest up: in a dict for CONCORD_API_KEYS, with HGET in
    the ``<prefix>:apikeys`` hash for stored keys. Equality is only ever tested
    between digests (by dict/hash lookup), never between a presented key and a
    stored secret, so there is no byte-by-byte comparison whose timing could
    reveal a key prefix, and nothing for hmac.compare_digest to protect. The
    tests check the consequence: a key that shares a real key's length and
    prefix, or differs from it in one character, or is its digest, is 401.

Redis ACL (docs/redis-acl.md)
  * The ACL SETUSER line of the document, applied as written, lets a service do
    every endpoint (and `concord keys`), with no ACL denial logged.
  * That user cannot touch a key outside the prefix, nor run a command not on the
    list, also from inside a script.
  * The list is exactly what the service needs: every command the Lua scripts
    call is on it, and every command Redis executed during the walkthrough is.

Figures (revocation latency, the ACL command list) are printed with `pytest -s` and appended as JSON
lines to the file named by CONCORD_SECURITY_REPORT, if set.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shlex
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import httpx
import pytest
import redis as redis_py
import redis.asyncio

from concord.server.errors import ConcordError
from concord.server.http.auth import CACHE_SECONDS, Authenticator
from concord.server.http.endpoint import ENDPOINTS
from concord.server.settings import Settings, key_digest, parse_api_keys
from concord.server.store import Store
from concord.server.store.keys import Keys
from tests.cli.test_serve_and_keys import concord, everything_in
from tests.conftest import API_KEY, OTHER_API_KEY, TENANT
from tests.support.api import V1, C, problem
from tests.support.cluster import Cluster
from tests.support.helpers import RedisServer, ServiceProcess, eventually, redis_server, service
from tests.support.reports import append_report, redis_version

REPORT_ENV = "CONCORD_SECURITY_REPORT"


def security_report(summary: str, record: dict[str, Any]) -> None:
    """Print ``summary`` as one line (seen with `pytest -s`) and append ``record``
    as one JSON line to the file named by CONCORD_SECURITY_REPORT, if it is set
    (tests/support/reports.py, as the fault suites do with theirs)."""
    print(f"\n[security] {summary}", flush=True)
    append_report(REPORT_ENV, {**record, "redis": redis_version()})


AGENTS = f"{V1}/agents"


@pytest.fixture
def private_redis(real_redis_url: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: its users, keys and statistics are the
    test's alone. (real_redis_url only decides whether a real Redis may be used.)"""
    with redis_server(tmp_path / "redis") as server:
        yield server


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


class Monitor:
    """Every command a redis-server executes while the block runs, as MONITOR shows
    them: the commands run inside scripts too. (AUTH and HELLO arguments are
    redacted by Redis itself.)"""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.commands: list[str] = []
        self._end = f"monitor-end-{uuid.uuid4().hex}"

    def __enter__(self) -> Self:
        self._client = redis_py.Redis(port=self.server.port, decode_responses=True, protocol=2)
        self._monitor = self._client.monitor()
        self._monitor.__enter__()  # MONITOR is on once this returns
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()
        return self

    def _listen(self) -> None:
        for item in self._monitor.listen():
            if self._end in item["command"]:
                return
            self.commands.append(item["command"])

    def __exit__(self, *exc_info: object) -> None:
        admin = self.server.client()
        try:
            admin.echo(self._end)  # the listener stops at this one
        finally:
            admin.close()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "MONITOR never showed its end marker"
        self._client.close()


# --- API keys: no secret is compared, only digests are kept -------------------------


async def test_keys_are_looked_up_by_digest_and_held_only_as_digests():
    """The Authenticator passes the store nothing but SHA-256 digests, never asks
    the store about a configured key, and keeps no key in any attribute."""
    looked_up: list[str] = []
    stored = {key_digest("stored-key-0123456789"): "initech"}

    async def lookup(digest: str) -> str | None:
        looked_up.append(digest)
        return stored.get(digest)

    auth = Authenticator(parse_api_keys("acme:static-key-0123456789"), lookup)
    assert await auth.tenant("Bearer static-key-0123456789") == "acme"
    assert looked_up == []  # a configured key never reaches the store
    assert await auth.tenant("Bearer stored-key-0123456789") == "initech"
    assert looked_up == [key_digest("stored-key-0123456789")]
    for wrong in (
        "static-key-012345678",
        "static-key-0123456789x",
        "STATIC-KEY-0123456789",
        key_digest("static-key-0123456789"),
        "stored-key-0123456788",
    ):
        with pytest.raises(ConcordError) as refused:
            await auth.tenant(f"Bearer {wrong}")
        assert refused.value.code == "unauthorized" and wrong not in refused.value.detail
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in looked_up)
    held = repr(vars(auth))
    assert "static-key" not in held and "stored-key" not in held, held

    settings = Settings.from_env({"CONCORD_API_KEYS": "acme:static-key-0123456789"})
    assert dict(settings.api_keys) == {key_digest("static-key-0123456789"): "acme"}
    assert "static-key" not in repr(settings)


async def test_keys_close_to_a_real_key_are_refused(asgi_app, redis_client, keys):
    """Keys of the same length and prefix as a real one, one character off, a
    prefix or an extension of it, or its SHA-256 (what Redis holds) are all 401:
    being found by digest, a key either is one or is not, however close it comes."""
    stored = await Store(redis_client, keys).apikeys.create(TENANT)
    assert stored.startswith("ck_")

    def near(key: str) -> list[str]:
        def flip(ch: str) -> str:
            return "A" if ch != "A" else "B"

        middle = len(key) // 2
        return [
            key[:3] + secrets.token_urlsafe(64)[: len(key) - 3],  # same prefix, same length
            key[:-1] + flip(key[-1]),
            flip(key[0]) + key[1:],
            key[:middle] + flip(key[middle]) + key[middle + 1 :],
            key.swapcase(),
            key[:-1],
            key + "A",
            key_digest(key),
        ]

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi_app), base_url="http://concord.test") as c:
        for real in (stored, API_KEY):
            assert (await c.get(AGENTS, headers=bearer(real))).status_code == 200
            candidates = near(real)
            assert len(set(candidates)) == len(candidates) and real not in candidates
            for candidate in candidates:
                response = await c.get(AGENTS, headers=bearer(candidate))
                problem(response, 401, "unauthorized")
                assert candidate not in response.text and real not in response.text
                assert response.headers["www-authenticate"].startswith("Bearer")
        assert (await c.get(AGENTS, headers=bearer(OTHER_API_KEY))).status_code == 200


@pytest.mark.real
def test_only_digests_of_api_keys_reach_redis(private_redis: RedisServer, tmp_path: Path):
    """`concord keys create` stores the key's SHA-256 only; a key of CONCORD_API_KEYS
    never reaches Redis, not even as a digest. Checked in what Redis holds and in
    every command it executed (MONITOR), and in the service's log."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    settings = {"CONCORD_REDIS_URL": private_redis.url, "CONCORD_KEY_PREFIX": prefix}
    static_key = f"acme-{secrets.token_urlsafe(24)}"
    with Monitor(private_redis) as monitor:
        created = concord("keys", "create", "--tenant", "initech", settings=settings)
        assert created.returncode == 0, created.stderr
        stored_key = json.loads(created.stdout)["apiKey"]
        with service({**settings, "CONCORD_API_KEYS": f"acme:{static_key}"}, tmp_path / "concord.log") as proc:
            for api_key, tenant in ((static_key, "acme"), (stored_key, "initech")):
                agent = httpx.post(
                    f"{proc.url}{V1}/register", json={"agentName": "sdr"}, headers=bearer(api_key), timeout=10
                )
                assert agent.status_code == 201 and agent.json()["tenantId"] == tenant, agent.text
                beat = httpx.post(
                    f"{proc.url}{C}/heartbeat",
                    json={"agentId": agent.json()["id"]},
                    headers=bearer(api_key),
                    timeout=10,
                )
                assert beat.status_code == 200, beat.text
                problem(
                    httpx.get(f"{proc.url}{AGENTS}", headers=bearer(api_key + "x"), timeout=10), 401, "unauthorized"
                )
            log = proc.log_text()

    client = private_redis.client()
    try:
        at_rest = everything_in(client)
        assert client.hgetall(Keys(prefix).api_keys()) == {key_digest(stored_key): "initech"}
    finally:
        client.close()
    never = {
        "the stored key": stored_key,
        "the configured key": static_key,
        "the configured key's digest": key_digest(static_key),
    }
    for what, secret in never.items():
        assert not [item for item in at_rest if secret in item], f"{what} is in Redis"
        assert not [c for c in monitor.commands if secret in c], f"{what} was sent to Redis"
    assert any(key_digest(stored_key) in c for c in monitor.commands)  # stored keys are found by digest
    assert stored_key not in log and static_key not in log


# --- API keys: revocation on every instance --------------------------------------

POLL_DEADLINE = 10.0  # seconds after the revocation: far past the documented 1 s


@pytest.mark.real
async def test_a_revoked_key_is_refused_by_every_instance_within_the_cache_second(
    private_redis: RedisServer, tmp_path: Path
):
    """Two instances on one Redis both hold the key in their one-second cache
    (each is asked continuously while `concord keys revoke` runs). Then:

    * every request sent one second (CACHE_SECONDS) or more after the revoke
      command returned is 401, on both instances. That bound is exact, not a
      timing guess: a cache entry saying the key is valid was made by a lookup
      that began before the key was deleted, so it expires within a second of the
      deletion, and the command returns after the deletion;
    * once an instance refuses the key, it never accepts it again;
    * another key of the same tenant keeps working.
    The time to the first 401 on each instance is reported, not asserted.
    """
    settings = {"CONCORD_REDIS_URL": private_redis.url, "CONCORD_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}"}
    doomed, kept = (
        json.loads(concord("keys", "create", "--tenant", "initech", settings=settings).stdout)["apiKey"]
        for _ in range(2)
    )
    assert doomed and kept
    with service(settings, tmp_path / "one.log") as one, service(settings, tmp_path / "two.log") as two:
        instances = (one, two)
        async with AsyncExitStack() as stack:
            doomed_clients = [await stack.enter_async_context(p.client(doomed)) for p in instances]
            kept_clients = [await stack.enter_async_context(p.client(kept)) for p in instances]
            for c in doomed_clients + kept_clients:
                assert (await c.get(AGENTS)).status_code == 200

            revoke: dict[str, float] = {}
            answers: list[list[tuple[float, int]]] = [[] for _ in instances]  # (sent at, status) per instance

            async def ask(i: int, c: httpx.AsyncClient) -> None:
                """Ask continuously until well past the bound (deadline-bounded)."""
                while True:
                    sent_at = time.monotonic()
                    status = (await c.get(AGENTS)).status_code
                    answers[i].append((sent_at, status))
                    assert status in (200, 401), status
                    done = revoke.get("done")
                    if done is not None and sent_at > done + CACHE_SECONDS + 0.2:
                        return
                    await asyncio.sleep(0.005)

            async def deleted() -> None:
                """When the key left Redis (to within one poll), for the report."""
                while await watcher.hexists(Keys(settings["CONCORD_KEY_PREFIX"]).api_keys(), key_digest(doomed)):
                    await asyncio.sleep(0.002)
                revoke["deleted"] = time.monotonic()

            async def all_answering() -> bool:
                return all(answers)

            watcher = await stack.enter_async_context(redis_py.asyncio.Redis(port=private_redis.port))
            askers = [asyncio.create_task(ask(i, c)) for i, c in enumerate(doomed_clients)]
            try:
                await eventually(all_answering, what="both instances answering")
                revoke["start"] = time.monotonic()
                askers.append(asyncio.create_task(deleted()))
                run = await asyncio.to_thread(concord, "keys", "revoke", doomed, settings=settings)
                revoke["done"] = time.monotonic()
                assert run.returncode == 0, run.stderr
                await asyncio.wait_for(asyncio.gather(*askers), timeout=POLL_DEADLINE)
            finally:
                for task in askers:
                    task.cancel()

            bound = revoke["done"] + CACHE_SECONDS
            first_refusals, after_deletion = [], []
            for i, log in enumerate(answers):
                assert {s for t, s in log if t < revoke["start"]} == {200}, f"instance {i + 1} refused too early"
                refused = [t for t, s in log if s == 401]
                assert refused, f"instance {i + 1} never refused the revoked key"
                assert all(s == 401 for t, s in log if t >= refused[0]), f"instance {i + 1} accepted it again"
                late = [(t - revoke["done"], s) for t, s in log if t >= bound]
                assert late and all(s == 401 for _, s in late), f"instance {i + 1} accepted it past the bound"
                first_refusals.append(refused[0] - revoke["done"])
                after_deletion.append(refused[0] - revoke["deleted"])
            for c in doomed_clients:
                problem(await c.get(AGENTS), 401, "unauthorized")
            for c in kept_clients:
                assert (await c.get(AGENTS)).status_code == 200

    revoke_ms = (revoke["done"] - revoke["start"]) * 1000
    firsts = [round(t * 1000) for t in first_refusals]
    from_deletion = [round(t * 1000) for t in after_deletion]
    security_report(
        f"key revocation: first 401 on instance 1 / 2 at {from_deletion[0]} / {from_deletion[1]} ms after the key "
        f"left Redis, {firsts[0]} / {firsts[1]} ms after `concord keys revoke` returned (it took {revoke_ms:.0f} ms); "
        f"every request from +{CACHE_SECONDS * 1000:.0f} ms on was 401 ({sum(len(a) for a in answers)} requests)",
        {
            "check": "key-revocation",
            "instances": len(instances),
            "firstRefusalMsAfterDeletion": from_deletion,
            "firstRefusalMsAfterRevoke": firsts,
            "revokeCommandMs": round(revoke_ms),
            "boundMs": round(CACHE_SECONDS * 1000),
            "requests": sum(len(a) for a in answers),
            "acceptedPastBound": 0,
        },
    )


# --- the Redis ACL user of docs/redis-acl.md --------------------------------------

ACL_DOC = Path(__file__).resolve().parents[2] / "docs" / "redis-acl.md"
LUA_DIR = Path(__file__).resolve().parents[2] / "lua"
# Connection set-up redis-py may send that Redis lets every user send, or whose
# refusal redis-py ignores (docs/redis-acl.md, "What redis-py sends when it connects").
NO_RULE_NEEDED = {"auth", "hello"}
REFUSAL_IGNORED = {"client|setinfo", "client|maint_notifications"}
USER, ADMIN = "concord", "concord-keys"


def acl_line(marker: str, prefix: str, password: str, admin_password: str = "") -> list[str]:
    """The ACL SETUSER line after ``<!-- marker`` in docs/redis-acl.md, as written
    there but for the key prefix and the passwords, split into arguments."""
    text = ACL_DOC.read_text(encoding="utf-8")
    found = re.search(rf"<!-- {re.escape(marker)}(?::[^\n]*)? -->\n```\n([^\n]+)\n```", text)
    assert found, f"docs/redis-acl.md has no ACL SETUSER line marked {marker}"
    line = found[1].replace("~concord:", f"~{prefix}:")
    line = line.replace(">CHANGE-ME-TOO", shlex.quote(f">{admin_password}"))
    line = line.replace(">CHANGE-ME", shlex.quote(f">{password}"))
    tokens = shlex.split(line)
    assert tokens[:2] == ["ACL", "SETUSER"], line
    return tokens


def commands_of(tokens: list[str]) -> set[str]:
    return {token[1:].lower() for token in tokens if token.startswith("+")}


def url_for(server: RedisServer, user: str, password: str) -> str:
    """CONCORD_REDIS_URL for a user, its password percent-encoded as the document says."""
    return f"redis://{user}:{quote(password, safe='')}@127.0.0.1:{server.port}/0"


def acl_denials(admin: redis_py.Redis) -> list[dict]:
    """ACL LOG entries other than the connection set-up refusals redis-py ignores."""
    return [entry for entry in admin.acl_log() if entry["object"] not in REFUSAL_IGNORED]


def executed_commands(admin: redis_py.Redis) -> set[str]:
    """Every command Redis executed since CONFIG RESETSTAT (scripts' commands included)."""
    stats = admin.info("commandstats")
    return {name.removeprefix("cmdstat_") for name, stat in stats.items() if stat["calls"] > 0}


async def walkthrough(proc: ServiceProcess, api_key: str) -> set[tuple[str, str]]:
    """A tenant's day, through every endpoint; returns the (method, path) of each
    endpoint it used, as declared."""
    covered: set[tuple[str, str]] = set()
    async with proc.client(api_key) as c:

        async def call(
            method: str, path: str, status: int, body: Any = None, params: Any = None, headers: Any = None, **ids: str
        ) -> Any:
            response = await c.request(method, path.format(**ids), json=body, params=params, headers=headers)
            assert response.status_code == status, (method, path, response.text)
            covered.add((method, path))
            return response.json()

        for path in ("/healthz", "/readyz", "/openapi.json"):
            await call("GET", path, 200)
        sdr = (await call("POST", f"{V1}/register", 201, {"agentName": "sdr", "agentRole": "sdr"}))["id"]
        ret = (await call("POST", f"{V1}/register", 201, {"agentName": "retention"}))["id"]
        sup = (await call("POST", f"{V1}/register", 201, {"agentName": "support"}))["id"]
        await call("POST", f"{V1}/register", 200, {"agentName": "sdr", "metadata": {"team": "east"}})
        assert len((await call("GET", f"{V1}/agents", 200, params={"status": "active"}))["agents"]) == 3
        await call("GET", f"{V1}/agents/{{agentId}}", 200, agentId=sdr)
        await call("POST", f"{C}/heartbeat", 200, {"agentId": sdr})

        alice = {"contactEmail": "alice@example.com"}
        lease = await call("POST", f"{C}/lease", 201, {"agentId": sdr, "intent": "outbound", **alice})
        conflict = await call("POST", f"{C}/lease", 409, {"agentId": ret, **alice})
        assert conflict["code"] == "lease_conflict" and conflict["leaseHolder"]["agentId"] == sdr
        assert (await call("POST", f"{C}/lease", 200, {"agentId": sdr, **alice}))["id"] == lease["id"]
        refused = await call("POST", f"{C}/send-check", 200, {"agentId": ret, **alice})
        assert refused["allowed"] is False and refused["reason"] == "lease_conflict"
        allowed = await call(
            "POST", f"{C}/send-check", 200, {"agentId": sdr, "fencingToken": lease["fencingToken"], **alice}
        )
        assert allowed == {"allowed": True}
        await call(
            "POST", f"{C}/lease/{{leaseId}}/renew", 200, {"agentId": sdr, "durationMinutes": 10}, leaseId=lease["id"]
        )
        await call("GET", f"{C}/lease/{{leaseId}}", 200, leaseId=lease["id"])
        listed = await call("GET", f"{C}/leases", 200, params={"agentId": sdr})
        assert [x["id"] for x in listed["leases"]] == [lease["id"]]
        await call("DELETE", f"{C}/lease/{{leaseId}}", 200, params={"agentId": sdr}, leaseId=lease["id"])

        ask = {"requestingAgentId": sdr, "action": "send-discount", **alice}
        once = {"Idempotency-Key": "walkthrough-1"}
        consensus = await call("POST", f"{C}/consensus", 201, ask, headers=once)
        assert await call("POST", f"{C}/consensus", 201, ask, headers=once) == consensus
        await call(
            "POST",
            f"{C}/consensus/{{consensusId}}/vote",
            200,
            {"agentId": ret, "vote": "approve"},
            consensusId=consensus["id"],
        )
        decided = await call(
            "POST",
            f"{C}/consensus/{{consensusId}}/vote",
            200,
            {"agentId": sup, "vote": "approve"},
            consensusId=consensus["id"],
        )
        assert decided["status"] == "approved"
        await call("GET", f"{C}/consensus/{{consensusId}}", 200, consensusId=consensus["id"])
        approved = await call("GET", f"{C}/consensus", 200, params={"status": "approved"})
        assert [x["id"] for x in approved["consensus"]] == [consensus["id"]]

        # Events: a page (XRANGE), a live stream (XREVRANGE for where it starts, then the feed's
        # blocked XREAD), and a long poll that waits on the feed.
        page = await call("GET", f"{C}/events", 200, params={"after": "0", "limit": 5})
        assert page["events"][0]["type"] == "agent.registered"
        async with c.stream("GET", f"{C}/events", params={"type": "lease"}) as stream:
            assert stream.status_code == 200
            await call("POST", f"{C}/lease", 201, {"agentId": sup, "contactEmail": "bob@example.com"})
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    assert '"lease.acquired"' in line
                    break
        covered.add(("GET", f"{C}/events"))
        later = await call("POST", f"{C}/consensus", 201, {"requestingAgentId": sdr, "action": "later"})
        waited = await call(
            "GET", f"{C}/consensus/{{consensusId}}", 200, params={"waitSeconds": 1}, consensusId=later["id"]
        )
        assert waited["status"] == "pending"
        removed = await call("DELETE", f"{V1}/agents/{{agentId}}", 200, agentId=sup)
        assert removed["releasedLeases"] == 1
    return covered


def test_every_script_command_is_on_the_acl_list():
    """Scripts run with their caller's permissions, so each command a script calls
    must be on the line; and the document's count and table match the line."""
    tokens = acl_line("acl-setuser", "concord", "pw")
    allowed = commands_of(tokens)
    called = {
        name.lower()
        for path in LUA_DIR.glob("*.lua")
        for name in re.findall(r"redis\.p?call\(\s*'(\w+)'", path.read_text(encoding="utf-8"))
    }
    assert called, "no redis.call found in lua/"
    assert called <= allowed, f"scripts call commands the ACL user may not run: {sorted(called - allowed)}"
    text = ACL_DOC.read_text(encoding="utf-8")
    assert f"and {len(allowed)} commands" in text
    for command in allowed:
        assert f"`{command.upper().replace('|', ' ')}`" in text, f"{command} is not explained in the table"
    strict = acl_line("acl-setuser-strict", "concord", "pw")
    assert commands_of(strict) == allowed  # the stricter user differs in its keys only


@pytest.mark.real
async def test_acl_user_runs_every_endpoint(private_redis: RedisServer, tmp_path: Path):
    """A service whose CONCORD_REDIS_URL names the document's user serves every
    declared endpoint (rate limits and an Idempotency-Key on, so those scripts run
    too) and `concord keys`; Redis logs no ACL denial; and the commands Redis
    executed are exactly the ones on the line: none missing, none to spare."""
    prefix = "concord-acl.test"
    password = f"p@ss/w:rd {secrets.token_hex(8)}"  # needs the percent-encoding the document describes
    admin = private_redis.client()
    try:
        tokens = acl_line("acl-setuser", prefix, password)
        assert admin.execute_command(*tokens) in ("OK", b"OK", True)
        admin_settings = {"CONCORD_REDIS_URL": private_redis.url, "CONCORD_KEY_PREFIX": prefix}
        api_key, spare = (
            json.loads(concord("keys", "create", "--tenant", "acme", settings=admin_settings).stdout)["apiKey"]
            for _ in range(2)
        )
        assert api_key and spare
        admin.acl_log_reset()
        admin.config_resetstat()

        settings = {
            "CONCORD_REDIS_URL": url_for(private_redis, USER, password),
            "CONCORD_KEY_PREFIX": prefix,
            "CONCORD_RATE_LIMITS": "tenant=1000/m,agent=100/m",
        }
        with service(settings, tmp_path / "concord.log") as proc:
            covered = await walkthrough(proc, api_key)
            log = proc.log_text()
        # `concord keys` as the service's user: list, revoke, create.
        listed = concord("keys", "list", settings=settings)
        assert listed.returncode == 0 and key_digest(spare) in listed.stdout, listed.stderr
        assert concord("keys", "revoke", spare, settings=settings).returncode == 0
        created = concord("keys", "create", "--tenant", "initech", settings=settings)
        assert created.returncode == 0, created.stderr

        executed = executed_commands(admin) - {"config|resetstat", "acl|log", "info"}
        assert covered == {(e.method, e.path) for e in ENDPOINTS}
        assert acl_denials(admin) == []
        assert "maxmemory-policy" not in log  # CONFIG GET answered; the default policy is noeviction
        assert "rate:agent:" in " ".join(admin.keys(f"{prefix}:*"))  # the rate-limit script ran under the user
        allowed = commands_of(tokens)
        assert executed - NO_RULE_NEEDED - REFUSAL_IGNORED == allowed, (
            f"executed but not on the line: {sorted(executed - NO_RULE_NEEDED - REFUSAL_IGNORED - allowed)}; "
            f"on the line but never executed: {sorted(allowed - executed)}"
        )
    finally:
        admin.close()
    security_report(
        f"redis ACL: {len(covered)} endpoints and `concord keys` ran as user {USER!r} with {len(allowed)} commands "
        f"({' '.join(sorted(allowed))}); 0 ACL denials",
        {"check": "redis-acl", "endpoints": len(covered), "commands": sorted(allowed), "denials": 0},
    )


@pytest.mark.real
async def test_acl_user_runs_every_endpoint_on_a_cluster_with_min_replicas(cluster: Cluster, tmp_path: Path):
    """The same user on every node of a Redis Cluster, with the document's additions
    for a cluster and CONCORD_MIN_REPLICAS, serves every endpoint with no denial."""
    prefix = "concord-acl-cluster.test"
    password = secrets.token_hex(16)
    tokens = acl_line("acl-setuser", prefix, password) + acl_line("acl-setuser-cluster", prefix, password)[3:]
    admins = [node.client() for node in cluster.live_nodes()]
    try:
        for admin in admins:
            assert admin.execute_command(*tokens) in ("OK", True)
            admin.acl_log_reset()
        api_key = "acme-acl-cluster-key-0123456789"
        settings = {
            "CONCORD_REDIS_URL": f"redis://{USER}:{password}@127.0.0.1:{cluster.live_nodes()[0].port}",
            "CONCORD_REDIS_CLUSTER": "true",
            "CONCORD_MIN_REPLICAS": "1",
            "CONCORD_KEY_PREFIX": prefix,
            "CONCORD_API_KEYS": f"acme:{api_key}",
            "CONCORD_RATE_LIMITS": "tenant=1000/m,agent=100/m",
        }
        with service(settings, tmp_path / "concord.log") as proc:
            covered = await walkthrough(proc, api_key)
        assert covered == {(e.method, e.path) for e in ENDPOINTS}
        assert [denial for admin in admins for denial in acl_denials(admin)] == []
    finally:
        for admin in admins:
            admin.execute_command("ACL", "DELUSER", USER)
            admin.close()


@pytest.mark.real
def test_acl_user_cannot_leave_its_prefix(private_redis: RedisServer):
    """The user reaches keys under `<prefix>:` only, and commands on the list only,
    also from inside a script, which runs with its caller's permissions."""
    prefix, password = "concord", secrets.token_urlsafe(16)
    admin = private_redis.client()
    user = redis_py.Redis(port=private_redis.port, username=USER, password=password, decode_responses=True)
    try:
        admin.execute_command(*acl_line("acl-setuser", prefix, password))
        admin.set("other:key", "not yours")
        admin.hset("other:apikeys", "digest", "tenant")
        before = {key: admin.dump(key) for key in admin.keys("*")}
        admin.acl_log_reset()

        user.set(f"{prefix}:probe", "mine")  # its own prefix: fine
        assert user.get(f"{prefix}:probe") == "mine"
        outside: list[tuple[str, Any]] = [
            ("GET other:key", lambda: user.get("other:key")),
            ("SET other:key", lambda: user.set("other:key", "x")),
            ("HGETALL of another deployment's API keys", lambda: user.hgetall("other:apikeys")),
            ("a key that only starts like the prefix", lambda: user.get(f"{prefix}x:probe")),
            ("the prefix without its colon", lambda: user.get(prefix)),
            (
                "EVALSHA with a key outside the prefix",
                lambda: user.evalsha(user.script_load("return redis.call('GET', KEYS[1])"), 1, "other:key"),
            ),
        ]
        off_the_list: list[tuple[str, Any]] = [
            ("KEYS", lambda: user.keys("*")),
            ("SCAN", lambda: user.scan(0)),
            ("FLUSHALL", lambda: user.flushall()),
            ("CONFIG SET", lambda: user.config_set("maxmemory-policy", "allkeys-lru")),
            ("EVAL", lambda: user.eval("return 1", 0)),
            ("SCRIPT FLUSH", lambda: user.script_flush()),
            ("ACL SETUSER", lambda: user.execute_command("ACL", "SETUSER", USER, "+@all")),
        ]
        for what, attempt in outside + off_the_list:
            with pytest.raises(redis_py.exceptions.NoPermissionError):
                attempt()
                pytest.fail(f"{what} was allowed")
        # Inside a script, the same rules: a key outside the prefix, a command off the list.
        in_script = {
            "GET other:key": "return redis.call('GET', 'other:key')",
            "FLUSHALL": "return redis.call('FLUSHALL')",
            "a key named in ARGV": "return redis.call('SET', ARGV[1], 'x')",
        }
        for what, body in in_script.items():
            sha = user.script_load(body)
            with pytest.raises(redis_py.exceptions.ResponseError, match="(?i)permission|NOPERM|can't"):
                user.evalsha(sha, 0, "other:key")
                pytest.fail(f"a script's {what} was allowed")
        user.delete(f"{prefix}:probe")
        assert {key: admin.dump(key) for key in admin.keys("*")} == before
        logged = {entry["object"] for entry in admin.acl_log(count=100) if entry["username"] == USER}
        assert {"other:key", "keys", "flushall"} <= logged, logged
    finally:
        user.close()
        admin.close()


@pytest.mark.real
def test_acl_user_without_config_get(private_redis: RedisServer, tmp_path: Path):
    """Without +config|get the service starts, serves, and says once what it could not check."""
    prefix, password = "concord", secrets.token_urlsafe(16)
    tokens = [t for t in acl_line("acl-setuser", prefix, password) if t != "+config|get"]
    assert len(tokens) == len(acl_line("acl-setuser", prefix, password)) - 1
    admin = private_redis.client()
    try:
        admin.execute_command(*tokens)
        settings = {
            "CONCORD_REDIS_URL": url_for(private_redis, USER, password),
            "CONCORD_KEY_PREFIX": prefix,
            "CONCORD_API_KEYS": f"acme:{API_KEY}",
        }
        with service(settings, tmp_path / "concord.log") as proc:
            agent = httpx.post(
                f"{proc.url}{V1}/register", json={"agentName": "sdr"}, headers=bearer(API_KEY), timeout=10
            )
            assert agent.status_code == 201, agent.text
            log = proc.log_text()
        warnings = [line for line in log.splitlines() if "Cannot read maxmemory-policy" in line]
        assert len(warnings) == 1, log
        assert "no permissions to run the 'config|get' command" in warnings[0] and "noeviction" in warnings[0], log
        assert "Traceback" not in log
        assert {entry["object"] for entry in acl_denials(admin)} == {"config|get"}
    finally:
        admin.close()


@pytest.mark.real
async def test_strict_acl_keeps_api_keys_read_only(private_redis: RedisServer, tmp_path: Path):
    """The stricter pair of the document: the service's user does every endpoint but
    cannot write an API key; `concord keys` runs as the keys administrator, who
    cannot read a tenant's data."""
    prefix = "concord"
    password, admin_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    admin = private_redis.client()
    keys_user = redis_py.Redis(port=private_redis.port, username=ADMIN, password=admin_password, decode_responses=True)
    try:
        admin.execute_command(*acl_line("acl-setuser-strict", prefix, password))
        admin.execute_command(*acl_line("acl-setuser-admin", prefix, password, admin_password))
        keys_settings = {
            "CONCORD_REDIS_URL": url_for(private_redis, ADMIN, admin_password),
            "CONCORD_KEY_PREFIX": prefix,
        }
        created = concord("keys", "create", "--tenant", "acme", settings=keys_settings)
        assert created.returncode == 0, created.stderr
        api_key = json.loads(created.stdout)["apiKey"]
        admin.acl_log_reset()

        settings = {
            "CONCORD_REDIS_URL": url_for(private_redis, USER, password),
            "CONCORD_KEY_PREFIX": prefix,
            "CONCORD_RATE_LIMITS": "tenant=1000/m,agent=100/m",
        }
        with service(settings, tmp_path / "concord.log") as proc:
            assert await walkthrough(proc, api_key) == {(e.method, e.path) for e in ENDPOINTS}
        assert acl_denials(admin) == []

        minted = concord("keys", "create", "--tenant", "mallory", settings=settings)
        assert minted.returncode == 1 and "no permissions" in minted.stderr, minted
        assert admin.hlen(Keys(prefix).api_keys()) == 1
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            keys_user.hgetall(f"{prefix}:{{acme}}:agents")
        listed = json.loads(concord("keys", "list", settings=keys_settings).stdout)
        assert listed == {"keys": [{"sha256": key_digest(api_key), "tenant": "acme"}]}
        assert concord("keys", "revoke", api_key, settings=keys_settings).returncode == 0
    finally:
        keys_user.close()
        admin.close()
