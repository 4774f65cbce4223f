"""The `concord` command, run as a subprocess: `serve` on the embedded store and
its refusals, settings that are refused naming the variable, and `keys
create|list|revoke` against a private redis-server with a running service: one
JSON document on stdout, or a problem JSON on stderr, and the exit status.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_py

from concord.server.settings import key_digest
from concord.server.store.keys import Keys
from tests.support.api import ISO_Z as ISO
from tests.support.api import V1, problem
from tests.support.helpers import RedisServer, concord_env, free_port, redis_server, service, wait_until

# `concord serve` with settings it must refuse would otherwise run until killed.
CLI_TIMEOUT = 30


def concord(*args: str, settings: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `concord ARGS` with exactly the given CONCORD_* settings."""
    return subprocess.run(
        [sys.executable, "-m", "concord", *args],
        env=concord_env(settings or {}),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def answer(run: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document on stdout of a run that succeeded and said nothing on stderr."""
    assert run.returncode == 0, (run.returncode, run.stdout, run.stderr)
    assert run.stderr == "", run.stderr
    assert run.stdout.endswith("\n") and run.stdout.count("\n") == 1, run.stdout  # compact: a pipe is no terminal
    return json.loads(run.stdout)


def failure(run: subprocess.CompletedProcess[str], code: str, status: int) -> dict[str, Any]:
    """The one problem JSON document, on one line of stderr, of a run that failed with ``status``."""
    assert run.returncode == status, (run.returncode, run.stdout, run.stderr)
    assert run.stdout == "", run.stdout
    assert len(run.stderr.splitlines()) == 1, run.stderr
    problem = json.loads(run.stderr)
    assert problem["code"] == code and problem["type"] == f"urn:concord:problem:{code}", problem
    assert problem["title"] and problem["detail"], problem
    return problem


def register(base_url: str, api_key: str, name: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}{V1}/register",
        json={"agentName": name},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )


# --- help ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["serve", "--help"],
        ["keys", "--help"],
        *(["keys", leaf, "--help"] for leaf in ("create", "list", "revoke")),
    ],
)
def test_help(args: list[str]):
    run = concord(*args)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: concord"), run.stdout
    if args == ["--help"]:
        assert "serve" in run.stdout and "keys" in run.stdout
    if args[0] == "serve":
        assert all(option in run.stdout for option in ("--host", "--port", "--workers")), run.stdout
    if args[-2:] == ["create", "--help"]:
        assert "--tenant" in run.stdout and "shown only this once" in run.stdout, run.stdout
    if args[0] == "keys":  # what each prints, and an example that runs it
        assert "JSON" in run.stdout or '{"' in run.stdout, run.stdout
        assert f"concord {' '.join(args[:-1])} " in run.stdout.partition("\nexamples:\n")[2], run.stdout


def test_the_console_script_is_installed():
    script = Path(sys.executable).with_name("concord")
    assert script.is_file(), f"no `concord` next to {sys.executable}: is the package installed (pip install -e .)?"
    run = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert run.returncode == 0 and run.stdout.startswith("usage: concord"), run


# --- serve on the embedded store -------------------------------------------------


def test_serve_without_redis_runs_on_the_embedded_store_with_a_demo_key(tmp_path: Path):
    with service({}, tmp_path / "concord.log") as proc:
        log = proc.log_text()
        embedded = [line for line in log.splitlines() if "embedded" in line.lower()]
        assert len(embedded) == 1 and "in-memory store" in embedded[0], log
        (demo_line,) = [line for line in log.splitlines() if "demo" in line]  # the key ends the line
        demo_key = demo_line.split()[-1].strip("'\".,")

        created = register(proc.url, demo_key, "sdr")
        assert created.status_code == 201, created.text
        assert created.json()["tenantId"] == "demo", created.text
        assert register(proc.url, demo_key, "sdr").status_code == 200
        problem(register(proc.url, demo_key + "x", "sdr"), 401, "unauthorized")
        assert httpx.get(f"{proc.url}/readyz", timeout=10).status_code == 200


def test_serve_on_the_embedded_store_with_configured_keys_creates_no_demo_key(tmp_path: Path):
    with service({"CONCORD_API_KEYS": "acme:acme-key-0123456789"}, tmp_path / "concord.log") as proc:
        log = proc.log_text()
        assert "embedded" in log.lower() and "demo" not in log, log
        created = register(proc.url, "acme-key-0123456789", "sdr")
        assert created.status_code == 201 and created.json()["tenantId"] == "acme", created.text


def test_serve_refuses_several_workers_on_the_embedded_store():
    run = concord("serve", "--port", str(free_port()), "--workers", "2")
    assert run.returncode != 0, run
    assert "--workers" in run.stderr and "CONCORD_REDIS_URL" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr, run.stderr


@pytest.mark.parametrize(
    "name, value",
    [
        ("CONCORD_HEARTBEAT_WINDOW_SECONDS", "abc"),
        ("CONCORD_HEARTBEAT_WINDOW_SECONDS", "0"),
        ("CONCORD_HEARTBEAT_WINDOW_SECONDS", "1.5"),
        ("CONCORD_API_KEYS", "garbage"),
        ("CONCORD_API_KEYS", "acme:"),
        ("CONCORD_API_KEYS", "not a tenant!:key0123"),
        ("CONCORD_API_KEYS", "acme:same-key,globex:same-key"),
        ("CONCORD_KEY_PREFIX", "con{cord}"),
        ("CONCORD_KEY_PREFIX", ""),
        ("CONCORD_REDIS_TIMEOUT_SECONDS", "-1"),
        ("CONCORD_REDIS_TIMEOUT_SECONDS", "soon"),
        ("CONCORD_REDIS_MAX_CONNECTIONS", "0"),
        ("CONCORD_REDIS_MAX_CONNECTIONS", "many"),
        ("CONCORD_LOG_LEVEL", "loud"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(name: str, value: str):
    run = concord("serve", "--port", str(free_port()), settings={name: value})
    assert run.returncode != 0, run
    assert name in run.stderr, run.stderr
    assert "Traceback" not in run.stderr, run.stderr


def test_a_malformed_redis_url_is_refused_naming_the_variable():
    run = concord("serve", "--port", str(free_port()), settings={"CONCORD_REDIS_URL": "localhost:6379"})
    assert run.returncode != 0, run
    assert "CONCORD_REDIS_URL" in run.stderr + run.stdout, run.stderr
    assert "Traceback" not in run.stderr, run.stderr


@pytest.mark.parametrize("command", [["list"], ["create", "--tenant", "acme"], ["revoke", "key_0123456789abcdef"]])
def test_keys_need_a_redis(command: list[str]):
    problem = failure(concord("keys", *command), "not_configured", status=2)
    assert "CONCORD_REDIS_URL" in problem["detail"], problem


@pytest.mark.parametrize("name, value", [("CONCORD_KEY_PREFIX", "con{cord}"), ("CONCORD_REDIS_URL", "localhost:6379")])
def test_keys_refuse_a_malformed_setting_naming_the_variable(name: str, value: str):
    problem = failure(concord("keys", "list", settings={name: value}), "not_configured", status=2)
    assert name in problem["detail"], problem


@pytest.mark.parametrize("command", [["list"], ["create", "--tenant", "acme"], ["revoke", "key_0123456789abcdef"]])
def test_keys_against_a_redis_that_does_not_answer_are_the_unreachable_problem(command: list[str]):
    url = f"redis://:secret-password@127.0.0.1:{free_port()}/0"
    problem = failure(concord("keys", *command, settings={"CONCORD_REDIS_URL": url}), "unreachable", status=1)
    assert "secret-password" not in json.dumps(problem), problem
    assert problem["url"].startswith("redis://:***@127.0.0.1:") and problem["url"] in problem["detail"], problem


# --- keys stored in Redis ------------------------------------------------------------


@pytest.fixture
def private_redis(real_redis_url: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, so every key in it is this test's.
    (real_redis_url only decides whether a real Redis may be used: skip, or fail if required.)"""
    with redis_server(tmp_path / "redis") as server:
        yield server


def everything_in(client: redis_py.Redis) -> list[str]:
    """Every key name and every stored value, member, field and score of the database."""
    found: list[str] = []
    for key in client.scan_iter(count=1000):
        found.append(key)
        kind = client.type(key)
        if kind == "string":
            found.append(client.get(key))
        elif kind == "hash":
            found += [part for pair in client.hgetall(key).items() for part in pair]
        elif kind == "zset":
            found += [str(part) for pair in client.zrange(key, 0, -1, withscores=True) for part in pair]
        elif kind == "set":
            found += list(client.smembers(key))
        elif kind == "list":
            found += client.lrange(key, 0, -1)
        elif kind == "stream":
            found += [part for _, fields in client.xrange(key) for pair in fields.items() for part in pair]
        else:
            raise AssertionError(f"unexpected {kind} at {key}")
    return found


@pytest.mark.real
def test_keys_create_list_revoke_against_a_running_service(private_redis: RedisServer, tmp_path: Path):
    prefix = f"t{uuid.uuid4().hex[:12]}"
    settings = {"CONCORD_REDIS_URL": private_redis.url, "CONCORD_KEY_PREFIX": prefix}
    apikeys = Keys(prefix).api_keys()
    client = private_redis.client()
    try:
        created = answer(concord("keys", "create", "--tenant", "initech", settings=settings))
        api_key, digest, key_id = created["apiKey"], key_digest(created["apiKey"]), created["id"]
        shown = {"id": key_id, "tenant": "initech", "role": "admin", "roles": [], "createdAt": created["createdAt"]}
        assert created == {**shown, "apiKey": api_key}, created
        assert re.fullmatch(r"key_[0-9a-f]{16}", key_id) and ISO.fullmatch(created["createdAt"]), created

        # Redis holds its SHA-256 (and its id, naming the digest) and nothing that contains the key itself.
        stored = client.hgetall(apikeys)
        assert set(stored) == {digest, f"id:{key_id}"} and stored[f"id:{key_id}"] == digest
        assert json.loads(stored[digest])["tenant"] == "initech"
        assert all(api_key not in item for item in everything_in(client))

        listed = concord("keys", "list", settings=settings)
        assert answer(listed) == {"keys": [shown]}
        assert api_key not in listed.stdout + listed.stderr and digest not in listed.stdout

        static = {**settings, "CONCORD_API_KEYS": "acme:acme-key-0123456789"}
        with service(static, tmp_path / "concord.log") as proc:
            r = register(proc.url, api_key, "sdr")
            assert r.status_code == 201 and r.json()["tenantId"] == "initech", r.text
            # The stored key is initech's: its agents are not acme's.
            assert (
                httpx.get(
                    f"{proc.url}{V1}/agents/{r.json()['id']}",
                    headers={"Authorization": "Bearer acme-key-0123456789"},
                    timeout=10,
                ).status_code
                == 404
            )

            revoked = answer(concord("keys", "revoke", key_id, settings=settings))
            assert revoked == {"revoked": True, "id": key_id, "tenant": "initech", "role": "admin"}, revoked
            assert client.hgetall(apikeys) == {}
            # The service caches a key's tenant for up to a second.
            wait_until(
                lambda: register(proc.url, api_key, "sdr").status_code == 401,
                timeout=10,
                what="the revoked key to be refused",
            )
            problem(register(proc.url, api_key, "sdr"), 401, "unauthorized")
            assert register(proc.url, "acme-key-0123456789", "sdr").status_code == 201

        again = concord("keys", "revoke", key_id, settings=settings)
        missing = failure(again, "key_not_found", status=1)
        assert prefix in missing["detail"] and key_id in missing["detail"], missing
        # The key itself is refused as an argument, and never echoed: a secret does not belong in argv.
        given = concord("keys", "revoke", api_key, settings=settings)
        assert "the key's id" in failure(given, "invalid_argument", status=2)["detail"] and api_key not in given.stderr
        assert answer(concord("keys", "list", settings=settings)) == {"keys": []}
    finally:
        client.close()


@pytest.mark.real
def test_keys_list_by_tenant_then_age_with_roles_and_revoke_by_id_as_listed(private_redis: RedisServer):
    settings = {"CONCORD_REDIS_URL": private_redis.url, "CONCORD_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}"}
    made = [("b", "admin", ()), ("a", "gate", ()), ("b", "enroll", ("sdr", "support")), ("a", "read", ())]
    created = []
    for tenant, role, roles in made:
        extra = ["--roles", ",".join(roles)] if roles else []
        created.append(answer(concord("keys", "create", "--tenant", tenant, "--role", role, *extra, settings=settings)))
    assert len({c["apiKey"] for c in created}) == len({c["id"] for c in created}) == 4, created
    assert [(c["tenant"], c["role"], tuple(c["roles"])) for c in created] == made
    listed = answer(concord("keys", "list", settings=settings))["keys"]
    expected = sorted(
        ({k: v for k, v in c.items() if k != "apiKey"} for c in created), key=lambda k: (k["tenant"], k["createdAt"])
    )
    assert [k["id"] for k in listed] == [k["id"] for k in expected] and listed == expected, listed

    first = listed[0]
    revoked = answer(concord("keys", "revoke", first["id"], settings=settings))
    assert revoked == {"revoked": True, "id": first["id"], "tenant": "a", "role": "gate"}, revoked
    assert answer(concord("keys", "list", settings=settings))["keys"] == listed[1:]


@pytest.mark.real
def test_keys_create_refuses_roles_for_a_key_that_is_not_enroll(private_redis: RedisServer):
    settings = {"CONCORD_REDIS_URL": private_redis.url, "CONCORD_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}"}
    run = concord("keys", "create", "--tenant", "acme", "--role", "gate", "--roles", "sdr", settings=settings)
    assert "enroll" in failure(run, "invalid_argument", status=2)["detail"]


@pytest.mark.real
@pytest.mark.parametrize("tenant", ["", "has space", "a" * 65, "brace{d}", "colon:ed", "émile", "dot.ted"])
def test_keys_create_refuses_an_invalid_tenant(private_redis: RedisServer, tenant: str):
    settings = {"CONCORD_REDIS_URL": private_redis.url, "CONCORD_KEY_PREFIX": "refused"}
    problem = failure(concord("keys", "create", "--tenant", tenant, settings=settings), "invalid_argument", status=2)
    assert "--tenant" in problem["detail"] and repr(tenant) in problem["detail"], problem
    client = private_redis.client()
    try:
        assert client.dbsize() == 0
    finally:
        client.close()


@pytest.mark.real
def test_keys_a_redis_refuses_are_the_redis_error_problem(private_redis: RedisServer):
    """A user of the Redis that may not write (ACL) cannot create a key: Redis's own
    refusal, named, with the password redacted."""
    admin = private_redis.client()
    try:
        admin.execute_command("ACL", "SETUSER", "reader", "on", ">reader-secret", "~*", "+@all", "-hset")
    finally:
        admin.close()
    url = f"redis://reader:reader-secret@127.0.0.1:{private_redis.port}/0"
    run = concord("keys", "create", "--tenant", "acme", settings={"CONCORD_REDIS_URL": url})
    problem = failure(run, "redis_error", status=1)
    assert "no permissions" in problem["detail"] and "reader-secret" not in run.stderr, problem
    assert problem["url"] == f"redis://reader:***@127.0.0.1:{private_redis.port}/0", problem
