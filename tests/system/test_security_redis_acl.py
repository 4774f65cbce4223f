"""Security: the Redis ACL user.

Redis ACL (docs/redis-acl.md)
  * The ACL SETUSER line of the document, applied as written, lets a service do
    every endpoint (and `concord keys`), with no ACL denial logged.
  * That user cannot touch a key outside the prefix, nor run a command not on the
    list, also from inside a script.
  * The list is exactly what the service needs: every command the Lua scripts
    call is on it, and every command Redis executed during the walkthrough is.

Figures (the ACL command list) are printed with `pytest -s` and appended as JSON lines
to the file named by CONCORD_SECURITY_REPORT, if set (tests/system/security_support.py).
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis as redis_py

from concord.server.http.endpoint import ENDPOINTS
from concord.server.store.keys import Keys
from tests.cli.test_serve_and_keys import concord
from tests.conftest import API_KEY
from tests.support.api import V1, C, credential_of, verdict
from tests.support.cluster import Cluster
from tests.support.helpers import RedisServer, ServiceProcess, service
from tests.system.security_support import bearer, security_report
from tests.system.security_support import private_redis as private_redis  # a fixture: pytest finds it here

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
        stale = credential_of(c, sdr)
        rotated = await call("POST", f"{V1}/agents/{{agentId}}/credentials", 200, agentId=sdr)
        assert rotated["agentId"] == sdr and rotated["credential"] != stale
        await call("POST", f"{C}/heartbeat", 401, {"agentId": sdr}, headers=bearer(stale))
        await call("POST", f"{C}/heartbeat", 200, {"agentId": sdr})  # with the new one
        await call("PUT", f"{V1}/quotas", 200, {"leasesPerAgent": 500})
        assert (await call("GET", f"{V1}/quotas", 200))["leasesPerAgent"] == 500
        await call("DELETE", f"{V1}/quotas", 200)

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
        assert verdict(allowed, alice["contactEmail"]) == {"allowed": True}
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

        # A policy with voter roles and a human approval: the electorate set, the humans.
        human = await call("POST", f"{V1}/register", 201, {"agentName": "dana", "kind": "human"})
        policy = f"{C}/consensus-policies/{{action}}"
        await call("PUT", policy, 200, {"voterRoles": ["general"], "humanApprovals": 1}, action="wire-funds")
        assert (await call("GET", policy, 200, action="wire-funds"))["humanApprovals"] == 1
        assert len((await call("GET", f"{C}/consensus-policies", 200))["policies"]) == 1
        wire = await call("POST", f"{C}/consensus", 201, {"requestingAgentId": sdr, "action": "wire-funds"})
        for voter in (ret, human["id"]):
            body = {"agentId": voter, "vote": "approve"}
            last = await call("POST", f"{C}/consensus/{{consensusId}}/vote", 200, body, consensusId=wire["id"])
        assert last["status"] == "pending"  # the electorate is ret and sup: a majority is 2
        body = {"agentId": sup, "vote": "approve"}
        last = await call("POST", f"{C}/consensus/{{consensusId}}/vote", 200, body, consensusId=wire["id"])
        assert last["status"] == "approved"
        await call("DELETE", policy, 200, action="wire-funds")

        # Suppressions: a contact and a batch, the refusal they cause, a page, a lift.
        entry = f"{C}/suppressions/{{entry}}"
        await call("PUT", entry, 201, {"reason": "unsubscribed"}, entry="carol%40example.com")
        await call("POST", f"{C}/suppressions", 200, {"suppressions": [{"entry": "@example.org", "reason": "bounced"}]})
        refused = await call("POST", f"{C}/lease", 403, {"agentId": sup, "contactEmail": "carol+x@example.com"})
        assert refused["code"] == "suppressed"
        check = await call("POST", f"{C}/send-check", 200, {"agentId": sup, "contactEmail": "dan@example.org"})
        assert check["reason"] == "suppressed"
        assert (await call("GET", entry, 200, entry="carol%40example.com"))["reason"] == "unsubscribed"
        assert len((await call("GET", f"{C}/suppressions", 200, params={"limit": 1}))["suppressions"]) == 1
        await call("DELETE", entry, 200, entry="carol%40example.com")

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
            json.loads(concord("keys", "create", "--tenant", "acme", settings=admin_settings).stdout) for _ in range(2)
        )
        api_key, spare_id = api_key["apiKey"], spare["id"]
        assert api_key and spare_id
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
        assert listed.returncode == 0 and spare_id in listed.stdout, listed.stderr
        assert concord("keys", "revoke", spare_id, settings=settings).returncode == 0
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
        api_key, key_id = json.loads(created.stdout)["apiKey"], json.loads(created.stdout)["id"]
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
        assert admin.hlen(Keys(prefix).api_keys()) == 2  # the one key: its digest and its id
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            keys_user.hgetall(f"{prefix}:{{acme}}:agents")
        listed = json.loads(concord("keys", "list", settings=keys_settings).stdout)
        assert [(k["id"], k["tenant"]) for k in listed["keys"]] == [(key_id, "acme")]
        assert concord("keys", "revoke", key_id, settings=keys_settings).returncode == 0
    finally:
        keys_user.close()
        admin.close()
