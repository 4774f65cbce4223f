"""GET /metrics: exact sums over the workers of `concord serve --workers 2`, counters
that never go down (a SIGKILLed and restarted worker included), a strictly parsed
exposition; and, without processes, the counting, merging and rendering of
server/metrics.py and the middleware's labels (server/http/observe.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import redis.exceptions as rx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from concord.server.http.observe import Observe
from concord.server.metrics import (
    CONTENT_TYPE,
    FORMAT,
    LEASE_OUTCOMES,
    REDIS_ERROR_KINDS,
    Exporter,
    Metrics,
    Snapshot,
    merge,
    read_snapshots,
    redis_error_kind,
    render,
)
from tests.support.api import V1, Fleet, bearer, credential_of
from tests.support.helpers import HANG_SECONDS, Stack, eventually, running_stack, wait_until

TENANT, KEY = "acme", "acme-metrics-key-0123456789"
C = f"{V1}/coordination"
HEARTBEAT = f"{C}/heartbeat"
REGISTER = f"{V1}/register"

# --- a strict parser of the text exposition format 0.0.4 -------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"(?P<name>{NAME})(?:\{{(?P<labels>{LABEL}(?:,{LABEL})*)\}})? (?P<value>\S+)")
ONE_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
ESCAPED = re.compile(r"\\(.)")
Labels = tuple[tuple[str, str], ...]


def parse_exposition(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample, by (name, sorted labels). Fails on any line that is not HELP,
    TYPE or a sample of a declared family, on a counter not named *_total, and on a
    histogram whose buckets are not cumulative up to le="+Inf" == _count with a _sum."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    kinds: dict[str, str] = {}
    helped: set[str] = set()
    samples: dict[tuple[str, Labels], float] = {}
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(NAME, name) and help_text and name not in helped, line
            helped.add(name)
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in {"counter", "histogram", "gauge"} and name not in kinds, line
            assert name in helped, f"TYPE before HELP: {line}"
            kinds[name] = kind
        else:
            match = SAMPLE.fullmatch(line)
            assert match, f"not a sample line: {line!r}"
            labels = tuple(sorted((name, _unescape(value)) for name, value in ONE_LABEL.findall(match["labels"] or "")))
            value = float(match["value"])
            assert (match["name"], labels) not in samples, f"duplicate series: {line}"
            samples[(match["name"], labels)] = value
            family = _family_of(match["name"], kinds)
            assert family is not None, f"sample of an undeclared family: {line}"
    for name, kind in kinds.items():
        assert name.startswith("concord_"), name
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram":
            _check_histogram(name, samples)
    return samples


def _unescape(value: str) -> str:
    return ESCAPED.sub(lambda m: "\n" if m[1] == "n" else m[1], value)


def _family_of(name: str, kinds: dict[str, str]) -> str | None:
    if name in kinds and kinds[name] != "histogram":
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and kinds.get(base) == "histogram":
            return base
    return None


def _check_histogram(name: str, samples: dict[tuple[str, Labels], float]) -> None:
    buckets: dict[Labels, list[tuple[float, float]]] = {}
    for (sample, labels), value in samples.items():
        if sample == f"{name}_bucket":
            le = dict(labels)["le"]
            rest = tuple(item for item in labels if item[0] != "le")
            buckets.setdefault(rest, []).append((float(le), value))
    for labels, series in buckets.items():
        series.sort()
        counts = [count for _, count in series]
        assert counts == sorted(counts), f"{name}{labels}: buckets not cumulative: {series}"
        assert series[-1][0] == float("inf"), f"{name}{labels}: no +Inf bucket"
        assert samples[(f"{name}_count", labels)] == counts[-1], f"{name}{labels}: +Inf bucket != _count"
        assert (f"{name}_sum", labels) in samples, f"{name}{labels}: no _sum"


def requests_by(samples: dict[tuple[str, Labels], float]) -> Counter:
    """concord_http_requests_total as {(route, method, status): count}."""
    found: Counter = Counter()
    for (name, labels), value in samples.items():
        if name == "concord_http_requests_total":
            d = dict(labels)
            found[(d["route"], d["method"], int(d["status"]))] = int(value)
    return found


def latency_counts(samples: dict[tuple[str, Labels], float]) -> Counter:
    """concord_http_request_duration_seconds_count as {(route, method): count}."""
    found: Counter = Counter()
    for (name, labels), value in samples.items():
        if name == "concord_http_request_duration_seconds_count":
            d = dict(labels)
            found[(d["route"], d["method"])] = int(value)
    return found


def without_scrapes(counts: Counter) -> Counter:
    """Leave out of exact comparisons the scrapes, which count themselves, and the
    readiness checks of ServiceProcess.start, which a worker may report up to a
    snapshot period late."""
    return Counter({key: n for key, n in counts.items() if key[0] not in ("/metrics", "/readyz") and n})


# --- against `concord serve --workers 2` -----------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("metrics")
    with running_stack(directory, settings_in(directory), workers=2) as running:
        yield running


def settings_in(directory: Path) -> dict[str, str]:
    # TMPDIR: `concord serve` makes its private metrics directory there, where the test can see it.
    (directory / "tmp").mkdir(exist_ok=True)
    return {"CONCORD_API_KEYS": f"{TENANT}:{KEY}", "TMPDIR": str(directory / "tmp"), "CONCORD_ACCESS_LOG": "off"}


def metrics_dir(stack: Stack) -> Path:
    found = list((stack.directory / "tmp").glob("concord-metrics-*"))
    assert len(found) == 1, found
    return found[0]


def fresh_connections(stack: Stack) -> httpx.AsyncClient:
    """A client opening a connection per request, so that requests reach both workers;
    it authenticates as a fleet does (each agent it registered with its credential)."""
    return httpx.AsyncClient(
        base_url=stack.service.url,
        auth=Fleet(KEY),
        timeout=HANG_SECONDS,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


async def scrape(stack: Stack) -> dict[tuple[str, Labels], float]:
    async with httpx.AsyncClient(timeout=HANG_SECONDS, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        response = await client.get(f"{stack.service.url}/metrics")  # no API key needed
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE
    return parse_exposition(response.text)


async def one_round(client: httpx.AsyncClient, sent: Counter) -> None:
    """Requests of known answers, concurrently; ``sent`` counts them by (route, method, status)."""
    name = f"m-{uuid.uuid4().hex[:10]}"
    unknown = f"agent_{uuid.uuid4()}"

    async def call(method: str, path: str, body: object, route: str, status: int, **headers: str) -> httpx.Response:
        response = await client.request(method, path, json=body, headers=headers)
        assert response.status_code == status, (method, path, response.text)
        sent[(route, method, status)] += 1
        return response

    agent = (await call("POST", REGISTER, {"agentName": name}, REGISTER, 201)).json()["id"]
    own = bearer(credential_of(client, agent))
    calls = [
        ("POST", HEARTBEAT, {"agentId": agent}, HEARTBEAT, 200),  # with its credential
        ("POST", HEARTBEAT, {"agentId": unknown}, HEARTBEAT, 403),  # with the key: not the key's call
        ("POST", HEARTBEAT, {"agentId": "agent_abc"}, HEARTBEAT, 404, own),
        ("POST", HEARTBEAT, {"agentId": 5}, HEARTBEAT, 422, own),
        ("GET", f"{V1}/agents/{unknown}", None, f"{V1}/agents/{{agentId}}", 404),
        ("GET", f"/no-such-{name}", None, "unmatched", 404),
        ("PUT", REGISTER, None, REGISTER, 405),
        ("GET", "/healthz", None, "/healthz", 200),
    ]
    await asyncio.gather(*(call(*c[:5], **(c[5] if len(c) > 5 else {})) for c in calls))
    # The same name again: an update.
    await call("POST", REGISTER, {"agentName": name}, REGISTER, 200)


def served_counts(directory: Path) -> dict[str, int]:
    """Heartbeats counted in each worker's snapshot file, by file name."""
    counts = {}
    for path in directory.glob("*.json"):
        series = json.loads(path.read_text())["families"]["concord_http_requests_total"]
        counts[path.name] = sum(n for labels, n in series.items() if HEARTBEAT in labels)
    return counts


async def send_until_both_workers_served(stack: Stack, client: httpx.AsyncClient, sent: Counter) -> None:
    directory = metrics_dir(stack)
    start = served_counts(directory)

    async def both_served() -> bool:
        await one_round(client, sent)
        now = served_counts(directory)
        return sum(1 for name, n in now.items() if n > start.get(name, 0)) >= 2

    await eventually(both_served, timeout=60, what="requests counted by both workers", every=0.1)


async def until_exact(stack: Stack, before: Counter, sent: Counter) -> Counter:
    """Scrape until the requests counted since ``before`` are exactly ``sent``;
    the last scrape's counts, or a failure showing the difference."""
    seen: dict[str, Counter] = {}

    async def exact() -> bool:
        seen["now"] = requests_by(await scrape(stack))
        return without_scrapes(seen["now"] - before) == sent

    try:
        await eventually(exact, timeout=15, what="/metrics to count exactly what was sent", every=0.1)
    except AssertionError:
        assert without_scrapes(seen["now"] - before) == sent
    return seen["now"]


async def test_metrics_count_exactly_what_both_workers_served(stack: Stack):
    initial = await scrape(stack)
    before, latency_before = requests_by(initial), latency_counts(initial)
    sent: Counter = Counter()
    async with fresh_connections(stack) as client:
        await send_until_both_workers_served(stack, client, sent)
    await until_exact(stack, before, sent)

    # The latency histogram counts the same requests, by route and method.
    after = await scrape(stack)
    expected_latency: Counter = Counter()
    for (route, method, _), n in sent.items():
        expected_latency[(route, method)] += n
    assert without_scrapes(latency_counts(after) - latency_before) == expected_latency
    # Routes are templates: no raw id, no raw unmatched path, ever becomes a label.
    routes = {route for route, _, _ in requests_by(after)}
    assert f"{V1}/agents/{{agentId}}" in routes and "unmatched" in routes
    assert not any("agent_" in route or "no-such" in route for route in routes), routes


async def test_counters_never_go_down_between_scrapes(stack: Stack):
    previous = await scrape(stack)
    sent: Counter = Counter()
    async with fresh_connections(stack) as client:
        for _ in range(15):
            await one_round(client, sent)
            current = await scrape(stack)  # a fresh connection: either worker answers
            for key, value in previous.items():
                if key[0].endswith(("_total", "_count", "_bucket", "_sum")):
                    assert current.get(key, 0) >= value, f"{key} went down: {value} -> {current.get(key)}"
            previous = current


async def test_exposition_declares_every_family_with_zeroed_domain_counters(stack: Stack):
    async with httpx.AsyncClient(timeout=HANG_SECONDS) as client:
        response = await client.get(f"{stack.service.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = parse_exposition(response.text)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", response.text, re.MULTILINE))
    assert types == {
        "concord_http_requests_total": "counter",
        "concord_http_request_duration_seconds": "histogram",
        "concord_lease_operations_total": "counter",
        "concord_votes_total": "counter",
        "concord_consensus_requests_total": "counter",
        "concord_consensus_decisions_total": "counter",
        "concord_redis_errors_total": "counter",
        "concord_redis_duration_seconds": "histogram",
    }
    # Every declared label value has its series from the start.
    for outcome in LEASE_OUTCOMES:
        assert ("concord_lease_operations_total", (("outcome", outcome),)) in samples
    for vote in ("approve", "reject"):
        assert ("concord_votes_total", (("vote", vote),)) in samples
    for kind in REDIS_ERROR_KINDS:
        assert ("concord_redis_errors_total", (("kind", kind),)) in samples
    assert ("concord_consensus_requests_total", ()) in samples
    assert ("concord_redis_duration_seconds_count", ()) in samples


async def test_each_worker_keeps_a_snapshot_in_the_private_directory(stack: Stack):
    directory = metrics_dir(stack)
    assert oct(directory.stat().st_mode & 0o777) == "0o700"  # private to the user running the service
    snapshots = read_snapshots(directory)
    assert len(snapshots) == 2, [p.name for p in directory.iterdir()]
    assert {s.format for s in snapshots} == {FORMAT}
    assert not list(directory.glob("*.tmp"))


async def test_a_killed_worker_is_restarted_and_the_totals_do_not_drop(tmp_path: Path):
    with running_stack(tmp_path, settings_in(tmp_path), workers=2) as stack:
        directory = metrics_dir(stack)
        sent: Counter = Counter()
        before = requests_by(await scrape(stack))
        async with fresh_connections(stack) as client:
            await send_until_both_workers_served(stack, client, sent)
            totals = await until_exact(stack, before, sent)

            # SIGKILL: no shutdown, no last snapshot. Everything it had counted was
            # already in its file (the exact sum above), and the file stays.
            victim = max(served_counts(directory).items(), key=lambda item: item[1])[0]
            os.kill(int(victim.split("-")[0]), signal.SIGKILL)
            wait_until(
                lambda: len(list(directory.glob("*.json"))) == 3, timeout=60, what="uvicorn to restart the worker"
            )
            await until_exact(stack, before, sent)
            for _ in range(10):  # whichever worker answers, nothing counted is lost
                now = requests_by(await scrape(stack))
                assert all(now[key] >= n for key, n in totals.items()), (totals, now)

            # The restarted worker counts on top of the dead one's totals.
            await send_until_both_workers_served(stack, client, sent)
            await until_exact(stack, before, sent)
    assert not directory.exists(), "the private metrics directory outlives `concord serve`"


# --- server/metrics.py without processes ----------------------------------------


def test_a_request_is_counted_by_route_method_status_and_latency_bucket():
    metrics = Metrics()
    metrics.request("/x/{id}", "GET", 200, 0.001)  # on a bound: counted in le="0.001"
    metrics.request("/x/{id}", "GET", 404, 7.0)  # past the last bound: only in +Inf
    metrics.request("/x/{id}", "GET", 200, 0.02)
    samples = parse_exposition(render(metrics.snapshot()))
    route = (("method", "GET"), ("route", "/x/{id}"))
    assert samples[("concord_http_requests_total", (*route, ("status", "200")))] == 2
    assert samples[("concord_http_requests_total", (*route, ("status", "404")))] == 1
    bucket = "concord_http_request_duration_seconds_bucket"
    assert samples[(bucket, (("le", "0.001"), *route))] == 1
    assert samples[(bucket, (("le", "0.025"), *route))] == 2
    assert samples[(bucket, (("le", "5.0"), *route))] == 2
    assert samples[(bucket, (("le", "+Inf"), *route))] == 3
    assert samples[("concord_http_request_duration_seconds_sum", route)] == pytest.approx(7.021)


def test_domain_counters_take_only_their_declared_values():
    metrics = Metrics()
    metrics.lease("granted")
    metrics.lease("takeover")
    metrics.vote("reject")
    metrics.consensus("requested")
    metrics.consensus("expired")
    metrics.redis(0.002)
    metrics.redis(0.3, "timeout")
    metrics.redis_error("response")
    samples = parse_exposition(render(metrics.snapshot()))
    assert samples[("concord_lease_operations_total", (("outcome", "granted"),))] == 1
    assert samples[("concord_lease_operations_total", (("outcome", "takeover"),))] == 1
    assert samples[("concord_lease_operations_total", (("outcome", "released"),))] == 0
    assert samples[("concord_votes_total", (("vote", "reject"),))] == 1
    assert samples[("concord_consensus_requests_total", ())] == 1
    assert samples[("concord_consensus_decisions_total", (("outcome", "expired"),))] == 1
    assert samples[("concord_redis_errors_total", (("kind", "timeout"),))] == 1
    assert samples[("concord_redis_errors_total", (("kind", "response"),))] == 1
    assert samples[("concord_redis_duration_seconds_count", ())] == 2
    assert samples[("concord_redis_duration_seconds_bucket", (("le", "0.0025"),))] == 1
    # A typo at a call site fails at once instead of growing a new series.
    for wrong in (
        lambda: metrics.lease("grant"),
        lambda: metrics.vote("abstain"),
        lambda: metrics.consensus("approve"),
        lambda: metrics.redis(0.1, "weird"),
        lambda: metrics.redis_error("WRONGTYPE"),
    ):
        with pytest.raises(KeyError):
            wrong()


def test_redis_error_kinds():
    assert redis_error_kind(TimeoutError()) == "timeout"
    assert redis_error_kind(rx.TimeoutError()) == "timeout"
    assert redis_error_kind(rx.ConnectionError()) == "connection"
    assert redis_error_kind(rx.ReadOnlyError()) == "read_only"
    assert redis_error_kind(rx.OutOfMemoryError()) == "out_of_memory"
    assert redis_error_kind(rx.NoScriptError()) == "no_script"
    assert redis_error_kind(rx.ResponseError("ERR")) == "response"
    assert redis_error_kind(ValueError()) == "other"
    assert {redis_error_kind(e) for e in (TimeoutError(), ValueError())} <= set(REDIS_ERROR_KINDS)


def test_label_values_are_escaped():
    metrics = Metrics()
    metrics.request('/odd"\\\n', "GET", 200, 0.0)
    text = render(metrics.snapshot())
    assert 'route="/odd\\"\\\\\\n"' in text
    samples = parse_exposition(text)
    assert samples[("concord_http_requests_total", (("method", "GET"), ("route", '/odd"\\\n'), ("status", "200")))] == 1


def test_snapshots_of_every_worker_are_summed_including_exited_ones(tmp_path: Path):
    one, two = Metrics(), Metrics()
    one.request("/a", "GET", 200, 0.001)
    one.lease("granted")
    two.request("/a", "GET", 200, 0.2)
    two.request("/b", "POST", 201, 0.003)
    two.lease("granted")
    Exporter(one, str(tmp_path)).write()
    # A worker that has exited: its pid runs nothing now, its file still counts.
    gone = Metrics()
    gone.request("/a", "GET", 200, 1.0)
    gone.vote("approve")
    exited = Snapshot(FORMAT, 999999999, gone.snapshot())
    (tmp_path / "999999999-deadbeef.json").write_bytes(msgspec.json.encode(exited))
    # The scraped worker writes its own snapshot first, then sums all three.
    scraped = Exporter(two, str(tmp_path))
    samples = parse_exposition(render(scraped.collect()))
    assert len(list(tmp_path.glob("*.json"))) == 3
    a = (("method", "GET"), ("route", "/a"), ("status", "200"))
    assert samples[("concord_http_requests_total", a)] == 3
    assert samples[("concord_http_requests_total", (("method", "POST"), ("route", "/b"), ("status", "201")))] == 1
    assert samples[("concord_lease_operations_total", (("outcome", "granted"),))] == 2
    assert samples[("concord_votes_total", (("vote", "approve"),))] == 1
    a_latency = (("method", "GET"), ("route", "/a"))
    assert samples[("concord_http_request_duration_seconds_count", a_latency)] == 3
    assert samples[("concord_http_request_duration_seconds_bucket", (("le", "0.001"), *a_latency))] == 1
    assert samples[("concord_http_request_duration_seconds_bucket", (("le", "0.25"), *a_latency))] == 2
    assert samples[("concord_http_request_duration_seconds_sum", a_latency)] == pytest.approx(1.201)


def test_unreadable_and_foreign_snapshots_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    counted = Metrics()
    counted.request("/a", "GET", 200, 0.0)
    Exporter(counted, str(tmp_path)).write()
    (tmp_path / "1-torn.json").write_text('{"format": 1, "pid"')
    newer = Metrics()
    newer.request("/a", "GET", 200, 0.0)
    (tmp_path / "2-newer.json").write_bytes(msgspec.json.encode(Snapshot(FORMAT + 1, 2, newer.snapshot())))
    (tmp_path / "3-writing.tmp").write_text("half a fi")  # a write in progress is not a snapshot
    with caplog.at_level("WARNING", logger="concord"):
        total = merge(read_snapshots(tmp_path))
    assert total["concord_http_requests_total"] == {'route="/a",method="GET",status="200"': 1}
    assert "1-torn.json" in caplog.text and "2-newer.json" in caplog.text


def test_a_snapshot_is_replaced_whole_and_only_when_it_changed(tmp_path: Path):
    metrics = Metrics()
    exporter = Exporter(metrics, str(tmp_path))
    exporter.write()
    assert exporter.path is not None and exporter.path.parent == tmp_path
    assert exporter.path.name.startswith(f"{os.getpid()}-")
    first = exporter.path.stat().st_ino
    exporter.write()  # nothing new: the file is left as it is
    assert exporter.path.stat().st_ino == first
    metrics.vote("approve")
    exporter.write()  # a new file replaces the old one (os.replace): never a half-written one
    assert exporter.path.stat().st_ino != first
    assert msgspec.json.decode(exporter.path.read_bytes(), type=Snapshot).families["concord_votes_total"] == {
        'vote="approve"': 1,
        'vote="reject"': 0,
    }
    assert [p.name for p in tmp_path.iterdir()] == [exporter.path.name]


def test_a_failing_write_is_logged_once_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    metrics = Metrics()
    exporter = Exporter(metrics, str(tmp_path / "gone"))
    with caplog.at_level("WARNING", logger="concord"):
        exporter.write()
        metrics.vote("approve")
        exporter.write()
    assert caplog.text.count("Cannot write the metrics snapshot") == 1
    (tmp_path / "gone").mkdir()
    exporter.write()
    assert exporter.path is not None and exporter.path.exists()


async def test_running_writes_at_start_and_at_shutdown(tmp_path: Path):
    metrics = Metrics()
    exporter = Exporter(metrics, str(tmp_path))
    async with exporter.running(every=3600):  # the periodic write never comes in this test
        assert exporter.path is not None
        assert read_snapshots(tmp_path)[0].families["concord_votes_total"]['vote="reject"'] == 0
        metrics.vote("reject")
    assert read_snapshots(tmp_path)[0].families["concord_votes_total"]['vote="reject"'] == 1


async def test_running_writes_every_period(tmp_path: Path):
    metrics = Metrics()
    exporter = Exporter(metrics, str(tmp_path))
    async with exporter.running(every=0.01):
        metrics.vote("approve")

        async def written() -> bool:
            return read_snapshots(tmp_path)[0].families["concord_votes_total"]['vote="approve"'] == 1

        await eventually(written, timeout=5, what="the periodic snapshot")


async def test_without_a_directory_a_process_reports_its_own_counters():
    metrics = Metrics()
    metrics.lease("released")
    exporter = Exporter(metrics, None)
    async with exporter.running():
        assert exporter.path is None
        samples = parse_exposition(render(exporter.collect()))
    assert samples[("concord_lease_operations_total", (("outcome", "released"),))] == 1


# --- the middleware's labels, in process -----------------------------------------


async def _item(request):
    return Response(status_code=204)


async def _boom(request):
    raise RuntimeError("boom")


async def _internal_error(request, exc):
    return PlainTextResponse("internal error", status_code=500)


def observed(metrics: Metrics) -> httpx.AsyncClient:
    app = Starlette(
        routes=[Route("/items/{itemId}", _item, methods=["GET", "POST"]), Route("/boom", _boom)],
        middleware=[Middleware(Observe, metrics=metrics, access_log="off")],
        exception_handlers={Exception: _internal_error},
    )
    # ServerErrorMiddleware re-raises after answering 500; the client gets the answer.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://observed.test")


async def test_labels_are_templates_bounded_methods_and_the_status_answered():
    metrics = Metrics()
    async with observed(metrics) as client:
        assert (await client.get("/items/one")).status_code == 204
        assert (await client.get("/items/two")).status_code == 204
        assert (await client.delete("/items/two")).status_code == 405
        assert (await client.request("BREW", "/items/two")).status_code == 405
        assert (await client.get("/elsewhere/three")).status_code == 404
        assert (await client.get("/boom")).status_code == 500
    assert metrics.requests == {
        ("/items/{itemId}", "GET", 204): 2,
        ("/items/{itemId}", "DELETE", 405): 1,
        ("/items/{itemId}", "other", 405): 1,  # any method: the label stays bounded
        ("unmatched", "GET", 404): 1,
        ("/boom", "GET", 500): 1,  # raised past the middleware, answered 500 outside it
    }
    assert sum(metrics.request_seconds[("/items/{itemId}", "GET")][:-1]) == 2


async def test_the_service_app_counts_into_its_metrics(asgi_app, client: httpx.AsyncClient):
    from concord.server.metrics import METRICS

    key = (f"{V1}/agents/{{agentId}}", "GET", 404)
    before = METRICS.requests.get(key, 0)
    assert (await client.get(f"{V1}/agents/agent_{uuid.uuid4()}")).status_code == 404
    assert METRICS.requests[key] == before + 1
    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"] == CONTENT_TYPE
    samples = parse_exposition(response.text)
    labels = (("method", "GET"), ("route", f"{V1}/agents/{{agentId}}"), ("status", "404"))
    assert samples[("concord_http_requests_total", labels)] == before + 1
