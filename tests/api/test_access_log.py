"""Access logs (server/http/observe.py): one line per request on stdout, JSON by
default, plain text or none with CONCORD_ACCESS_LOG; read from the log of a real
`concord serve`. In process: the exact fields and the quoting of each format.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from concord.server.http.observe import Observe, stdout_writer
from concord.server.metrics import Metrics
from concord.server.settings import ConfigError, Settings
from tests.support.api import V1, Fleet, bearer
from tests.support.helpers import HANG_SECONDS, RedisServer, ServiceProcess, redis_server, service, wait_until

TENANT, KEY = "acme", "acme-access-key-0123456789"
C = f"{V1}/coordination"
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TEXT_LINE = re.compile(
    rf"(?P<ts>{TS.pattern}) (?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{{3}}) (?P<ms>\d+\.\d{{3}})ms"
    r" route=(?P<route>\S+) tenant=(?P<tenant>\S+) principal=(?P<principal>\S+) role=(?P<role>\S+)"
    r" agent=(?P<agent>\S+)"
    r" client=(?P<client>\S+)"
)
# What uvicorn's own access log looked like; the service must not write it any more.
UVICORN_ACCESS = re.compile(r'"(GET|POST|PUT|DELETE) \S+ HTTP/1\.1" \d{3}')


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("access-redis")) as server:
        yield server


def settings(redis: RedisServer, **more: str) -> dict[str, str]:
    return {
        "CONCORD_REDIS_URL": redis.url,
        "CONCORD_KEY_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        "CONCORD_API_KEYS": f"{TENANT}:{KEY}",
        **more,
    }


def fleet(proc: ServiceProcess, key: str) -> httpx.AsyncClient:
    """A client of the service that authenticates as a fleet does: each agent it
    registered with that agent's credential, everything else with ``key``."""
    return httpx.AsyncClient(base_url=proc.url, auth=Fleet(key), timeout=HANG_SECONDS)


def forged(agent_id: str) -> dict[str, str]:
    """A credential of the agent's shape that Concord never made."""
    return bearer(f"concord-agent.{TENANT}.{agent_id}.{'F' * 43}")


def json_lines(proc: ServiceProcess) -> list[dict]:
    """The access lines of the service's log, readiness checks left out."""
    lines = [json.loads(line) for line in proc.log_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["route"] != "/readyz"]


def text_lines(proc: ServiceProcess) -> list[re.Match]:
    matches = [TEXT_LINE.fullmatch(line) for line in proc.log_text().splitlines()]
    return [m for m in matches if m and m["route"] != "/readyz"]


async def test_one_json_line_per_request_by_default(redis: RedisServer, tmp_path: Path):
    log = tmp_path / "serve.log"
    with service(settings(redis), log) as proc:  # CONCORD_ACCESS_LOG unset: json
        unknown = f"agent_{uuid.uuid4()}"
        async with fleet(proc, KEY) as client, proc.client(None) as anonymous:
            agent = (await client.post(f"{V1}/register", json={"agentName": "logged"})).json()["id"]
            own = bearer(client.auth.credentials[agent])
            answers = [
                await client.post(f"{C}/heartbeat", json={"agentId": agent}),
                await client.post(f"{C}/heartbeat", json={}, headers=own),  # the agent left out: the credential's
                await client.post(f"{C}/heartbeat", json={"agentId": unknown}),  # no credential: the admin key
                await client.post(f"{C}/heartbeat", json={"agentId": unknown}, headers=own),
                await client.post(f"{C}/heartbeat", json={"agentId": 5}, headers=own),
                lease := await client.post(f"{C}/lease", json={"agentId": agent, "contactEmail": "ann@example.com"}),
                await client.delete(f"{C}/lease/{lease.json()['id']}", params={"agentId": agent}),
                await client.post(f"{C}/consensus", json={"requestingAgentId": agent, "action": "discount"}),
                await client.get(f"{V1}/agents", headers=own),
                await client.post(f"{C}/heartbeat", json={"agentId": agent}, headers=forged(agent)),
                await anonymous.get(f"{V1}/agents"),
                await client.get("/no/such/path", params={"q": "1"}),
            ]
        assert [a.status_code for a in answers] == [200, 200, 403, 403, 422, 201, 200, 201, 200, 401, 401, 404]
        admin, as_agent, nobody = ("cfg-1", "admin"), (agent, "agent"), (None, None)
        heartbeat = ("POST", f"{C}/heartbeat", f"{C}/heartbeat")
        expected = [
            ("POST", f"{V1}/register", f"{V1}/register", 201, TENANT, *admin, None),
            (*heartbeat, 200, TENANT, *as_agent, agent),
            (*heartbeat, 200, TENANT, *as_agent, agent),  # filled in from the credential
            (*heartbeat, 403, TENANT, *admin, None),  # a key may not heartbeat: refused before the body is read
            (*heartbeat, 403, TENANT, *as_agent, unknown),  # agent_mismatch: names the agent it tried to act as
            (*heartbeat, 422, TENANT, *as_agent, None),  # no agent in a body that failed
            ("POST", f"{C}/lease", f"{C}/lease", 201, TENANT, *as_agent, agent),
            ("DELETE", f"{C}/lease/{lease.json()['id']}", f"{C}/lease/{{leaseId}}", 200, TENANT, *as_agent, agent),
            ("POST", f"{C}/consensus", f"{C}/consensus", 201, TENANT, *as_agent, agent),
            ("GET", f"{V1}/agents", f"{V1}/agents", 200, TENANT, *as_agent, None),  # a read names no agent
            (*heartbeat, 401, TENANT, *as_agent, agent),  # forged: the agent it claimed to be, refused
            ("GET", f"{V1}/agents", f"{V1}/agents", 401, None, *nobody, None),  # no key, no tenant
            ("GET", "/no/such/path", "unmatched", 404, None, *nobody, None),
        ]
        lines = wait_until(
            lambda: (found := json_lines(proc)) and len(found) >= len(expected) and found,
            what="an access line per request",
        )
        # The principal: the id and role of the key that authenticated (cfg-1: the first of
        # CONCORD_API_KEYS), or the agent whose credential it was, of role "agent".
        assert [
            (
                line["method"],
                line["path"],
                line["route"],
                line["status"],
                line["tenant"],
                line["principal"],
                line["role"],
                line["agent"],
            )
            for line in lines
        ] == expected
        secrets = client.auth.credentials[agent], forged(agent)["Authorization"].removeprefix("Bearer ")
        assert not any(secret in proc.log_text() for secret in secrets), "a credential was logged"
        for line in lines:
            assert list(line) == [
                "ts", "method", "route", "path", "status", "ms", "tenant", "principal", "role", "agent", "client"
            ]  # fmt: skip
            assert TS.fullmatch(line["ts"]) and line["ms"] >= 0 and line["client"] == "127.0.0.1"
    assert not UVICORN_ACCESS.search(proc.log_text()), "uvicorn's own access log is still on"


async def test_text_gives_one_plain_line_per_request(redis: RedisServer, tmp_path: Path):
    with service(settings(redis, CONCORD_ACCESS_LOG="text"), tmp_path / "serve.log") as proc:
        async with fleet(proc, KEY) as client:
            agent = (await client.post(f"{V1}/register", json={"agentName": "plain"})).json()["id"]
            assert (await client.post(f"{C}/heartbeat", json={"agentId": agent})).status_code == 200
            assert (await client.get(f"{V1}/agents/agent_nope")).status_code == 404
        lines = wait_until(lambda: (found := text_lines(proc)) and len(found) >= 3 and found, what="3 text lines")
        assert [
            (m["method"], m["path"], m["status"], m["route"], m["tenant"], m["principal"], m["role"], m["agent"])
            for m in lines
        ] == [
            ("POST", f"{V1}/register", "201", f"{V1}/register", TENANT, "cfg-1", "admin", "-"),
            ("POST", f"{C}/heartbeat", "200", f"{C}/heartbeat", TENANT, agent, "agent", agent),
            ("GET", f"{V1}/agents/agent_nope", "404", f"{V1}/agents/{{agentId}}", TENANT, "cfg-1", "admin", "-"),
        ]
        assert not any(line.startswith("{") for line in proc.log_text().splitlines())


async def test_off_writes_no_access_line(redis: RedisServer, tmp_path: Path):
    with service(settings(redis, CONCORD_ACCESS_LOG="off"), tmp_path / "serve.log") as proc:
        async with proc.client(KEY) as client:
            assert (await client.post(f"{V1}/register", json={"agentName": "quiet"})).status_code == 201
            assert (await client.get("/nowhere")).status_code == 404
    # Stopped: anything it was going to write is written.
    text = proc.log_text()
    assert "Application shutdown complete" in text
    assert not json_lines(proc) and not text_lines(proc) and not UVICORN_ACCESS.search(text), text


async def test_lines_of_several_workers_never_interleave(redis: RedisServer, tmp_path: Path):
    with service(settings(redis), tmp_path / "serve.log", workers=2) as proc:
        limits = httpx.Limits(max_keepalive_connections=0)  # a connection each: both workers serve
        async with httpx.AsyncClient(base_url=proc.url, timeout=HANG_SECONDS, limits=limits) as client:
            paths = [f"/missing/{i}" for i in range(200)]
            answers = await asyncio.gather(*(client.get(path) for path in paths))
        assert {a.status_code for a in answers} == {404}
        # Every line parses (json_lines fails on a torn or merged one), one per request.
        lines = wait_until(
            lambda: (found := json_lines(proc)) and len(found) >= len(paths) and found, what="200 access lines"
        )
        assert Counter(line["path"] for line in lines) == Counter(paths)


# --- formats, in process ------------------------------------------------------------


async def _acting(request):
    # What the endpoint machinery (http/endpoint.py) does once it knows them.
    request.scope["concord.tenant"] = "acme"
    request.scope["concord.agent"] = request.path_params["agent"]
    return Response(status_code=204)


async def _boom(request):
    request.scope["concord.tenant"] = "acme"
    raise RuntimeError("boom")


async def _internal_error(request, exc):
    return PlainTextResponse("internal error", status_code=500)


def observed(access_log: str, written: list[bytes]) -> httpx.AsyncClient:
    app = Starlette(
        routes=[Route("/act/{agent}", _acting, methods=["POST"]), Route("/boom", _boom)],
        middleware=[Middleware(Observe, metrics=Metrics(), access_log=access_log, write=written.append)],
        exception_handlers={Exception: _internal_error},
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("10.1.2.3", 4567))
    return httpx.AsyncClient(transport=transport, base_url="http://observed.test")


async def test_json_line_fields():
    written: list[bytes] = []
    async with observed("json", written) as client:
        await client.post("/act/agent_x?secret=1")
        await client.get("/boom")
        await client.get("/nothing%20here")
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in written)
    lines = [json.loads(line) for line in written]
    for line in lines:
        assert TS.fullmatch(line.pop("ts")) and line.pop("ms") >= 0
    assert lines == [
        {
            "method": "POST",
            "route": "/act/{agent}",
            "path": "/act/agent_x",
            "status": 204,
            "tenant": "acme",
            "principal": None,
            "role": None,
            "agent": "agent_x",
            "client": "10.1.2.3",
        },  # the query string is not logged
        {
            "method": "GET",
            "route": "/boom",
            "path": "/boom",
            "status": 500,
            "tenant": "acme",
            "principal": None,
            "role": None,
            "agent": None,
            "client": "10.1.2.3",
        },  # raised past the middleware: logged as the 500 it was answered
        {
            "method": "GET",
            "route": "unmatched",
            "path": "/nothing%20here",
            "status": 404,
            "tenant": None,
            "principal": None,
            "role": None,
            "agent": None,
            "client": "10.1.2.3",
        },  # the path as sent
    ]


async def test_text_line_quotes_what_could_split_it():
    written: list[bytes] = []
    async with observed("text", written) as client:
        await client.post("/act/agent_x")
        await client.post("/act/two%20words")  # decoded, the agent holds a space
        await client.post('/act/quo"te%0Aline')
    lines = [line.decode() for line in written]
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    first = TEXT_LINE.fullmatch(lines[0].rstrip("\n"))
    assert first and (first["method"], first["path"], first["status"], first["route"]) == (
        "POST",
        "/act/agent_x",
        "204",
        "/act/{agent}",
    )
    assert (first["tenant"], first["agent"], first["client"]) == ("acme", "agent_x", "10.1.2.3")
    assert lines[1].endswith(' agent="two words" client=10.1.2.3\n')
    assert lines[2].endswith(' agent="quo\\"te\\nline" client=10.1.2.3\n')


async def test_off_writes_nothing_and_still_counts():
    written: list[bytes] = []
    metrics = Metrics()
    app = Starlette(
        routes=[Route("/act/{agent}", _acting, methods=["POST"])],
        middleware=[Middleware(Observe, metrics=metrics, access_log="off", write=written.append)],
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        await client.post("/act/a")
    assert written == [] and metrics.requests == {("/act/{agent}", "POST", 204): 1}


def test_stdout_writer_writes_each_line_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "out"
    with open(path, "w") as out:
        monkeypatch.setattr("sys.stdout", out)
        write = stdout_writer()
        write(b'{"a":1}\n')
        write(b"x" * 100_000 + b"\n")
        assert path.read_bytes() == b'{"a":1}\n' + b"x" * 100_000 + b"\n"  # unbuffered: there at once
    captured = io.StringIO()  # no descriptor (a captured stdout): through sys.stdout
    monkeypatch.setattr("sys.stdout", captured)
    stdout_writer()(b"line\n")
    assert captured.getvalue() == "line\n"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "json"),
        ({"CONCORD_LOG_LEVEL": "debug"}, "json"),
        ({"CONCORD_LOG_LEVEL": "warning"}, "off"),  # as uvicorn's access log, at info
        ({"CONCORD_LOG_LEVEL": "warning", "CONCORD_ACCESS_LOG": "json"}, "json"),
        ({"CONCORD_ACCESS_LOG": "TEXT"}, "text"),
        ({"CONCORD_ACCESS_LOG": "off"}, "off"),
    ],
)
def test_access_log_setting(env: dict[str, str], expected: str):
    assert Settings.from_env(env).access_log == expected


def test_bad_settings_name_the_variable(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"CONCORD_ACCESS_LOG='XML': expected json, text or off"):
        Settings.from_env({"CONCORD_ACCESS_LOG": "XML"})
    with pytest.raises(ConfigError, match=r"CONCORD_METRICS_DIR=.*expected an existing directory"):
        Settings.from_env({"CONCORD_METRICS_DIR": str(tmp_path / "absent")})
    assert Settings.from_env({"CONCORD_METRICS_DIR": str(tmp_path)}).metrics_dir == str(tmp_path)
    assert Settings.from_env({}).metrics_dir is None
