"""The benchmark: how close each Concord operation comes to the HTTP floor.

    .venv/bin/python tests/bench/run.py            # the full run (about 15 minutes), writes docs/performance.md
    .venv/bin/python tests/bench/run.py --smoke --output /tmp/perf.md   # seconds: checks it still works

It starts everything itself: a private redis-server on a free port (no
persistence), `concord serve` at each worker count, the floor (floor.py, a bare
Starlette app served by uvicorn with exactly the settings of `concord serve`), and
wrk with the Lua scripts of this directory. Floor and operations alternate
(floor, op 1, floor, op 2, ..., floor) and each operation is compared with the mean
of the two floor runs around it, so drift of the machine cancels out.

Modules: prepare.py makes the data (through the Store), servers.py starts and
watches the servers, load.py runs wrk, report.py writes the Markdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script: `tests` and `service` import from the repository

from concord.server.settings import parse_api_keys
from tests.bench import load, prepare, servers
from tests.bench.report import DISTURBED_CORES, Op, Report, Row, ScaleRow, Table, kept_section, render
from tests.support.helpers import REDIS_SERVER, RedisServer, ServiceProcess, wait_until

OPS = [
    Op("register", "register (upsert)", "register", 200),
    Op("heartbeat", "heartbeat", "heartbeat", 200, '"status":"active"', 0.70, 10),
    Op("lease-free", "lease acquire, fresh contact", "lease_free", 201, '"conflict":false', 0.60, 10),
    Op("lease-contended", "lease acquire, contended (409)", "lease_contended", 409, '"lease_conflict"', 0.60, 10),
    Op("renew", "renew", "renew", 200),
    Op("send-check", "send-check", "send_check", 200, '"allowed":true', 0.70, 10),
    Op("vote", "vote", "vote", 200, '"status":"pending"', 0.50, 15),
    Op("consensus-read", "consensus read", "consensus_read", 200, '"status":"pending"', 0.50, 15),
]
BY_KEY = {op.key: op for op in OPS}
FLOOR = Op("floor", "floor", "floor", 200, '"status":"ok"')
# What a tenant of many agents runs: the operations whose cost could grow with the fleet.
SCALE_OPS = ("heartbeat", "lease-free", "vote")
# When no floor has been measured yet, vote runs get requests for this many votes a second.
DEFAULT_RATE_BOUND = 30_000

FULL = {
    "seconds": 10,
    "warmup": 2,
    "workers": [1, 2],
    "ops": [op.key for op in OPS],
    "large_agents": 100_000,
    "scale_ops": list(SCALE_OPS),
    "memory": ["1000x100", "100x1000"],
    "retries": 2,
    "quiet_wait": 120,
    "output": str(REPO / "docs/performance.md"),
}
SMOKE = {
    "seconds": 1,
    "warmup": 0,
    "workers": [1],
    "ops": ["heartbeat", "lease-contended", "vote"],
    "large_agents": 2_000,
    "scale_ops": ["heartbeat"],
    "memory": ["20x50"],
    "retries": 0,
    "quiet_wait": 0,
    "output": None,
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark Concord against the HTTP floor; writes docs/performance.md.",
        epilog="Lists may be given empty to skip a part, e.g. `--memory` alone measures no memory.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds of tiny load: 1 s runs, 1 worker, three operations, small scale figures",
    )
    parser.add_argument("--seconds", type=int, help="length of each measured run (default 10)")
    parser.add_argument("--warmup", type=int, help="length of the warm-up before each run, 0 for none (default 2)")
    parser.add_argument("--workers", type=int, nargs="*", help="worker counts of `concord serve` (default 1 2)")
    parser.add_argument("--ops", nargs="*", choices=list(BY_KEY), help="operations to measure (default all)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--agents", type=int, default=1000, help="agents of the tenant measured (default 1000)")
    parser.add_argument("--large-agents", type=int, help="agents of the large tenant (default 100000)")
    parser.add_argument(
        "--scale-ops",
        nargs="*",
        choices=SCALE_OPS,
        help="operations measured at --agents versus --large-agents (default all three)",
    )
    parser.add_argument(
        "--memory",
        nargs="*",
        metavar="AGENTSxLEASES",
        help="lease layouts for memory per lease (default 1000x100 100x1000)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        help="run a measurement again, after waiting for a quiet machine, when other processes disturbed it "
        "(default 2; 0 with --smoke)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=int,
        help="seconds to wait for other processes to leave the machine idle before each measured run "
        "(default 120; 0 with --smoke)",
    )
    parser.add_argument("--output", help="the Markdown report (default docs/performance.md; required with --smoke)")
    options = parser.parse_args(argv)
    for name, value in (SMOKE if options.smoke else FULL).items():
        if getattr(options, name) is None:
            setattr(options, name, value)
    if options.output is None:
        parser.error("--smoke writes no docs/performance.md: give --output")
    if options.seconds < 1 or options.warmup < 0:
        parser.error("--seconds must be at least 1 and --warmup at least 0 (wrk counts whole seconds)")
    options.memory = [tuple(int(n) for n in layout.lower().split("x")) for layout in options.memory]
    return options


class Bench:
    def __init__(self, options: argparse.Namespace, work: Path) -> None:
        self.o = options
        self.work = work
        # Each Redis of the run gets its own copy of the tenants, with its own data files.
        # key_id: the id `concord serve` gives each key, by its place in CONCORD_API_KEYS (env()).
        self.small = prepare.Tenant("small", "bench-small-" + secrets.token_hex(8), work / "main" / "small", 0, "cfg-1")
        self.large = prepare.Tenant("large", "bench-large-" + secrets.token_hex(8), work / "main" / "large", 0, "cfg-2")
        self.problems: list[str] = []
        self.runs = 0
        self.floor_rps: list[float] = []
        self.redis_pid = 0
        self.disturbed = 0  # measured runs that other processes disturbed (each run again, within --retries)
        self.settings: dict[str, object] = {}  # what `concord serve` passes to uvicorn (last started)
        self.loop_http = "not measured (no server ran)"

    def env(self, redis_url: str) -> dict[str, str]:
        """The CONCORD_* settings of every `concord serve` of the run."""
        api_keys = f"{self.small.name}:{self.small.api_key},{self.large.name}:{self.large.api_key}"
        # The agents were registered with these keys' grants (prepare.py): the service must grant the same.
        assert {g.tenant: g for g in parse_api_keys(api_keys).values()} == {
            t.name: t.admin for t in (self.small, self.large)
        }
        return {
            "CONCORD_REDIS_URL": redis_url,
            "CONCORD_API_KEYS": api_keys,
            "CONCORD_KEY_PREFIX": prepare.KEY_PREFIX,
            "CONCORD_LOG_LEVEL": "warning",
            "CONCORD_HEARTBEAT_WINDOW_SECONDS": str(prepare.WINDOW_SECONDS),
            "CONCORD_RATE_LIMITS": prepare.RATE_LIMITS,
        }

    # --- one measurement -----------------------------------------------------

    def measure(self, op: Op, url: str, pid: int, tenant: prepare.Tenant, redis_url: str, label: str) -> load.Result:
        """A warm-up run (unless --warmup 0), then the measured run, both checked. The
        measured run waits for a quiet machine first, and is run again (up to
        --retries times) when other processes kept the cores busy during it."""
        result = None
        runs = [(self.o.warmup, True)] if self.o.warmup else []
        runs += [(self.o.seconds, False)] * (1 + self.o.retries)
        for seconds, warmup in runs:
            self.runs += 1
            tag = f"r{self.runs}"
            args: dict[str, object] = {"key": self.key_of(op, tenant), "tag": tag, "expect": op.expect}
            args.update(tenant.files())
            if op.marker:
                args["marker"] = op.marker
            if op.script == "vote":
                votes = int(self.rate_bound() * seconds) + 1000
                args["requests"] = prepare.vote_requests(redis_url, tenant, votes, tag)
                args["per"] = prepare.VOTES_PER_REQUEST
            if not warmup and self.o.quiet_wait and not servers.wait_for_quiet(DISTURBED_CORES, self.o.quiet_wait):
                print(f"  the machine is still busy after {self.o.quiet_wait} s; measuring anyway", flush=True)
            result = load.run(
                op.script,
                url,
                seconds,
                args,
                connections=self.o.connections,
                threads=self.o.threads,
                server=lambda: servers.cpu_seconds(servers.tree(pid)),
                redis=lambda: servers.cpu_seconds([self.redis_pid]),
                machine=servers.machine_cpu_seconds,
            )
            where = f"{label}, {op.title}{' (warm-up)' if warmup else ''}"
            for problem in result.problems(op.expect):
                self.complain(f"{where}: {problem}")
            print(
                f"  {where}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
                f"other processes {result.cores['other']:.2f} cores",
                flush=True,
            )
            if not warmup:
                if result.cores["other"] <= DISTURBED_CORES:
                    break
                self.disturbed += 1
        assert result is not None
        if op is FLOOR:
            self.floor_rps.append(result.rps)
        if op.script == "register":  # it gave every agent a new credential: learn them for the next runs
            prepare.new_credentials(redis_url, tenant)
        return result

    @staticmethod
    def key_of(op: Op, tenant: prepare.Tenant) -> str:
        """The bearer credential of the requests a run makes for no agent: the admin key
        (register); on the floor, an agent's credential, so that its requests carry an
        Authorization header like the operations' (their agents' own credentials)."""
        if op is FLOOR:
            return tenant.file("credentials.txt").read_text().split(maxsplit=2)[1]
        return tenant.api_key

    def rate_bound(self) -> float:
        """A throughput no operation reaches: 1.5 times the fastest floor seen so far."""
        return 1.5 * max(self.floor_rps) if self.floor_rps else DEFAULT_RATE_BOUND

    def complain(self, problem: str) -> None:
        self.problems.append(problem)
        print(f"!!! UNEXPECTED: {problem}", file=sys.stderr, flush=True)

    # --- the parts of the run ------------------------------------------------

    @contextmanager
    def redis(self, name: str) -> Iterator[RedisServer]:
        server = RedisServer(self.work / name).start()
        self.redis_pid = server.process.pid
        try:
            yield server
        finally:
            server.kill()

    @contextmanager
    def running(
        self, redis_url: str, workers: int, floor: bool
    ) -> Iterator[tuple[ServiceProcess, servers.FloorProcess | None]]:
        """`concord serve` at ``workers`` (and the floor with its uvicorn settings), running."""
        env = self.env(redis_url)
        self.settings = servers.uvicorn_settings(env, workers)
        service = ServiceProcess(env, workers, self.work / f"concord-{workers}.log").start()
        floor_process = None
        try:
            if floor:
                floor_process = servers.FloorProcess(self.settings, self.work / f"floor-{workers}.log").start()
            servers.wait_for_workers(service.process.pid, workers, "concord serve")
            if floor_process:
                servers.wait_for_workers(floor_process.process.pid, workers, "the floor")
            self.check_libraries(service, floor_process)
            yield service, floor_process
        finally:
            if floor_process:
                floor_process.stop()
            service.stop()

    def check_libraries(self, service: ServiceProcess, floor: servers.FloorProcess | None) -> None:
        """Record which loop and HTTP parser the workers run; the floor's must be the same.
        (A worker still starting has loaded neither yet: they are given time to agree.)"""

        def seen() -> dict[str, set[str]]:
            found = {
                f"concord serve worker {pid}": servers.loaded_libraries(pid)
                for pid in servers.serving(service.process.pid)
            }
            if floor:
                found |= {
                    f"floor worker {pid}": servers.loaded_libraries(pid) for pid in servers.serving(floor.process.pid)
                }
            return found

        def agreed() -> bool:
            return len({frozenset(libraries) for libraries in seen().values()}) == 1

        try:
            wait_until(agreed, timeout=30, what="the workers of both servers to load the same loop and parser")
        except AssertionError:
            self.complain(f"the servers do not run the same event loop and HTTP parser: {seen()}")
        libraries = set().union(*seen().values())
        loop = "uvloop" if "uvloop" in libraries else "zuvloop" if "zuvloop" in libraries else "asyncio"
        http = "httptools" if "httptools" in libraries else "h11 (httptools not loaded)"
        self.loop_http = (
            f"`loop={self.settings.get('loop')!r}` → **{loop}**, `http={self.settings.get('http')!r}` → **{http}** "
            f"(read from /proc/<pid>/maps of every worker of `concord serve` and of the floor)"
        )

    def table(self, redis: RedisServer, workers: int) -> Table:
        ops = [BY_KEY[key] for key in self.o.ops]
        label = f"{workers} worker{'s' if workers > 1 else ''}"
        print(f"{label}: floor and {len(ops)} operations, interleaved", flush=True)
        with self.running(redis.url, workers, floor=True) as (service, floor):

            def run(op: Op) -> load.Result:
                target = floor if op is FLOOR else service
                return self.measure(op, target.url, target.process.pid, self.small, redis.url, label)

            floors, rows = [run(FLOOR)], []
            for op in ops:
                result = run(op)
                floors.append(run(FLOOR))
                rows.append(Row(op, result, (floors[-2].rps + floors[-1].rps) / 2))
        return Table(workers, rows, floors)

    def scale(self, redis: RedisServer) -> list[ScaleRow]:
        label = f"scale ({self.o.agents:,} vs {self.o.large_agents:,} agents)"
        print(f"{label}: {len(self.o.scale_ops)} operations, interleaved", flush=True)
        rows = []
        with self.running(redis.url, 1, floor=False) as (service, _):

            def run(op: Op, tenant: prepare.Tenant) -> load.Result:
                where = f"{label}, {tenant.agents:,} agents"
                return self.measure(op, service.url, service.process.pid, tenant, redis.url, where)

            for op in (BY_KEY[key] for key in self.o.scale_ops):
                few = run(op, self.small)
                many = run(op, self.large)
                rows.append(ScaleRow(op, [few, run(op, self.small)], many))
        return rows

    def run(self) -> Report:
        report = Report(
            command=command_line(self.o.argv),
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine(),
            method=[],
            settings={},
            loop_http="",
            scale_agents=(self.o.agents, self.o.large_agents),
        )
        if self.o.ops and self.o.workers:
            with self.redis("redis-main") as redis:
                prepare.agents(redis.url, self.small, self.o.agents)
                prepare.hot_path(redis.url, self.small)
                for workers in self.o.workers:
                    report.tables.append(self.table(redis, workers))
        if self.o.scale_ops:
            with self.redis("redis-scale") as redis:
                self.small = replace(self.small, directory=self.work / "scale" / "small")
                self.large = replace(self.large, directory=self.work / "scale" / "large")
                prepare.agents(redis.url, self.small, self.o.agents)
                print(f"registering {self.o.large_agents:,} agents of tenant {self.large.name!r}", flush=True)
                prepare.agents(redis.url, self.large, self.o.large_agents)
                report.scale = self.scale(redis)
        for agents, per_agent in self.o.memory:
            print(f"memory: {agents:,} agents × {per_agent:,} leases", flush=True)
            with self.redis(f"redis-memory-{agents}x{per_agent}") as redis:
                report.memory.append(prepare.lease_memory(redis.url, agents, per_agent))
        report.settings = self.settings
        report.loop_http = self.loop_http
        report.method = self.method()
        report.problems = self.problems
        return report

    def method(self) -> list[str]:
        o = self.o
        warmup = f"after a {o.warmup} s warm-up run of the same kind of requests" if o.warmup else "without warm-up"
        return [
            (
                f"- **Load**: wrk, {o.threads} threads, {o.connections} connections, {o.seconds} s per measurement "
                f"{warmup}. wrk runs on the same {platform_cores()} cores as the servers and Redis; the tables "
                "give the cores each kept busy (CPU seconds during the run / its length)."
            ),
            (
                "- **Interleaving**: at each worker count the floor and the operations alternate: floor, "
                "operation 1, floor, operation 2, ..., floor. An operation's ratio is its req/s divided by the "
                "mean req/s of the floor runs just before and just after it."
            ),
            (
                '- **The floor**: `GET /` answering `{"status":"ok"}` from a bare Starlette app '
                "(`tests/bench/floor.py`), served by the same uvicorn with the same settings (below). Its requests "
                "carry an `Authorization` header like the operations' (an agent's credential) and wrk builds and "
                "checks them exactly as it does the operations' (`tests/bench/common.lua`)."
            ),
            (
                f"- **The service**: `concord serve --workers N` with `CONCORD_REDIS_URL` (a private redis-server "
                f'{RedisServer.version_of(REDIS_SERVER)} with `--save "" --appendonly no`), `CONCORD_API_KEYS` '
                f"(two tenants), `CONCORD_LOG_LEVEL=warning` (no access log), "
                f"`CONCORD_KEY_PREFIX={prepare.KEY_PREFIX}`, "
                f"`CONCORD_HEARTBEAT_WINDOW_SECONDS={prepare.WINDOW_SECONDS}` (the prepared agents stay active for "
                f"the whole run) and `CONCORD_RATE_LIMITS={prepare.RATE_LIMITS}`: the in-process limits run on "
                "every request but refuse none (no Redis limit)."
            ),
            (
                "- **Data**, made beforehand through `concord.server.store.Store` "
                f"(at most {prepare.CONCURRENCY} calls in flight): a tenant of {o.agents:,} agents registered with "
                "the tenant's admin key, for every operation. As in a fleet, every request an agent makes "
                "(heartbeat, lease, renew, send-check, vote, consensus read) carries that agent's own credential; "
                "**register** uses the admin key and re-registers "
                "their names in turn (200, an update; it gives each agent a new credential, which the runs after it "
                "are given); **heartbeat** beats for them in turn; **lease acquire, fresh** "
                "asks for a contact never seen before on every request (201); **contended** asks, for each agent in "
                "turn, for one contact the first agent holds (409 `lease_conflict`); **renew** and **send-check** use "
                f"one lease per agent, renewed by its holder, or checked by its holder with its fencing token "
                f"(200, `allowed: true`); **vote** votes on consensus requests made for that run, each taking at most "
                f"{prepare.VOTES_PER_REQUEST} votes (alternately approve and reject) from distinct agents, so every "
                f"vote is a fresh (request, voter) pair, none decides its request "
                f"(`needed` is {(o.agents - 1) // 2 + 1} or more) and a vote's answer lists "
                f"0–{prepare.VOTES_PER_REQUEST - 1} earlier votes; "
                f"**consensus read** reads {prepare.READ_REQUESTS} pending requests of "
                f"{prepare.VOTES_PER_REQUEST // 2} votes each in turn, the agents taking turns as the reader."
            ),
            (
                f"- **Quiet machine**: before each measured run the benchmark waits (at most {o.quiet_wait} s) until "
                f"processes outside it keep fewer than {DISTURBED_CORES} cores busy, and a measured run during which "
                f"they kept more busy (column *other*) is run again, at most {o.retries} times; the tables show the "
                f"last run. In this run, {self.disturbed} measured runs were disturbed (each was run again while "
                "retries remained)."
            ),
            (
                "- **Checks**: wrk counts every answer's status; each operation has one expected status (409 for the "
                "contended acquire) and, where it tells success apart, a text its body must contain. Anything "
                "else -- another status, a socket error, a request past the prepared data -- is listed under "
                "*Unexpected answers* and makes the run exit non-zero."
            ),
        ]


def platform_cores() -> int:
    return os.cpu_count() or 0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine() -> list[str]:
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "service", "lua")
    changed = len(dirty.splitlines())
    code = f"commit `{commit}`" + (
        f", with uncommitted changes to {changed} files of service/ and lua/" if dirty else ""
    )
    packages = ", ".join(
        f"{name} {installed(name)}" for name in ("uvicorn", "starlette", "redis", "msgspec", "uvloop", "httptools")
    )
    return [
        (
            f"- **Machine**: {platform_cores()} cores ({cpu_model()}), {platform.system()} {platform.release()}; "
            "wrk, the servers and Redis all share these cores"
        ),
        (
            f"- **Software**: Python {platform.python_version()}, Redis {RedisServer.version_of(REDIS_SERVER)}, "
            f"wrk {load.version()}; {packages}"
        ),
        f"- **Code**: {code}",
    ]


def command_line(argv: list[str], script: str = "tests/bench/run.py") -> str:
    """How ``script`` was run, with the interpreter relative to the repository when it is inside it."""
    python = Path(sys.executable)
    try:
        python = python.relative_to(REPO)
    except ValueError:
        pass
    return shlex.join([str(python), script, *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = parse(argv)
    options.argv = argv
    missing = [name for name, path in (("wrk", load.WRK), ("redis-server", REDIS_SERVER)) if path is None]
    if missing:
        print(f"run.py: {' and '.join(missing)} not found on PATH (apt-get install wrk redis-server)", file=sys.stderr)
        return 2
    output = Path(options.output)
    kept = kept_section(output)
    with tempfile.TemporaryDirectory(prefix="concord-bench-") as work:
        bench = Bench(options, Path(work))
        try:
            report = bench.run()
        except BaseException:
            print(f"run.py: failed; the logs of the servers were in {work}:", file=sys.stderr)
            for log in sorted(Path(work).glob("*.log")):
                print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-20:]), file=sys.stderr)
            raise
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(report, kept), encoding="utf-8")
    print(f"wrote {output}")
    if report.problems:
        print(
            f"!!! {len(report.problems)} UNEXPECTED ANSWER(S); see 'Unexpected answers' in {output}:", file=sys.stderr
        )
        for problem in report.problems:
            print(f"!!!   {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
