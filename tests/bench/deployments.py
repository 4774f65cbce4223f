"""What a deployment choice costs: one Redis or a Redis Cluster, with or without
CONCORD_MIN_REPLICAS, measured with the benchmark's wrk scripts in one run.

    .venv/bin/python tests/bench/deployments.py            # about 6 minutes, writes docs/performance-deployments.md
    .venv/bin/python tests/bench/deployments.py --seconds 1 --agents 50 --output /tmp/deployments.md  # does it run?

Four setups run side by side, each a `concord serve --workers 1` on its own Redis
with the same data (prepare.py):

- one Redis with one replica (the baseline), and the same with CONCORD_MIN_REPLICAS=1;
- a 3-master, 3-replica Redis Cluster (CONCORD_REDIS_CLUSTER=true), and the same
  with CONCORD_MIN_REPLICAS=1.

For each operation the setups are measured in turn, the baseline first and again
last, and each setup's throughput is divided by the mean of the two baseline runs:
the machine's drift during one operation's runs cancels out, as in run.py.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script: `tests` and `service` import from the repository

from tests.bench import load, prepare, servers
from tests.bench.run import BY_KEY, machine
from tests.support.cluster import Cluster
from tests.support.helpers import RedisServer, ServiceProcess, wait_until

OPS = ("heartbeat", "lease-free", "send-check", "vote")


@dataclass
class Setup:
    name: str
    redis_url: str
    cluster: bool
    min_replicas: int
    redis_pids: list[int]
    tenant: prepare.Tenant
    service: ServiceProcess | None = None


@contextmanager
def one_redis_with_a_replica(work: Path) -> Iterator[tuple[str, list[int]]]:
    master = RedisServer(work / "master").start()
    replica = RedisServer(
        work / "replica", "--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", str(master.port)
    )
    try:
        replica.start()
        with master.client() as client:
            wait_until(
                lambda: "online" in str(client.info("replication").get("slave0")), timeout=30, what="the replica"
            )
        yield master.url, [master.process.pid, replica.process.pid]
    finally:
        replica.kill()
        master.kill()


@contextmanager
def cluster_of_six(work: Path) -> Iterator[tuple[str, list[int]]]:
    cluster = Cluster(work)
    try:
        cluster.start()
        yield cluster.url, [node.server.process.pid for node in cluster.nodes]
    finally:
        cluster.stop()


def measure(setup: Setup, op: str, seconds: int, tag: str) -> load.Result:
    args: dict[str, object] = {
        "key": setup.tenant.api_key,
        "tag": tag,
        "expect": BY_KEY[op].expect,
        **setup.tenant.files(),
    }
    if BY_KEY[op].marker:
        args["marker"] = BY_KEY[op].marker
    if op == "vote":
        votes = 40_000 * seconds
        args["requests"] = prepare.vote_requests(setup.redis_url, setup.tenant, votes, tag, setup.cluster)
        args["per"] = prepare.VOTES_PER_REQUEST
    assert setup.service is not None and setup.service.process is not None
    pid = setup.service.process.pid
    result = load.run(
        BY_KEY[op].script,
        setup.service.url,
        seconds,
        args,
        connections=64,
        threads=2,
        server=lambda: servers.cpu_seconds(servers.tree(pid)),
        redis=lambda: servers.cpu_seconds(setup.redis_pids),
        machine=servers.machine_cpu_seconds,
    )
    problems = result.problems(BY_KEY[op].expect)
    print(
        f"  {setup.name}, {op}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms"
        + (f"  !!! {'; '.join(problems)}" if problems else ""),
        flush=True,
    )
    if problems:
        raise SystemExit(f"{setup.name}, {op}: {'; '.join(problems)}")
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Benchmark one Redis vs a Redis Cluster, with and without WAIT.")
    parser.add_argument("--seconds", type=int, default=8, help="length of each measured run (default 8)")
    parser.add_argument("--agents", type=int, default=1000, help="agents of the tenant (default 1000)")
    parser.add_argument("--output", default=str(REPO / "docs/performance-deployments.md"))
    o = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="concord-deployments-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        setups = []
        for name, cluster, min_replicas, backend in (
            ("one Redis + 1 replica", False, 0, one_redis_with_a_replica),
            ("one Redis + 1 replica, CONCORD_MIN_REPLICAS=1", False, 1, one_redis_with_a_replica),
            ("Redis Cluster 3+3", True, 0, cluster_of_six),
            ("Redis Cluster 3+3, CONCORD_MIN_REPLICAS=1", True, 1, cluster_of_six),
        ):
            index = len(setups)
            url, pids = stack.enter_context(backend(work / f"redis-{index}"))
            # The only key of CONCORD_API_KEYS below: `concord serve` grants it as cfg-1.
            tenant = prepare.Tenant("bench", "bench-" + secrets.token_hex(8), work / f"data-{index}", 0, "cfg-1")
            print(f"{name}: {o.agents} agents and the hot-path data", flush=True)
            prepare.agents(url, tenant, o.agents, cluster)
            prepare.hot_path(url, tenant, cluster)
            setup = Setup(name, url, cluster, min_replicas, pids, tenant)
            env = {
                "CONCORD_REDIS_URL": url,
                "CONCORD_REDIS_CLUSTER": str(cluster).lower(),
                "CONCORD_MIN_REPLICAS": str(min_replicas),
                "CONCORD_API_KEYS": f"{tenant.name}:{tenant.api_key}",
                "CONCORD_KEY_PREFIX": prepare.KEY_PREFIX,
                "CONCORD_LOG_LEVEL": "warning",
                "CONCORD_HEARTBEAT_WINDOW_SECONDS": str(prepare.WINDOW_SECONDS),
                "CONCORD_RATE_LIMITS": prepare.RATE_LIMITS,
            }
            setup.service = ServiceProcess(env, 1, work / f"concord-{index}.log").start()
            stack.callback(setup.service.stop)
            setups.append(setup)
        rows = []
        runs = 0
        for op in OPS:
            print(f"{op}:", flush=True)
            order = [*setups, setups[0]]
            results = []
            for setup in order:
                runs += 1
                measure(setup, op, 1, f"w{runs}")  # warm-up
                runs += 1
                results.append(measure(setup, op, o.seconds, f"r{runs}"))
            baseline = (results[0].rps + results[-1].rps) / 2
            rows.append((op, baseline, results[:-1]))
    Path(o.output).write_text(render(o, setups, rows), encoding="utf-8")
    print(f"wrote {o.output}")


def render(o: argparse.Namespace, setups: list[Setup], rows: list) -> str:
    def table(cell: Callable[[load.Result, float], str]) -> list[str]:
        head = ["| operation | " + " | ".join(s.name for s in setups) + " |", "|---|" + "--:|" * len(setups)]
        return head + [
            f"| {BY_KEY[op].title} | " + " | ".join(cell(r, baseline) for r in results) + " |"
            for op, baseline, results in rows
        ]

    return (
        "\n".join(
            [
                "# Performance: one Redis or a Redis Cluster, with and without `CONCORD_MIN_REPLICAS`",
                "",
                f"Written by `tests/bench/deployments.py` on {datetime.now(UTC):%Y-%m-%d %H:%M UTC}; see its docstring "
                "for the method. Each setup is `concord serve --workers 1`; wrk with 2 threads and 64 connections, "
                f"{o.seconds} s per measured run after a 1 s warm-up, the same scripts and data as "
                f"`tests/bench/run.py` ({o.agents:,} agents). The ratio is the setup's req/s over the mean of the two "
                "baseline runs (first and last) of that operation. Every Redis process shares the machine's cores.",
                "",
                *machine(),
                "",
                *table(lambda r, base: f"{r.rps:,.0f} req/s, p99 {r.p99_ms:.1f} ms (**{r.rps / base:.2f}**)"),
                "",
                "Redis CPU (cores busy, all the setup's Redis processes) in the same runs:",
                "",
                *table(lambda r, _: f"{r.cores['redis']:.2f}"),
            ]
        )
        + "\n"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
